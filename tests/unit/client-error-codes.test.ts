// The client's error codes are docs/api.md's error table, one for one: a code added to the
// table (or the client) without the other fails here.
import assert from 'node:assert/strict';
import { documentedCodes } from '../../client/mod.ts';

Deno.test("the client's ErrorCode union is exactly the codes in docs/api.md's error table", async () => {
  const api = await Deno.readTextFile(new URL('../../docs/api.md', import.meta.url));
  const table = api.slice(api.indexOf('## Error codes'));
  const documented = [...table.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]).sort();
  assert.deepEqual([...documentedCodes].sort(), documented);
});
