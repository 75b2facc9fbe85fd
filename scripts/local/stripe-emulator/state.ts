// The emulator's in-memory world: Stripe objects by id, the event log, and config.
import type Stripe from 'stripe';

export const config = {
  port: Number(Deno.env.get('STRIPE_EMULATOR_PORT') ?? 12111),
  secretKey: Deno.env.get('STRIPE_SECRET_KEY') ?? '',
  webhookSecret: (Deno.env.get('STRIPE_WEBHOOK_SECRET') ?? '').split(',')[0].trim(),
  webhookUrl: Deno.env.get('STRIPE_WEBHOOK_URL') ?? 'http://127.0.0.1:54321/functions/v1/stripe-webhook',
  deliveryAttempts: Number(Deno.env.get('STRIPE_EMULATOR_DELIVERY_ATTEMPTS') ?? 5),
  deliveryBackoffMs: Number(Deno.env.get('STRIPE_EMULATOR_BACKOFF_MS') ?? 200),
};

/** Objects by id, whatever their type; each route narrows what it reads. */
export const objects = new Map<string, { object: string }>();
export const events: Stripe.Event[] = [];

const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
/** An id with Stripe's prefix for the object type, e.g. `cs_test_…`, `pi_…`, `evt_…`. */
export function newId(prefix: string): string {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return `${prefix}_${Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('')}`;
}

export const now = () => Math.floor(Date.now() / 1000);

/** Records an event about `object` and returns it. */
export function recordEvent<T extends Stripe.Event.Type>(
  type: T,
  object: Stripe.Event.Data.Object,
  previous?: Partial<Stripe.Event.Data.Object>,
): Stripe.Event {
  const event = {
    id: newId('evt'),
    object: 'event',
    api_version: '2025-01-27.acacia',
    created: now(),
    data: { object, ...(previous ? { previous_attributes: previous } : {}) },
    livemode: false,
    pending_webhooks: 1,
    request: { id: null, idempotency_key: null },
    type,
  } as Stripe.Event;
  events.push(event);
  return event;
}
