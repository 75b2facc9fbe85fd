// POST /api/essay-feedback: work the app's own server meters (here a fixed-size feedback pass on
// an essay, run by the app's own model account), reported to billing with the app's server key,
// naming the student the token proves. The key never leaves the server; the student's say-so
// never decides who pays or how much.
import { createClient } from '@supabase/supabase-js';
import { createUsageReporter } from '@scholarlink/billing-client';
import { bearer } from '../../../lib/gateway';

const supabase = createClient(
  process.env.NEXT_PUBLIC_SUPABASE_URL ?? '',
  process.env.NEXT_PUBLIC_SUPABASE_ANON_KEY ?? '',
);
const usage = createUsageReporter(
  supabase,
  process.env.BILLING_SERVER_KEY ?? '',
);

export async function POST(req: Request): Promise<Response> {
  // Who the student is, from Supabase Auth: never a user id the browser sends.
  const { data: who } = await supabase.auth.getUser(bearer(req) ?? '');
  if (!who.user) {
    return Response.json({ error: 'Sign in first.' }, { status: 401 });
  }
  // … the app's own work would run here; its token counts come from the app's provider …
  const { data, error } = await usage.recordUsage({
    user_id: who.user.id,
    model: 'gpt-4o-mini',
    input_tokens: 1200,
    output_tokens: 400,
    metadata: { feature: 'essay_feedback' },
  });
  if (error) {
    return Response.json({ error: error.message, code: error.code }, {
      status: error.status || 502,
    });
  }
  return Response.json({ charged: data.charged, paid_by: data.paid_by });
}
