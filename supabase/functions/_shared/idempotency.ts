// HTTP idempotency for mutating routes (see the idempotency migration). The claim, the one
// SQL call that does the work, and the stored response commit in one transaction: a retry
// gets the stored bytes, a concurrent duplicate waits for the first and then gets them too.
import type postgres from 'postgres';
import type { AppContext } from './app.ts';
import { errorBody, successBody } from './app.ts';
import { call, fromDbError } from './db.ts';
import { AppError } from './errors.ts';

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

async function sha256(text: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

export interface Effect {
  status: number;
  data: unknown;
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
  const key = idempotencyKey(c);
  const userId = c.get('user').id;
  const hash = await sha256(JSON.stringify([c.req.method, c.req.path, body]));
  const outcome = await call((sql) =>
    sql.begin(async (tx) => {
      const [claim] = await tx<{ state: string; response_status: number | null; response_body: string | null }[]>`
        select * from billing.claim_idempotency_key(${userId}, ${action}, ${key}, ${hash})`;
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
      let status: number;
      let text: string;
      try {
        const effect = await tx.savepoint((sp) => work(sp, `http:${userId}:${action}:${key}`));
        status = effect.status;
        text = successBody(c, effect.data);
      } catch (err) {
        const failure = fromDbError(err);
        if (failure.status >= 500) throw failure;
        status = failure.status;
        text = errorBody(c, failure);
      }
      await tx`select billing.complete_idempotency_key(${userId}, ${action}, ${key}, ${status}, ${text})`;
      return { status, body: text, replayed: false };
    })
  );
  return new Response(outcome.body, {
    status: outcome.status,
    headers: {
      'content-type': 'application/json',
      ...(outcome.replayed ? { 'Idempotent-Replayed': 'true' } : {}),
    },
  });
}
