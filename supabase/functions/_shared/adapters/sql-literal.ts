// The SQL literal encoder behind `sql.oneTrip` (db.ts): values written into the statement text,
// so postgres.js sends it in one round trip. Security-critical twice over: no value may end its
// literal early, and no value may make the statement fail in Postgres (whose log would then
// hold the whole statement, the request's values with it): what Postgres would refuse or
// change is refused here first, as a 400, by the rule of pg-values.ts.
import type postgres from 'postgres';
import { AppError } from '../errors.ts';
import { isPgText, jsonText, textRefused } from '../values/pg-values.ts';

/** A JSON value, written as a jsonb literal by `inline` and sent as text cast to jsonb by `sql` (db.ts). */
export class JsonbValue {
  constructor(readonly text: string) {}
}

/**
 * `value` as jsonb for `sql` and `sql.oneTrip` (db.ts): checked and stringified at once
 * (jsonText), so a string or key jsonb would refuse is a 400 before the statement exists.
 * @example sql`select billing.f(${jsonb({ metadata })})`
 */
export const jsonb = (value: unknown) => new JsonbValue(jsonText(value));

/** What `inline` writes into a statement. */
export type InlineValue = string | number | boolean | null | JsonbValue;
declare const inlined: unique symbol;
/** A statement `inline` wrote: the only kind `oneTrip` sends. */
export type InlineStatement = string & { readonly [inlined]: true };

/**
 * A statement with its values written in as SQL literals, for `sql.oneTrip`: postgres.js sends
 * it in one flight. Without prepared statements (`prepare: false`, for the transaction-mode
 * pooler) postgres.js sends a statement that has parameters in two round trips (Parse +
 * Describe, then, once the server has said the parameters' types, Bind + Execute); one without
 * parameters goes as Parse + Bind + Execute + Sync at once. A string becomes an E'…' literal
 * with its backslashes and quotes doubled (what libpq's PQescapeLiteral writes) and every
 * character beyond ASCII written as a \u or \U escape, so the statement is ASCII whatever the
 * connection's encoding; a number must be a safe integer; JSON goes through `jsonb`. Text
 * Postgres would refuse (NUL, an unpaired surrogate) or a number it cannot be written as is a
 * 400 (VALIDATION_FAILED), thrown before anything is sent. Values go where an expression may
 * stand (never inside a quoted string, a $$ body or a comment); cast in SQL where the type
 * matters.
 * @example inline`select * from billing.get_balance(${userId})`
 */
export function inline(strings: TemplateStringsArray, ...values: InlineValue[]): InlineStatement {
  return strings.reduce((text, s, i) => text + sqlLiteral(values[i - 1]) + s) as InlineStatement;
}

/**
 * Sends a statement `inline` wrote as one flight of the extended protocol (Parse, Bind, Execute,
 * Sync; one statement only, where the simple protocol would run several), and alone on its
 * connection until it is answered: postgres.js would otherwise pipeline the next statements
 * behind it, and a statement with parameters pipelined behind one through pgbouncer in
 * transaction mode never got its answer (the credit-lots parallel test shows it).
 * @example const [b] = await oneTrip(db(), inline`select * from billing.get_balance(${userId})`)
 */
export function oneTrip<T extends postgres.Row[] = postgres.Row[]>(sql: postgres.Sql, statement: InlineStatement) {
  // Both are options postgres.js reads but does not declare.
  const options = { simple: false, onexecute: () => false };
  return sql.unsafe<T>(statement, [], options as postgres.UnsafeQueryOptions);
}

function sqlLiteral(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (v instanceof JsonbValue) return `${stringLiteral(v.text)}::jsonb`;
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) {
      throw new AppError('validation', 'VALIDATION_FAILED', 'Numbers here must be whole, within ±(2^53 − 1).');
    }
    return v < 0 ? `(${v})` : String(v); // `x-${-1}` must not become a comment
  }
  if (typeof v !== 'string') throw new TypeError(`inline: cannot write a ${typeof v} as SQL`);
  return stringLiteral(v);
}

/** ASCII with no quote and no backslash: written as it is (most values, and a batch's whole JSON). */
const plain = /^[^'\\\u0080-\uffff]*$/; // code units: a character beyond ASCII is one or two above 0x7f
/** What a literal writes otherwise: a quote or backslash doubled, a character beyond ASCII escaped (whole code points). */
const special = /['\\]|[\u0080-\u{10ffff}]/gu;

function stringLiteral(v: string): string {
  if (!isPgText(v)) throw textRefused();
  if (plain.test(v)) return `E'${v}'`;
  const body = v.replace(special, (ch) => {
    if (ch === '\\' || ch === "'") return ch + ch;
    const cp = ch.codePointAt(0) as number;
    return cp <= 0xffff ? '\\u' + cp.toString(16).padStart(4, '0') : '\\U' + cp.toString(16).padStart(8, '0');
  });
  return `E'${body}'`;
}
