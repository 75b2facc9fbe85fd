// The AI gateway's Prometheus series (docs/metrics.md), over the last hour and all instances:
// read from the call log (billing.ai_call_stats), so a stream that fails midway counts as the
// failure it is, whatever status its response began with. Labels are bounded: models on the
// rate card ("(unpriced)" for a refused name that is not), the four endpoints, the four outcomes;
// never a user.
import { sql } from '../_shared/adapters/db.ts';
import { aiLatencyBounds } from '../_shared/domain/ai-calls.ts';
import type { Exposition } from './prometheus.ts';

type ModelStats = {
  model: string;
  errors: number;
  credits: string;
  tokens: Record<string, number>;
  ttft_buckets: number[];
  duration_buckets: number[];
};
type Stats = {
  models: ModelStats[];
  by_outcome: { model: string; endpoint: string; outcome: string; calls: number }[];
};

/** Adds the AI series to `x`. */
export async function addAiMetrics(x: Exposition): Promise<void> {
  const [{ s }] = await sql<
    { s: Stats }[]
  >`select billing.ai_call_stats(now() - interval '1 hour', ${aiLatencyBounds}) as s`;
  x.metric(
    'scholarlink_ai_calls_last_hour',
    'gauge',
    'AI gateway calls in the last hour, by model, endpoint and outcome (held, charged, failed, refused).',
    s.by_outcome.map((o) => [{ model: o.model, endpoint: o.endpoint, outcome: o.outcome }, o.calls]),
  )
    .metric(
      'scholarlink_ai_errors_last_hour',
      'gauge',
      "AI calls that failed at the provider or the gateway in the last hour (the ai_error_rate alert's numerator).",
      s.models.map((m) => [{ model: m.model }, m.errors]),
    )
    .metric(
      'scholarlink_ai_tokens_last_hour',
      'gauge',
      'Tokens the AI calls of the last hour were charged for, by model and kind.',
      s.models.flatMap((m) =>
        Object.entries(m.tokens).map(([kind, n]): [Record<string, string>, number] => [{ model: m.model, kind }, n])
      ),
    )
    .metric(
      'scholarlink_ai_credits_charged_last_hour',
      'gauge',
      'Credits the AI calls of the last hour were charged, by model.',
      s.models.map((m) => [{ model: m.model }, Number(m.credits)]),
    )
    .buckets(
      'scholarlink_ai_time_to_first_token_ms',
      "From a call arriving to the provider's first answer bytes (streamed) or whole answer, last hour.",
      aiLatencyBounds,
      s.models.map((m) => [{ model: m.model }, m.ttft_buckets]),
    )
    .buckets(
      'scholarlink_ai_call_duration_ms',
      'From a call arriving to its settlement (or refusal), last hour.',
      aiLatencyBounds,
      s.models.map((m) => [{ model: m.model }, m.duration_buckets]),
    );
}
