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
    // Every argument a placeholder id: the answer (mostly a 4xx) is what proves the browser let it
    // through. Every method answers { data, error } and never throws.
    const pending = method(...Array.from({ length: method.length }, () => placeholder));
    const { error } = await (pending && typeof pending === 'object' && 'done' in pending ? pending.done : pending) as {
      data: unknown;
      error: { status: number; code: string } | null;
    };
    answers[name] = error ? { status: error.status, code: error.code } : { status: 200, code: 'OK' };
  }
  return answers;
}

Object.assign(globalThis, { callEveryMethod });
