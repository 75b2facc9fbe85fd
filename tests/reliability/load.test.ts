// The short version of ./scripts/load inside the test run: a mixed workload for a few seconds.
// Asserts correctness only (no lost or doubled credits, no 5xx, invariants); speed targets are
// measured by ./scripts/load and the benchmarks, never in timed tests.
import assert from 'node:assert/strict';
import { mixedLoad } from '../../bench/mixed-load.ts';

Deno.test({
  name: 'a short mixed load (reads, usage, jobs, checkouts, webhooks): no 5xx, no duplicate effects, invariants hold',
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const r = await mixedLoad(60, 8);
    assert.equal(r.duplicateCredits, 0);
    assert.equal(r.errors, 0, JSON.stringify(r.routes));
    for (const route of ['balance', 'usage', 'job', 'checkout']) assert.ok(r.routes[route].count > 0, route);
  },
});
