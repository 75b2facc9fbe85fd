// What each of the gateway's APIs may be asked (the schemas live beside how each API's prompt and
// usage are read, in protocols/*.ts): gathered here, where every route folder's schemas are.
export { ChatRequestSchema } from './protocols/chat.ts';
export { EmbeddingsRequestSchema } from './protocols/embeddings.ts';
export { MessagesRequestSchema } from './protocols/messages.ts';
export { ResponsesRequestSchema } from './protocols/responses.ts';
