// A chat in the browser with the openai SDK, through the gateway, the signed-in student's access
// token as the key: `(await supabase.auth.getSession()).data.session?.access_token`.
import OpenAI from 'openai';

/** One answer, and its usage as the gateway reported it: `usage.cost` is what it was charged. */
export type Turn = { answer: string; usage?: OpenAI.CompletionUsage & { cost?: string } };

/** Asks each of `prompts` in turn, with the conversation so far; `show` gets each answer as it streams. */
export async function chatWithOpenAI(
  supabaseUrl: string,
  token: string,
  prompts: string[],
  show: (answer: string) => void = () => {},
): Promise<Turn[]> {
  const ai = new OpenAI({
    baseURL: `${supabaseUrl}/functions/v1/ai/v1`,
    apiKey: token,
    dangerouslyAllowBrowser: true, // the key is the student's own short-lived token, not a secret
    maxRetries: 0,
  });
  const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [];
  const turns: Turn[] = [];
  for (const content of prompts) {
    messages.push({ role: 'user', content });
    const stream = await ai.chat.completions.create({
      model: 'gpt-4o-mini',
      messages,
      max_tokens: 300, // the hold covers this, not the 4,096 default
      stream: true,
      stream_options: { include_usage: true }, // the last chunk's usage.cost is the charge
    });
    const turn: Turn = { answer: '' };
    for await (const chunk of stream) {
      turn.answer += chunk.choices[0]?.delta?.content ?? '';
      show(turn.answer);
      if (chunk.usage) turn.usage = chunk.usage;
    }
    messages.push({ role: 'assistant', content: turn.answer });
    turns.push(turn);
  }
  return turns;
}
