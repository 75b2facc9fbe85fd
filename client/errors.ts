// BillingError: every failure the client reports, carrying the service's error envelope. Like
// supabase-js, the client never throws one: each method answers `{ data, error }`.
import type { ErrorBody } from './contract.ts';
import type { DetailsOf, ErrorCode } from './error-codes.ts';

export class BillingError<C extends ErrorCode = ErrorCode> extends Error {
  /** HTTP status; 0 when no answer arrived (network error, abort). */
  readonly status: number;
  readonly code: C;
  readonly type: string;
  readonly retryable: boolean;
  readonly field?: string;
  /** What docs/api.md documents for the code (`DetailsByCode`). */
  readonly details?: DetailsOf<C>;
  /** The request's id: quote it to support. */
  readonly requestId?: string;
  /** Seconds the server asked us to wait (Retry-After), if it did. */
  readonly retryAfter?: number;

  constructor(status: number, body: ErrorBody, requestId?: string, retryAfter?: number) {
    super(body.message);
    this.name = 'BillingError';
    this.status = status;
    this.code = body.code as C;
    this.type = body.type;
    this.retryable = body.retryable;
    this.field = body.field;
    this.details = body.details as DetailsOf<C> | undefined;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }
}

/**
 * A BillingError narrowed by its code: `if (error.code === 'INSUFFICIENT_CREDITS')` makes
 * `error.details` that code's documented details.
 */
export type ApiError = { [C in ErrorCode]: BillingError<C> }[ErrorCode];

export const networkError = (message: string) =>
  new BillingError(0, { type: 'unavailable', code: 'NETWORK_ERROR', message, retryable: true });

export const abortedError = () =>
  new BillingError(0, { type: 'aborted', code: 'ABORTED', message: 'The operation was aborted.', retryable: false });

/**
 * Turns what supabase-js's `functions.invoke` returned as `error` (and its `response`) into a
 * BillingError: the envelope when the service answered, NETWORK_ERROR when nothing did.
 */
export async function toBillingError(error: unknown, response: Response | undefined): Promise<BillingError> {
  if (!response) {
    const aborted = (error as { context?: { name?: string } })?.context?.name === 'AbortError';
    return aborted ? abortedError() : networkError(error instanceof Error ? error.message : String(error));
  }
  const retryAfter = Number(response.headers.get('retry-after')) || undefined;
  let envelope: { error?: ErrorBody; metadata?: { requestId?: string } } = {};
  try {
    envelope = await response.json();
  } catch { /* not the service's envelope (a proxy's page): described below */ }
  const requestId = envelope.metadata?.requestId ?? response.headers.get('x-request-id') ?? undefined;
  const body: ErrorBody = envelope.error ?? {
    type: response.status >= 500 ? 'server' : 'http',
    code: `HTTP_${response.status}`,
    message: `The service answered ${response.status}.`,
    retryable: response.status === 502 || response.status === 503 || response.status === 504,
  };
  return new BillingError(response.status, body, requestId, retryAfter);
}

/** Anything thrown on the way (a BillingError, or a fetch that failed in an unexpected way) as a BillingError. */
export const asBillingError = (err: unknown): BillingError =>
  err instanceof BillingError
    ? err
    : (err as { name?: string })?.name === 'AbortError'
    ? abortedError()
    : networkError(err instanceof Error ? err.message : String(err));
