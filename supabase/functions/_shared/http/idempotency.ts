// HTTP idempotency, one path for every mutating route: `idempotent`. A request is known by
// (user, action, Idempotency-Key) and a hash of its method, path and body; its answer is stored
// once (billing.idempotency_keys, kept 24 hours) and a retry gets that answer back with the first
// request's id and time, marked `Idempotent-Replayed: true`. Another request under the same key
// is 409 IDEMPOTENCY_KEY_REUSED. A refusal (4xx) is stored and replayed like a success; a 5xx,
// or a refusal that says to retry (another checkout in progress, a velocity limit), is not
// stored, so a retry runs again. Every route stores its answer in one format, what the answer
// is (a success's status and data, or a refusal's token and fields), and `respond` renders each
// one, the first response included, so a replay is the same bytes. Where the work happens
// decides who holds the key:
// - a money route (`inSql`): one SQL statement, its route group's door (`moneyStatement`), claims
//   the key, moves the money and stores the answer, so a concurrent duplicate waits for the first
//   and then gets its answer, and the account's row lock never waits on a network round trip;
// - any other route (a function): the claim commits first, then the work runs (it may call
//   Stripe, which cannot sit inside a transaction) and its answer is stored; a concurrent
//   duplicate meanwhile gets 409 IDEMPOTENCY_KEY_IN_USE (retryable). The work must itself be safe
//   to repeat (Stripe's idempotency keys, the SQL function's own request key).
import { createHash } from 'node:crypto';
import type { AppContext } from '../app-env.ts';
import { currentUser } from './identify.ts';
import { jsonb, retryingTransient, sql } from '../adapters/db.ts';
import { fromDbError, type RefusalFields, refusalOf } from '../adapters/sql-errors.ts';
import { AppError, internalError } from '../errors.ts';

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

/** What a route's work answers: the status and the `data` of the success envelope. */
export interface Effect {
  status: number;
  data: unknown;
}

/** The work of a money route: its SQL door (`moneyStatement`) performs the action with the body as its arguments. */
interface SqlWork {
  successStatus: number;
  /** The caller must be an admin in the database now (checked by the same statement). */
  admin?: boolean;
  /** Reaches SQL with the arguments but is not part of the request's identity (a retry from another address is the same request). */
  context?: Record<string, unknown>;
  /** The user a trusted server names (usage reports), instead of the signed-in one. */
  userId?: string;
}

/**
 * The work of a money route, done by SQL in the statement that holds the key.
 * @example return idempotent(c, 'credits.holds', body, inSql(201))
 */
export const inSql = (successStatus: number, opts: Omit<SqlWork, 'successStatus'> = {}): SqlWork => ({
  successStatus,
  ...opts,
});

/**
 * An answer as billing.idempotency_keys stores it and SQL returns it (billing.request_answer):
 * a success's status and data, or a refusal's token and fields, with the first request's id and time.
 */
interface StoredAnswer {
  status: number | null;
  data: unknown;
  refusal_token: string | null;
  refusal_fields: RefusalFields | null;
  request_id: string;
  responded_at: Date;
  replayed: boolean | null;
}

/** The one reader of stored answers: the response the first request got, and every replay the same bytes. */
function respond(a: StoredAnswer): Response {
  const refusal = a.refusal_token === null
    ? undefined
    : refusalOf(a.refusal_token, a.refusal_fields ?? {}) ?? internalError();
  const body = JSON.stringify({
    ...(refusal ? { error: refusal.toJSON() } : { data: a.data }),
    metadata: { requestId: a.request_id, timestamp: a.responded_at.toISOString() },
  });
  return new Response(body, {
    status: refusal?.status ?? a.status as number,
    headers: { 'content-type': 'application/json', ...(a.replayed ? { 'Idempotent-Replayed': 'true' } : {}) },
  });
}

/**
 * Runs a mutating request at most once per (user, action, Idempotency-Key) and answers it, or
 * answers a retry with the stored answer. `work` is `inSql(…)` for a money route, else a function
 * given the Idempotency-Key (for the SQL function's or Stripe's own idempotency).
 * @example return idempotent(c, 'checkout.sessions', body, (key) => createSession(userId, body, key))
 */
export async function idempotent(
  c: AppContext,
  action: string,
  body: Record<string, unknown>,
  work: SqlWork | ((key: string) => Promise<Effect>),
): Promise<Response> {
  const key = idempotencyKey(c);
  const userId = typeof work === 'function' ? currentUser(c).id : work.userId ?? currentUser(c).id;
  const hash = sha256(JSON.stringify([c.req.method, c.req.path, body]));
  const answer = typeof work === 'function'
    ? await claimed(c, { userId, action, key, hash }, work)
    : await inOneStatement(c, { userId, action, key, hash }, body, work);
  return respond(answer);
}

type Identity = { userId: string; action: string; key: string; hash: string };

/**
 * A route whose work runs between the committed claim and the stored answer. The answer is
 * rendered from what SQL stored, so the first response and every replay are the same bytes.
 */
async function claimed(c: AppContext, id: Identity, work: (key: string) => Promise<Effect>): Promise<StoredAnswer> {
  const { userId, action, key, hash } = id;
  const requestId = c.get('requestId');
  const [stored] = await sql<StoredAnswer[]>`
    select * from billing.claim_idempotency_key(${userId}, ${action}, ${key}, ${hash}, ${requestId})`;
  if (stored.replayed) return stored;
  let effect: Effect | undefined, refusal: AppError | undefined;
  try {
    effect = await work(key);
  } catch (err) {
    refusal = fromDbError(err);
    if (refusal.status >= 500 || refusal.retryable) {
      await sql`select billing.abandon_idempotency_key(${userId}, ${action}, ${key}, ${requestId})`.catch(() => {});
      throw refusal;
    }
  }
  const fields: RefusalFields | undefined = refusal && { ...refusal.toJSON(), status: refusal.status };
  const [answer] = await sql<StoredAnswer[]>`select * from billing.complete_idempotency_key(${userId}, ${action},
    ${key}, ${requestId}, ${effect?.status ?? null}, ${effect ? jsonb(effect.data) : null}, ${refusal?.code ?? null},
    ${fields ? jsonb(fields) : null})`;
  // A retry of this same request took the stalled claim over (it stores the answer): this one
  // still answers what its work did.
  return answer ?? {
    status: effect?.status ?? null,
    data: effect?.data ?? null,
    refusal_token: refusal?.code ?? null,
    refusal_fields: fields ?? null,
    request_id: requestId,
    responded_at: new Date(),
    replayed: false,
  };
}

/**
 * A money route in one statement (its door, `moneyStatement`): the user's standing, the claim, the
 * work and the stored answer. The statement answers its refusals as rows, so it goes in one round trip.
 */
async function inOneStatement(
  c: AppContext,
  id: Identity,
  args: Record<string, unknown>,
  work: SqlWork,
): Promise<StoredAnswer> {
  const { userId, action, key, hash } = id;
  const call: MoneyCall = {
    userId,
    action,
    key,
    hash,
    requestId: c.get('requestId'),
    body: jsonb({ ...args, ...work.context }),
    successStatus: work.successStatus,
    admin: work.admin ?? false,
    serverKeyHash: c.get('serverKeyHash') ?? null,
  };
  // A deadlock (the writer locks accounts as a dispute reaches them) rolls the whole statement
  // back, key claim included: it is tried again, as a retrying client would.
  const [answer] = await c.get('steps').time('sql', () => retryingTransient(() => moneyStatement(call)));
  return answer;
}

/** What a money route's door takes: billing.run_money_request's arguments, which every door shares. */
type MoneyCall = Identity & {
  requestId: string;
  body: ReturnType<typeof jsonb>;
  successStatus: number;
  admin: boolean;
  serverKeyHash: string | null;
};

/**
 * The door of a money route's action (supabase/schemas/78-money-actions.sql), each reaching only
 * its own route's work: a usage report, a code's redemption, or a hold's or a grant's.
 */
function moneyStatement(m: MoneyCall): Promise<StoredAnswer[]> {
  switch (m.action) {
    case 'credits.usage':
      return sql.oneTrip<StoredAnswer[]>`select * from billing.run_usage_report(${m.userId}, ${m.action}, ${m.key},
        ${m.hash}, ${m.requestId}, ${m.body}, ${m.successStatus}, ${m.admin}, ${m.serverKeyHash})`;
    case 'credits.codes.redeem':
      return sql.oneTrip<StoredAnswer[]>`select * from billing.run_code_request(${m.userId}, ${m.action}, ${m.key},
        ${m.hash}, ${m.requestId}, ${m.body}, ${m.successStatus}, ${m.admin}, ${m.serverKeyHash})`;
    case 'credits.grants':
      return sql.oneTrip<StoredAnswer[]>`select * from billing.run_grant_request(${m.userId}, ${m.action}, ${m.key},
        ${m.hash}, ${m.requestId}, ${m.body}, ${m.successStatus}, ${m.admin}, ${m.serverKeyHash})`;
    case 'credits.holds':
    case 'credits.holds.capture':
    case 'credits.holds.release':
      return sql.oneTrip<StoredAnswer[]>`select * from billing.run_money_request(${m.userId}, ${m.action}, ${m.key},
        ${m.hash}, ${m.requestId}, ${m.body}, ${m.successStatus}, ${m.admin}, ${m.serverKeyHash})`;
    default:
      throw new TypeError(`inSql: no money route runs ${m.action}`);
  }
}
