// A batch's lines, each checked and counted as an interactive call of its API is (docs/ai-gateway.md
// § Batches): the API's schema (only its fields reach the provider), no stream, no fallback
// models, one model for the whole batch, an answer's maximum within the operator's (a line that
// sets none is held and sent at AI_MAX_OUTPUT_TOKENS, never cut), and a prompt within the limit.
import { z } from 'zod';
import type { GatewayEnv } from '../_shared/adapters/ai-upstreams.ts';
import { AppError } from '../_shared/errors.ts';
import { promptTokens, type Protocol } from './protocol.ts';

/** What a batch may hold: lines, bytes of an uploaded file; per student, batches running at once and files in no batch yet. */
export const batchLimits = { lines: 1000, bytes: 4 * 1024 * 1024, open: 5, waitingFiles: 10 } as const;

/** A line's id, as the caller names it (the provider's results carry it back). */
export const CustomIdSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1 to 64 letters, digits, _ or -');

/** A counted line: what SQL holds for it, and the body the provider is sent. */
export interface BatchLine {
  custom_id: string;
  prompt_tokens: number;
  max_output_tokens: number;
  body: Record<string, unknown>;
}

const lineError = (n: number, message: string, field?: string) =>
  new AppError('validation', 'VALIDATION_FAILED', `line ${n}: ${message}`, { field, details: { line: n } });

/**
 * Checks and counts `lines` ({custom_id, body}) as calls of `p`; the batch's one model and
 * whether any line writes the prompt cache come with them.
 * @example const { lines, model } = await batchLines(chat, [{ custom_id: 'q1', body }], env)
 */
export async function batchLines<R>(
  p: Protocol<R>,
  raw: { custom_id: unknown; body: unknown }[],
  env: GatewayEnv,
): Promise<{ lines: BatchLine[]; model: string; writesCache: boolean }> {
  if (raw.length < 1 || raw.length > batchLimits.lines) {
    throw new AppError('validation', 'VALIDATION_FAILED', `A batch holds 1 to ${batchLimits.lines} lines.`);
  }
  const lines: BatchLine[] = [];
  const ids = new Set<string>();
  let model: string | null = null;
  let writesCache = false;
  for (const [i, line] of raw.entries()) {
    const n = i + 1;
    const id = CustomIdSchema.safeParse(line.custom_id);
    if (!id.success) throw lineError(n, `custom_id ${id.error.issues[0].message}`, 'custom_id');
    if (ids.has(id.data)) throw lineError(n, 'custom_id is used by an earlier line', 'custom_id');
    ids.add(id.data);
    const parsed = p.schema.safeParse(line.body);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw lineError(n, `${issue.path.join('.') || 'body'} ${issue.message}`, issue.path.join('.') || undefined);
    }
    const req = parsed.data;
    if (p.streamed(req)) throw lineError(n, 'a batch line is never streamed', 'stream');
    if ((req as { models?: unknown }).models !== undefined) {
      throw lineError(n, 'a batch line names one model (no fallback models)', 'models');
    }
    model ??= p.model(req);
    if (p.model(req) !== model) throw lineError(n, 'every line of a batch names the same model', 'model');
    const limit = p.outputLimit(req);
    if (limit?.asked && limit.asked > env.AI_MAX_OUTPUT_TOKENS) {
      throw lineError(n, `${limit.field} may be at most ${env.AI_MAX_OUTPUT_TOKENS}`, limit.field);
    }
    const maxOutput = limit ? limit.asked ?? env.AI_MAX_OUTPUT_TOKENS : 0;
    const prompt = await promptTokens(p, req, env.AI_MAX_PROMPT_TOKENS);
    if (prompt === null) {
      throw new AppError(
        'validation',
        'PROMPT_TOO_LONG',
        `line ${n}: the prompt is more than ${env.AI_MAX_PROMPT_TOKENS} tokens.`,
      );
    }
    if (p.writesCache1h?.(req)) throw lineError(n, 'a batch line writes no hour-long cache', 'cache_control');
    writesCache ||= p.writesCache(req);
    lines.push({
      custom_id: id.data,
      prompt_tokens: prompt,
      max_output_tokens: maxOutput,
      body: p.providerBody(req, maxOutput),
    });
  }
  return { lines, model: model as string, writesCache };
}
