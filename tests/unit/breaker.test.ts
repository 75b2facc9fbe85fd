// The Redis circuit breaker: one slow moment is one failure; a real outage still opens it.
import assert from 'node:assert/strict';
import { CircuitBreaker } from '../../supabase/functions/_shared/adapters/breaker.ts';

function clocked(threshold = 5, cooldownMs = 10_000) {
  const clock = { t: 1_000 };
  return { clock, breaker: new CircuitBreaker(threshold, cooldownMs, () => clock.t) };
}

Deno.test('eight requests that time out together in one slow moment count as one failure: the breaker stays closed', () => {
  const { clock, breaker } = clocked();
  const started = clock.t;
  clock.t += 300; // all eight were in flight when the first timed out
  for (let i = 0; i < 8; i++) breaker.failure(started + i);
  assert.equal(breaker.state, 'closed');
  assert.equal(breaker.consecutiveFailures, 1);
});

Deno.test('five failures that each began after the last one was seen open the breaker; it probes after the cool-down', () => {
  const { clock, breaker } = clocked(5, 10_000);
  for (let i = 0; i < 5; i++) {
    const started = clock.t;
    clock.t += 300;
    breaker.failure(started);
    clock.t += 1;
  }
  assert.equal(breaker.state, 'open');
  assert.equal(breaker.allow(), false);
  clock.t += 10_000;
  assert.equal(breaker.allow(), true, 'one probe');
  assert.equal(breaker.allow(), false, 'only one');
  breaker.failure(clock.t);
  assert.equal(breaker.state, 'open', 'a failed probe re-opens');
  clock.t += 10_000;
  assert.equal(breaker.allow(), true);
  breaker.success();
  assert.equal(breaker.state, 'closed');
  assert.equal(breaker.opened, 2);
});

Deno.test('a success in between starts the count again', () => {
  const { clock, breaker } = clocked(3);
  for (const outcome of ['fail', 'fail', 'ok', 'fail', 'fail']) {
    const started = clock.t;
    clock.t += 10;
    if (outcome === 'ok') breaker.success();
    else breaker.failure(started);
  }
  assert.equal(breaker.state, 'closed');
});
