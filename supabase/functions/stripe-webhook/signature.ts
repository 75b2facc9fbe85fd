// The Stripe-Signature header read exactly as stripe-node reads it, and the count of refused
// signatures kept off the request path.

/**
 * The timestamp the SDK verifies the signature against, or null. stripe-node splits the header
 * on `,` and `=`, and the last item whose key is exactly `t` wins; checking any other `t=` (the
 * first, say) let `t=<now>,t=<future>,v1=<signed over the future>` past the age check. A header
 * naming two different timestamps is refused outright: Stripe never sends one. The genuine
 * header sent twice (joined as `t=1,v1=…, t=1,v1=…`) names one timestamp and still verifies.
 * @example signedTimestamp('t=1700000000,v1=ab12') // 1700000000
 */
export function signedTimestamp(header: string): number | null {
  let sdk = NaN;
  const named = new Set<number>();
  for (const item of header.split(',')) {
    const [key, value] = item.split('=');
    if (key.trim() !== 't') continue;
    const t = parseInt(value, 10);
    named.add(t);
    if (key === 't') sdk = t;
  }
  return named.size === 1 && Number.isSafeInteger(sdk) && sdk > 0 ? sdk : null;
}

let pending = 0;
let flushing = false;

/**
 * Counts one refused signature without making the refusal wait: counts add up in memory and one
 * write at a time per instance carries them (`write(n)`), so a flood of bad signatures makes a
 * handful of writes to the counter row instead of one each, and a locked or slow row never
 * holds a refusal or a pool connection per request. A write that fails drops its count (as the
 * direct write did); counts still in memory when an instance stops are lost. It is a
 * monitoring signal: alerts look at its rate.
 * @example countRefusal((n) => sql`select billing.increment_counter('x', ${n})`)
 */
export function countRefusal(write: (n: number) => Promise<unknown>): void {
  pending++;
  if (flushing) return;
  const done = flush(write);
  // On hosted Supabase, keep the isolate alive until the write lands (the response is gone).
  (globalThis as { EdgeRuntime?: { waitUntil(p: Promise<unknown>): void } }).EdgeRuntime?.waitUntil(done);
}

async function flush(write: (n: number) => Promise<unknown>): Promise<void> {
  flushing = true;
  try {
    while (pending > 0) {
      const n = pending;
      pending = 0;
      await write(n).catch(() => {});
    }
  } finally {
    flushing = false;
  }
}
