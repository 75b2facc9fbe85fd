// OpenAI's embeddings (POST /ai/v1/embeddings): billed on the input the provider counted, at the
// card's input price (an embedding model's card prices input only). Never streamed.
import { z } from 'zod';
import { pgInt, pgText } from '../../_shared/values/pg-values.ts';
import { ModelSchema, tokenText } from '../../_shared/values/text.ts';
import { count } from '../../_shared/adapters/ai.ts';
import type { Protocol } from '../protocol.ts';

const TokensSchema = z.array(pgInt(0, 10_000_000)).min(1).max(100_000);
export const EmbeddingsRequestSchema = z.object({
  model: ModelSchema,
  // OpenAI's limits: 2,048 inputs a request; the prompt limit bounds their total.
  input: z.union([
    pgText(1_000_000).min(1),
    z.array(pgText(1_000_000).min(1)).min(1).max(2048),
    TokensSchema,
    z.array(TokensSchema).min(1).max(2048),
  ]),
  dimensions: pgInt(1, 100_000).nullish(),
  encoding_format: z.enum(['float', 'base64']).nullish(),
  user: tokenText(256).nullish(),
});
export type EmbeddingsRequest = z.infer<typeof EmbeddingsRequestSchema>;

/** The inputs: texts, or token arrays (each token one input token). */
const inputs = (req: EmbeddingsRequest): (string | number[])[] =>
  typeof req.input === 'string'
    ? [req.input]
    : typeof req.input[0] === 'number'
    ? [req.input as number[]]
    : req.input as (string | number[])[];

const never = () => {
  throw new Error('embeddings are never streamed');
};

/** POST /ai/v1/embeddings. */
export const embeddings: Protocol<EmbeddingsRequest> = {
  endpoint: 'embeddings',
  schema: EmbeddingsRequestSchema,
  model: (req) => req.model,
  streamed: () => false,
  outputLimit: () => null,
  *promptTexts(req) {
    for (const x of inputs(req)) if (typeof x === 'string') yield x;
  },
  // No framing; a token array is exactly its length.
  framing: (req) => inputs(req).reduce((n, x) => n + (typeof x === 'string' ? 0 : x.length), 0),
  writesCache: () => false,
  wholeAnswerOnly: () => false,
  providerBody: (req) => ({ ...req }),
  fromUsage: (raw) => ({
    input_tokens: count((raw as Record<string, unknown> | undefined)?.prompt_tokens),
    cached_input_tokens: 0,
    output_tokens: 0,
    reasoning_tokens: 0,
  }),
  toUsage: (u) => ({ prompt_tokens: u.input_tokens, total_tokens: u.input_tokens }),
  finishReason: () => null,
  answerText: () => '',
  eventText: () => '',
  reader: never,
  closing: never,
  failure: never,
};
