// scripts/local/import-layers.ts keeps supabase/functions layered (each module imports only its
// own layer or a lower one; _shared never a route folder) and free of import cycles, type-only
// ones included: each rule proven to fail when broken, on the small trees in
// tests/fixtures/import-layers/, then the real tree proven clean.
import assert from 'node:assert/strict';
import { importProblems } from '../../scripts/local/import-layers.ts';

const fixture = (name: string) => new URL(`../fixtures/import-layers/${name}`, import.meta.url).pathname;
const order = 'leaf < values/ < contract/ < adapters/ < domain/ < http/ < route folders';

Deno.test('every layer importing its own or a lower one, route folders importing _shared, and doc comments pass', async () => {
  assert.deepEqual(await importProblems(fixture('clean')), []);
});

Deno.test('a _shared module importing from a route folder fails, naming the import, even for a type', async () => {
  assert.deepEqual(await importProblems(fixture('route-folder')), [
    "_shared/contract/index.ts imports '../../checkout/schemas.ts' from the route folder checkout/: _shared must not",
  ]);
});

Deno.test('a module importing a higher layer fails, naming both layers, even for a type', async () => {
  assert.deepEqual(await importProblems(fixture('upward')), [
    `_shared/values/page.ts imports '../http/app.ts' from the layer http/, above the layer values/: imports point down (${order})`,
  ]);
});

Deno.test('a _shared folder that is not a layer fails, naming the file', async () => {
  assert.deepEqual(await importProblems(fixture('not-a-layer')), [
    `_shared/misc/util.ts is in _shared/misc/, not a layer: move it to one of ${order}`,
  ]);
});

Deno.test('an import cycle fails, naming each file along it (multi-line and dynamic imports count)', async () => {
  assert.deepEqual(await importProblems(fixture('runtime-cycle')), [
    'import cycle: _shared/http/app.ts → _shared/http/ratelimit.ts → _shared/http/velocity.ts → _shared/http/app.ts',
  ]);
});

Deno.test('a cycle of type-only imports fails too', async () => {
  assert.deepEqual(await importProblems(fixture('type-cycle')), [
    'import cycle: _shared/contract/checkout.ts → _shared/contract/index.ts → _shared/contract/checkout.ts',
  ]);
});

Deno.test('supabase/functions keeps the layers and has no import cycle', async () => {
  assert.deepEqual(await importProblems(new URL('../../supabase/functions', import.meta.url).pathname), []);
});
