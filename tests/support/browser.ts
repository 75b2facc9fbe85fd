// Browser tests: Debian's Chromium, headless, driven by playwright-core. Screenshots and other
// artifacts go to artifacts/ (git-ignored).
import { type Browser, chromium, type Page } from 'playwright-core';
import assert from 'node:assert/strict';
import { env, functionsUrl, testDb } from './helpers.ts';

await Deno.mkdir(new URL('../../artifacts/', import.meta.url), { recursive: true });

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

/** What a person can read: sideways scrolling, and the smallest visible text as drawn on screen. */
export interface Legibility {
  /** Pixels the page scrolls sideways (0: none). */
  overflow: number;
  /** The smallest visible text's rendered size in CSS px (SVG text as scaled with its drawing). */
  smallestPx: number;
  /** The visible texts under 12 px, for the assertion message. */
  tooSmall: string[];
  /** Elements whose text is cut off or spills out of its box sideways. */
  spilled: string[];
}

/**
 * Measures the page as it is drawn (a string, so the test files need no DOM types).
 * @example const { overflow, smallestPx } = await legibility(page)
 */
export const legibility = (page: Page): Promise<Legibility> =>
  page.evaluate(`(() => {
    const tooSmall = [], spilled = [];
    let smallestPx = Infinity;
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const el = node.parentElement;
      if (!el || !node.textContent.trim() || !el.checkVisibility() || el.closest('script, style, title')) continue;
      const px = el instanceof SVGElement
        ? parseFloat(getComputedStyle(el).fontSize) * el.getScreenCTM().a
        : parseFloat(getComputedStyle(el).fontSize);
      smallestPx = Math.min(smallestPx, px);
      if (px < 12) tooSmall.push(node.textContent.trim().slice(0, 40) + ' (' + px.toFixed(1) + 'px)');
      if (!(el instanceof SVGElement) && el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== 'auto') {
        spilled.push(node.textContent.trim().slice(0, 40));
      }
    }
    const overflow = document.documentElement.scrollWidth - document.documentElement.clientWidth;
    return { overflow, smallestPx, tooSmall, spilled };
  })()`);

/** A user who can sign in with a password: a bcrypt hash in auth.users, as Supabase Auth stores it. */
export async function passwordUser(password: string) {
  const email = `student-${crypto.randomUUID().slice(0, 8)}@example.com`;
  const [{ id }] = await testDb`
    insert into auth.users (id, email, encrypted_password, email_confirmed_at)
    values (gen_random_uuid(), ${email}, extensions.crypt(${password}, extensions.gen_salt('bf')), now())
    returning id`;
  return { id: id as string, email };
}

const studentPage = env('STUDENT_PAGE_URL');

/** Signs in on the example student page by pasting a token (the local stack's stand-in for Auth). */
export async function signInWithToken(page: Page, token: string) {
  await page.goto(`${studentPage}?api=${encodeURIComponent(functionsUrl.replace(/\/functions\/v1$/, ''))}`);
  await page.locator('#token').fill(token);
  await page.locator('#use-token').click();
  await page.waitForSelector('body[data-ready="true"]');
}

/** Signs in on the ops dashboard by pasting an admin's token, and waits for its first load. */
export async function signInToDashboard(page: Page, token: string) {
  await page.goto(`${functionsUrl}/admin/dashboard`);
  await page.locator('#token').fill(token);
  await page.locator('#use-token').click();
  await page.waitForSelector('body[data-ready="true"]');
}

/** Readable at desktop and phone width: no sideways scrolling, no text under 12 px, none cut off. */
export async function assertReadable(page: Page, name: string) {
  for (const [width, label] of [[1280, 'desktop'], [390, 'phone']] as const) {
    await page.setViewportSize({ width, height: 844 });
    const seen = await legibility(page);
    assert.ok(seen.overflow <= 0, `${name}, ${label}: scrolls sideways by ${seen.overflow}px`);
    assert.deepEqual(seen.tooSmall, [], `${name}, ${label}: text under 12 px`);
    assert.deepEqual(seen.spilled, [], `${name}, ${label}: text cut off`);
  }
}

/**
 * A module bundled for the browser by the pinned Deno (`deno bundle`, esbuild inside), npm
 * packages included, as the page's script; `flags` for `deno bundle` (e.g. `--import-map=…`).
 * @example const js = await bundleForBrowser(new URL('ai-sdks-page.ts', import.meta.url))
 */
export async function bundleForBrowser(entry: URL, flags: string[] = []): Promise<string> {
  const out = await Deno.makeTempFile({ suffix: '.js' });
  const made = await new Deno.Command(Deno.execPath(), {
    args: ['bundle', '--quiet', '--platform', 'browser', ...flags, entry.pathname, '-o', out],
    stdout: 'inherit',
    stderr: 'inherit',
  }).output();
  assert.ok(made.success, `bundling ${entry.pathname} for the browser failed`);
  const js = await Deno.readTextFile(out);
  await Deno.remove(out);
  return js;
}

/**
 * A page served on loopback as a frontend would be: `/` loads `js` as its script. Its origin is
 * `http://127.0.0.1:<port>`.
 * @example const page = servePage(js); … await page.close()
 */
export function servePage(js: string) {
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, (req) => {
    const path = new URL(req.url).pathname;
    if (path === '/page.js') return new Response(js, { headers: { 'content-type': 'text/javascript' } });
    if (path === '/') {
      return new Response('<!doctype html><div id="root"></div><script type="module" src="/page.js"></script>', {
        headers: { 'content-type': 'text/html' },
      });
    }
    return new Response('not found', { status: 404 });
  });
  return { origin: `http://127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}
