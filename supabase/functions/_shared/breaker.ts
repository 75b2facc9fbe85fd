// A circuit breaker for one dependency: after `threshold` consecutive failures it opens for
// `cooldownMs`, then lets one probe through (half-open); the probe's outcome closes or
// re-opens it. Per instance, in memory: each Edge Function instance learns on its own.

export type BreakerState = 'closed' | 'open' | 'half_open';

export class CircuitBreaker {
  #state: BreakerState = 'closed';
  #failures = 0;
  #openedAt = 0;
  #probing = false;
  opened = 0;

  constructor(
    readonly threshold = 5,
    readonly cooldownMs = 30_000,
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

  failure(): void {
    this.#failures++;
    this.#probing = false;
    if (this.#state === 'half_open' || (this.#state === 'closed' && this.#failures >= this.threshold)) {
      this.#state = 'open';
      this.#openedAt = this.now();
      this.opened++;
    }
  }
}
