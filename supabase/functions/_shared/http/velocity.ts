// Fraud velocity checks before a checkout, per user and per client address, in Redis: how many
// sessions in 10 minutes, how many dollars in 24 hours, and a one-hour block after repeated
// failed payments. They bound abuse of the payment form; they are not what keeps credits safe
// (the ledger's own constraints make overspending impossible). They never switch off: while
// Redis is unreachable the per-user rules are counted from the purchases in Postgres and the
// per-address rules in a per-instance window.
import { Ratelimit } from '@upstash/ratelimit';
import { z } from 'zod';
import { unknownAddress } from './client-address.ts';
import { call } from '../adapters/db.ts';
import { parseEnv } from '../env.ts';
import { AppError } from '../errors.ts';
import { log } from '../log.ts';
import { count } from '../metrics.ts';
import { localWindow } from './ratelimit.ts';
import { guarded, redis, RedisUnavailable } from '../adapters/redis.ts';

const VelocityEnvSchema = z.object({
  VELOCITY_SESSIONS_PER_10_MIN: z.coerce.number().int().positive().default(5),
  VELOCITY_AMOUNT_CENTS_PER_24_H: z.coerce.number().int().positive().default(50_000),
  // Per-IP budgets default to the per-user ones; raise them where many users share an address.
  VELOCITY_IP_SESSIONS_PER_10_MIN: z.coerce.number().int().positive().optional(),
  VELOCITY_IP_AMOUNT_CENTS_PER_24_H: z.coerce.number().int().positive().optional(),
  VELOCITY_FAILED_PAYMENTS_PER_HOUR: z.coerce.number().int().positive().default(3),
  VELOCITY_BLOCK_SECONDS: z.coerce.number().int().positive().default(3600),
});
const env = parseEnv(VelocityEnvSchema);
const ipSessionsLimit = env.VELOCITY_IP_SESSIONS_PER_10_MIN ?? env.VELOCITY_SESSIONS_PER_10_MIN;
const ipAmountLimit = env.VELOCITY_IP_AMOUNT_CENTS_PER_24_H ?? env.VELOCITY_AMOUNT_CENTS_PER_24_H;

const window = (limit: number, seconds: number, name: string) =>
  new Ratelimit({
    redis: redis().client,
    limiter: Ratelimit.fixedWindow(limit, `${seconds} s`),
    prefix: `velocity:${name}:${limit}`,
    timeout: 0,
    ephemeralCache: false,
    analytics: false,
  });

let limiters: Record<'userSessions' | 'ipSessions' | 'userAmount' | 'ipAmount', Ratelimit> | undefined;
function velocityLimiters() {
  limiters ??= {
    userSessions: window(env.VELOCITY_SESSIONS_PER_10_MIN, 600, 'sessions'),
    ipSessions: window(ipSessionsLimit, 600, 'ip-sessions'),
    userAmount: window(env.VELOCITY_AMOUNT_CENTS_PER_24_H, 86_400, 'amount'),
    ipAmount: window(ipAmountLimit, 86_400, 'ip-amount'),
  };
  return limiters;
}

const blockKey = (userId: string) => `velocity:blocked:${userId}`;
const failuresKey = (userId: string) => `velocity:failed:${userId}`;

function refuse(rule: string, status: number, message: string): never {
  count('velocity_refusals', { rule });
  log.warn('checkout refused by a velocity rule', { rule }); // no user, IP or amount in logs
  throw new AppError('rate_limit', 'VELOCITY_LIMIT', message, { status, retryable: status === 429, details: { rule } });
}

const passed = { success: true } as const;

/**
 * Refuses a checkout that breaks a velocity rule; consumes the session and amount budgets. An
 * `unknown` address (no trusted address header) skips the per-address rules: every such request
 * would share one budget, and the per-user rules still hold.
 */
export async function checkVelocity(userId: string, ip: string, priceCents: number): Promise<void> {
  const l = velocityLimiters();
  const byAddress = ip !== unknownAddress;
  let results;
  try {
    results = await guarded(
      (client) =>
        Promise.all([
          client.exists(blockKey(userId)),
          l.userSessions.limit(userId),
          byAddress ? l.ipSessions.limit(ip) : passed,
          l.userAmount.limit(userId, { rate: priceCents }),
          byAddress ? l.ipAmount.limit(ip, { rate: priceCents }) : passed,
        ]),
      ([blocked, ...rest]) => typeof blocked === 'number' && rest.every((r) => typeof r.success === 'boolean'),
    );
  } catch (err) {
    if (!(err instanceof RedisUnavailable)) throw err;
    return checkVelocityWithoutRedis(userId, byAddress ? ip : null, priceCents);
  }
  const [blocked, userSessions, ipSessions, userAmount, ipAmount] = results;
  if (blocked) refuse('failed_payments', 403, 'Too many failed payments: new checkouts are paused for an hour.');
  if (!userSessions.success || !ipSessions.success) {
    refuse('sessions_per_10_min', 429, 'Too many checkouts in 10 minutes.');
  }
  if (!userAmount.success || !ipAmount.success) refuse('amount_per_24_h', 429, 'The daily purchase limit is reached.');
}

/**
 * The same rules while Redis is unreachable, so fraud checks never silently switch off. Per user
 * they are counted in Postgres (exact across instances): purchases started in 10 minutes, their
 * amount over 24 hours, and the failed-payment events of the last hour on the user's purchases
 * (the same two event types `recordFailedPayment` counts). Per address in a per-instance
 * window, since no table records addresses.
 */
async function checkVelocityWithoutRedis(userId: string, ip: string | null, priceCents: number): Promise<void> {
  count('velocity_fallback');
  const [user] = await call((sql) =>
    sql<{ sessions: number; amount_cents: number; failed: number }[]>`
      select * from billing.get_checkout_velocity(${userId})`
  );
  const ipSessionsOk = ip === null || localWindow(`velocity:ip-sessions:${ip}`, ipSessionsLimit, 600_000);
  const ipAmountOk = ip === null || localWindow(`velocity:ip-amount:${ip}`, ipAmountLimit, 86_400_000, priceCents);
  if (user.failed > env.VELOCITY_FAILED_PAYMENTS_PER_HOUR) {
    refuse('failed_payments', 403, 'Too many failed payments: new checkouts are paused for an hour.');
  }
  if (user.sessions >= env.VELOCITY_SESSIONS_PER_10_MIN || !ipSessionsOk) {
    refuse('sessions_per_10_min', 429, 'Too many checkouts in 10 minutes.');
  }
  if (user.amount_cents + priceCents > env.VELOCITY_AMOUNT_CENTS_PER_24_H || !ipAmountOk) {
    refuse('amount_per_24_h', 429, 'The daily purchase limit is reached.');
  }
}

/** Counts a failed payment; past the hourly allowance, blocks new checkouts for a while. */
export async function recordFailedPayment(userId: string): Promise<void> {
  try {
    await guarded(async (client) => {
      const [failures] = await client.multi().incr(failuresKey(userId)).expire(failuresKey(userId), 3600, 'NX').exec<
        [number, number]
      >();
      if (failures > env.VELOCITY_FAILED_PAYMENTS_PER_HOUR) {
        await client.set(blockKey(userId), 1, { ex: env.VELOCITY_BLOCK_SECONDS });
      }
    });
  } catch (err) {
    if (!(err instanceof RedisUnavailable)) throw err;
    // Not lost for the block: while Redis is down, checkout counts failed-payment events in Postgres.
    log.warn('a failed payment could not be counted in Redis: Redis unavailable');
  }
}
