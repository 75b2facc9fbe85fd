// Work that must outlive the response. Supabase's edge runtime stops an isolate's pending work
// once the response is sent unless it was handed to `EdgeRuntime.waitUntil`; locally (Deno, the
// gateway) there is no `EdgeRuntime` and a promise simply runs on in the process.

type EdgeRuntimeLike = { waitUntil(work: Promise<unknown>): void };

const edgeRuntime = () => (globalThis as { EdgeRuntime?: EdgeRuntimeLike }).EdgeRuntime;

/**
 * Whether the runtime keeps work running after the response (hosted: `EdgeRuntime.waitUntil`).
 * @example const budget = canOutliveResponse() ? backgroundMs : 0
 */
export const canOutliveResponse = (): boolean => typeof edgeRuntime()?.waitUntil === 'function';

/**
 * Hands `work` to `EdgeRuntime.waitUntil` where it exists and says whether it did; elsewhere the
 * promise runs on in the process (and dies with it), so the caller must not rely on it finishing.
 * @example outliveResponse(finishPage().catch((e) => log.error('page failed', errorSummary(e))))
 */
export function outliveResponse(work: Promise<unknown>): boolean {
  const runtime = edgeRuntime();
  if (typeof runtime?.waitUntil !== 'function') return false;
  runtime.waitUntil(work);
  return true;
}

/**
 * `work`'s value if it settles within `ms`, else `{ done: false }` (the work goes on). A
 * rejection within `ms` is thrown.
 * @example const first = await settleWithin(tick(), 3_000); if (!first.done) outliveResponse(tick)
 */
export async function settleWithin<T>(
  work: Promise<T>,
  ms: number,
): Promise<{ done: true; value: T } | { done: false }> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<{ done: false }>((resolve) => {
    timer = setTimeout(() => resolve({ done: false }), Math.max(0, ms));
  });
  try {
    return await Promise.race([work.then((value) => ({ done: true as const, value })), late]);
  } finally {
    clearTimeout(timer);
  }
}
