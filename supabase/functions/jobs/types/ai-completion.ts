// ai_completion: a metered job. It reserves max_tokens worth of credits at the model's rate
// card, calls the provider, then the worker captures the actual usage and releases the rest.
// Only token counts, model and duration are kept; never the prompt or the answer in logs.
import { z } from 'zod';
import { complete } from '../../_shared/ai.ts';
import { call } from '../../_shared/db.ts';
import { redact } from '../../_shared/redact.ts';
import type { JobType } from './types.ts';

const Input = z.strictObject({
  model: z.string().min(1).max(64).regex(/^[A-Za-z0-9._:-]+$/),
  prompt: z.string().min(1).max(20_000),
  max_tokens: z.number().int().min(1).max(4096),
  /** What ai_logs may keep: nothing but counts (none, metadata), or the redacted text (content). */
  consent_level: z.enum(['none', 'metadata', 'content']).default('none'),
});

/** A rough input-token count for the estimate: about four characters a token. */
const estimatedInputTokens = (prompt: string) => Math.ceil(prompt.length / 4);

export const aiCompletion: JobType<typeof Input> = {
  schema: Input,
  async estimate(input) {
    const [price] = await call((sql) =>
      sql`select amount::text from billing.price_usage(${input.model}, ${
        estimatedInputTokens(input.prompt)
      }, ${input.max_tokens})`
    );
    return price.amount;
  },
  async run({ job, input, checkpoint }) {
    const started = performance.now();
    await checkpoint({ progress: 5, state: null, label: 'calling the model' });
    const completion = await complete({
      model: input.model,
      prompt: input.prompt,
      maxTokens: input.max_tokens,
      onProgress: (f) => checkpoint({ progress: 5 + Math.floor(f * 90), state: null }),
    });
    const durationMs = Math.round(performance.now() - started);
    await call((sql) =>
      sql`select billing.record_ai_log(${job.user_id}, ${job.id}, ${input.model}, ${completion.usage.input_tokens},
        ${completion.usage.output_tokens}, ${durationMs}, ${input.consent_level}, ${redact(input.prompt)},
        ${redact(completion.text)})`
    );
    return {
      result: { text: completion.text, usage: completion.usage, model: input.model, duration_ms: durationMs },
      usage: { model: input.model, ...completion.usage },
    };
  },
};
