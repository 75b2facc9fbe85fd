// docs/data-model.md and the database cannot drift: every table and view of `billing` and
// `billing_api`, every transfer kind, platform account, money account and money kind the local
// database's catalogue holds is named in its table on the page, and every name in those tables
// exists (as tests/unit/error-codes-documented.test.ts holds docs/api.md to the error codes).
import assert from 'node:assert/strict';
import { testDb } from '../support/helpers.ts';

const doc = await Deno.readTextFile(new URL('../../docs/data-model.md', import.meta.url));

/** The cells of each row of the table on the page whose header begins `| <first> |`. */
function rowsOf(first: string): string[][] {
  const lines = doc.split('\n');
  const header = lines.findIndex((l, i) => l.startsWith(`| ${first} |`) && lines[i + 1]?.startsWith('| ---'));
  assert.ok(header >= 0, `docs/data-model.md has a table headed "${first}"`);
  const rows: string[][] = [];
  for (const line of lines.slice(header + 2)) {
    if (!line.startsWith('|')) break;
    rows.push(line.replace(/^\| | \|$/g, '').split(' | '));
  }
  return rows;
}

/** The names a table's first column gives, each in backticks. */
const firstColumn = (first: string) =>
  rowsOf(first).map(([cell]) => /^`([^`]+)`/.exec(cell)?.[1] ?? `(no name in "${cell}")`);

/** Names the page must hold and names it holds: neither has one the other lacks. */
function assertSame(catalogue: string[], documented: string[], what: string) {
  assert.ok(catalogue.length > 0, `the catalogue has ${what}: the query still finds them`);
  const doc = new Set(documented);
  const real = new Set(catalogue);
  assert.deepEqual(catalogue.filter((n) => !doc.has(n)).sort(), [], `${what} missing from docs/data-model.md`);
  assert.deepEqual(
    documented.filter((n) => !real.has(n)).sort(),
    [],
    `${what} in docs/data-model.md that do not exist`,
  );
  assert.equal(documented.length, doc.size, `each of the ${what} is named once`);
}

/** The quoted values a check constraint allows (`'x'::text`), and `<prefix>:<id>` for a `'^<prefix>:…'` pattern. */
async function allowedBy(constraint: string): Promise<string[]> {
  const [row] = await testDb`select pg_get_constraintdef(c.oid) as def from pg_constraint c
    join pg_namespace n on n.oid = c.connamespace where n.nspname = 'billing' and c.conname = ${constraint}`;
  assert.ok(row, `billing has the constraint ${constraint}`);
  const def = row.def as string;
  return [
    ...[...def.matchAll(/'([a-z0-9_]+)'::text/g)].map((m) => m[1]),
    ...[...def.matchAll(/'\^([a-z0-9_]+):/g)].map((m) => `${m[1]}:<id>`),
  ];
}

Deno.test('every table and view of billing and billing_api is in the domain table, and every one named there exists', async () => {
  const relations = await testDb<{ name: string }[]>`
    select case n.nspname when 'billing' then c.relname else n.nspname || '.' || c.relname end as name
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname in ('billing', 'billing_api') and c.relkind in ('r', 'p', 'v', 'm') and not c.relispartition`;
  const named = rowsOf('domain').flatMap(([, , tables = '']) => [...tables.matchAll(/`([^`]+)`/g)].map((m) => m[1]));
  assertSame(relations.map((r) => r.name), named, 'tables and views');
});

Deno.test('every transfer kind is in the transfer table, and every kind there exists', async () => {
  const kinds = await testDb<{ kind: string }[]>`select unnest(enum_range(null::billing.transfer_kind))::text as kind`;
  assertSame(kinds.map((k) => k.kind), firstColumn('kind'), 'transfer kinds');
});

Deno.test('every platform account is in the platform account table, and every one there exists', async () => {
  const accounts = await testDb<{ code: string }[]>`select code from billing.accounts where code is not null`;
  assertSame(accounts.map((a) => a.code), firstColumn('platform account'), 'platform accounts');
});

Deno.test('every money account and money kind is in the money ledger tables, and every one there exists', async () => {
  assertSame(await allowedBy('money_entries_account'), firstColumn('money account'), 'money accounts');
  assertSame(await allowedBy('money_transfers_kind'), firstColumn('money kind'), 'money kinds');
});
