// The types every HTTP layer module shares (Hono's `src/types.ts` pattern): a leaf, so app,
// auth, ratelimit, secrets, validate and idempotency name the context without importing
// each other. Type-only imports: nothing here runs.
import type { Context } from 'hono';
import type { AppError } from './errors.ts';
import type { Steps } from './server-timing.ts';

/** The signed-in caller, e.g. `{ id: '…uuid…', email: 'a@b.c', isAdmin: false }`. */
export interface AuthUser {
  id: string;
  email?: string;
  isAdmin: boolean;
}

/** The variables a request carries through the middleware: `c.get('requestId')`, `c.get('user')`. */
export type AppEnv = {
  Variables: {
    requestId: string;
    user: AuthUser | undefined;
    authError: AppError | undefined;
    /** SHA-256 of the server key a usage report came with, checked by its money statement (usage-reporter.ts). */
    serverKeyHash: string | undefined;
    /** The request's timed steps, sent as Server-Timing when it is on (server-timing.ts). */
    steps: Steps;
  };
};
/** A handler's context, e.g. `(c: AppContext) => ok(c, data)`. */
export type AppContext = Context<AppEnv>;
