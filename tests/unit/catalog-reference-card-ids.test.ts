// Reference cards use ids the pinned SDKs list: each reference rate card (supabase/schemas/
// 15-catalog.sql § reference rows) of an OpenAI chat or embedding model is a name in the pinned
// `openai` package's ChatModel or EmbeddingModel, and each Anthropic one a name in the pinned
// `@anthropic-ai/sdk`'s Model, so an app that calls the id the card names reaches a model its
// provider serves. Checked by the type checker against those packages' own types (the import
// map's pins). Old ids kept as aliases (billing.model_aliases) are not cards: they are exempt.
import assert from 'node:assert/strict';

const root = new URL('../../', import.meta.url);

type Card = { model: string; upstream: string; kind: string };

/** The reference rows' rate cards: every `insert into billing.rate_cards` under the banner. */
export function referenceCards(sql: string): Card[] {
  const start = sql.indexOf('-- ============================================================ reference rows');
  assert.ok(start >= 0, 'the catalog has its reference rows');
  const end = sql.indexOf('-- ============================================================', start + 1);
  const section = sql.slice(start, end < 0 ? undefined : end).replace(/--.*$/gm, '');
  const cards: Card[] = [];
  for (const [, columns, rows] of section.matchAll(/insert into billing\.rate_cards\s*\(([^)]*)\)\s*values([^;]*);/g)) {
    const names = columns.split(',').map((c) => c.trim());
    for (const [, row] of rows.matchAll(/\(([^()]*)\)/g)) {
      const values = row.match(/'(?:[^']|'')*'|[^,\s][^,]*/g)?.map((v) => v.trim().replace(/^'|'$/g, '')) ?? [];
      assert.equal(values.length, names.length, `a reference row as its columns: ${row}`);
      const value = (name: string, otherwise: string) => values[names.indexOf(name)] ?? otherwise;
      // The columns' defaults when a row leaves them out (billing.rate_cards).
      cards.push({ model: value('model', ''), upstream: value('upstream', 'openai'), kind: value('kind', 'chat') });
    }
  }
  return cards;
}

/** The SDK type that lists a card's ids, by its upstream and kind; undefined: no pinned SDK lists them. */
function listingType({ upstream, kind }: Card): string | undefined {
  if (upstream === 'openai') return kind === 'embedding' ? 'OpenAI.EmbeddingModel' : 'OpenAI.ChatModel';
  if (upstream === 'anthropic' && kind === 'chat') return 'Anthropic.Model';
}

/** `deno check` of `code` as a module, with the repository's config (its import map: the pinned SDKs). */
async function typeCheck(code: string) {
  const dir = await Deno.makeTempDir({ prefix: 'card-ids-' });
  try {
    await Deno.writeTextFile(`${dir}/ids.ts`, code);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ['check', '--quiet', `--config=${new URL('deno.json', root).pathname}`, `${dir}/ids.ts`],
      cwd: root.pathname,
      stdout: 'piped',
      stderr: 'piped',
    }).output();
    return { success: out.success, errors: new TextDecoder().decode(out.stderr) };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test('each reference card of an OpenAI or Anthropic model uses an id its pinned SDK lists', async () => {
  const cards = referenceCards(await Deno.readTextFile(new URL('supabase/schemas/15-catalog.sql', root)));
  const checked = cards.flatMap((c) => {
    const type = listingType(c);
    return type ? [{ ...c, type }] : [];
  });
  // Each SDK type is checked at least once, so the check cannot pass by checking nothing.
  assert.deepEqual(
    [...new Set(checked.map((c) => c.type))].sort(),
    ['Anthropic.Model', 'OpenAI.ChatModel', 'OpenAI.EmbeddingModel'],
    `the reference cards: ${JSON.stringify(cards)}`,
  );
  const lines = checked.map((c, i) => `export const card${i}: Listed<${c.type}> = ${JSON.stringify(c.model)};`);
  const { success, errors } = await typeCheck(`import type OpenAI from 'openai';
import type Anthropic from '@anthropic-ai/sdk';
/** The ids a union lists by name: its string literals, without a catch-all \`string & {}\`. */
type Listed<T> = T extends string ? (string extends T ? never : T) : never;
${lines.join('\n')}
// Not vacuous: an id Anthropic's SDK does not list (an alias here, not a card) is refused.
// @ts-expect-error claude-3-5-haiku is not in Anthropic.Model
export const alias: Listed<Anthropic.Model> = 'claude-3-5-haiku';
// @ts-expect-error nor is a made-up OpenAI id in ChatModel
export const madeUp: Listed<OpenAI.ChatModel> = 'gpt-4o-student';
`);
  assert.ok(success, `a reference card's id is not one its pinned SDK lists:\n${errors}`);
});

Deno.test('the reference rows are read as the catalog writes them: columns, defaults, several inserts', () => {
  const sql = `-- ============================================================ reference rows
insert into billing.rate_cards (model, version, markup) values
  ('gpt-x', 1, 4), -- a note, with a comma
  ('text-x', 1, 4);
insert into billing.rate_cards (model, version, upstream, kind) values ('claude-x', 1, 'anthropic', 'chat'),
  ('emb-x', 2, 'openai', 'embedding');
-- ============================================================ tables
insert into billing.rate_cards (model, version) values ('not-reference', 1);`;
  assert.deepEqual(referenceCards(sql), [
    { model: 'gpt-x', upstream: 'openai', kind: 'chat' },
    { model: 'text-x', upstream: 'openai', kind: 'chat' },
    { model: 'claude-x', upstream: 'anthropic', kind: 'chat' },
    { model: 'emb-x', upstream: 'openai', kind: 'embedding' },
  ]);
});
