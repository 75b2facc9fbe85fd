// Invisible format characters (Unicode Cf: direction marks, bidi embeddings and isolates,
// invisible operators, tag characters) are not read by a provider as separating anything: an
// email or a card number with them inside is still redacted in the content kept with consent,
// for a gateway call and for an ai_completion job alike.
import assert from 'node:assert/strict';
import { student } from '../support/ai.ts';
import { api, finishedJob, key, tick, until } from '../support/helpers.ts';

async function consentingStudent() {
  const s = await student();
  const consent = await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: true } });
  assert.equal(consent.status, 200, consent.text);
  return s;
}

/** A call's (or job's) kept prompt, once it has settled. */
const keptPromptOf = (token: string, id: string) =>
  until('the content kept', async () => {
    const one = await api(`/ai/v1/calls/${id}`, { token });
    return (one.body.data as { content: { prompt: string } | null } | undefined)?.content?.prompt ?? false;
  });

const hidden: Array<[string, string, string]> = [
  ['an email with a left-to-right mark before its @', 'carol.white\u200E@example.org', 'carol.white'],
  ['an email with an invisible operator after its @', 'carol.white@\u2061example.org', 'example.org'],
  ['an email with a tag character inside', 'carol.wh\u{E0020}ite@example.org', 'carol.wh'],
  ['a card with right-to-left marks between its groups', '4111\u200F1111\u200F1111\u200F1111', '1111'],
  ['a card with bidi isolates between its groups', '4242\u20664242\u20694242\u20664242', '4242'],
];

for (const [what, text, trace] of hidden) {
  Deno.test(`gateway: ${what} is redacted in what is kept`, async () => {
    const s = await consentingStudent();
    await s.openai.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: `mine is ${text} ok #standin words=2` }],
    });
    const list = await api('/ai/v1/calls?limit=1', { token: s.token });
    const [call] = (list.body.data as { items: Array<{ id: string }> }).items;
    const prompt = await keptPromptOf(s.token, call.id);
    assert.ok(!prompt.includes(trace), prompt);
    assert.ok(prompt.includes('#standin words=2'), 'the rest of the text is kept');
  });

  Deno.test(`ai_completion job: ${what} is redacted in what is kept`, async () => {
    const s = await consentingStudent();
    const q = await api('/jobs', {
      token: s.token,
      headers: key(),
      body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt: `mine is ${text} ok`, max_tokens: 20 } },
    });
    assert.equal(q.status, 202, q.text);
    const id = (q.body.data as { job_id: string }).job_id;
    await tick();
    assert.equal((await finishedJob(id)).status, 'completed');
    const prompt = await keptPromptOf(s.token, id);
    assert.ok(!prompt.includes(trace), prompt);
    assert.ok(prompt.includes('mine is'), 'the rest of the text is kept');
  });
}
