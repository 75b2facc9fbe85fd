// ai_completion: a metered job. It reserves the worst case (every input byte a token, plus
// max_tokens) at the model's rate card, calls the model's own upstream (a chat model only, as the
// gateway routes it), then the worker captures the actual usage and releases the rest.
// Only token counts, model and duration are kept; never the prompt or the answer in logs.
import { z } from 'zod';
import { complete, completionUpstreams } from '../../_shared/adapters/ai.ts';
import { utf8Bytes } from '../../_shared/domain/token-bounds.ts';
import { sql } from '../../_shared/adapters/db.ts';
import { fromDbError } from '../../_shared/adapters/sql-errors.ts';
import { pgInt, pgText } from '../../_shared/values/pg-values.ts';
import { ModelSchema } from '../../_shared/values/text.ts';
import { redact } from '../../_shared/redact.ts';
import type { JobType } from './types.ts';

const Input = z.strictObject({
  model: ModelSchema,
  prompt: pgText(20_000).min(1),
  max_tokens: pgInt(1, 4096),
  /** What ai_logs may keep: nothing but counts (none, metadata), or the redacted text (content). */
  consent_level: z.enum(['none', 'metadata', 'content']).default('none'),
});

const chatFramingTokens = 16;

/**
 * The most input tokens a provider can bill for a prompt: its UTF-8 bytes (no byte-level BPE
 * makes more tokens) and a chat request's framing. A "4 characters a token" guess under-reserves
 * adversarial text (one-letter words, emoji) by 2–4×, and a hold is all a job may charge.
 */
const worstCaseInputTokens = (prompt: string) => utf8Bytes(prompt) + chatFramingTokens;

/**
 * Where the job's model is called: its card's upstream, as the gateway routes it. A model the
 * student may not call (`userId`: asked when the job is created), of another kind (an embedding
 * model's card prices no answer) or on an upstream that cannot answer a prompt is refused: 4xx
 * when the job is created, a failed job charged nothing when it runs.
 */
async function upstreamOf(model: string, userId: string | null): Promise<string> {
  try {
    const [r] = await sql`select billing.ai_model_upstream(${userId}::uuid, ${model}, 'chat',
      ${completionUpstreams()}::text[]) as upstream`;
    return r.upstream;
  } catch (err) {
    throw fromDbError(err);
  }
}

export const aiCompletion: JobType<typeof Input> = {
  schema: Input,
  async estimate(input, userId) {
    await upstreamOf(input.model, userId);
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
    const upstream = await upstreamOf(input.model, null);
    await checkpoint({ progress: 5, state: null, label: 'calling the model' });
    const completion = await complete({
      model: input.model,
      upstream,
      prompt: input.prompt,
      maxTokens: input.max_tokens,
      onProgress: (f) => checkpoint({ progress: 5 + Math.floor(f * 90), state: null }),
    });
    const durationMs = Math.round(performance.now() - started);
    await sql`select billing.record_ai_log(${job.user_id}, ${job.id}, ${input.model}, ${
      completion.usage.input_tokens + (completion.usage.cached_input_tokens ?? 0)
    }, ${
      completion.usage.output_tokens + (completion.usage.reasoning_tokens ?? 0)
    }, ${durationMs}, ${input.consent_level}, ${redact(input.prompt)},
        ${redact(completion.text)})`;
    return {
      result: { text: completion.text, usage: completion.usage, model: input.model, duration_ms: durationMs },
      usage: { model: input.model, ...completion.usage },
    };
  },
};
