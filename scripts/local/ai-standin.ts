// A local stand-in for an AI provider on :54332, so the AI gateway runs and is tested offline.
// It speaks four wire formats, faithfully enough that the official SDKs parse them, and counts
// tokens with the tokenizer the gateway uses (o200k). It is NOT a model: it answers with
// numbered words (" word1 word2 …"), or plays structured output and tools (ai-standin/structured.ts):
// a JSON value valid for a request's JSON schema, a tool call as the tool choice allows.
//   POST /v1/chat/completions   OpenAI Chat Completions (Authorization: Bearer AI_API_KEY): JSON,
//                               or SSE with a final usage chunk when stream_options.include_usage
//   POST /v1/responses          OpenAI Responses (Bearer): a Response, or typed SSE events ending
//                               in response.completed / response.incomplete / response.failed
//   POST /v1/messages           Anthropic Messages (x-api-key or Bearer AI_API_KEY, anthropic-version):
//                               a Message, or SSE message_start … message_delta … message_stop;
//                               a 400 for thinking.budget_tokens under 1,024 or not below max_tokens
//   POST /v1/embeddings         OpenAI Embeddings (Bearer): deterministic vectors, float or base64
//   GET  /v1/models             one model, for deep health checks
//   GET  /_standin/calls/:tag   how a tagged call ended (running, done, aborted), its protocol
//                               and the usage it reported, in that protocol's own shape
// Both batch APIs (ai-standin/batches*.ts), in memory, on a virtual clock: each line runs through
// its interactive route above (unstreamed, once, when first read after it is due) and its answer,
// status and body, is the line's result, so every directive below works per line.
//   POST /v1/files              OpenAI (Bearer): multipart purpose=batch, file=JSONL of
//                               {custom_id, method: POST, url, body} → a file object
//   GET  /v1/files/:id[/content] the file object; its bytes (uploaded, output and error files)
//   POST /v1/batches            {input_file_id, endpoint, completion_window: 24h, metadata?}: 400 for an
//                               unknown file, another endpoint than chat/completions, responses or
//                               embeddings, a line's url not the endpoint, a repeated custom_id, or two models
//   GET  /v1/batches/:id        in_progress → completed | expired, or cancelling → cancelled; once
//   POST /v1/batches/:id/cancel ended, output_file_id (2xx lines) and error_file_id (other answers,
//                               then batch_expired / batch_cancelled lines), null for an empty file
//   POST /v1/messages/batches   Anthropic (as /v1/messages): {requests: [{custom_id, params}]}; 400 for
//                               none or a repeated custom_id; models may differ
//   GET  /v1/messages/batches/:id          in_progress → ended, or canceling → ended; results_url
//   POST /v1/messages/batches/:id/cancel   (on the caller's own origin) once ended
//   GET  /v1/messages/batches/:id/results  JSONL (application/binary) of succeeded / errored /
//                               canceled / expired results; 404 not_found_error before the end
//   GET  /_standin/clock        {now}: the batch clock, unix seconds, starting at real time;
//   POST /_standin/clock        {advance_seconds: n} moves it forward (never back), answers {now}
//   GET  /_standin/batches/:id  {fetches, lines: {custom_id: processing | succeeded | errored |
//                               canceled | expired}}: how often its results or output/error files
//                               were fetched, as of its last read (this does not move it)
// A line is due batch_at seconds after its batch was created; at created + 86,400 the lines not
// done expire. A batch moves only when read (GET, cancel, results): a cancel leaves it cancelling
// (canceling) and its next read ends it, the lines not done by the cancel canceled.
// A test steers a call with directives in the last user message (embeddings: in any input
// string), e.g. `#standin words=40 cached=8 reasoning=12 delay=20 tag=abc`:
//   words=<n>             answer length (12 by default); a max_tokens / max_output_tokens limit
//                         cuts it (finish_reason length, status incomplete, stop_reason max_tokens)
//   cached=<n>            prompt tokens reported as read from cache (Messages: cache_read_input_tokens)
//   cache_write=<n>       Messages: cache_creation_input_tokens; Responses: cache_write_tokens
//   cache_write_1h=<n>    Messages: hour-long writes (in cache_creation_input_tokens, and apart in
//                         cache_creation.ephemeral_1h_input_tokens; cache_write= are the 5-minute ones)
//   reasoning=<n>         reasoning / thinking tokens, counted in the output tokens
//   delay=<ms>            between streamed events; first_byte_delay=<ms> before the answer
//   fail=<status>         an error answer in the protocol's own error shape
//   stop_after=<n>        the connection drops after n streamed events
//   no_usage              no usage reported: whole answers without `usage`; streams without the
//                         usage chunk (chat) or terminal usage (Responses); Messages streams with
//                         message_start's usage all zeros and message_delta without usage (the
//                         Anthropic SDK's MessageStream then throws, as on such a provider)
//   error_after_usage     an error after the usage (chat: an error chunk instead of [DONE];
//                         Responses: response.failed carrying usage; Messages: an error event
//                         instead of message_stop)
//   error_event           Responses / Messages: an error event after the text, before any usage
//   deltas=<n>            Messages: n message_delta events, cumulative output_tokens rising to the total
//   extra_prompt=<n>      bills n more prompt tokens than the gateway can count (as another tokenizer may)
//   unusual               the answer ends with a NUL and a lone surrogate (" nul\u0000 lone\ud800")
//   tag=<id>              records the call at GET /_standin/calls/<id>
//   batch_at=<s>          in a batch: the line completes s virtual seconds after the batch was created (60)
// A base URL can fail every call made under it, whatever the prompt (an upstream that is down,
// for the gateway's fallbacks): http://…/_standin/fail/<how>/v1, where <how> is an HTTP status
// (an error answer with it), `timeout` (never answers) or `broken` (200 and an event stream
// whose connection breaks before its first byte).
import { calls } from './ai-standin/common.ts';
import { chat } from './ai-standin/chat.ts';
import { responses } from './ai-standin/responses.ts';
import { messages } from './ai-standin/messages.ts';
import { embeddings } from './ai-standin/embeddings.ts';
import { batchHook, clock } from './ai-standin/batches.ts';
import { openaiBatches as openai } from './ai-standin/batches-openai.ts';
import { anthropicBatches as anthropic } from './ai-standin/batches-anthropic.ts';

const port = Number(Deno.env.get('AI_STANDIN_PORT') ?? 54332);
const key = Deno.env.get('AI_API_KEY') ?? '';

const routes: Record<string, (req: Request, key: string) => Promise<Response>> = {
  '/v1/chat/completions': chat,
  '/v1/responses': responses,
  '/v1/messages': messages,
  '/v1/embeddings': embeddings,
};

/** The batch routes: method, path (its one group the id) and handler. */
const batchRoutes: [string, RegExp, (req: Request, key: string, id: string) => Promise<Response> | Response][] = [
  ['POST', /^\/v1\/files$/, openai.uploadFile],
  ['GET', /^\/v1\/files\/([\w-]+)$/, openai.getFile],
  ['GET', /^\/v1\/files\/([\w-]+)\/content$/, openai.fileContent],
  ['POST', /^\/v1\/batches$/, openai.createBatch],
  ['GET', /^\/v1\/batches\/(\w+)$/, openai.getBatch],
  ['POST', /^\/v1\/batches\/(\w+)\/cancel$/, openai.cancelBatch],
  ['POST', /^\/v1\/messages\/batches$/, anthropic.createBatch],
  ['GET', /^\/v1\/messages\/batches\/(\w+)$/, anthropic.getBatch],
  ['POST', /^\/v1\/messages\/batches\/(\w+)\/cancel$/, anthropic.cancelBatch],
  ['GET', /^\/v1\/messages\/batches\/(\w+)\/results$/, anthropic.results],
  ['GET', /^\/_standin\/clock$/, clock],
  ['POST', /^\/_standin\/clock$/, clock],
  ['GET', /^\/_standin\/batches\/(\w+)$/, (_req, _key, id) => batchHook(id)],
];

/** An upstream that is down, as a base URL under /_standin/fail/<how> says. */
async function down(how: string, req: Request): Promise<Response> {
  await req.body?.cancel();
  if (how === 'timeout') {
    // Silent until the caller gives up.
    await new Promise((resolve) => req.signal.addEventListener('abort', resolve, { once: true }));
    return new Response(null, { status: 504 });
  }
  if (how === 'broken') {
    const body = new ReadableStream<Uint8Array>({
      pull: (c) => new Promise((resolve) => setTimeout(() => resolve(c.error(new Error('broken'))), 20)),
    });
    return new Response(body, { headers: { 'content-type': 'text/event-stream' } });
  }
  const status = Number(how);
  return Response.json({ error: { message: `the stand-in is down (${status})`, type: 'server_error' } }, {
    status: status >= 400 && status <= 599 ? status : 500,
  });
}

Deno.serve({ hostname: '127.0.0.1', port, onListen: () => console.log(`AI stand-in on :${port}`) }, (req) => {
  const url = new URL(req.url);
  const failing = url.pathname.match(/^\/_standin\/fail\/([a-z0-9]+)\/v1\//);
  if (failing && req.method === 'POST') return down(failing[1], req);
  const route = routes[url.pathname];
  if (route && req.method === 'POST') return route(req, key);
  for (const [method, path, handle] of batchRoutes) {
    const m = req.method === method && url.pathname.match(path);
    if (m) return handle(req, key, m[1] ?? '');
  }
  if (url.pathname === '/v1/models' && req.method === 'GET') {
    return Response.json({ object: 'list', data: [{ id: 'standin', object: 'model', created: 0, owned_by: 'local' }] });
  }
  const tagged = url.pathname.match(/^\/_standin\/calls\/([A-Za-z0-9_-]+)$/);
  if (tagged) return Response.json(calls.get(tagged[1]) ?? { status: 'unknown' });
  if (url.pathname === '/_standin/healthz') return new Response('ok');
  return Response.json({ error: { message: 'not found', type: 'invalid_request_error' } }, { status: 404 });
});
