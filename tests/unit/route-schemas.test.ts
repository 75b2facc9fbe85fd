// Every value a route takes reaches Postgres only through the blocks of _shared/values/pg-values.ts:
// this walks every request schema (each route folder's schemas.ts, the public ones in
// _shared/contract/, and each job type's input)
// and fails on a string, number, array or record not built from them, so a new field cannot
// bring back a 5xx (or a failed statement in the server log) by forgetting the rule.
import assert from 'node:assert/strict';
import { z } from 'zod';
import { isJsonBlock, isPgText, jsonObject, pgInt, pgText } from '../../supabase/functions/_shared/values/pg-values.ts';
import { jobTypes } from '../../supabase/functions/jobs/types/index.ts';

type Check = { _zod: { def: { check: string; fn?: unknown; format?: string } } };
type Def = {
  type: string;
  coerce?: boolean;
  checks?: Check[];
  shape?: Record<string, z.ZodType>;
  catchall?: z.ZodType;
  element?: z.ZodType;
  options?: z.ZodType[];
  innerType?: z.ZodType;
  in?: z.ZodType;
  out?: z.ZodType;
};
const defOf = (s: z.ZodType) => (s as unknown as { _zod: { def: Def } })._zod.def;
const has = (d: Def, check: string, fn?: unknown) =>
  (d.checks ?? []).some((c) => c._zod.def.check === check && (fn === undefined || c._zod.def.fn === fn));

/** Where `schema` lets through a value not built from the blocks: a path and why, per problem. */
function problems(schema: z.ZodType, path = '<root>'): string[] {
  const d = defOf(schema);
  switch (d.type) {
    case 'boolean':
    case 'null':
    case 'enum':
    case 'literal':
    case 'never':
    case 'transform': // only inside a pipe, whose input was checked
      return [];
    case 'string':
      return [
        ...(d.coerce ? [`${path}: a coerced string`] : []),
        ...(has(d, 'custom', isPgText) ? [] : [`${path}: a string not built from pgText`]),
        ...(has(d, 'max_length') ? [] : [`${path}: a string without a maximum length`]),
      ];
    case 'number':
      // Coercion is Number(): it takes `1e2`, `0x10` and ` 1 ` (queryInt takes digits only).
      return !d.coerce && has(d, 'number_format') && has(d, 'greater_than') && has(d, 'less_than')
        ? []
        : [`${path}: a number that is not a bounded integer (pgInt)`];
    case 'record':
      return isJsonBlock(schema) ? [] : [`${path}: a record not built from jsonObject`];
    case 'array':
      return [
        ...(has(d, 'max_length') ? [] : [`${path}: an array without a maximum length`]),
        ...problems(d.element as z.ZodType, `${path}[]`),
      ];
    case 'object':
      return [
        ...Object.entries(d.shape ?? {}).flatMap(([k, v]) => problems(v, `${path}.${k}`)),
        ...(d.catchall && defOf(d.catchall).type !== 'never' ? problems(d.catchall, `${path}.*`) : []),
      ];
    case 'union':
      return (d.options ?? []).flatMap((o, i) => problems(o, `${path}|${i}`));
    case 'optional':
    case 'nullable':
    case 'default':
    case 'prefault':
    case 'catch':
    case 'readonly':
      return problems(d.innerType as z.ZodType, path);
    case 'pipe': {
      // What reaches SQL is the output: safe when the input was (the rest only narrows or is
      // our own transform of it), or when the output is checked itself.
      const input = problems(d.in as z.ZodType, path);
      return input.length === 0 || problems(d.out as z.ZodType, path).length === 0 ? [] : input;
    }
    default:
      return [`${path}: a ${d.type} (not built from the blocks)`];
  }
}

/**
 * The string fields of `schema` without a pattern (a regex or a format such as email, UUID,
 * instant): free text, whose value could carry anything (an email address, an SSN-shaped number,
 * a payload) into SQL. The paths, as problems() names them.
 */
function unpatterned(schema: z.ZodType, path = '<root>'): string[] {
  const d = defOf(schema);
  switch (d.type) {
    case 'string':
      return has(d, 'string_format') || (d as { format?: string }).format ? [] : [path];
    case 'array':
      return unpatterned(d.element as z.ZodType, `${path}[]`);
    case 'object':
      return Object.entries(d.shape ?? {}).flatMap(([k, v]) => unpatterned(v, `${path}.${k}`));
    case 'union':
      return (d.options ?? []).flatMap((o, i) => unpatterned(o, `${path}|${i}`));
    case 'optional':
    case 'nullable':
    case 'default':
    case 'prefault':
    case 'catch':
    case 'readonly':
      return unpatterned(d.innerType as z.ZodType, path);
    case 'pipe': {
      // Patterned when either side is: the input before a transform, or the output it is checked as.
      const input = unpatterned(d.in as z.ZodType, path);
      return input.length === 0 || unpatterned(d.out as z.ZodType, path).length === 0 ? [] : input;
    }
    default:
      return [];
  }
}

/**
 * Every request schema: exports of each route folder's schemas.ts (not its env), of the
 * contract's files (_shared/contract/<route>.ts, named here as the route's), and job inputs.
 */
async function requestSchemas(): Promise<Map<string, z.ZodType>> {
  const found = new Map<string, z.ZodType>();
  const root = new URL('../../supabase/functions/', import.meta.url);
  const add = async (file: URL, folder: string) => {
    for (const [name, value] of Object.entries(await import(file.href))) {
      if (value instanceof z.ZodType && !name.endsWith('EnvSchema')) found.set(`${folder}/${name}`, value);
    }
  };
  for await (const dir of Deno.readDir(root)) {
    const file = new URL(`${dir.name}/schemas.ts`, root);
    if (dir.isDirectory && (await Deno.stat(file).catch(() => null))) await add(file, dir.name);
  }
  const contract = new URL('_shared/contract/', root);
  for await (const f of Deno.readDir(contract)) await add(new URL(f.name, contract), f.name.replace(/\.ts$/, ''));
  for (const [type, t] of Object.entries(jobTypes)) found.set(`jobs/types/${type}`, t.schema);
  return found;
}

Deno.test('every route schema takes text, integers and JSON only through the pg-values blocks', async () => {
  const schemas = await requestSchemas();
  for (const folder of ['admin', 'ai', 'checkout', 'credits', 'jobs', 'notify', 'orgs', 'providers']) {
    assert.ok([...schemas.keys()].some((k) => k.startsWith(`${folder}/`)), `${folder}'s schemas are walked`);
  }
  const found = [...schemas].flatMap(([name, s]) => problems(s, name)).filter((p) => !sentToTheModelOnly.has(p));
  assert.deepEqual(found, []);
});

// OpenAI's sampling settings are fractions, bounded by their own schema, and go to the model only:
// never to SQL (the gateway keeps a hash of the request, not its values).
const sentToTheModelOnly = new Set([
  ...['temperature', 'top_p', 'presence_penalty', 'frequency_penalty'].map((k) =>
    `ai/ChatRequestSchema.${k}: a number that is not a bounded integer (pgInt)`
  ),
  ...['MessagesRequestSchema', 'ResponsesRequestSchema'].flatMap((schema) =>
    ['temperature', 'top_p'].map((k) => `ai/${schema}.${k}: a number that is not a bounded integer (pgInt)`)
  ),
]);

Deno.test('the walk catches raw strings, numbers, unbounded arrays and free-form values', () => {
  const raw = {
    'a raw string': z.strictObject({ s: z.string().max(5) }),
    'an unbounded pgText-like string': z.strictObject({ s: z.string().refine(isPgText) }),
    'a raw integer': z.strictObject({ n: z.number().int() }),
    'a coerced query number': z.strictObject({ n: z.coerce.number().int().min(1).max(5) }),
    'a record': z.strictObject({ r: z.record(pgText(5), pgText(5)) }),
    'an unknown': z.strictObject({ u: z.unknown() }),
    'an unbounded array': z.strictObject({ a: z.array(pgInt(1, 2)) }),
    'a raw option': z.strictObject({ o: z.union([pgText(5), z.string()]).optional() }),
    'an email format': z.strictObject({ e: z.email() }),
  };
  for (const [what, s] of Object.entries(raw)) assert.notDeepEqual(problems(s), [], what);
  const blocks = z.strictObject({
    s: pgText(5).trim().min(1).regex(/^[a-z]+$/).optional(),
    n: pgInt(0, 9).default(1),
    a: z.array(pgInt(1, 2)).max(3),
    j: jsonObject({ depth: 2, entries: 3, key: 8, text: 8 }).optional(),
    p: pgText(5).transform(Number).pipe(z.number()),
  });
  assert.deepEqual(problems(blocks), []);
});

// Free text a route takes on purpose, each with why it cannot bring a caller's words into SQL's
// error text (so the Postgres log): every other string field has a pattern (values/text.ts,
// values/query.ts, a regex or a format).
const freeText: Record<string, string> = {
  'admin/ChangePackageSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'admin/ChangePlanSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'admin/CreatePackageSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'admin/CreatePlanSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'admin/RetireSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'admin/CorrectionRunSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'admin/DiscardRateCardSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'admin/PublishRateCardSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'admin/RateCardDraftSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'admin/VoidRequestSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'orgs/OrgGrantSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'credits/GrantRequestSchema.reason': "an admin's reason, stored as a bound parameter; never in an error's DETAIL",
  'admin/SessionRequestSchema.access_token': 'verified as a JWT (jose) or exchanged with Auth; never sent to SQL',
  'admin/SessionRequestSchema.password': 'sent to Supabase Auth only; never to SQL',
  'codes/PromoCodeSchema.note': "its creator's note, stored inside a jsonb parameter; never in an error's DETAIL",
  'codes/SponsorCodeSchema.note': "its issuer's note, stored inside a jsonb parameter; never in an error's DETAIL",
  'jobs/types/ai_completion.prompt':
    "the job's input, stored as jsonb and sent to the model; never in an error's DETAIL",
  'ai/ChatRequestSchema.messages[].content|0': 'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/ChatRequestSchema.messages[].content|1[].text':
    'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/ChatRequestSchema.stop|0': 'stop sequences: sent to the model only, never to SQL',
  'ai/ChatRequestSchema.stop|1[]': 'stop sequences: sent to the model only, never to SQL',
  'ai/EmbeddingsRequestSchema.input|0': 'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/EmbeddingsRequestSchema.input|1[]': 'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.messages[].content|0':
    'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.messages[].content|1[]|0.text':
    'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.messages[].content|1[]|1.name':
    'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.messages[].content|1[]|2.content|0':
    'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.messages[].content|1[]|2.content|1[].text':
    'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.messages[].content|1[]|3.thinking':
    'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.messages[].content|1[]|3.signature':
    'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.messages[].content|1[]|4.data':
    'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.system|0': 'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.system|1[].text': 'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.tools[].name': 'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.tools[].description':
    'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/ResponsesRequestSchema.input|0': 'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/ResponsesRequestSchema.instructions': 'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/ResponsesRequestSchema.tools[].name': 'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/ResponsesRequestSchema.tools[].description':
    'the prompt: sent to the model and counted, never stored or sent to SQL',
  'ai/MessagesRequestSchema.stop_sequences[]': 'stop sequences: sent to the model only, never to SQL',
};

Deno.test('every free-text string field a route takes has a pattern, or is a documented exception', async () => {
  const schemas = await requestSchemas();
  const found = [...schemas].flatMap(([name, s]) => unpatterned(s, name)).filter((p) => !(p in freeText));
  assert.deepEqual(found, [], 'build these from the patterns in _shared/values/ (text.ts, query.ts) or give them one');
  // The allowlist names only fields that exist (a renamed field is not silently excused).
  const all = new Set([...schemas].flatMap(([name, s]) => unpatterned(s, name)));
  assert.deepEqual(Object.keys(freeText).filter((p) => !all.has(p)), []);
});

Deno.test('the pattern walk catches free text and accepts patterns, formats and enums', () => {
  const free = z.strictObject({ package_id: pgText(100).min(1), nested: z.strictObject({ po: pgText(5).optional() }) });
  assert.deepEqual(unpatterned(free), ['<root>.package_id', '<root>.nested.po']);
  const patterned = z.strictObject({
    a: pgText(5).regex(/^[a-z]+$/),
    b: pgText(320).email(),
    c: pgText(40).pipe(z.iso.datetime()),
    d: z.enum(['x', 'y']),
    e: z.array(pgText(5).regex(/^x$/)).max(2),
  });
  assert.deepEqual(unpatterned(patterned), []);
});
