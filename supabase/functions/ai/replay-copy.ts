// The copy of an answer kept for a replay of the same Idempotency-Key (24 h). It holds no prompt
// text: a provider that echoes the request in its answer (the Responses API returns
// `instructions`, `tools`, `text` …) has those fields emptied in the copy, in their places, their
// names kept, and put back from the replayed request, which is the same request (its hash is
// checked first), so a replay answers the first answer's bytes. A field that carries prompt text
// (`promptFields`) is emptied even when the provider echoes it in its own form (OpenAI fills in
// a tool's `strict` and orders its keys): a replay then answers it as the request sent it.
import type { StoredAnswer } from './metering.ts';
import { parsed, type Sse, sseEvent, sseEvents } from './protocol.ts';

const echoedKey = '_echoed_from_request';
/** Echoed fields that hold a student's text: never kept, whatever form the provider echoes them in. */
const promptFields = new Set(['instructions', 'tools', 'text', 'prompt', 'metadata']);
type Json = Record<string, unknown>;

/** The object an answer's echo sits in: a streamed event's `response`, or the answer itself. */
const echoSite = (o: Json): Json => o.response && typeof o.response === 'object' ? o.response as Json : o;

const placed = (o: Json, site: Json): Json => (echoSite(o) === o ? site : { ...o, response: site });

function withoutEcho(o: Json, req: unknown): Json {
  const site = echoSite(o), r = req as Json;
  const echoed = Object.keys(site).filter((k) =>
    k !== 'model' && r[k] !== undefined &&
    (promptFields.has(k) || JSON.stringify(site[k]) === JSON.stringify(r[k]))
  );
  if (echoed.length === 0) return o;
  const emptied = Object.fromEntries(Object.entries(site).map(([k, v]) => [k, echoed.includes(k) ? null : v]));
  return placed(o, { ...emptied, [echoedKey]: echoed });
}

function withEcho(o: Json, req: unknown): Json {
  const site = echoSite(o), r = req as Json;
  const echoed = site[echoedKey];
  if (!Array.isArray(echoed)) return o;
  const { [echoedKey]: _names, ...rest } = site;
  return placed(o, Object.fromEntries(Object.entries(rest).map(([k, v]) => [k, echoed.includes(k) ? r[k] : v])));
}

/** A whole answer's copy. */
export const jsonCopy = (body: Json, req: unknown): Json => withoutEcho(body, req);
export const jsonFromCopy = (copy: unknown, req: unknown): Json => withEcho(copy as Json, req);

/** An event's data (JSON text) as copied, and back. */
const dataCopy = (data: string, req: unknown) => {
  const o = parsed(data), copy = withoutEcho(o, req);
  return copy === o ? data : JSON.stringify(copy);
};
export const dataFromCopy = (data: string, req: unknown) =>
  data.includes(echoedKey) ? JSON.stringify(withEcho(parsed(data), req)) : data;

/** A stream's copy: the events sent and the one kept back. */
export function eventsCopy(sent: Sse[], held: string | null, req: unknown): StoredAnswer {
  const events = sent.map((e) => {
    const data = dataCopy(e.data, req);
    return data === e.data ? e.raw : sseEvent(e.name, data);
  });
  return { events, held: held === null ? null : dataCopy(held, req) };
}

export const eventsFromCopy = (events: string[], req: unknown): string[] =>
  events.map((raw) => {
    if (!raw.includes(echoedKey)) return raw;
    const [e] = [...sseEvents({ text: raw })];
    return sseEvent(e.name, dataFromCopy(e.data, req));
  });
