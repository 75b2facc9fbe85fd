// The server's side of an AI answer: the metered gateway takes the student's own access token as
// its API key (it holds the worst case, then charges what the provider reported), so the app's
// server passes the token on and streams the answer back unparsed. No key of the app's is
// involved: a student can only ever spend their own credits.

/**
 * A streamed chat completion (OpenAI's server-sent events) for `prompt`, as the gateway answers
 * it: a 402 (not enough credits) or 429 comes back as the gateway's JSON error, status kept.
 */
export async function streamAnswer(
  functionsUrl: string,
  studentToken: string,
  prompt: string,
  signal?: AbortSignal,
): Promise<Response> {
  const upstream = await fetch(`${functionsUrl}/ai/v1/chat/completions`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${studentToken}`,
      'content-type': 'application/json',
    },
    body: JSON.stringify({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: prompt }],
      max_tokens: 300,
      stream: true,
      stream_options: { include_usage: true }, // the last event says what was charged
    }),
    signal,
  });
  return new Response(upstream.body, {
    status: upstream.status,
    headers: {
      'content-type': upstream.headers.get('content-type') ??
        'text/event-stream',
    },
  });
}

/** The bearer token of a request, or null. */
export const bearer = (req: Request) => req.headers.get('authorization')?.match(/^Bearer (.+)$/)?.[1] ?? null;
