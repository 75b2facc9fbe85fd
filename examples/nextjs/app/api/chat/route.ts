// POST /api/chat {messages}: the chat of app/chat/page.tsx (useChat, lib/chat.tsx), as the AI SDK's
// chatbot guide writes it, with the billing service's metered gateway as the provider and the
// signed-in student's access token as its API key. A refusal (not enough credits, a spend cap,
// too many requests) reaches the page as the gateway's own sentence: without onError the AI SDK
// would send "An error occurred." and the student would never learn why.
import { createOpenAI } from '@ai-sdk/openai';
import { APICallError, convertToModelMessages, RetryError, streamText, type UIMessage } from 'ai';

export async function POST(req: Request): Promise<Response> {
  const token = req.headers.get('authorization')?.match(/^Bearer (.+)$/)?.[1];
  if (!token) return new Response('Sign in first.', { status: 401 });
  const openai = createOpenAI({
    baseURL: `${process.env.NEXT_PUBLIC_SUPABASE_URL}/functions/v1/ai/v1`,
    apiKey: token,
  });
  const { messages } = (await req.json()) as { messages: UIMessage[] };
  const result = streamText({
    model: openai('gpt-4o-mini'),
    system: 'You are a helpful assistant.',
    messages: await convertToModelMessages(messages),
    maxOutputTokens: 300, // a chat turn's answer; on the last credits the gateway holds less
    onError: () => {}, // a refusal is the page's to show (below), not a server error to log
  });
  return result.toUIMessageStreamResponse({ onError: refusalText });
}

/**
 * What the student is shown when the gateway refused: its own sentence, which names what was
 * needed, what is available and the way out (the AI SDK's error keeps only the sentence). Anything
 * else never shows internals.
 */
function refusalText(failure: unknown): string {
  // A 429 or 5xx is retried first (streamText's maxRetries): its last answer is the one to show.
  const error = RetryError.isInstance(failure) ? failure.lastError : failure;
  return APICallError.isInstance(error) ? error.message : 'The AI could not answer. Try again.';
}
