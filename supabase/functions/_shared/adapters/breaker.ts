// A circuit breaker for one dependency: after `threshold` consecutive failures it opens for
// `cooldownMs`, then lets one probe through (half-open); the probe's outcome closes or
// re-opens it. A failure counts only if its call began after the last counted failure was
// seen: requests caught together in one slow moment (a cold connection, one latency spike)
// are one observation, not `threshold` of them, while a real outage still opens the breaker
// after `threshold` calls that each started, and failed, after the one before. Per instance,
// in memory: each Edge Function instance learns on its own.

export type BreakerState = 'closed' | 'open' | 'half_open';

export class CircuitBreaker {
  #state: BreakerState = 'closed';
  #failures = 0;
  #openedAt = 0;
  #lastFailureAt = -Infinity;
  #probing = false;
  opened = 0;

  constructor(
    readonly threshold = 5,
    readonly cooldownMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  get state(): BreakerState {
    if (this.#state === 'open' && this.now() - this.#openedAt >= this.cooldownMs) this.#state = 'half_open';
    return this.#state;
  }

  get consecutiveFailures(): number {
    return this.#failures;
  }

  /** Whether a call may go ahead now; in half-open, only one probe at a time. */
  allow(): boolean {
    const state = this.state;
    if (state === 'closed') return true;
    if (state === 'half_open' && !this.#probing) {
      this.#probing = true;
      return true;
    }
    return false;
  }

  success(): void {
    this.#state = 'closed';
    this.#failures = 0;
    this.#probing = false;
  }

  /**
   * Records a failed call that began at `startedAt` (this breaker's clock).
   * @example const started = Date.now(); try { … } catch { breaker.failure(started) }
   */
  failure(startedAt = this.now()): void {
    this.#probing = false;
    if (this.state === 'half_open') {
      this.#failures++;
      return this.#open(); // the probe failed
    }
    if (startedAt < this.#lastFailureAt) return; // in flight when a failure was counted: the same moment
    this.#lastFailureAt = this.now();
    this.#failures++;
    if (this.#state === 'closed' && this.#failures >= this.threshold) this.#open();
  }

  #open(): void {
    this.#state = 'open';
    this.#openedAt = this.now();
    this.opened++;
  }
}
