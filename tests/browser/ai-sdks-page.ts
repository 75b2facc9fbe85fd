// Bundled for Chromium by ai-sdks-in-browser.test.ts: the official openai and Anthropic SDKs in
// the page, as docs/ai-gateway.md § Integrate writes them (its openai chat is
// ai-sdks-page-openai.ts, whole), each carrying a chat through the gateway with the student's
// token, streamed, turn after turn. Each answers what it got back (or the error it threw, as
// text) for the test to check against the ledger.
/// <reference lib="dom" />
import Anthropic from '@anthropic-ai/sdk';
import { chatWithOpenAI as chatWithOpenAIAsDocumented } from './ai-sdks-page-openai.ts';

/** One turn as the page saw it: the answer's text and the usage the SDK reported. */
type Turn = { answer: string; usage?: unknown };
type Chat = { turns: Turn[]; error?: string };

/** The chat docs/ai-gateway.md § Integrate shows (ai-sdks-page-openai.ts), its error as text. */
async function chatWithOpenAI(functionsUrl: string, token: string, prompts: string[]): Promise<Chat> {
  try {
    return { turns: await chatWithOpenAIAsDocumented(functionsUrl.replace(/\/functions\/v1$/, ''), token, prompts) };
  } catch (err) {
    return { turns: [], error: String(err) };
  }
}

async function chatWithAnthropic(functionsUrl: string, token: string, prompts: string[]): Promise<Chat> {
  // Anthropic's SDK appends /v1 itself.
  const anthropic = new Anthropic({
    baseURL: `${functionsUrl}/ai`,
    apiKey: token,
    dangerouslyAllowBrowser: true,
    maxRetries: 0,
  });
  const messages: Anthropic.MessageParam[] = [];
  const turns: Turn[] = [];
  try {
    for (const content of prompts) {
      messages.push({ role: 'user', content });
      const message = await anthropic.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 60, messages })
        .finalMessage();
      const answer = message.content.map((b) => (b.type === 'text' ? b.text : '')).join('');
      messages.push({ role: 'assistant', content: answer });
      turns.push({ answer, usage: message.usage });
    }
    return { turns };
  } catch (err) {
    return { turns, error: String(err) };
  }
}

Object.assign(globalThis, { chatWithOpenAI, chatWithAnthropic });
