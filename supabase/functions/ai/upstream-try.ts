// One try of one upstream, for ai/call.ts: what it answered, or how it failed, and whether the
// next upstream may answer instead (docs/ai-gateway.md § Upstreams, "When the next is tried").
import { type Failure, isAnswer, postUpstream } from '../_shared/adapters/ai-upstreams.ts';
import { AppError } from '../_shared/errors.ts';
import type { Steps } from '../_shared/server-timing.ts';
import { addRead, type Protocol, type SseBuffer, sseEvents } from './protocol.ts';

type Json = Record<string, unknown>;

/** What a try reads of its call (ai/call.ts), and the provider's status it writes back. */
export interface Tried<R> {
  model: string;
  maxOutput: number;
  req: R;
  p: Protocol<R>;
  userId: string;
  steps: Steps;
  upstreamStatus: number | null;
}

/** Why the provider's answer is not one: a stable code for the ledger and an error for the caller. */
export function providerFailure(failure: Failure): { code: string; error: AppError } {
  const status = failure === 'broken' ? 502 : failure;
  if (status === 'timeout') {
    return {
      code: 'PROVIDER_TIMEOUT',
      error: new AppError('unavailable', 'PROVIDER_TIMEOUT', 'The model did not answer in time; nothing was charged.', {
        status: 504,
      }),
    };
  }
  if (
    typeof status === 'number' && status >= 400 && status < 500 && status !== 401 && status !== 403 && status !== 429
  ) {
    return {
      code: `PROVIDER_REFUSED_${status}`,
      error: new AppError(
        'validation',
        'PROVIDER_REFUSED',
        `The model refused the request (${status}); nothing was charged.`,
      ),
    };
  }
  return {
    code: status === 'unreachable' ? 'PROVIDER_UNREACHABLE' : `PROVIDER_ERROR_${status}`,
    error: new AppError('unavailable', 'PROVIDER_ERROR', 'The model is unavailable right now; nothing was charged.', {
      status: 502,
      retryable: true,
    }),
  };
}

const joined = (parts: Uint8Array[]) => {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return all;
};

/**
 * One upstream's try: its answer's headers, or how it failed. With `peek` (another upstream
 * behind it), also a whole answer's body, or a stream's bytes up to its first event that is an
 * answer's (a keep-alive comment or ping is not, nor an error event, nor an end that reported no
 * usage): a try that breaks before then is
 * the next upstream's to answer, since nothing reached the caller. A stream waits at most
 * `idleMs` between reads; a whole answer's headers come only once it is written, so only the
 * call's deadline bounds it.
 */
export async function attempt<R>(
  call: Tried<R>,
  name: string,
  ctl: AbortController,
  streamed: boolean,
  peek: boolean,
  idleMs: number,
): Promise<
  | { res: Response; reader?: ReadableStreamDefaultReader<Uint8Array>; first?: Uint8Array; body?: Json }
  | { failure: Failure }
> {
  let silence: ReturnType<typeof setTimeout> | undefined;
  const waitForBytes = () => {
    clearTimeout(silence);
    if (streamed) silence = setTimeout(() => ctl.abort('timeout'), idleMs);
  };
  waitForBytes();
  let answered = false;
  call.upstreamStatus = null;
  try {
    const res = await call.steps.time(
      'upstream',
      () =>
        postUpstream(
          name,
          call.p.endpoint,
          { ...call.p.providerBody(call.req, call.maxOutput), model: call.model },
          ctl.signal,
        ),
    );
    answered = true;
    call.upstreamStatus = res.status;
    if (!res.ok) {
      await res.body?.cancel().catch(() => {});
      return { failure: res.status };
    }
    if (!peek) return { res };
    if (!streamed) {
      const body: unknown = await call.steps.time('upstream_body', () => res.json());
      return isAnswer(body) ? { res, body } : { failure: 'broken' };
    }
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const probe = call.p.reader(call.req, call.userId);
    const decoder = new TextDecoder();
    const buffer: SseBuffer = { text: '' };
    const read: Uint8Array[] = []; // handed to the relay as they came: a character cut in two stays whole
    for (;;) {
      const next = await reader.read();
      if (next.done) return { failure: 'broken' };
      waitForBytes();
      read.push(next.value);
      addRead(buffer, decoder, next.value);
      for (const event of sseEvents(buffer)) {
        if (event.name === 'ping') continue; // Anthropic's keep-alive
        const seen = probe.see(event);
        // An answer's first event; an end is one only when it reported usage (the provider bills it).
        if (seen === 'send' || seen === 'keep' || (seen === 'end' && probe.usage() !== null)) {
          return { res, reader, first: joined(read) };
        }
        reader.cancel().catch(() => {});
        return { failure: 'broken' };
      }
    }
  } catch {
    const failure: Failure = ctl.signal.aborted ? 'timeout' : answered ? 'broken' : 'unreachable';
    ctl.abort('failed');
    return { failure };
  } finally {
    clearTimeout(silence);
  }
}
