// docs/ai-gateway.md's self-contained TypeScript blocks (tests/unit/docs-code-blocks.test.ts
// type-checks them) run as written against the local stack: the official SDKs' block and the
// Next.js `/api/ask` route, each with a funded student's token, every call answered and charged.
// (The batch block reads an essays.jsonl of the reader's own: it is type-checked only.)
import assert from 'node:assert/strict';
import { blockModules } from '../support/docs-blocks.ts';
import { callsOf } from '../support/ai.ts';
import { env, fund, newUser, userToken } from '../support/helpers.ts';

/** The exports of the doc's block that defines `name`, loaded from a module of its own. */
async function blockExporting<T>(name: string): Promise<T> {
  const { dir, modules } = await blockModules('docs/ai-gateway.md');
  addEventListener('unload', () => Deno.removeSync(dir, { recursive: true }));
  const block = modules.find((m) => new RegExp(`^export async function ${name}\\(`, 'm').test(m.code));
  assert.ok(block, `no block of docs/ai-gateway.md exports ${name}`);
  return await import(`file://${block.path}`) as T;
}

async function fundedStudent() {
  const id = await newUser();
  await fund(id, '1000');
  return { id, token: await userToken(id) };
}

/** Waits until `n` calls of the user are settled, and answers their statuses. */
async function settled(userId: string, n: number) {
  for (let i = 0; i < 200; i++) {
    const calls = await callsOf(userId);
    if (calls.length >= n && calls.every((c) => c.status !== 'held')) return calls.map((c) => c.status);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${userId}'s ${n} calls did not settle`);
}

Deno.test("the docs' official-SDKs block runs as written: five calls through both SDKs, each charged", async () => {
  const { study } = await blockExporting<{ study: (url: string, token: string, notes: string[]) => Promise<void> }>(
    'study',
  );
  const s = await fundedStudent();
  const logged: unknown[][] = [];
  const log = console.log;
  console.log = (...args: unknown[]) => void logged.push(args); // what the block prints, kept off the test's output
  try {
    await study(env('SUPABASE_URL'), s.token, ['Osmosis moves water.', 'Diffusion moves solutes.']);
  } finally {
    console.log = log;
  }
  assert.deepEqual(await settled(s.id, 5), ['charged', 'charged', 'charged', 'charged', 'charged']);
  // Its first line prints the answer and the charge, as the comment says.
  const [oldest] = (await callsOf(s.id)).reverse();
  assert.equal(logged[0][1], oldest.charged);
});

Deno.test("the docs' /api/ask route runs as written: a streamed answer through each provider, charged", async () => {
  const { POST } = await blockExporting<{ POST: (req: Request) => Promise<Response> }>('POST');
  const s = await fundedStudent();
  const ask = (body: unknown, token?: string) =>
    POST(
      new Request('http://localhost/api/ask', {
        method: 'POST',
        headers: token ? { authorization: `Bearer ${token}` } : {},
        body: JSON.stringify(body),
      }),
    );
  assert.equal((await ask({ prompt: 'hi' })).status, 401);
  for (const claude of [false, true]) {
    const res = await ask({ prompt: 'What is a cell? #standin words=4', claude }, s.token);
    assert.equal(res.status, 200);
    assert.match(await res.text(), /word4/);
  }
  assert.deepEqual(await settled(s.id, 2), ['charged', 'charged']);
});
