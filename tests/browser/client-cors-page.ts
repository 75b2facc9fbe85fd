// Bundled for Chromium by client-cors.test.ts: calls every method of the typed client once,
// through supabase-js, from the page's origin, and reports what each got back. A method the
// browser refuses (CORS) comes back as status 0, NETWORK_ERROR: no answer reached the page.
/// <reference lib="dom" />
import { createClient } from '@supabase/supabase-js';
import { createBillingClient } from '../../client/mod.ts';

const placeholder = '00000000-0000-4000-8000-000000000000';

async function callEveryMethod(api: string, key: string, token: string) {
  const supabase = createClient(api, key, { accessToken: () => Promise.resolve(token) });
  const billing = createBillingClient(supabase, { maxAttempts: 1 }) as unknown as Record<
    string,
    (...args: unknown[]) => unknown
  >;
  const answers: Record<string, { status: number; code: string }> = {};
  for (const [name, method] of Object.entries(billing)) {
    try {
      // Every argument a placeholder id: the answer (mostly a 4xx) is what proves the browser let it through.
      const pending = method(...Array.from({ length: method.length }, () => placeholder));
      await (pending && typeof pending === 'object' && 'done' in pending ? pending.done : pending);
      answers[name] = { status: 200, code: 'OK' };
    } catch (err) {
      const { status = -1, code = String(err) } = err as { status?: number; code?: string };
      answers[name] = { status, code };
    }
  }
  return answers;
}

Object.assign(globalThis, { callEveryMethod });
