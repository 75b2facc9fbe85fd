// Every method of the typed client (client/), called from an allowed origin in Chromium through
// supabase-js against the local stack: each must reach the service and bring its answer back.
// A method CORS refuses (a PATCH missing from Access-Control-Allow-Methods) arrives as
// NETWORK_ERROR, status 0, and fails here; so does a method added to the client for a route
// whose method the preflight does not allow.
import assert from 'node:assert/strict';
import { browserTest, bundleForBrowser, servePage } from '../support/browser.ts';
import { newUser, userToken, withGateway } from '../support/helpers.ts';

browserTest('every typed-client method reaches the service from an allowed origin in Chromium', async (browser) => {
  const [js, token] = await Promise.all([
    bundleForBrowser(new URL('client-cors-page.ts', import.meta.url)),
    newUser().then((id) => userToken(id)),
  ]);
  // The page, served on loopback as a frontend would be; a gateway whose CORS_ALLOWED_ORIGINS lists only it.
  const { origin, close } = servePage(js);
  try {
    await withGateway({ CORS_ALLOWED_ORIGINS: origin }, async (functionsUrl) => {
      const page = await browser.newPage();
      await page.goto(`${origin}/`);
      await page.waitForFunction('typeof globalThis.callEveryMethod === "function"');
      const api = functionsUrl.replace(/\/functions\/v1$/, '');
      const answers = await page.evaluate(
        ([a, t]) =>
          (globalThis as unknown as { callEveryMethod(a: string, k: string, t: string): Promise<unknown> })
            .callEveryMethod(a, 'local-anon-key', t),
        [api, token],
      ) as Record<string, { status: number; code: string }>;
      assert.ok(Object.keys(answers).length >= 30, `the client's methods were called: ${Object.keys(answers)}`);
      const refused = Object.entries(answers).filter(([, a]) => !(a.status >= 200 && a.status < 600))
        .map(([name, a]) => `${name}: ${a.status} ${a.code}`);
      assert.deepEqual(refused, [], `refused by the browser (no answer reached the page):\n${refused.join('\n')}`);
    });
  } finally {
    await close();
  }
});
