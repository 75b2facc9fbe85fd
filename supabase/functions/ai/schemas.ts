// What each of the gateway's APIs may be asked (the schemas live beside how each API's prompt and
// usage are read, in protocols/*.ts), and the call log's queries: gathered here, where every
// route folder's schemas are.
import { z } from 'zod';
import { ModelSchema } from '../_shared/values/text.ts';
import { IdCursorSchema, pageLimit } from '../_shared/values/query.ts';

export { ChatRequestSchema } from './protocols/chat.ts';
export { EmbeddingsRequestSchema } from './protocols/embeddings.ts';
export { MessagesRequestSchema } from './protocols/messages.ts';
export { ResponsesRequestSchema } from './protocols/responses.ts';

/** A call's outcome in the log: held (in flight), charged, failed (nothing charged), refused (never sent). */
export const CallOutcomeSchema = z.enum(['held', 'charged', 'failed', 'refused']);

/** GET /ai/v1/calls: the caller's own calls, newest first. */
export const MyCallsQuerySchema = z.strictObject({
  model: ModelSchema.optional(),
  outcome: CallOutcomeSchema.optional(),
  cursor: IdCursorSchema.optional(),
  limit: pageLimit(100, 20),
});

/** PUT /ai/v1/content-consent. */
export const ContentConsentSchema = z.strictObject({ keep_content: z.boolean() });
