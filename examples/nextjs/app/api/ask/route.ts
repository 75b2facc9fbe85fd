// POST /api/ask {prompt}: an AI answer streamed through the billing service's metered gateway,
// charged to the signed-in student whose access token the page sends.
import { bearer, streamAnswer } from '../../../lib/gateway';

export async function POST(req: Request): Promise<Response> {
  const token = bearer(req);
  // Errors in the gateway's own (OpenAI's) shape, so the page reads one kind.
  if (!token) {
    return Response.json({ error: { message: 'Sign in first.' } }, {
      status: 401,
    });
  }
  const { prompt } = (await req.json()) as { prompt?: unknown };
  if (typeof prompt !== 'string' || !prompt.trim()) {
    return Response.json({ error: { message: 'Ask something.' } }, {
      status: 400,
    });
  }
  return streamAnswer(
    `${process.env.NEXT_PUBLIC_SUPABASE_URL}/functions/v1`,
    token,
    prompt,
    req.signal,
  );
}
