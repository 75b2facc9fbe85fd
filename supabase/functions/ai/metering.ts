// The gateway's SQL calls (supabase/schemas/62-ai-gateway.sql): begin (claim the key, check the
// model and that its upstream speaks the endpoint, hold), finish (capture what the provider
// reported), fail (release, charge nothing), refuse (record a call refused before the provider).
// Each is one statement; SQL owns the money, and the call's record is written in the same
// statements (docs/ai-gateway.md, "The call log"). Begin, and settling a call that keeps no
// answer, go in one round trip (sql.oneTrip): they answer every refusal as a row and raise only
// on a broken invariant, and their values are ids, counts, timings and the caller's key (as a
// money request's), so a statement Postgres logs holds no personal data. A kept answer goes as a
// parameter, in two trips; the call's content (consent permitting) goes after the money, in a
// statement of its own (keepContent): content is no money, and never holds a charge up.
import type { Endpoint } from '../_shared/adapters/ai-upstreams.ts';
import { finishing, jsonb, retryingTransient, sql } from '../_shared/adapters/db.ts';
import { sqlRefusal } from '../_shared/adapters/sql-errors.ts';
import { internalError } from '../_shared/errors.ts';
import { errorSummary, log } from '../_shared/log.ts';

/** Usage in the rate card's disjoint kinds (input excludes cached input and cache writes, output excludes reasoning). */
export interface Usage {
  input_tokens: number;
  cached_input_tokens: number;
  cache_write_tokens?: number;
  /** Hour-long cache writes (Anthropic's ttl 1h), apart from the 5-minute ones in cache_write_tokens. */
  cache_write_1h_tokens?: number;
  output_tokens: number;
  reasoning_tokens: number;
}

/** A call as SQL answers it (billing.ai_call_json). */
export interface CallRecord {
  call_id: string;
  status: 'held' | 'charged' | 'failed';
  model: string;
  /** The upstream that answered (or, failed, was tried last). */
  upstream: string;
  charged: string;
  /** The answer's maximum its hold paid for. */
  max_output_tokens: number;
  usage: Usage | null;
  usage_source: 'provider' | 'tokenizer' | null;
  transfer_id: string | null;
  failure: string | null;
  /** From the provider's last byte to the settling (a stream's final usage event says it, and its replay). */
  tail_ms: number | null;
  /** The replay copy as JSON text (storedAnswer). */
  answer: string | null;
}

/** What a replay of the same Idempotency-Key sends again: the JSON body, or the SSE events sent and the one kept back. */
export type StoredAnswer = { json: unknown } | { events: string[]; held: string | null };

/**
 * The stored answer goes to SQL as its JSON text, a jsonb string: what a model may write that
 * Postgres refuses as a character (NUL, a lone surrogate) is in it as an escape, so storing the
 * copy can never fail the capture it is written with, and the replay reads back the same JSON.
 * @example const answer = storedAnswer(record)
 */
export const storedAnswer = (r: CallRecord): StoredAnswer | null => r.answer === null ? null : JSON.parse(r.answer);

export type Begun =
  | {
    state: 'held';
    call_id: string;
    hold_id: string;
    held: string;
    /** The answer's maximum the hold pays for: the request's, or less when only that fitted. */
    max_output_tokens: number;
    /** The card's own model: what the provider is asked for, though the request named an alias of it. */
    model: string;
    upstream: string;
    keep_content: boolean;
    /** The fallback models the request named (cards' own), in order, each with its card's upstream. */
    fallbacks: { model: string; upstream: string }[];
  }
  | { state: 'replay'; call: CallRecord };

export interface CallPlan {
  userId: string;
  model: string;
  promptTokens: number;
  maxOutputTokens: number;
  /** The least answer worth holding for when not all of maxOutputTokens fits; null: all of it or a refusal. */
  minOutputTokens: number | null;
  key: string;
  requestHash: string;
  ttlSeconds: number;
  endpoint: Endpoint;
  /** The upstreams configured here that speak `endpoint`. */
  upstreams: string[];
  /** The request's fallback models (its `models` other than `model`), in order. */
  fallbackModels: string[];
  writesCache: boolean;
  writesCache1h: boolean;
  stream: boolean;
}

/** An upstream that failed before the answer's first byte, so the call moved on to the next. */
export interface Attempt {
  upstream: string;
  /** The model it was asked for (a fallback model's try names that model). */
  model: string;
  /** A stable code, as a failed call's (PROVIDER_ERROR_500, PROVIDER_TIMEOUT, PROVIDER_UNREACHABLE …). */
  failure: string;
  /** Its HTTP status; null: no answer. */
  status: number | null;
  ms: number;
}

/** What the call log keeps of a call beside its money (the settling statement writes it). */
export interface CallReport {
  upstream_status: number | null;
  /** From the call's arrival to the provider's first answer bytes (streamed) or its whole answer. */
  first_token_ms: number | null;
  duration_ms: number;
  /** From the provider's last answer byte (or where it broke off) to this report; null: no answer was read. */
  tail_ms: number | null;
  finish_reason?: string | null;
  client_left?: boolean;
  /** The upstream and model that answered (or, failed, were tried last), and those that failed before. */
  upstream?: string;
  model?: string;
  attempts?: Attempt[];
  /** Redacted, only when the call's owner consented (begin's keep_content); SQL keeps it only then. */
  content?: { prompt: string; answer: string };
}

/**
 * Runs a begin (an AI call's, a batch's) until it does not answer {state: 'settle'}: something of
 * the paying accounts fell due, which the begin's own road never ends, so it is asked again with
 * `settle`, the spender, which `begin` puts in front of it in the same statement (`… from
 * billing.settle_spender(${settle})`: strict, nothing when null). Settled and locked at that
 * statement's one now(), no account it locked can fall due again before the begin reads it,
 * however many holds a member times to fall due. A third answer (the accounts that may pay
 * changed under both settles, a school wallet joining) is ACCOUNT_FELL_DUE (503, retryable).
 */
export async function settlingFirst<T extends { state: string }>(
  userId: string,
  begin: (settle: string | null) => Promise<T>,
): Promise<T> {
  for (let tries = 0;; tries++) {
    const r = await begin(tries === 0 ? null : userId);
    if (r.state !== 'settle') return r;
    if (tries === 2) throw sqlRefusal('ACCOUNT_FELL_DUE', null) ?? internalError();
  }
}

/**
 * Claims the key and holds the call's worst case, in one round trip (one more when something of
 * the paying accounts fell due, settlingFirst): every refusal (402, 403,
 * 409 …) is a row SQL has already recorded (billing.refuse_ai_call), thrown here.
 */
export async function beginCall(p: CallPlan, elapsedMs: number): Promise<Begun> {
  const r = await settlingFirst(
    p.userId,
    async (settle) =>
      (await sql.oneTrip`select billing.begin_ai_call(${p.userId}, ${p.model}, ${p.promptTokens},
    ${p.maxOutputTokens}, ${p.key}, ${p.requestHash}, ${p.ttlSeconds}, ${p.endpoint},
    array(select jsonb_array_elements_text(${jsonb(p.upstreams)})), ${p.writesCache}, ${p.stream}, ${elapsedMs},
    ${p.writesCache1h}, ${p.minOutputTokens}, array(select jsonb_array_elements_text(${
        jsonb(p.fallbackModels)
      }))) as r from billing.settle_spender(${settle})`)[0].r,
  );
  if (r.state === 'held' || r.state === 'replay') return r as Begun;
  throw sqlRefusal(r.token, r.detail === undefined ? null : JSON.stringify(r.detail)) ?? internalError();
}

/**
 * Captures the price of `usage` from the call's hold and releases the rest. Tried again on a
 * transient database failure, and behind the settle of the hold's account when it fell due
 * (finishing; finish_ai_call answers a finished call as it was): the provider billed the call,
 * and a call left held is failed by the sweep, charged nothing.
 */
export async function finishCall(
  callId: string,
  usage: Usage,
  source: 'provider' | 'tokenizer',
  answer: StoredAnswer | null,
  failed: boolean,
  report: CallReport,
): Promise<CallRecord> {
  const { content, ...facts } = report;
  const [{ r }] = await finishing((settle) =>
    answer === null
      ? sql.oneTrip`select billing.finish_ai_call(${callId}, ${jsonb(usage)}, ${source}, null, ${failed},
      ${jsonb(facts)}) as r from billing.settle_holder(${settle})`
      : sql`select billing.finish_ai_call(${callId}, ${jsonb(usage)}, ${source},
      ${jsonb(JSON.stringify(answer))}, ${failed}, ${jsonb(facts)}) as r
      from billing.settle_holder(${settle})`
  );
  if (content) await keepContent(callId, content);
  return r as CallRecord;
}

/** Releases the call's hold and charges nothing; `failure` is a stable code. Tried again as a capture is. */
export async function failCall(callId: string, failure: string, report: CallReport): Promise<void> {
  const { content, ...facts } = report;
  await retryingTransient(() => sql.oneTrip`select billing.fail_ai_call(${callId}, ${failure}, ${jsonb(facts)})`);
  if (content) await keepContent(callId, content);
}

/**
 * The finished call's redacted prompt and answer, kept when its owner consented (SQL decides, and
 * keeps them once): after the money committed, so a failure here loses content, never a charge,
 * and never turns a charged answer into an error (logged without the content).
 */
async function keepContent(callId: string, content: NonNullable<CallReport['content']>): Promise<void> {
  await retryingTransient(() => sql`select billing.keep_ai_content(${callId}, ${jsonb(content)})`)
    .catch((e) => log.error('ai call content could not be kept', errorSummary(e)));
}

/** Records a call refused before the provider: its stable code, no hold (the model only if priced). */
export async function refuseCall(
  userId: string,
  model: string,
  endpoint: Endpoint,
  stream: boolean,
  code: string,
  durationMs: number,
): Promise<void> {
  await sql`select billing.refuse_ai_call(${userId}, ${model}, ${endpoint}, ${stream}, ${code}, ${durationMs})`;
}
