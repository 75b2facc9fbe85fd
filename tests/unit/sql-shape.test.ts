// scripts/local/sql-shape.ts keeps supabase/schemas layered (calls point down, a file's number
// its layer), the ledger's one writer the only function that writes it, and no function handed
// more than two arrays: each rule proven to fail when broken, on the small trees in
// tests/fixtures/sql-shape/, then the real schemas clean.
import assert from 'node:assert/strict';
import {
  arrayParamProblems,
  layerProblems,
  lexSql,
  readSchemas,
  writerProblems,
} from '../../scripts/local/sql-shape.ts';
import { reach } from '../../scripts/local/sql-reach.ts';

const fixture = (name: string) => new URL(`../fixtures/sql-shape/${name}`, import.meta.url).pathname;

Deno.test('calls down and within a layer pass; names in strings, comments and grants are not calls', () => {
  assert.deepEqual(layerProblems(fixture('clean'), []), []);
  assert.deepEqual(writerProblems(fixture('clean')), []);
});

Deno.test('a call to a function defined in a higher layer fails, naming the caller, the callee and the file', () => {
  assert.deepEqual(layerProblems(fixture('upward'), []), [
    '10-core.sql:14 billing.settle calls billing.charge_caps, defined above it in 30-caps.sql: calls point down',
  ]);
});

Deno.test('a known upward call passes while it exists, and fails once it is gone (the list only shrinks)', () => {
  assert.deepEqual(layerProblems(fixture('upward'), ['billing.settle -> billing.charge_caps']), []);
  assert.deepEqual(layerProblems(fixture('clean'), ['billing.settle -> billing.charge_caps']), [
    'billing.settle -> billing.charge_caps no longer calls up: take it off upwardCallsKnown',
  ]);
});

Deno.test("the SET clause is parsed: an alias, a first assignment, a CTE, quoted names, a column list and a hold's state all count", () => {
  assert.deepEqual(writerProblems(fixture('writers')), [
    '20-feature.sql:5 billing.alias_first does update billing.accounts set balance: only billing.post_transfers writes the ledger',
    '20-feature.sql:10 billing.held_in_cte does update billing.accounts set held: only billing.post_transfers writes the ledger',
    '20-feature.sql:15 billing.quoted does update billing.lots set remaining: only billing.post_transfers writes the ledger',
    '20-feature.sql:16 billing.quoted does delete billing.entries: only billing.post_transfers writes the ledger',
    '20-feature.sql:22 billing.hold_around does insert billing.holds: only billing.post_transfers writes the ledger',
    '20-feature.sql:23 billing.hold_around does update billing.holds set status: only billing.post_transfers writes the ledger',
  ]);
});

Deno.test('a function taking more than two array parameters fails; out arrays and a record of arrays do not count', () => {
  assert.deepEqual(arrayParamProblems(fixture('arrays')), [
    '10-core.sql:8 billing.parallel takes 3 array parameters: pass one record (at most two arrays)',
  ]);
});

Deno.test('the lexer keeps strings, quoted names and dollar-quoted bodies apart from code', () => {
  const words = lexSql(`select 'it''s -- no', "Billing".x($$ a $$) -- gone\n/* gone */ from t`).map((t) => t.text);
  assert.deepEqual(words, ['select', "it's -- no", ',', 'billing', '.', 'x', '(', '$$', 'a', '$$', ')', 'from', 't']);
});

Deno.test('supabase/schemas: no call up beyond the known ones, and only the writer writes the ledger', () => {
  const schemas = new URL('../../supabase/schemas', import.meta.url).pathname;
  assert.deepEqual(layerProblems(schemas), []);
  assert.deepEqual(writerProblems(schemas), []);
  assert.deepEqual(arrayParamProblems(schemas), []);
});

Deno.test('reach: the functions a call can reach, once each; of them, those whose code names disputes or frozen lots', () => {
  const schema = readSchemas(fixture('reach'));
  assert.deepEqual(reach(schema, 'billing.charge'), {
    functions: ['billing.charge', 'billing.draw'],
    disputes: ['billing.draw'],
  });
  assert.deepEqual(reach(schema, 'billing.unused_dispute_rule').disputes, ['billing.unused_dispute_rule']);
  assert.deepEqual(schema.spans.get('billing.draw'), { file: '10-core.sql', from: 2, to: 6 });
});
