// Typed failures with stable codes. Handlers throw AppError; app.ts's onError renders the
// envelope. Every code is listed in docs/api.md.
import type { ErrorBody } from './envelope.ts';

export type ErrorType =
  | 'validation'
  | 'auth'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'payment_required'
  | 'rate_limit'
  | 'unavailable'
  | 'server';

const statusOf: Record<ErrorType, number> = {
  validation: 400,
  auth: 401,
  payment_required: 402,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  rate_limit: 429,
  server: 500,
  unavailable: 503,
};

export interface AppErrorOptions {
  status?: number;
  field?: string;
  retryable?: boolean;
  details?: Record<string, unknown>;
  headers?: Record<string, string>;
}

/**
 * A failure the caller may see.
 * @example throw new AppError('not_found', 'HOLD_NOT_FOUND', 'No such hold.')
 */
export class AppError extends Error {
  readonly status: number;
  readonly retryable: boolean;
  constructor(
    readonly type: ErrorType,
    readonly code: string,
    message: string,
    readonly options: AppErrorOptions = {},
  ) {
    super(message);
    this.status = options.status ?? statusOf[type];
    this.retryable = options.retryable ?? (type === 'rate_limit' || type === 'unavailable');
  }

  /** The `error` member of the envelope. */
  toJSON(): ErrorBody {
    const { field, details } = this.options;
    return {
      type: this.type,
      code: this.code,
      message: this.message,
      ...(field ? { field } : {}),
      retryable: this.retryable,
      ...(details ? { details } : {}),
    };
  }
}

export const internalError = () =>
  new AppError('server', 'INTERNAL_ERROR', 'Something went wrong on our side. Please try again.', {
    retryable: true,
  });
