// Stands in for pg_net's background worker. The local schedule is the real one: pg_cron runs
// every cron.job row, and the hosted ones (billing.call_function) queue their POST through the
// net.http_post stand-in (scripts/local/pg_net) with the URL and cron secret read from Vault.
// This process sends what is queued, with its headers, body and timeout, and records each
// answer in net._http_response, as pg_net does. The test run leaves it off (deterministic jobs
// tests); requests queued meanwhile are sent when it starts again.
import postgres from 'postgres';

/** A row of net.http_request_queue, as pg_net's worker takes it. */
export interface QueuedRequest {
  id: string;
  method: string;
  url: string;
  headers: Record<string, string> | null;
  body: Uint8Array | null;
  timeout_milliseconds: number;
}

/** What became of one request, as recorded in net._http_response. */
export interface Delivery {
  id: string;
  status: number | null;
  timedOut: boolean;
  error: string | null;
}

/**
 * Takes up to `limit` queued requests (oldest first; only `ids` when given), deleting them from
 * the queue as pg_net's worker does, so each is sent once whoever else is draining.
 * @example const [req] = await takeRequests(sql, { ids: [id] })
 */
export function takeRequests(sql: postgres.Sql, opts: { limit?: number; ids?: string[] } = {}) {
  const limit = opts.limit ?? 20;
  const only = opts.ids ? sql`and q.id = any(${opts.ids}::bigint[])` : sql``;
  return sql<QueuedRequest[]>`
    delete from net.http_request_queue r
    where r.id in (select q.id from net.http_request_queue q where true ${only} order by q.id limit ${limit}
                   for update skip locked)
    returning r.id::text, r.method, r.url, r.headers, r.body, r.timeout_milliseconds`;
}

/** Sends one request and records the answer (or the timeout or error) under its id. */
export async function deliver(sql: postgres.Sql, req: QueuedRequest): Promise<Delivery> {
  const started = Date.now();
  let row: Delivery & { contentType: string | null; headers: Record<string, string> | null; content: string | null };
  try {
    const res = await fetch(req.url, {
      method: req.method.toUpperCase(),
      headers: req.headers ?? {},
      body: req.body && req.method.toUpperCase() !== 'GET' ? new TextDecoder().decode(req.body) : undefined,
      signal: AbortSignal.timeout(req.timeout_milliseconds),
    });
    const content = await res.text();
    row = {
      id: req.id,
      status: res.status,
      timedOut: false,
      error: null,
      contentType: res.headers.get('content-type'),
      headers: Object.fromEntries(res.headers),
      content,
    };
  } catch (err) {
    const timedOut = err instanceof DOMException && err.name === 'TimeoutError';
    const error = timedOut
      ? `Timeout of ${req.timeout_milliseconds} ms reached. Total time: ${Date.now() - started} ms`
      : err instanceof Error
      ? err.message
      : String(err);
    row = { id: req.id, status: null, timedOut, error, contentType: null, headers: null, content: null };
  }
  const headers = row.headers ? JSON.stringify(row.headers) : null;
  await sql`insert into net._http_response (id, status_code, content_type, headers, content, timed_out, error_msg)
    values (${row.id}::bigint, ${row.status}, ${row.contentType}, ${headers}::jsonb, ${row.content}, ${row.timedOut},
            ${row.error})`;
  return { id: row.id, status: row.status, timedOut: row.timedOut, error: row.error };
}

if (import.meta.main) {
  const sql = postgres(Deno.env.get('SUPABASE_DB_URL') ?? '', {
    max: 2,
    onnotice: () => {},
    connection: { application_name: 'pg_net stand-in' },
  });
  const pollMs = Number(Deno.env.get('NET_POLL_INTERVAL_MS') ?? 500);
  const maxInFlight = 16;
  let inFlight = 0;
  let lastPrune = 0;

  const send = async (req: QueuedRequest) => {
    try {
      const d = await deliver(sql, req);
      // URLs only: the headers carry the cron secret.
      if (d.status === null) console.error(`${req.method} ${req.url} failed: ${d.error}`);
      else if (d.status >= 400) console.error(`${req.method} ${req.url} answered ${d.status}`);
    } catch (err) {
      console.error(`${req.method} ${req.url}: ${err instanceof Error ? err.message : err}`);
    } finally {
      inFlight--;
    }
  };

  for (;;) {
    try {
      if (inFlight < maxInFlight) {
        for (const req of await takeRequests(sql, { limit: maxInFlight - inFlight })) {
          inFlight++;
          send(req);
        }
      }
      // pg_net keeps answers for pg_net.ttl (6 hours by default).
      if (Date.now() - lastPrune > 60_000) {
        lastPrune = Date.now();
        await sql`delete from net._http_response where created < now() - interval '6 hours'`;
      }
    } catch (err) {
      console.error('the pg_net queue could not be read:', err instanceof Error ? err.message : err);
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
}
