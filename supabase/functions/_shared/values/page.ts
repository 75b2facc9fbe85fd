// The one list envelope: every list route answers `{items, next_cursor}`, and the cursor is
// opaque (base64url of the position of the page's last item) so a caller passes it back as
// given and never builds one. A cursor that is not one of ours is a 400 naming `cursor`.
import { z } from 'zod';
import type { Page } from '../envelope.ts';
import { pgText } from './pg-values.ts';

const notOurs = 'must be the next_cursor of a previous page, passed back unchanged';

/** The opaque form of a position. */
export const encodeCursor = (position: string): string =>
  btoa(String.fromCharCode(...new TextEncoder().encode(position)))
    .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');

/** The position an opaque cursor stands for, or undefined when it is not base64url of UTF-8. */
function decodeCursor(cursor: string): string | undefined {
  try {
    const bytes = Uint8Array.from(atob(cursor.replace(/-/g, '+').replace(/_/g, '/')), (ch) => ch.charCodeAt(0));
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
}

/**
 * The `cursor` query value of a list: an opaque cursor whose position `position` validates
 * (and may parse), so no value reaches SQL that a cast would refuse. Whatever is wrong with
 * it, the caller hears one thing: pass back a cursor we gave.
 * @example cursor: cursorOf(bigintText('an entry id')).optional()
 */
export const cursorOf = <S extends z.ZodType<unknown, string>>(position: S) =>
  pgText(200)
    .regex(/^[A-Za-z0-9_-]+$/, notOurs)
    .transform((s, ctx): z.output<S> => {
      const decoded = decodeCursor(s);
      const parsed = decoded === undefined ? undefined : position.safeParse(decoded);
      if (parsed?.success) return parsed.data;
      ctx.addIssue({ code: 'custom', message: notOurs });
      return z.NEVER;
    });

/**
 * A page of a keyset list fetched with `limit + 1` rows: the first `limit` (as `render` makes
 * them) as items, and a cursor at the last of them when the extra row came back.
 * @example return ok(c, pageOf(rows, q.limit, (r) => String(r.id), lotJson))
 */
export function pageOf<R, T = R>(
  rows: R[],
  limit: number,
  position: (last: R) => string,
  render: (row: R) => T = (row) => row as unknown as T,
): Page<T> {
  const shown = rows.slice(0, limit);
  const more = rows.length > limit && shown.length > 0;
  return { items: shown.map(render), next_cursor: more ? encodeCursor(position(shown[shown.length - 1])) : null };
}

/**
 * A list that is never paged (it is small by nature: caps, members, packages), in the envelope.
 * @example return ok(c, whole(caps))
 */
export const whole = <T>(items: T[]): Page<T> => ({ items, next_cursor: null });
