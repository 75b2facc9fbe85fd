// The "ask" box: one call through the metered AI gateway, streamed in OpenAI's wire format (SSE).
// What the call may cost is held while it answers (the `x-credits-held` header); the last chunk's
// `usage.cost` is the exact charge, priced from the provider's own count. Plain fetch: the
// `openai` SDK works the same way (docs/ai-gateway.md), but the page stays small without it.
/// <reference lib="dom" />
import { roundedCredits } from './credits.ts';

export interface AskView {
  held(credits: string): void;
  text(more: string): void;
  charged(credits: string, tokens: { input: number; output: number }): void;
}

/** Streams one answer to `prompt` from the gateway at `api` as the student `token` names. */
export async function askStreaming(api: string, token: string, prompt: string, view: AskView): Promise<void> {
  const res = await fetch(`${api}/functions/v1/ai/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: prompt }],
      max_tokens: 200, // the hold covers this answer, not the gateway's 4,096 default
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok || !res.body) {
    const body = await res.json().catch(() => null);
    const required = body?.error?.details?.required;
    throw new Error(
      res.status === 402 && required
        ? `This question may use up to ${roundedCredits(required)} credits: buy credits to ask it.`
        : body?.error?.message ?? `The AI could not answer (${res.status}).`,
    );
  }
  view.held(res.headers.get('x-credits-held') ?? '?');
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (let i = buffer.indexOf('\n\n'); i >= 0; i = buffer.indexOf('\n\n')) {
      const data = buffer.slice(0, i).replace(/^data: ?/, '');
      buffer = buffer.slice(i + 2);
      if (data === '[DONE]') return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      view.text(chunk.choices?.[0]?.delta?.content ?? '');
      if (chunk.usage?.cost) {
        view.charged(chunk.usage.cost, { input: chunk.usage.prompt_tokens, output: chunk.usage.completion_tokens });
      }
    }
  }
}
