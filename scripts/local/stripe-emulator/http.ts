// Stripe's HTTP conventions: error bodies, API-key auth, idempotency-key replay.
import { type FormObject, parseForm } from './form.ts';
import { expand, expandPaths } from './expand.ts';
import { config } from './state.ts';

export class StripeApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
    readonly code?: string,
    readonly param?: string,
    /** More of Stripe's error fields, e.g. a card error's decline_code and payment_intent. */
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
  body() {
    return { error: { type: this.type, message: this.message, code: this.code, param: this.param, ...this.extra } };
  }
}

export const missing = (what: string, id: string) =>
  new StripeApiError(404, 'invalid_request_error', `No such ${what}: '${id}'`, 'resource_missing', 'id');

export const invalid = (message: string, param?: string) =>
  new StripeApiError(400, 'invalid_request_error', message, 'parameter_invalid', param);

export interface Ctx {
  params: Record<string, string>;
  query: URLSearchParams;
  body: FormObject;
  json: () => unknown;
  /** The connected account a request acts for (Stripe's `Stripe-Account` header), if any. */
  stripeAccount: string | null;
}

export type Handler = (ctx: Ctx) => unknown | Promise<unknown>;
export interface Route {
  method: string;
  pattern: URLPattern;
  handler: Handler;
}

export const route = (method: string, pathname: string, handler: Handler): Route => ({
  method,
  pattern: new URLPattern({ pathname }),
  handler,
});

/**
 * A test control's answer for a person (`?summary`, as the docs' examples ask): each event as its
 * id and type, not its signed bytes (kilobytes each, for tests that replay them).
 * @example summary({ events: [signed] }) // { events: [{ id: 'evt_…', type: 'checkout.session.completed' }] }
 */
function summary(answer: unknown): unknown {
  if (!answer || typeof answer !== 'object' || !Array.isArray((answer as { events?: unknown }).events)) return answer;
  const { events, ...rest } = answer as { events: { id: string; type: string }[] };
  return { ...rest, events: events.map(({ id, type }) => ({ id, type })) };
}

const idempotent = new Map<string, { fingerprint: string; status: number; body: string }>();

export async function dispatch(routes: Route[], req: Request): Promise<Response> {
  const url = new URL(req.url);
  const text = req.method === 'POST' ? await req.text() : '';
  const isApi = url.pathname.startsWith('/v1/');
  try {
    if (isApi && config.latencyMs > 0) await new Promise((r) => setTimeout(r, config.latencyMs));
    if (isApi && config.down) throw new StripeApiError(500, 'api_error', 'The emulator is set to be down.');
    if (isApi && req.headers.get('authorization') !== `Bearer ${config.secretKey}`) {
      throw new StripeApiError(401, 'invalid_request_error', 'Invalid API Key provided.');
    }
    const key = isApi && req.method === 'POST' ? req.headers.get('idempotency-key') : null;
    if (key !== null && (key.length < 1 || key.length > 255)) {
      throw new StripeApiError(
        400,
        'invalid_request_error',
        `Idempotent key length is ${key.length}, which is outside accepted lengths. Idempotent Keys must be 1-255 characters long.`,
      );
    }
    const fingerprint = `${req.method} ${url.pathname} ${text}`;
    if (key) {
      const seen = idempotent.get(key);
      if (seen && seen.fingerprint !== fingerprint) {
        throw new StripeApiError(
          400,
          'idempotency_error',
          `Keys for idempotent requests can only be used with the same parameters they were first used with.`,
        );
      }
      if (seen) {
        return new Response(seen.body, {
          status: seen.status,
          headers: { 'content-type': 'application/json', 'idempotent-replayed': 'true' },
        });
      }
    }
    for (const r of routes) {
      const m = r.method === req.method && r.pattern.exec(url);
      if (!m) continue;
      const params = Object.fromEntries(
        Object.entries(m.pathname.groups).map(([k, v]) => [k, v ?? '']),
      );
      const ctx: Ctx = {
        params,
        query: url.searchParams,
        body: req.headers.get('content-type')?.includes('json') ? {} : parseForm(text),
        json: () => (text ? JSON.parse(text) : {}),
        stripeAccount: req.headers.get('stripe-account'),
      };
      const answer = await r.handler(ctx);
      if (answer instanceof Response) return answer;
      const result = url.pathname.startsWith('/_emulator/') && url.searchParams.has('summary')
        ? summary(answer)
        : answer;
      const body = JSON.stringify(expand(result, expandPaths(url.searchParams)));
      if (key) idempotent.set(key, { fingerprint, status: 200, body });
      return new Response(body, {
        headers: { 'content-type': 'application/json', 'request-id': `req_${crypto.randomUUID()}` },
      });
    }
    throw new StripeApiError(
      404,
      'invalid_request_error',
      `Unrecognized request URL (${req.method}: ${url.pathname}).`,
    );
  } catch (err) {
    const e = err instanceof StripeApiError
      ? err
      : new StripeApiError(500, 'api_error', 'An unknown error occurred in the emulator.');
    if (!(err instanceof StripeApiError)) console.error(err);
    // Stripe keeps a card error under its idempotency key too: a retry gets the same decline.
    const key = req.method === 'POST' ? req.headers.get('idempotency-key') : null;
    if (key && e.type === 'card_error') {
      idempotent.set(key, {
        fingerprint: `${req.method} ${url.pathname} ${text}`,
        status: e.status,
        body: JSON.stringify(e.body()),
      });
    }
    return Response.json(e.body(), { status: e.status });
  }
}
