// Server-Timing (supabase/functions/_shared/server-timing.ts): with SERVER_TIMING=true every
// answer names its steps and their durations; an AI call's whole answer lists each trip before
// it (the token, the limits' Redis trip, the hold, the provider, the capture); a stream's header
// leaves before its capture. Off (the default, as the stack's own gateway runs) no answer has it.
import assert from 'node:assert/strict';
import { ask, callsOf, gatewayUrl, student } from '../support/ai.ts';
import { functionsUrl, withGateway } from '../support/helpers.ts';

/** The header's steps in order: [name, ms]; each must be `name;dur=<ms>` and nothing else. */
function stepsOf(res: Response): [string, number][] {
  const header = res.headers.get('server-timing');
  assert.ok(header, 'Server-Timing is sent');
  return header.split(', ').map((step) => {
    const m = /^([a-z_]+);dur=(\d+\.\d{2})$/.exec(step);
    assert.ok(m, `a step is a name and a duration, nothing more: ${step}`);
    return [m[1], Number(m[2])];
  });
}

/** A whole AI answer's steps, in order. */
const wholeAnswer = ['auth', 'limit', 'body', 'count', 'begin', 'upstream', 'upstream_body', 'finish', 'total'];

const chat = (base: string, token: string, body: Record<string, unknown>) =>
  fetch(`${base}/ai/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

Deno.test('Server-Timing, when on, lists each step of a whole AI answer and they add up to no more than its total', async () => {
  const s = await student();
  await withGateway({ SERVER_TIMING: 'true' }, async (base) => {
    const res = await chat(base, s.token, { model: 'gpt-4o', messages: ask('hi #standin words=3'), max_tokens: 16 });
    assert.equal(res.status, 200);
    await res.json();
    const steps = stepsOf(res);
    assert.deepEqual(steps.map(([name]) => name), wholeAnswer);
    const total = steps.at(-1)![1];
    const parts = steps.slice(0, -1).reduce((sum, [, ms]) => sum + ms, 0);
    assert.ok(parts <= total + 0.05, `the steps (${parts} ms) fit in the total (${total} ms)`);
    assert.ok(steps.find(([n]) => n === 'begin')![1] > 0 && steps.find(([n]) => n === 'finish')![1] > 0);
    // The call it timed was held and charged once, as any call.
    const [c] = await callsOf(s.id);
    assert.equal(c.status, 'charged');

    // A refused call (a model the rate card does not have) still says where its time went: no provider.
    const refused = await chat(base, s.token, { model: 'no-such-model', messages: ask('hi'), max_tokens: 16 });
    assert.equal(refused.status, 400);
    await refused.body?.cancel();
    assert.deepEqual(stepsOf(refused).map(([n]) => n), ['auth', 'limit', 'body', 'count', 'begin', 'total']);

    // A stream's header leaves with its first byte: the steps before it, not the capture after.
    const streamed = await chat(base, s.token, {
      model: 'gpt-4o',
      messages: ask('hi #standin words=3'),
      max_tokens: 16,
      stream: true,
      stream_options: { include_usage: true },
    });
    assert.equal(streamed.status, 200);
    assert.deepEqual(
      stepsOf(streamed).map(([n]) => n),
      wholeAnswer.filter((n) => !['upstream_body', 'finish'].includes(n)),
    );
    await streamed.text();

    // Any route: a balance read has the token, the limits' trip and its one SQL trip; a route
    // without SQL of its own (the model list) the first two.
    const balance = await fetch(`${base}/credits/balance`, { headers: { authorization: `Bearer ${s.token}` } });
    await balance.body?.cancel();
    assert.deepEqual(stepsOf(balance).map(([n]) => n), ['auth', 'limit', 'sql', 'total']);
    const hold = await fetch(`${base}/credits/holds`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${s.token}`,
        'content-type': 'application/json',
        'idempotency-key': crypto.randomUUID(),
      },
      body: JSON.stringify({ amount: '1' }),
    });
    assert.equal(hold.status, 201);
    await hold.body?.cancel();
    assert.deepEqual(stepsOf(hold).map(([n]) => n), ['auth', 'limit', 'sql', 'total']);
  });
});

Deno.test('Server-Timing is off by default: no answer tells its steps', async () => {
  const s = await student();
  const r = await chat(functionsUrl, s.token, { model: 'gpt-4o', messages: ask('hi #standin words=2'), max_tokens: 8 });
  assert.equal(r.status, 200);
  await r.json();
  assert.equal(r.headers.get('server-timing'), null);
  const b = await fetch(`${gatewayUrl}/models`, { headers: { authorization: `Bearer ${s.token}` } });
  await b.body?.cancel();
  assert.equal(b.status, 200);
  assert.equal(b.headers.get('server-timing'), null);
});
