// Webhook endpoints, as Stripe keeps them: each has a URL, its own signing secret (shown only
// in the answer that creates it), `enabled_events`, and whether it listens to the platform's
// own account or to connected accounts (`connect`). An event goes only to the enabled
// endpoints of its side whose list names its type (or `*`).
import type Stripe from 'stripe';
import { connectEvents, platformEvents } from '../../../supabase/functions/stripe-webhook/events.ts';
import { type FormObject, obj, str } from './form.ts';
import { invalid, missing, route } from './http.ts';
import { config, newId, now, store } from './state.ts';

export interface Endpoint {
  endpoint: Stripe.WebhookEndpoint;
  secret: string;
  connect: boolean;
}

const eventType = /^(\*|[a-z_]+(\.[a-z_]+)+)$/;

function enabledEvents(v: unknown): string[] {
  const list = Array.isArray(v) ? v.map(str) : [];
  if (list.length === 0 || list.some((e) => e === null || !eventType.test(e))) {
    throw invalid('enabled_events must list event types (or *).', 'enabled_events');
  }
  return list as string[];
}

function url(v: unknown): string {
  const s = str(v);
  if (!s || !URL.canParse(s) || !/^https?:$/.test(new URL(s).protocol)) throw invalid('Invalid URL.', 'url');
  return s;
}

const metadata = (v: unknown) => Object.fromEntries(Object.entries(obj(v)).map(([k, x]) => [k, str(x) ?? '']));

/** Creates an endpoint; `secret` is Stripe's to choose, except for the stack's default ones. */
export function createEndpoint(body: FormObject, secret = `whsec_${newId('x').slice(2)}`): Stripe.WebhookEndpoint {
  const endpoint: Stripe.WebhookEndpoint = {
    id: newId('we'),
    object: 'webhook_endpoint',
    api_version: str(body.api_version),
    application: null,
    created: now(),
    description: str(body.description) || null,
    enabled_events: enabledEvents(body.enabled_events),
    livemode: false,
    metadata: metadata(body.metadata),
    status: 'enabled',
    url: url(body.url),
  };
  store.webhookEndpoints.set(endpoint.id, { endpoint, secret, connect: str(body.connect) === 'true' });
  return { ...endpoint, secret };
}

function endpointOf(id: string): Endpoint {
  const e = store.webhookEndpoints.get(id);
  if (!e) throw missing('webhook_endpoint', id);
  return e;
}

function update(id: string, body: FormObject): Stripe.WebhookEndpoint {
  const { endpoint } = endpointOf(id);
  if (body.enabled_events !== undefined) endpoint.enabled_events = enabledEvents(body.enabled_events);
  if (body.url !== undefined) endpoint.url = url(body.url);
  if (body.description !== undefined) endpoint.description = str(body.description) || null;
  if (body.metadata !== undefined) endpoint.metadata = { ...endpoint.metadata, ...metadata(body.metadata) };
  if (body.disabled !== undefined) endpoint.status = str(body.disabled) === 'true' ? 'disabled' : 'enabled';
  return endpoint;
}

/** The enabled endpoints that receive `event`: its side (platform or Connect), its type listed. */
export function receivers(event: Stripe.Event): Endpoint[] {
  return [...store.webhookEndpoints.values()].filter(({ endpoint, connect }) =>
    endpoint.status === 'enabled' && connect === Boolean(event.account) &&
    (endpoint.enabled_events.includes('*') || endpoint.enabled_events.includes(event.type))
  );
}

/**
 * The local stack's endpoints at STRIPE_WEBHOOK_URL, signed with its configured secrets and
 * listening to exactly the events the service subscribes to (stripe-webhook/events.ts), as
 * ./scripts/stripe-webhook-endpoint sets them up on Stripe. None without a URL and secret.
 */
export function createDefaultEndpoints(): void {
  if (!config.webhookUrl || !config.webhookSecret) return;
  const form = (events: string[], connect: boolean): FormObject => ({
    url: config.webhookUrl,
    enabled_events: events,
    connect: String(connect),
    description: `local ${connect ? 'connect' : 'platform'} endpoint`,
  });
  createEndpoint(form(platformEvents, false), config.webhookSecret);
  createEndpoint(form(connectEvents, true), config.connectWebhookSecret || config.webhookSecret);
}

export const endpointRoutes = [
  route('POST', '/v1/webhook_endpoints', ({ body }) => createEndpoint(body)),
  route('GET', '/v1/webhook_endpoints', ({ query }): Stripe.ApiList<Stripe.WebhookEndpoint> => {
    const limit = Math.min(Number(query.get('limit') ?? 10), 100);
    let data = [...store.webhookEndpoints.values()].map((e) => e.endpoint).reverse();
    const after = query.get('starting_after');
    if (after) data = data.slice(data.findIndex((e) => e.id === after) + 1);
    return { object: 'list', data: data.slice(0, limit), has_more: data.length > limit, url: '/v1/webhook_endpoints' };
  }),
  route('GET', '/v1/webhook_endpoints/:id', ({ params }) => endpointOf(params.id).endpoint),
  route('POST', '/v1/webhook_endpoints/:id', ({ params, body }) => update(params.id, body)),
  route('DELETE', '/v1/webhook_endpoints/:id', ({ params }): Stripe.DeletedWebhookEndpoint => {
    endpointOf(params.id);
    store.webhookEndpoints.delete(params.id);
    return { id: params.id, object: 'webhook_endpoint', deleted: true };
  }),
];
