// Retries with capped exponential backoff and full jitter, honouring Retry-After. Only
// failures the service marks retryable (and network errors) are retried.
import { abortedError, BillingError } from './errors.ts';

export interface RetryOptions {
  /** Attempts in all, the first included. Default 4. */
  maxAttempts?: number;
  /** The first backoff's ceiling; doubled each attempt. Default 250 ms. */
  baseDelayMs?: number;
  /** No wait is longer than this, Retry-After included. Default 8 s. */
  maxDelayMs?: number;
  /** For tests: a source of randomness in [0, 1). */
  random?: () => number;
}

/** Waits `ms`, or rejects with ABORTED as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortedError());
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortedError());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The wait before retry number `attempt` (0-based): full jitter under a doubling, capped ceiling. */
export function backoffMs(attempt: number, err: BillingError, opts: RetryOptions): number {
  const base = opts.baseDelayMs ?? 250;
  const cap = opts.maxDelayMs ?? 8000;
  const jittered = (opts.random ?? Math.random)() * Math.min(cap, base * 2 ** attempt);
  return Math.min(cap, Math.max(jittered, (err.retryAfter ?? 0) * 1000));
}

/** Runs `attempt` until it succeeds, fails for good, runs out of attempts, or `signal` aborts. */
export async function withRetries<T>(
  attempt: () => Promise<T>,
  opts: RetryOptions,
  signal?: AbortSignal,
): Promise<T> {
  const max = opts.maxAttempts ?? 4;
  for (let i = 0;; i++) {
    try {
      return await attempt();
    } catch (err) {
      if (!(err instanceof BillingError) || !err.retryable || i + 1 >= max || signal?.aborted) throw err;
      await sleep(backoffMs(i, err, opts), signal);
    }
  }
}
