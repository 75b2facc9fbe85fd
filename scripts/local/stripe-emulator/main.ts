// A local stand-in for the parts of the Stripe API this project uses, for development and
// tests only (Stripe cannot be reached from here). The project reaches it through the
// official `stripe` SDK with STRIPE_API_BASE pointing here; objects are typed with the SDK's
// own types. Test controls live outside /v1 under /_emulator. See docs/stripe-emulator.md.
import type Stripe from 'stripe';
import { chargeRoutes } from './charges.ts';
import { checkoutRoutes } from './checkout.ts';
import { connectRoutes } from './connect.ts';
import { createDefaultEndpoints, endpointRoutes } from './endpoints.ts';
import { offSessionRoutes } from './off-session.ts';
import { subscriptionRoutes } from './subscriptions.ts';
import { invoiceRoutes } from './invoices.ts';
import { dispatch, missing, type Route, route } from './http.ts';
import { config, store } from './state.ts';

const routes: Route[] = [
  route('GET', '/_emulator/healthz', () => ({ status: 'ok' })),
  route('POST', '/_emulator/faults', ({ json }) => {
    const { latency_ms = 0, down = false } = json() as { latency_ms?: number; down?: boolean };
    config.latencyMs = latency_ms;
    config.down = down;
    return { latency_ms: config.latencyMs, down: config.down };
  }),
  // Stripe Tax's rate for every address from now on (0: an exempt customer, say).
  route('POST', '/_emulator/tax', ({ json }) => {
    const { rate_bps } = json() as { rate_bps: number };
    config.taxBps = rate_bps;
    return { rate_bps: config.taxBps };
  }),
  route('GET', '/v1/events/:id', ({ params }) => {
    const event = store.events.find((e) => e.id === params.id);
    if (!event) throw missing('event', params.id);
    return event;
  }),
  route('GET', '/v1/events', ({ query }): Stripe.ApiList<Stripe.Event> => {
    const limit = Math.min(Number(query.get('limit') ?? 10), 100);
    const type = query.get('type');
    const matching = store.events.filter((e) => !type || e.type === type).reverse();
    return { object: 'list', data: matching.slice(0, limit), has_more: matching.length > limit, url: '/v1/events' };
  }),
  ...checkoutRoutes,
  ...chargeRoutes,
  ...connectRoutes,
  ...offSessionRoutes,
  ...endpointRoutes,
  ...subscriptionRoutes,
  ...invoiceRoutes,
];
createDefaultEndpoints();

Deno.serve(
  { port: config.port, hostname: '127.0.0.1', onListen: () => console.log(`stripe emulator on :${config.port}`) },
  (req) => dispatch(routes, req),
);
