// ai_completion: a metered job. It reserves the worst case (every input byte a token, plus
// max_tokens) at the model's rate card, calls the model's own upstream (a chat model only, as the
// gateway routes it; its fallbacks when it fails before answering), then the worker captures the
// actual usage at the model's card and releases the rest.
// Its call is logged with token counts, model and duration; the redacted prompt and answer only
// under the gateway's consent rule (billing.keep_job_log), never in log lines.
import { z } from 'zod';
import { complete, completionUpstreams } from '../../_shared/adapters/ai.ts';
import { utf8Bytes } from '../../_shared/domain/token-bounds.ts';
import { sql } from '../../_shared/adapters/db.ts';
import { fromDbError } from '../../_shared/adapters/sql-errors.ts';
import { pgInt, pgStorable, pgText } from '../../_shared/values/pg-values.ts';
import { ModelSchema } from '../../_shared/values/text.ts';
import { redactContent } from '../../_shared/redact-content.ts';
import type { JobType } from './types.ts';

const Input = z.strictObject({
  model: ModelSchema,
  prompt: pgText(20_000).min(1),
  max_tokens: pgInt(1, 4096),
});

/** Kept content: normalised and redacted as a gateway call's is, in text Postgres stores. */
const kept = (text: string) => pgStorable(redactContent(text) as string);

const chatFramingTokens = 16;

/**
 * The most input tokens a provider can bill for a prompt: its UTF-8 bytes (no byte-level BPE
 * makes more tokens) and a chat request's framing. A "4 characters a token" guess under-reserves
 * adversarial text (one-letter words, emoji) by 2–4×, and a hold is all a job may charge.
 */
const worstCaseInputTokens = (prompt: string) => utf8Bytes(prompt) + chatFramingTokens;

/**
 * Where the job's model is called: its card's upstream and model (an alias named is its card's,
 * billing.card_model), as the gateway routes it. A model the student may not call (`userId`:
 * asked when the job is created), of another kind (an embedding model's card prices no answer) or
 * on an upstream that cannot answer a prompt is refused: 4xx when the job is created, a failed
 * job charged nothing when it runs.
 */
async function routeOf(model: string, userId: string | null): Promise<{ upstream: string; model: string }> {
  try {
    const [r] = await sql`select billing.ai_model_upstream(${userId}::uuid, ${model}, 'chat',
      ${completionUpstreams()}::text[]) as upstream, billing.card_model(${model}) as model`;
    return { upstream: r.upstream, model: r.model };
  } catch (err) {
    throw fromDbError(err);
  }
}

export const aiCompletion: JobType<typeof Input> = {
  schema: Input,
  async estimate(input, userId) {
    await routeOf(input.model, userId);
    // The dearest way the provider can bill the tokens (input as cached or not, output as
    // reasoning or not): the same SQL the AI gateway holds with (62-ai-gateway.sql).
    const [price] = await sql`select billing.ai_hold_amount(${input.model}, ${
      worstCaseInputTokens(input.prompt)
    }, ${input.max_tokens})::text
        as amount`;
    return price.amount;
  },
  async run({ job, input, checkpoint }) {
    const started = performance.now();
    const { upstream, model } = await routeOf(input.model, null);
    await checkpoint({ progress: 5, state: null, label: 'calling the model' });
    const completion = await complete({
      model,
      upstream,
      prompt: input.prompt,
      maxTokens: input.max_tokens,
      onProgress: (f) => checkpoint({ progress: 5 + Math.floor(f * 90), state: null }),
    });
    const durationMs = Math.round(performance.now() - started);
    return {
      // A NUL or lone surrogate the model wrote would fail the capture the result is stored with.
      result: {
        text: pgStorable(completion.text),
        usage: completion.usage,
        model,
        duration_ms: durationMs,
      },
      // A fallback's answer costs the operator that upstream's price (billing.provider_cost).
      usage: {
        model,
        ...completion.usage,
        ...(completion.upstream && completion.upstream !== upstream ? { upstream: completion.upstream } : {}),
      },
      log: {
        duration_ms: durationMs,
        ...(job.keep_content ? { content: { prompt: kept(input.prompt), answer: kept(completion.text) } } : {}),
      },
    };
  },
};
