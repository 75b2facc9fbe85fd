// Signs and delivers events exactly as Stripe does: header
// `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>`, POSTed as JSON,
// retried with backoff on any non-2xx (Stripe's hours-long schedule compressed to seconds).
import type Stripe from 'stripe';

const enc = new TextEncoder();

export async function signPayload(payload: string, secret: string, timestamp = Math.floor(Date.now() / 1000)) {
  const key = await crypto.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, [
    'sign',
  ]);
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, enc.encode(`${timestamp}.${payload}`)));
  const hex = Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('');
  return `t=${timestamp},v1=${hex}`;
}

export interface SignedEvent {
  id: string;
  type: string;
  payload: string;
  signature: string;
}

export async function signEvent(event: Stripe.Event, secret: string): Promise<SignedEvent> {
  const payload = JSON.stringify(event, null, 2);
  return { id: event.id, type: event.type, payload, signature: await signPayload(payload, secret) };
}

export interface DeliveryOptions {
  url: string;
  attempts: number;
  backoffMs: number;
}

/** Delivers one event, retrying non-2xx answers and network errors with doubling delays. */
export async function deliver(
  event: SignedEvent,
  opts: DeliveryOptions,
): Promise<{ status: number; attempts: number }> {
  let status = 0;
  for (let attempt = 1; attempt <= opts.attempts; attempt++) {
    try {
      const res = await fetch(opts.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json; charset=utf-8', 'stripe-signature': event.signature },
        body: event.payload,
      });
      status = res.status;
      await res.body?.cancel();
      if (res.ok) return { status, attempts: attempt };
    } catch {
      status = 0;
    }
    if (attempt < opts.attempts) await new Promise((r) => setTimeout(r, opts.backoffMs * 2 ** (attempt - 1)));
  }
  return { status, attempts: opts.attempts };
}
