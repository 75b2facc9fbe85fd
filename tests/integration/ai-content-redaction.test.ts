// Content kept with consent is redacted as the provider reads it: the text parts of a message
// joined, normalised (NFKC), with cards, emails and phone numbers in the forms students write them.
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { gatewayUrl, student } from '../support/ai.ts';
import { api, finishedJob, key, tick, until } from '../support/helpers.ts';

/** A consenting student's kept prompt of their newest call (waits until it is settled). */
async function keptPrompt(token: string): Promise<string> {
  return await until('the call settled with its content', async () => {
    const list = await api('/ai/v1/calls?limit=1', { token });
    const [call] = (list.body.data as { items: Array<{ id: string; outcome: string }> }).items;
    if (!call || call.outcome === 'held') return false;
    const one = await api(`/ai/v1/calls/${call.id}`, { token });
    return (one.body.data as { content: { prompt: string } | null }).content?.prompt ?? false;
  });
}

async function consentingStudent() {
  const s = await student();
  const consent = await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: true } });
  assert.equal(consent.status, 200, consent.text);
  return s;
}

// What a student might write, and what must not be kept of it.
const personal: Array<[string, string]> = [
  ['an email with a fullwidth at sign', 'carol＠example.org'],
  ['an email with non-ASCII letters', 'josé@exämple.de'],
  ['a card written with dots', '4111.1111.1111.1111'],
  ['a card written with no-break spaces', '5555\u00A05555\u00A05555\u00A04444'],
  ['a card written with slashes', '4012/8888/8888/1881'],
  ['a card in fullwidth digits', '４２４２４２４２４２４２４２４２'],
  ['a UK phone number', '020 7946 0958'],
  ['a French phone number', '06 12 34 56 78'],
  ['a German phone number', '0151 23456789'],
  ['an Indian phone number', '+91 98765 43210'],
  ['a US phone number', '(415) 555-2671'],
];
const digitsOf = (s: string) => s.normalize('NFKC').replace(/\D/g, '');

Deno.test('Chat Completions: an email split over two content parts is redacted in what is kept', async () => {
  const s = await consentingStudent();
  await s.openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: [{
      role: 'user',
      content: [{ type: 'text', text: 'mail carol.white' }, { type: 'text', text: '@example.org #standin words=2' }],
    }],
  });
  const prompt = await keptPrompt(s.token);
  assert.ok(prompt.includes('[EMAIL]'), prompt);
  assert.ok(!prompt.includes('carol.white') && !prompt.includes('example.org'), prompt);
  assert.ok(prompt.includes('#standin words=2'), 'the rest of the text is kept');
});

for (const [what, text] of personal) {
  Deno.test(`Chat Completions: ${what} is not kept`, async () => {
    const s = await consentingStudent();
    await s.openai.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: `#standin words=2 reach me: ${text} thanks` }],
    });
    const prompt = await keptPrompt(s.token);
    assert.ok(!prompt.includes(text) && !prompt.includes(text.normalize('NFKC')), prompt);
    const digits = digitsOf(text);
    if (digits) assert.ok(!prompt.replace(/\D/g, '').includes(digits.slice(-8)), `no digits of ${text}: ${prompt}`);
    assert.match(prompt, /reach me: \[(EMAIL|CARD|PHONE)\] thanks/);
  });
}

Deno.test('Responses and Messages: a card split over content parts is redacted in what is kept', async () => {
  const s = await consentingStudent();
  await s.openai.responses.create({
    model: 'gpt-4o-mini',
    input: [{
      role: 'user',
      content: [{ type: 'input_text', text: '#standin words=2 card 4111 1111' }, {
        type: 'input_text',
        text: ' 1111 1111',
      }],
    }],
  });
  const responses = await keptPrompt(s.token);
  assert.ok(responses.includes('[CARD]') && !responses.includes('4111'), responses);
  const anthropic = new Anthropic({ baseURL: gatewayUrl.replace(/\/v1$/, ''), apiKey: s.token, maxRetries: 0 });
  await anthropic.messages.create({
    model: 'claude-haiku-4-5',
    max_tokens: 20,
    messages: [{
      role: 'user',
      content: [{ type: 'text', text: '#standin words=2 card 4111 1111' }, { type: 'text', text: ' 1111 1111' }],
    }],
  });
  const messages = await keptPrompt(s.token);
  assert.ok(messages.includes('[CARD]') && !messages.includes('4111'), messages);
});

Deno.test("an ai_completion job's kept prompt is redacted the same way", async () => {
  const s = await consentingStudent();
  const r = await api('/jobs', {
    token: s.token,
    headers: key(),
    body: {
      type: 'ai_completion',
      input: {
        model: 'gpt-4o',
        prompt: 'mail carol＠example.org, card 4111.1111.1111.1111, tel 020 7946 0958',
        max_tokens: 20,
      },
    },
  });
  assert.equal(r.status, 202, r.text);
  const id = (r.body.data as { job_id: string }).job_id;
  await tick();
  assert.equal((await finishedJob(id)).status, 'completed');
  const seen = await api(`/ai/v1/calls/${id}`, { token: s.token });
  const prompt = (seen.body.data as { content: { prompt: string } }).content.prompt;
  assert.equal(prompt, 'mail [EMAIL], card [CARD], tel [PHONE]');
});
