// Model-based test of the AI gateway (fast-check): random sequences of calls (streamed or not,
// cached and reasoning tokens, provider failures before and after usage, a provider that
// reports nothing, aborts, bursts in parallel, ordinary reported usage and top-ups) run against
// the real stack and a model of the balance, compared after every step. The model prices each
// call itself from what the stand-in reported (exact micro-credits), charges nothing for a
// failure, and for an abort the tokenizer's count of what was streamed; a burst may spend only
// what the balance covers. After every step: no hold is left, nothing is negative, the
// ledger's invariants hold. AI_MODEL_RUNS sets the number of runs (25 here).
import assert from 'node:assert/strict';
import fc from 'fast-check';
import OpenAI from 'openai';
import { gatewayUrl, type ReportedUsage } from '../support/ai.ts';
import { assertLedgerInvariants, fund, newUser, reportUsage, testDb, userToken } from '../support/helpers.ts';

const runs = Number(Deno.env.get('AI_MODEL_RUNS') ?? 25);
const model = 'gpt-4o-mini';

// The rate card, in credits per token, read once; money in exact micro-millionths (BigInt).
const SCALE = 10n ** 18n;
const [card] = await testDb`select credits_per_input_token::text as i, credits_per_cached_input_token::text as c,
  credits_per_output_token::text as o, credits_per_reasoning_token::text as r from billing.rate_cards
  where model = ${model} and effective_from <= now() order by effective_from desc, version desc limit 1`;
const exact = (s: string) => {
  const [w, f = ''] = s.split('.');
  return BigInt(w) * SCALE + BigInt((f + '0'.repeat(18)).slice(0, 18));
};
const text = (x: bigint) => {
  const f = (x % SCALE).toString().padStart(18, '0').replace(/0+$/, '');
  return `${x / SCALE}${f ? `.${f}` : ''}`;
};
/** The rate card's price of OpenAI-style usage (prompt and completion include cached and reasoning). */
function price(u: ReportedUsage): bigint {
  const cached = BigInt(u.prompt_tokens_details?.cached_tokens ?? 0);
  const reasoning = BigInt(u.completion_tokens_details?.reasoning_tokens ?? 0);
  return (BigInt(u.prompt_tokens) - cached) * exact(card.i) + cached * exact(card.c) +
    (BigInt(u.completion_tokens) - reasoning) * exact(card.o) + reasoning * exact(card.r);
}

interface Model {
  balance: bigint;
}
interface Real {
  id: string;
  ai: OpenAI;
  token: string;
}
type Cmd = fc.AsyncCommand<Model, Real>;

/** Streams settle after their last byte: waits until no call of this student is held. */
async function settle(r: Real) {
  for (let i = 0; i < 100; i++) {
    const [{ n }] =
      await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${r.id} and status = 'held'`;
    if (n === 0) return;
    await new Promise((ok) => setTimeout(ok, 50));
  }
}

/** A 402 is right only when the balance cannot cover the hold it names. */
function refusedRightly(m: Model, err: unknown): boolean {
  if (!(err instanceof OpenAI.APIError) || err.status !== 402) return false;
  const required = (err.error as { details: { required: string } }).details.required;
  assert.ok(m.balance < exact(required), `402 for ${required} with ${text(m.balance)} available`);
  return true;
}

async function compare(m: Model, r: Real) {
  await settle(r);
  const [a = { balance: '0', held: '0' }] = await testDb`select balance::text as balance, held::text as held
    from billing.accounts where user_id = ${r.id}`;
  assert.equal(text(exact(a.balance)), text(m.balance), "the balance is the model's");
  assert.equal(exact(a.held), 0n, 'no hold is left behind');
  assert.ok(m.balance >= 0n);
}

/** What the newest call charged, and from what usage (for an abort, the gateway's own count). */
async function newestCall(r: Real) {
  const [c] = await testDb`select status, charged::text as charged, usage, usage_source from billing.ai_calls
    where user_id = ${r.id} order by created_at desc limit 1`;
  return c;
}

class Ask implements Cmd {
  constructor(
    readonly stream: boolean,
    readonly words: number,
    readonly cached: number,
    readonly reasoning: number,
    readonly fault: 'none' | 'fail' | 'drop' | 'no_usage' | 'error_after_usage',
  ) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const directive = {
      none: '',
      fail: 'fail=502',
      drop: 'stop_after=2',
      no_usage: 'no_usage',
      error_after_usage: 'error_after_usage',
    }[
      this.fault
    ];
    const content = `#standin words=${this.words} cached=${this.cached} reasoning=${this.reasoning} ${directive}`;
    const body = { model, messages: [{ role: 'user' as const, content }], max_tokens: 120 };
    let usage: ReportedUsage | undefined;
    try {
      if (this.stream) {
        const s = await r.ai.chat.completions.create({
          ...body,
          stream: true,
          stream_options: { include_usage: true },
        });
        for await (const chunk of s) if (chunk.usage) usage = chunk.usage;
      } else usage = (await r.ai.chat.completions.create(body)).usage;
    } catch (err) {
      if (refusedRightly(m, err)) return compare(m, r);
      if (this.fault === 'none') throw err;
    }
    const c = await newestCall(r);
    // A dropped connection is a stream's fault; a whole answer arrives whole or not at all.
    if (this.fault === 'fail' || (this.fault === 'drop' && this.stream)) {
      assert.equal(c.status, 'failed', 'a provider failure before usage charges nothing');
    } else if (this.fault === 'no_usage') {
      assert.equal(c.usage_source, 'tokenizer');
      const counted = exact(card.i) * BigInt(c.usage.input_tokens) + exact(card.o) * BigInt(c.usage.output_tokens);
      assert.equal(exact(c.charged), counted);
      m.balance -= counted;
    } else {
      assert.ok(usage, 'the caller saw the usage');
      assert.equal(exact(c.charged), price(usage), 'charged exactly the rate card price of what the provider reported');
      m.balance -= price(usage);
    }
    await compare(m, r);
  }
  toString = () => `Ask(${this.stream}, ${this.words}, ${this.cached}, ${this.reasoning}, ${this.fault})`;
}

class Abort implements Cmd {
  constructor(readonly after: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const controller = new AbortController();
    try {
      const s = await r.ai.chat.completions.create(
        {
          model,
          messages: [{ role: 'user', content: '#standin words=60 delay=15' }],
          max_tokens: 120,
          stream: true,
        },
        { signal: controller.signal },
      );
      let n = 0;
      for await (const _ of s) if (++n === this.after) controller.abort();
    } catch (err) {
      if (refusedRightly(m, err)) return compare(m, r);
    }
    await settle(r);
    const c = await newestCall(r);
    const charged = exact(c.charged);
    if (c.usage_source === 'tokenizer') {
      assert.equal(
        charged,
        exact(card.i) * BigInt(c.usage.input_tokens) + exact(card.o) * BigInt(c.usage.output_tokens),
      );
    }
    m.balance -= charged;
    await compare(m, r);
  }
  toString = () => `Abort(${this.after})`;
}

/** Calls at once whose holds together may exceed the balance: only what it covers runs. */
class Burst implements Cmd {
  constructor(readonly n: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const results = await Promise.allSettled(
      Array.from({ length: this.n }, () =>
        r.ai.chat.completions.create({
          model,
          messages: [{ role: 'user', content: '#standin words=8' }],
          max_tokens: 400,
        })),
    );
    // Holds taken at once compete: a refusal is right if the others' holds left too little; and
    // if none ran, the balance could not cover even one.
    const before = m.balance;
    let ran = 0;
    for (const x of results) {
      if (x.status === 'fulfilled') {
        ran++;
        m.balance -= price(x.value.usage!);
      } else {
        assert.ok(x.reason instanceof OpenAI.APIError && x.reason.status === 402, String(x.reason));
      }
    }
    if (ran === 0) refusedRightly({ balance: before }, (results[0] as PromiseRejectedResult).reason);
    await compare(m, r);
  }
  toString = () => `Burst(${this.n})`;
}

class ServerReport implements Cmd {
  constructor(readonly tokens: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    const res = await reportUsage('/credits/usage', {
      token: r.token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { model, input_tokens: this.tokens, output_tokens: 0 },
    });
    if (res.status === 201) m.balance -= exact(card.i) * BigInt(this.tokens);
    else assert.equal(res.status, 402);
    await compare(m, r);
  }
  toString = () => `ServerReport(${this.tokens})`;
}

class TopUp implements Cmd {
  constructor(readonly credits: number) {}
  check = () => true;
  async run(m: Model, r: Real) {
    await fund(r.id, String(this.credits));
    m.balance += BigInt(this.credits) * SCALE;
    await compare(m, r);
  }
  toString = () => `TopUp(${this.credits})`;
}

const commands = [
  fc.tuple(
    fc.boolean(),
    fc.integer({ min: 1, max: 40 }),
    fc.integer({ min: 0, max: 6 }),
    fc.integer({ min: 0, max: 30 }),
    fc.constantFrom<Ask['fault']>('none', 'none', 'fail', 'drop', 'no_usage', 'error_after_usage'),
  ).map(([s, w, c, rz, f]) => new Ask(s, w, c, rz, f)),
  fc.integer({ min: 2, max: 20 }).map((a) => new Abort(a)),
  fc.integer({ min: 2, max: 6 }).map((n) => new Burst(n)),
  fc.integer({ min: 1, max: 20_000 }).map((t) => new ServerReport(t)),
  fc.integer({ min: 1, max: 3 }).map((c) => new TopUp(c)),
];

Deno.test({
  name: `AI gateway model: ${runs} random sequences of calls, failures, aborts and bursts keep the balance the model's`,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 4 }),
        fc.commands(commands, { maxCommands: 8 }),
        async (start, cmds) => {
          const id = await newUser();
          if (start) await fund(id, String(start));
          const token = await userToken(id);
          const real: Real = { id, token, ai: new OpenAI({ baseURL: gatewayUrl, apiKey: token, maxRetries: 0 }) };
          await fc.asyncModelRun(() => ({ model: { balance: BigInt(start) * SCALE }, real }), cmds);
        },
      ),
      { numRuns: runs },
    );
    await assertLedgerInvariants();
  },
});
