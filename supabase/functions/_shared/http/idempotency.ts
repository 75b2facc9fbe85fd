// HTTP idempotency for mutating routes (see the idempotency migration). The claim, the one
// SQL call that does the work, and the stored response commit in one transaction: a retry
// gets the stored bytes, a concurrent duplicate waits for the first and then gets them too.
import { createHash } from 'node:crypto';
import type postgres from 'postgres';
import type { AppContext } from '../app-env.ts';
import { currentUser, errorBody, successBody } from './app.ts';
import { call } from '../adapters/db.ts';
import { fromDbError, sqlRefusal } from '../adapters/sql-errors.ts';
import { AppError, internalError } from '../errors.ts';
import { inline, jsonb, oneTrip } from '../adapters/sql-literal.ts';

const wellFormedKey = /^[\x21-\x7e]{1,255}$/;

/** The request's Idempotency-Key, or a 400 when it is missing or malformed. */
export function idempotencyKey(c: AppContext): string {
  const key = c.req.header('idempotency-key');
  if (!key) {
    throw new AppError(
      'validation',
      'IDEMPOTENCY_KEY_REQUIRED',
      'This route moves credits: send an Idempotency-Key header.',
      {
        field: 'Idempotency-Key',
      },
    );
  }
  if (!wellFormedKey.test(key)) {
    throw new AppError(
      'validation',
      'IDEMPOTENCY_KEY_INVALID',
      'The Idempotency-Key must be 1–255 printable ASCII characters.',
      {
        field: 'Idempotency-Key',
      },
    );
  }
  return key;
}

// node:crypto hashes synchronously: crypto.subtle.digest cost ~11% of the gateway's time under load.
const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

/**
 * A key derived from a request's Idempotency-Key under `scope`, for a store that takes at most
 * `max` characters (Stripe: 255): `scope + key` when that fits, else the key's SHA-256 in its
 * place. The same rule as billing.scoped_key does for the ledger's keys, so every key the API
 * takes (1–255 characters) works whatever the scope.
 * @example { idempotencyKey: scopedKey(`refund:${purchaseId}:`, key, 255) }
 */
export const scopedKey = (scope: string, key: string, max: number): string =>
  (scope + key).length <= max ? scope + key : `${scope}sha256:${sha256(key)}`;

export interface Effect {
  status: number;
  data: unknown;
}

interface Outcome {
  status: number;
  body: string;
  replayed: boolean;
}

const respond = (o: Outcome) =>
  new Response(o.body, {
    status: o.status,
    headers: { 'content-type': 'application/json', ...(o.replayed ? { 'Idempotent-Replayed': 'true' } : {}) },
  });

type Claim = { state: string; response_status: number | null; response_body: string | null };

function stored(claim: Claim): Outcome | null {
  if (claim.state === 'done') {
    return { status: claim.response_status as number, body: claim.response_body as string, replayed: true };
  }
  if (claim.state === 'in_flight') {
    throw new AppError(
      'conflict',
      'IDEMPOTENCY_KEY_IN_USE',
      'A request with this Idempotency-Key is still in progress.',
      {
        retryable: true,
      },
    );
  }
  return null;
}

/** Runs `work` and renders its outcome; a 5xx is rethrown so nothing is stored. */
async function render(c: AppContext, work: () => Promise<Effect>): Promise<Outcome> {
  try {
    const effect = await work();
    return { status: effect.status, body: successBody(c, effect.data), replayed: false };
  } catch (err) {
    const failure = fromDbError(err);
    if (failure.status >= 500) throw failure;
    return { status: failure.status, body: errorBody(c, failure), replayed: false };
  }
}

function requestIdentity(c: AppContext, body: unknown, userId?: string) {
  return {
    key: idempotencyKey(c),
    userId: userId ?? currentUser(c).id,
    hash: sha256(JSON.stringify([c.req.method, c.req.path, body])),
  };
}

/**
 * Runs `work` at most once per (user, action, Idempotency-Key). `work` gets the transaction
 * and a key for the SQL function's own idempotency, and makes one SQL call. A 4xx outcome is
 * stored and replayed like a success; a 5xx is not stored, so a retry runs again.
 * @example return idempotent(c, 'credits.usage', body, (tx, key) => tx`select … ${key}`.then(…))
 */
export async function idempotent(
  c: AppContext,
  action: string,
  body: unknown,
  work: (tx: postgres.TransactionSql, sqlKey: string) => Promise<Effect>,
): Promise<Response> {
  const { key, userId, hash } = requestIdentity(c, body);
  const claim = (tx: postgres.TransactionSql) =>
    tx<Claim[]>`select * from billing.claim_idempotency_key(${userId}, ${action}, ${key}, ${hash})`.then(([r]) => r);
  const store = (tx: postgres.TransactionSql, o: Outcome) =>
    tx`select billing.complete_idempotency_key(${userId}, ${action}, ${key}, ${o.status}, ${o.body})`.then(() => o);

  // The happy path is one transaction of three statements: claim, the work, the stored answer.
  let refusal: AppError | undefined;
  const outcome = await call((sql) =>
    sql.begin(async (tx) => {
      const replay = stored(await claim(tx));
      if (replay) return replay;
      try {
        const effect = await work(tx, `http:${userId}:${action}:${key}`);
        return await store(tx, { status: effect.status, body: successBody(c, effect.data), replayed: false });
      } catch (err) {
        const failure = fromDbError(err);
        if (failure.status < 500) refusal = failure;
        throw failure; // rolls back: a refused piece of work changed nothing
      }
    })
  ).catch((err) => {
    if (refusal && err === refusal) return null;
    throw err;
  });
  if (outcome) return respond(outcome);

  // A refusal (4xx) is stored by a second short transaction, so the first needs no savepoint.
  const refused = refusal as AppError;
  return respond(
    await call((sql) =>
      sql.begin(async (tx) => {
        const replay = stored(await claim(tx)); // a concurrent duplicate finished first: its answer stands
        return replay ?? await store(tx, { status: refused.status, body: errorBody(c, refused), replayed: false });
      })
    ),
  );
}

/**
 * The same contract for routes whose work spans an external call (Stripe), which cannot sit
 * inside a database transaction: the claim commits first, so a concurrent duplicate sees it
 * in flight (409 IDEMPOTENCY_KEY_IN_USE, retryable). On a 5xx the claim is dropped so a
 * retry starts over; `work` must itself be safe to repeat (e.g. Stripe's own idempotency key).
 * @example return idempotentExternal(c, 'checkout.sessions', body, (requestKey) => createSession(…))
 */
export async function idempotentExternal(
  c: AppContext,
  action: string,
  body: unknown,
  work: (requestKey: string) => Promise<Effect>,
): Promise<Response> {
  const { key, userId, hash } = requestIdentity(c, body);
  const [claim] = await call((sql) =>
    sql<Claim[]>`select * from billing.claim_idempotency_key(${userId}, ${action}, ${key}, ${hash})`
  );
  const replay = stored(claim);
  if (replay) return respond(replay);
  let done: Outcome;
  try {
    done = await render(c, () => work(key));
  } catch (err) {
    await call((sql) => sql`select billing.abandon_idempotency_key(${userId}, ${action}, ${key})`).catch(() => {});
    throw err;
  }
  await call((sql) =>
    sql`select billing.complete_idempotency_key(${userId}, ${action}, ${key}, ${done.status}, ${done.body})`
  );
  return respond(done);
}

type MoneyResponse = {
  status: number | null;
  data: unknown;
  refusal_token: string | null;
  refusal_detail: string | null;
  request_id: string;
  responded_at: Date;
  replayed: boolean;
};

/**
 * A money route in one statement (billing.run_money_request): the user's standing, the
 * Idempotency-Key claim, the work, and the stored answer all happen in one SQL call, so the
 * account's row lock never waits on a network round trip. What SQL stores is rendered here
 * the same way on every replay: byte for byte, with the first request's id and time.
 * `opts.context` reaches SQL with the arguments but is not part of the request's identity (a
 * retry from another address is the same request). `opts.userId`: the user a trusted server
 * names (usage reports), instead of the signed-in one.
 * @example return moneyRequest(c, 'credits.usage', body, 201)
 */
export async function moneyRequest(
  c: AppContext,
  action: string,
  args: Record<string, unknown>,
  successStatus: number,
  opts: { admin?: boolean; context?: Record<string, unknown>; userId?: string } = {},
): Promise<Response> {
  const { key, userId, hash } = requestIdentity(c, args, opts.userId);
  // Values written in (inline): one round trip to the database, not two.
  const [r] = await call((sql) =>
    oneTrip<MoneyResponse[]>(
      sql,
      inline`select * from billing.run_money_request(${userId}, ${action}, ${key}, ${hash},
      ${c.get('requestId')}, ${jsonb({ ...args, ...opts.context })}, ${successStatus}, ${opts.admin ?? false})`,
    )
  );
  const metadata = { requestId: r.request_id, timestamp: r.responded_at.toISOString() };
  const refusal = r.refusal_token === null
    ? undefined
    : sqlRefusal(r.refusal_token, r.refusal_detail) ?? internalError();
  return respond(
    refusal
      ? { status: refusal.status, body: JSON.stringify({ error: refusal.toJSON(), metadata }), replayed: r.replayed }
      : { status: r.status as number, body: JSON.stringify({ data: r.data, metadata }), replayed: r.replayed },
  );
}
