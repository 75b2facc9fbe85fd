// Browser tests: Debian's Chromium, headless, driven by playwright-core. Screenshots and other
// artifacts go to artifacts/ (git-ignored).
import { type Browser, chromium } from 'playwright-core';

await Deno.mkdir(new URL('../artifacts/', import.meta.url), { recursive: true });

/** A test with a fresh Chromium, closed afterwards whatever happens. */
export const browserTest = (name: string, fn: (browser: Browser) => Promise<void>) =>
  Deno.test({
    name,
    // Chromium is a child process with its own pipes: not leaks of this test.
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const browser = await chromium.launch({
        executablePath: '/usr/bin/chromium',
        headless: true,
        args: ['--no-sandbox', '--disable-dev-shm-usage'],
      });
      try {
        await fn(browser);
      } finally {
        await browser.close();
      }
    },
  });
