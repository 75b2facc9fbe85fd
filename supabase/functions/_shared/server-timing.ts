// Server-Timing (W3C Server Timing): how long each step of a request took before its answer,
// by name, so a slow answer can be read step by step (the Redis trip, each SQL trip, the
// provider) by an operator, a browser's devtools or bench/ai-gateway.ts. Names and durations
// only: no ids, values or errors. Off unless SERVER_TIMING=true, so a deployment shows callers
// nothing of its insides unless its operator chooses to.
import { z } from 'zod';
import { parseEnv } from './env.ts';

const ServerTimingEnvSchema = z.object({
  SERVER_TIMING: z.enum(['true', 'false']).default('false').transform((v) => v === 'true'),
});
let enabled: boolean | undefined;
const timingOn = () => (enabled ??= parseEnv(ServerTimingEnvSchema).SERVER_TIMING);

/**
 * Steps of one request, each `name;dur=ms` (http/app.ts gives each request its own, `c.get('steps')`,
 * and sends them); with Server-Timing off, a recorder that keeps nothing.
 */
export class Steps {
  readonly #kept: string[] | undefined = timingOn() ? [] : undefined;
  /** performance.now() when the request arrived (its first middleware made this recorder). */
  readonly arrived = performance.now();

  /**
   * Runs `work` as step `name` (its time kept whether it resolves or throws).
   * @example const begun = await steps.time('begin', () => beginCall(…))
   */
  async time<T>(name: string, work: () => Promise<T>): Promise<T> {
    if (!this.#kept) return work();
    const started = performance.now();
    try {
      return await work();
    } finally {
      this.#kept.push(`${name};dur=${(performance.now() - started).toFixed(2)}`);
    }
  }

  /** The Server-Timing header's value with `total` last, or undefined when off or nothing was timed. */
  header(totalMs: number): string | undefined {
    return this.#kept ? [...this.#kept, `total;dur=${totalMs.toFixed(2)}`].join(', ') : undefined;
  }
}
