// The React example (examples/react/) in Debian's Chromium: a student signs in with
// supabase.auth.signInWithPassword (the local Auth stand-in), sees the balance from the credits
// function (through @scholarlink/billing-client) and from the billing_api views (the local
// Data API stand-in, under RLS), only their own ledger rows, and spends credits on a call through
// the metered AI gateway (a browser never reports usage). Screenshots go to artifacts/ (git-ignored).
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { browserTest, passwordUser } from '../support/browser.ts';
import { fund, spawnGateway, testDb, until } from '../support/helpers.ts';

const artifacts = new URL('../../artifacts/', import.meta.url);

const entryIds = async (userId: string) =>
  (await testDb`
    select e.id::text from billing.entries e join billing.accounts a on a.id = e.account_id
    where a.user_id = ${userId} order by e.id desc`).map((r) => r.id as string);

const freePort = () => {
  const probe = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  return port;
};

/** The example's own server (scripts/local/react-example.ts) against `supabaseUrl`. */
async function serveExample(supabaseUrl: string, port: number) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', 'scripts/local/react-example.ts'],
    env: { REACT_EXAMPLE_PORT: String(port), REACT_EXAMPLE_SUPABASE_URL: supabaseUrl },
    stdout: 'null',
    stderr: 'piped',
  }).spawn();
  const url = `http://127.0.0.1:${port}/`;
  // The first start installs the example's npm dependencies.
  await until(
    'the React example to serve',
    () => fetch(url).then((r) => r.body?.cancel().then(() => true), () => false),
    180_000,
  )
    .catch(async (e) => {
      child.kill('SIGKILL');
      throw new Error(`${e.message}: ${new TextDecoder().decode((await child.output()).stderr)}`);
    });
  return {
    url,
    async kill() {
      child.kill('SIGKILL');
      await child.output();
    },
  };
}

async function signIn(page: Page, url: string, email: string, password: string) {
  await page.goto(url);
  await page.locator('#email').fill(email);
  await page.locator('#password').fill(password);
  await page.locator('#sign-in button[type=submit]').click();
}

const text = async (page: Page, selector: string) => (await page.locator(selector).textContent())?.trim();
const shownEntries = (page: Page) =>
  page.locator('#ledger tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-entry') ?? ''));

browserTest(
  "the React example signs in with supabase-js and reads the balance and ledger through RLS, never another user's",
  async (browser) => {
    const port = freePort();
    const gateway = spawnGateway({ CORS_ALLOWED_ORIGINS: `http://127.0.0.1:${port}` });
    await gateway.ready();
    const supabaseUrl = gateway.url.replace(/\/functions\/v1$/, '');
    const example = await serveExample(supabaseUrl, port);
    try {
      // The example is an npm project: its own TypeScript checks it against the installed package.
      const typecheck = await new Deno.Command('examples/react/node_modules/.bin/tsc', {
        args: ['--noEmit', '-p', 'examples/react'],
        stdout: 'piped',
      }).output();
      assert.ok(typecheck.success, new TextDecoder().decode(typecheck.stdout));

      const alice = await passwordUser('correct horse battery');
      const bob = await passwordUser('another secret');
      await fund(alice.id, '100.5');
      await fund(bob.id, '7');
      const bobsEntries = await entryIds(bob.id);
      assert.equal(bobsEntries.length, 1);

      const page = await browser.newPage();
      await signIn(page, example.url, alice.email, 'wrong password');
      assert.equal(await page.locator('#sign-in-error').textContent(), 'Invalid login credentials');

      await signIn(page, example.url, alice.email, 'correct horse battery');
      await page.waitForSelector('main[data-ready="true"]');
      assert.equal(await text(page, '#who'), alice.email);
      assert.equal(await text(page, '#available'), '100.5', 'the credits function, through the package');
      assert.equal(await text(page, '#view-available'), '100.5', 'the billing_api.balance view, exact');
      assert.deepEqual(await shownEntries(page), await entryIds(alice.id), "alice's ledger, read through RLS");

      await page.locator('#ask-ai').click();
      await until('the usage row', async () => (await shownEntries(page)).length === 2);
      const [usage] = await testDb`
        select t.kind, e.amount::text from billing.entries e join billing.transfers t on t.id = e.transfer_id
        join billing.accounts a on a.id = e.account_id where a.user_id = ${alice.id} order by e.id desc limit 1`;
      assert.equal(usage.kind, 'hold_capture', 'the AI gateway charges by capturing the hold it placed for the call');
      const shown = await shownEntries(page);
      assert.deepEqual(shown, await entryIds(alice.id), 'newest first, as the query orders them');
      assert.ok(!shown.some((id) => bobsEntries.includes(id)), "bob's entry is not on alice's page");
      await page.screenshot({ path: new URL('react-example.png', artifacts).pathname, fullPage: true });

      await page.locator('#sign-out').click();
      await page.locator('#sign-in').waitFor();
    } finally {
      await example.kill();
      await gateway.kill();
    }
  },
);
