// The metered AI gateway: the APIs AI apps speak (OpenAI's Chat Completions, Responses and
// embeddings, Anthropic's Messages), each model served by its own upstream. A student's Supabase
// access token is the API key (a bearer token, or Anthropic's x-api-key), and usage comes from
// the provider, never from the caller (docs/ai-gateway.md).
import { sql } from '../_shared/adapters/db.ts';
import { aiUpstreams, type Endpoint } from '../_shared/adapters/ai-upstreams.ts';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { z } from 'zod';
import type { AppContext } from '../_shared/app-env.ts';
import { appErrorOf, createApp, errorResponse, noRouteError } from '../_shared/http/app.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { requireUser } from '../_shared/http/require-user.ts';
import { readJson } from '../_shared/http/validate.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { invalid } from '../_shared/values/invalid.ts';
import { meteredCall } from './call.ts';
import {
  createBatch,
  createMessageBatch,
  fileContent,
  getFile,
  messageBatchResults,
  readBatch,
  uploadFile,
} from './batch-routes.ts';
import { syncOpenBatches } from './batches.ts';
import { requireCronSecret } from '../_shared/http/secrets.ts';
import { refuseCall } from './metering.ts';
import { deleteMyContent, getConsent, myCall, myCalls, setConsent } from './log.ts';
import type { Protocol } from './protocol.ts';
import { chat } from './protocols/chat.ts';
import { embeddings } from './protocols/embeddings.ts';
import { anthropicError, messages } from './protocols/messages.ts';
import { responses } from './protocols/responses.ts';

// Anthropic's SDKs send the key as x-api-key: it is the caller's token when no bearer header is.
const app = createApp('ai', {
  sessionToken: (c) => c.req.header('authorization') ? undefined : c.req.header('x-api-key'),
});
// Anthropic's SDKs read errors in Anthropic's shape: every error /v1/messages answers is in it.
const answerError = (err: unknown, c: AppContext): Response => {
  if (!/\/v1\/messages(\/|$)/.test(c.req.path)) return errorResponse(c, err);
  const error = appErrorOf(c, err);
  return c.json(anthropicError(error, c.get('requestId')), error.status as ContentfulStatusCode, error.options.headers);
};
app.onError(answerError);
app.notFound((c) => answerError(noRouteError(app, c), c));

// What the caller may call, what each kind costs and which APIs serve it: those its kind is
// served by (SQL says) that its upstream speaks. Answered whatever the balance.
app.get('/v1/models', requireUser, async (c) => {
  const [{ models }] = await sql`select billing.list_ai_models(${currentUser(c).id}) as models`;
  const upstreams = aiUpstreams();
  return c.json({
    object: 'list',
    data: (models as { upstream: string; endpoints: Endpoint[] }[]).map((m) => ({
      ...m,
      endpoints: m.endpoints.filter((e) => upstreams.get(m.upstream)?.speaks.has(e) ?? false),
    })),
  });
});

/**
 * A body refused by its API's schema goes on the call log with its code (one insert, the model
 * named only if priced); one that is not JSON, or too large, stays off it, as a 429 does.
 */
const route = <R>(p: Protocol<R>) => async (c: AppContext) => {
  const started = performance.now();
  const body = await c.get('steps').time('body', () => readJson(c, z.unknown(), 4 * 1024 * 1024));
  const req = p.schema.safeParse(body);
  if (req.success) return meteredCall(c, p, req.data);
  const error = invalid(req.error);
  const { model, stream } = (body && typeof body === 'object' ? body : {}) as { model?: unknown; stream?: unknown };
  await refuseCall(
    currentUser(c).id,
    typeof model === 'string' ? model.slice(0, 128) : '',
    p.endpoint,
    stream === true,
    error.code,
    Math.round(performance.now() - started),
  ).catch((e) => log.error('ai refusal could not be recorded', errorSummary(e)));
  throw error;
};

app.post('/v1/chat/completions', requireUser, route(chat));
app.post('/v1/responses', requireUser, route(responses));
app.post('/v1/messages', requireUser, route(messages));
app.post('/v1/embeddings', requireUser, route(embeddings));

// Batches at the batch price (batch-routes.ts), and the minute tick that settles them once the
// provider ended them, whether or not anyone polls.
app.post('/v1/files', requireUser, uploadFile);
app.get('/v1/files/:id', requireUser, getFile);
app.get('/v1/files/:id/content', requireUser, fileContent);
app.post('/v1/batches/sync', async (c) => {
  requireCronSecret(c);
  return c.json({ settled: await syncOpenBatches(20_000) });
});
app.post('/v1/batches', requireUser, createBatch);
app.get('/v1/batches/:id', requireUser, readBatch('openai', false));
app.post('/v1/batches/:id/cancel', requireUser, readBatch('openai', true));
app.post('/v1/messages/batches', requireUser, createMessageBatch);
app.get('/v1/messages/batches/:id', requireUser, readBatch('anthropic', false));
app.post('/v1/messages/batches/:id/cancel', requireUser, readBatch('anthropic', true));
app.get('/v1/messages/batches/:id/results', requireUser, messageBatchResults);

// The caller's own call log, and the content kept of their calls with their consent (log.ts).
app.get('/v1/calls', requireUser, myCalls);
app.get('/v1/calls/:id', requireUser, myCall);
app.delete('/v1/calls/:id/content', requireUser, deleteMyContent);
app.get('/v1/content-consent', requireUser, getConsent);
app.put('/v1/content-consent', requireUser, setConsent);

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
