// Fallback models (docs/ai-gateway.md § Fallback models): a request's `models` names the models to
// try after its own when every upstream of one fails before the answer's first byte. The hold
// covers the dearest of them and reserves only credits that may pay for each; the answer is
// charged at the card of the model that answered; the record, the header and the call log say
// which model and upstream answered and what failed before. Each fallback is checked as the model
// is (allowed, priced, served on the API), and `models` never reaches a provider.
import assert from 'node:assert/strict';
import { activeHolds, ask, balanceIsGrantsLessCharges, priceOf, student } from '../support/ai.ts';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  env,
  fund,
  key,
  newUser,
  testDb,
  userToken,
  withGateway,
} from '../support/helpers.ts';
import { person, school } from '../support/orgs.ts';
import { orgGrant } from '../support/lots.ts';

const standin = env('AI_STANDIN_URL');

/** A backup host that keeps the bodies it was sent and answers as the stand-in. */
function recordingBackup() {
  const seen: Record<string, unknown>[] = [];
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    const body = await req.json();
    seen.push(body);
    return fetch(`${standin}/v1/chat/completions`, {
      method: 'POST',
      headers: req.headers,
      body: JSON.stringify(body),
    });
  });
  return { base: `http://127.0.0.1:${server.addr.port}/v1`, seen, close: () => server.shutdown() };
}

/**
 * A gateway whose `openai` upstream answers `how` (a stand-in failure, or `ok`) and whose `backup`
 * host serves gpt-4o only: a gpt-4o-mini call whose upstream fails can go on only as gpt-4o.
 */
const env4o = (how: string, backup: string) => ({
  AI_API_BASE: how === 'ok' ? `${standin}/v1` : `${standin}/_standin/fail/${how}/v1`,
  AI_UPSTREAMS: 'compat,backup',
  AI_UPSTREAM_BACKUP_BASE: backup,
  AI_UPSTREAM_BACKUP_KEY: env('AI_API_KEY'),
  AI_UPSTREAM_BACKUP_SPEAKS: 'chat,responses',
  AI_UPSTREAM_BACKUP_FALLBACK_FOR: 'gpt-4o',
});

const chat = (url: string, token: string, body: Record<string, unknown>) =>
  fetch(`${url}/ai/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: ask('#standin words=5'), max_tokens: 40, ...body }),
  });

/** The call's record, with what its hold was and what the dearest candidate's price of it is. */
async function record(id: string) {
  const [r] = await testDb`select c.model, c.upstream, c.attempts, c.fallbacks, c.status,
      trim_scale(c.charged)::text as charged, trim_scale(h.amount)::text as held,
      trim_scale(billing.ai_hold_amount('gpt-4o', c.prompt_tokens, c.max_output_tokens))::text as dearest,
      billing.ai_call_log_json(c) -> 'attempts' as logged
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.id = ${id}`;
  return r;
}

for (const stream of [false, true]) {
  Deno.test(`a call whose model fails is answered by its fallback model, charged at that card (${stream ? 'streamed' : 'whole'})`, async () => {
    const s = await student('100');
    const backup = recordingBackup();
    try {
      await withGateway(env4o('500', backup.base), async (url) => {
        const res = await chat(url, s.token, {
          models: ['gpt-4o-mini', 'gpt-4o'],
          stream,
          ...(stream ? { stream_options: { include_usage: true } } : {}),
        });
        assert.equal(res.status, 200);
        assert.equal(res.headers.get('x-ai-answered-by'), 'backup/gpt-4o');
        let usage;
        if (stream) {
          for (const line of (await res.text()).split('\n')) {
            if (line.startsWith('data: {') && line.includes('"usage":{')) usage = JSON.parse(line.slice(6)).usage;
          }
        } else usage = (await res.json()).usage;
        const r = await record(res.headers.get('x-ai-call-id')!);
        assert.equal(r.status, 'charged');
        assert.equal(r.model, 'gpt-4o');
        assert.equal(r.upstream, 'backup');
        assert.deepEqual(r.fallbacks, ['gpt-4o']);
        assert.equal(r.charged, await priceOf('gpt-4o', usage));
        assert.equal(r.held, r.dearest);
        assert.deepEqual(r.attempts.map((a: Record<string, string>) => [a.upstream, a.model, a.failure]), [
          ['openai', 'gpt-4o-mini', 'PROVIDER_ERROR_500'],
          ['openai', 'gpt-4o', 'PROVIDER_ERROR_500'],
        ]);
        assert.deepEqual(r.logged, r.attempts);
        // The capture names the model that answered and the upstream that served it.
        const [t] = await testDb`select t.metadata ->> 'model' as model, t.metadata ->> 'upstream' as upstream
          from billing.ai_calls c join billing.transfers t on t.id = c.transfer_id where c.id = ${
          r && res.headers.get('x-ai-call-id')
        }`;
        assert.deepEqual([t.model, t.upstream], ['gpt-4o', 'backup']);
      });
    } finally {
      await backup.close();
    }
    assert.equal(backup.seen.length, 1);
    assert.equal(backup.seen[0].model, 'gpt-4o');
    assert.equal('models' in backup.seen[0], false);
    assert.equal(await activeHolds(s.id), 0);
    assert.ok(await balanceIsGrantsLessCharges(s.id));
  });
}

Deno.test('a model that answers is charged at its own card, though the hold covered its dearer fallback', async () => {
  const s = await student('100');
  await withGateway(env4o('ok', `${standin}/v1`), async (url) => {
    const res = await chat(url, s.token, { models: ['gpt-4o'] });
    const body = await res.json();
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-ai-answered-by'), 'openai/gpt-4o-mini');
    const r = await record(res.headers.get('x-ai-call-id')!);
    assert.equal(r.model, 'gpt-4o-mini');
    assert.equal(r.attempts, null);
    assert.equal(r.charged, await priceOf('gpt-4o-mini', body.usage));
    assert.equal(r.held, r.dearest);
  });
  assert.equal(await activeHolds(s.id), 0);
  assert.ok(await balanceIsGrantsLessCharges(s.id));
});

Deno.test('credits for one model never hold for a fallback they cannot pay for: refused whole, nothing held', async () => {
  const admin = await adminToken();
  const id = await newUser();
  const token = await userToken(id);
  const g = await api('/credits/grants', {
    token: admin,
    headers: key(),
    body: { user_id: id, amount: '500', reason: 'test', kind: 'promo_grant', lot: { applies_to: ['gpt-4o-mini'] } },
  });
  assert.equal(g.status, 201, g.text);
  await withGateway(env4o('ok', `${standin}/v1`), async (url) => {
    const refused = await chat(url, token, { models: ['gpt-4o'] });
    const body = await refused.json();
    assert.equal(refused.status, 402, JSON.stringify(body));
    assert.equal(body.error.code, 'INSUFFICIENT_CREDITS');
    assert.equal(await activeHolds(id), 0);
    const alone = await chat(url, token, {});
    assert.equal(alone.status, 200);
  });
  assert.equal(await activeHolds(id), 0);
  await assertLedgerInvariants();
});

Deno.test("a member's allowance that cannot pay for a fallback is passed over for credits that can", async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', null);
  await orgGrant(org, '50', 'promo_grant');
  const allowance = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: ada.id, amount: '30', applies_to: ['gpt-4o-mini'] },
  });
  assert.equal(allowance.status, 201, allowance.text);
  await fund(ada.id, '100');
  await withGateway(env4o('ok', `${standin}/v1`), async (url) => {
    const alone = await chat(url, ada.token, {});
    assert.equal(alone.status, 200);
    const withFallback = await chat(url, ada.token, { models: ['gpt-4o'] });
    assert.equal(withFallback.status, 200, await withFallback.clone().text());
    await withFallback.body?.cancel();
    const paidBy = await testDb`select org_id from billing.ai_calls where id in
      (${alone.headers.get('x-ai-call-id')}, ${withFallback.headers.get('x-ai-call-id')}) order by seq`;
    assert.deepEqual(
      paidBy.map((r) => r.org_id),
      [org, null],
      'the allowance pays for mini alone, her own credits with gpt-4o',
    );
  });
  assert.equal(await activeHolds(ada.id), 0);
  await assertLedgerInvariants();
});

Deno.test('each fallback model is checked as the model is; more than three is refused; nothing is held', async () => {
  const s = await student('100');
  await withGateway(env4o('ok', `${standin}/v1`), async (url) => {
    const cases: [unknown, number, string][] = [
      [['no-such-model'], 400, 'UNKNOWN_MODEL'],
      [['text-embedding-3-small'], 400, 'MODEL_KIND_NOT_SUPPORTED'],
      [['gpt-4o', 'claude-haiku-4-5', 'claude-3-5-haiku', 'gpt-4o-mini', 'x'], 400, 'VALIDATION_FAILED'],
      [['gpt-4o', 'claude-haiku-4-5', 'claude-3-5-haiku', 'no-such-model'], 400, 'VALIDATION_FAILED'],
      [['openai/o1-pro'], 400, 'VALIDATION_FAILED'],
    ];
    for (const [models, status, code] of cases) {
      const res = await chat(url, s.token, { models });
      const body = await res.json();
      assert.equal(res.status, status, `${JSON.stringify(models)}: ${JSON.stringify(body)}`);
      assert.equal(body.error.code, code);
      if (code !== 'VALIDATION_FAILED') assert.equal(body.error.details.field, 'models');
    }
  });
  const [n] = await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${s.id}`;
  assert.equal(n.n, 0);
  assert.ok(await balanceIsGrantsLessCharges(s.id));
});
