// What npm installs on Node 20 (README § Node): the AI SDK's older majors (`ai` 6 with
// `@ai-sdk/openai` 3 and `@ai-sdk/anthropic` 3) and `openai` 6 parse every answer of the gateway
// (through the local stand-in) and each call is charged exactly once. Deno takes one import map
// per process, so they run in a process of their own with a map pinning them.
import assert from 'node:assert/strict';
import { callsOf, cardPrice, gatewayUrl, settled, student } from '../support/ai.ts';

/** The majors npm picks on Node 20, as the issue and README name them. */
const olderMajors = {
  'ai': 'npm:ai@6.0.325',
  '@ai-sdk/openai': 'npm:@ai-sdk/openai@3.0.141',
  '@ai-sdk/anthropic': 'npm:@ai-sdk/anthropic@3.0.140',
  'openai': 'npm:openai@6.49.0',
};

const script = `
import { generateText, streamText } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { createAnthropic } from '@ai-sdk/anthropic';
import OpenAI from 'openai';
const [base, token] = Deno.args;
const prompt = 'hi #standin words=4';
const answers = [];
const models = [
  ['openai(model)', createOpenAI({ baseURL: base, apiKey: token })('gpt-4o-mini')],
  ['openai.chat(model)', createOpenAI({ baseURL: base, apiKey: token }).chat('gpt-4o-mini')],
  ['anthropic(model)', createAnthropic({ baseURL: base, apiKey: token })('claude-haiku-4-5')],
];
for (const [label, model] of models) {
  const whole = await generateText({ model, prompt, maxOutputTokens: 40, maxRetries: 0 });
  let streamed = '';
  for await (const part of streamText({ model, prompt, maxOutputTokens: 40, maxRetries: 0 }).textStream) streamed += part;
  answers.push({ label, whole: whole.text, streamed });
}
const client = new OpenAI({ baseURL: base, apiKey: token, maxRetries: 0 });
const chat = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: prompt }] });
answers.push({ label: 'openai 6', whole: chat.choices[0].message.content, streamed: chat.choices[0].message.content });
console.log(JSON.stringify(answers));
`;

Deno.test('the SDK majors npm installs on Node 20 parse every gateway answer, each call charged once, exactly', async () => {
  const s = await student('100');
  const dir = await Deno.makeTempDir({ prefix: 'older-majors-' });
  try {
    await Deno.writeTextFile(`${dir}/import_map.json`, JSON.stringify({ imports: olderMajors }));
    await Deno.writeTextFile(`${dir}/chat.ts`, script);
    const run = await new Deno.Command(Deno.execPath(), {
      args: [
        'run',
        '-A',
        '--no-config',
        '--no-lock',
        `--import-map=${dir}/import_map.json`,
        `${dir}/chat.ts`,
        gatewayUrl,
        s.token,
      ],
      stdout: 'piped',
      stderr: 'piped',
    }).output();
    const err = new TextDecoder().decode(run.stderr);
    assert.ok(run.success, err.slice(-2000));
    const answers = JSON.parse(new TextDecoder().decode(run.stdout).trim().split('\n').at(-1) ?? '[]') as {
      label: string;
      whole: string;
      streamed: string;
    }[];
    assert.equal(answers.length, 4);
    for (const a of answers) {
      assert.match(a.whole, /word4/, `${a.label}: the whole answer`);
      assert.equal(a.streamed.trim(), a.whole.trim(), `${a.label}: the streamed answer`);
    }
    await settled(s.id);
    const calls = await callsOf(s.id);
    assert.equal(calls.length, 7, 'one charge a call: three whole, three streamed, one openai 6');
    for (const c of calls) {
      assert.equal(c.status, 'charged');
      const u = c.usage as Record<string, number>;
      const model = (c.transfer_metadata as { model: string }).model;
      const price = await cardPrice(model, {
        input: u.input_tokens,
        cached: u.cached_input_tokens,
        output: u.output_tokens,
        reasoning: u.reasoning_tokens,
      });
      assert.equal(c.charged, price, `${model}: charged the rate card price of its usage`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
