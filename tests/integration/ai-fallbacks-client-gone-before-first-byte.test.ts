// A fallback upstream is asked only for a student who is still there (docs/ai-gateway.md §
// Upstreams, "When the next is tried", and the failure table). The rule the fallbacks keep:
// "a failed try costs the student nothing", and the answer reading on after a hang-up is for an
// answer the provider was already writing ("the client disconnects mid-stream": the provider
// bills it). A student who hung up while the card's upstream was still silent, before any byte
// of an answer reached them, has asked for nothing more: when that upstream then fails, the call
// fails (charged nothing, hold released). Calling the next upstream after the hang-up starts a
// new, billed answer nobody will read, on the gateway's own initiative, and charges the student
// for it.
import assert from 'node:assert/strict';
import { activeHolds, ask, balanceOf, countingBackup, heldCall, settled, student } from '../support/ai.ts';
import { assertLedgerInvariants, env, testDb, withGateway } from '../support/helpers.ts';

const standin = env('AI_STANDIN_URL');
const model = 'gpt-4o-mini';

/** An upstream that answers 503 only after `ms` (a whole answer's failure comes once it is written). */
function slowlyDown(ms: number) {
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    await req.body?.cancel();
    await new Promise((r) => setTimeout(r, ms));
    return Response.json({ error: { message: 'overloaded', type: 'server_error' } }, { status: 503 });
  });
  return { base: `http://127.0.0.1:${server.addr.port}/v1`, close: () => server.shutdown() };
}

const cases: [name: string, stream: boolean][] = [['streamed', true], ['whole', false]];

for (const [name, stream] of cases) {
  Deno.test(`a student who left before the first byte is not sent to the next upstream (${name}): nothing charged`, async () => {
    const s = await student('50');
    const backup = countingBackup();
    const primary = slowlyDown(2000);
    try {
      await withGateway({
        // Streamed: the card's upstream stays silent past AI_TIMEOUT_MS; whole: it answers 503 after 2 s.
        AI_API_BASE: stream ? `${standin}/_standin/fail/timeout/v1` : primary.base,
        AI_UPSTREAMS: 'compat,backup',
        AI_UPSTREAM_BACKUP_BASE: backup.base,
        AI_UPSTREAM_BACKUP_KEY: env('AI_API_KEY'),
        AI_UPSTREAM_BACKUP_FALLBACK_FOR: model,
        AI_TIMEOUT_MS: '3000',
      }, async (url) => {
        const hangUp = new AbortController();
        const sent = fetch(`${url}/ai/v1/chat/completions`, {
          method: 'POST',
          signal: hangUp.signal,
          headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model, messages: ask('#standin words=40'), max_tokens: 100, stream }),
        }).then((r) => r.body?.cancel(), () => {});
        // The call is held and waiting on the card's upstream: nothing has reached the student yet.
        await heldCall(s.id);
        hangUp.abort();
        await sent;
        // The card upstream fails within 3 s; the gateway settles the call before it is stopped.
        await settled(s.id, 30_000);
      });
    } finally {
      await backup.close();
      await primary.close();
    }
    const call = await settled(s.id);
    const [r] = await testDb`select status, upstream, client_left, trim_scale(coalesce(charged, 0))::text as charged
      from billing.ai_calls where id = ${call.id}`;
    // All at once, so a failure shows what happened: the backup asked, the call charged.
    assert.deepEqual(
      { backupAsked: backup.hits(), status: r.status, charged: r.charged, balance: await balanceOf(s.id) },
      { backupAsked: 0, status: 'failed', charged: '0', balance: '50' },
    );
    assert.equal(await activeHolds(s.id), 0);
    await assertLedgerInvariants();
  });
}
