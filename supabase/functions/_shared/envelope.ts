// The two envelopes every answer comes in, a leaf so errors.ts and values/page.ts (which build
// them) and contract/index.ts (which re-exports them to the client) all sit above it.
/**
 * Every list answers this envelope. `next_cursor` is opaque: pass it back as `cursor` for the
 * next page; null when there is none (or the list is never paged).
 */
export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}

/** The failure envelope's `error`. */
export interface ErrorBody {
  type: string;
  code: string;
  message: string;
  retryable: boolean;
  field?: string;
  details?: Record<string, unknown>;
}
