// The metered AI gateway, compatible with OpenAI's Chat Completions API: a student's Supabase
// access token is the API key (`new OpenAI({ baseURL: <functions url>/ai/v1, apiKey })`), and
// usage comes from the provider, never from the caller (docs/ai-gateway.md).
import { createApp } from '../_shared/http/app.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { requireUser } from '../_shared/http/require-user.ts';
import { sql } from '../_shared/adapters/db.ts';
import { readJson } from '../_shared/http/validate.ts';
import { chatCompletion } from './chat.ts';
import { ChatRequestSchema } from './schemas.ts';

const app = createApp('ai');

// What the caller may call and what each kind costs; answered whatever the balance.
app.get('/v1/models', requireUser, async (c) => {
  const [{ models }] = await sql`select billing.list_ai_models(${currentUser(c).id}) as models`;
  return c.json({ object: 'list', data: models });
});

app.post('/v1/chat/completions', requireUser, async (c) => {
  return chatCompletion(c, await readJson(c, ChatRequestSchema, 4 * 1024 * 1024));
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
