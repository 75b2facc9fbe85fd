// docs/runbook.md says what to do for every kind of reconciliation mismatch the database can
// record: the kinds listed in its table are exactly those the table's CHECK constraint allows.
import assert from 'node:assert/strict';
import { testDb } from '../support/helpers.ts';

Deno.test('the runbook has a row for every reconciliation mismatch kind, and none that cannot occur', async () => {
  const [{ def }] = await testDb`select pg_get_constraintdef(oid) as def from pg_constraint
    where conname = 'reconciliation_mismatches_kind'`;
  const kinds = [...(def as string).matchAll(/'([a-z_]+)'::text/g)].map((m) => m[1]).sort();
  assert.ok(kinds.length >= 5, def);
  const runbook = await Deno.readTextFile(new URL('../../docs/runbook.md', import.meta.url));
  const section = runbook.split('## Reconciliation mismatches: each kind and what to do')[1]?.split('\n## ')[0] ?? '';
  const documented = [...section.matchAll(/^\| `([a-z_]+)` \|/gm)].map((m) => m[1]).sort();
  assert.deepEqual(documented, kinds);
});
