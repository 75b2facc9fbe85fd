// The operator's side of the AI call log (docs/ai-gateway.md, "The call log"): every call,
// filtered, as pages or CSV; one call (with its content only where its owner consented, the
// only case it is kept); the figures of the dashboard's AI panel; and the daily summary, exact
// across the records' 180-day retention.
import type { AppContext } from '../_shared/app-env.ts';
import { sql } from '../_shared/adapters/db.ts';
import { aiLatencyBounds, callsCsv, callWithContent, pageOfCalls } from '../_shared/domain/ai-calls.ts';
import { ok } from '../_shared/http/app.ts';
import { readQuery } from '../_shared/http/validate.ts';
import { AiCallsQuerySchema, AiSummarySchema } from './schemas.ts';

export async function listCalls(c: AppContext): Promise<Response> {
  const { user_id, org_id, format, ...q } = readQuery(c, AiCallsQuerySchema);
  const filter = { ...q, user: user_id, org: org_id };
  if (format === 'csv') {
    return c.body(callsCsv(filter), 200, {
      'content-type': 'text/csv; charset=utf-8',
      'content-disposition': 'attachment; filename="ai-calls.csv"',
    });
  }
  return ok(c, await pageOfCalls(filter));
}

export const oneCall = async (c: AppContext) => ok(c, await callWithContent(null, c.req.param('id')));

/** The AI panel: per model over the last hour and the last day, top spenders, latest failures. */
export async function aiStats(c: AppContext): Promise<Response> {
  const [{ hour, day }] = await sql`select billing.ai_call_stats(now() - interval '1 hour', ${aiLatencyBounds}) as hour,
    billing.ai_call_stats(now() - interval '1 day', ${aiLatencyBounds}) as day`;
  return ok(c, { bounds_ms: aiLatencyBounds, hour, day });
}

export async function aiSummary(c: AppContext): Promise<Response> {
  const q = readQuery(c, AiSummarySchema);
  const [{ days }] = await sql`select billing.ai_calls_summary(${q.from}::date, ${q.to}::date) as days`;
  return ok(c, { from: q.from, to: q.to, days });
}
