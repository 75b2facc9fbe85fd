// Stripe webhooks. The signature is the authentication: verified on the raw body with the
// SDK and SubtleCrypto, default tolerance, any of the rotation secrets. Connect events (those
// carrying `account`) must verify with STRIPE_CONNECT_WEBHOOK_SECRET when it is set, platform
// events with STRIPE_WEBHOOK_SECRET. Each verified event is recorded once by id and applied
// in one SQL transaction (billing.process_stripe_event) with state re-fetched from Stripe; a
// transient failure answers 500 so Stripe retries. Limited per client address before the body
// is read; the body is read up to 512 KiB and no further.
import Stripe from 'stripe';
import { createApp, ok } from '../_shared/http/app.ts';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { fromDbError } from '../_shared/adapters/sql-errors.ts';
import { AppError } from '../_shared/errors.ts';
import { failpoint } from '../_shared/failpoint.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { limitByAddress } from '../_shared/http/ratelimit.ts';
import { reportAtStart } from '../_shared/env.ts';
import { stripe } from '../_shared/adapters/stripe.ts';
import { readBody } from '../_shared/http/validate.ts';
import { recordFailedPayment } from '../_shared/domain/velocity.ts';
import { refOf } from './events.ts';
import { failedPaymentUser, fetchState } from './state.ts';
import { refundStaleInvoice, refuseSubscription } from './plans.ts';
import { countRefusal, signedTimestamp } from './signature.ts';

const app = createApp('stripe-webhook', { rateLimited: false });
reportAtStart(stripe); // a missing or wrong-mode key is logged at start and answered with 503
const maxBodyBytes = 512 * 1024;
const cryptoProvider = Stripe.createSubtleCryptoProvider();
const toleranceSeconds = 300;

async function verify(raw: string, signature: string | undefined): Promise<Stripe.Event> {
  const { env, client } = stripe();
  const connectSecrets = env.STRIPE_CONNECT_WEBHOOK_SECRET;
  const endpoints = [
    { secrets: env.STRIPE_WEBHOOK_SECRET, connect: false },
    { secrets: connectSecrets, connect: true },
  ];
  // The SDK refuses timestamps older than 300 s; one from the future is refused here, checked
  // on the very timestamp the SDK verifies.
  const signedAt = signature ? signedTimestamp(signature) : null;
  if (signature && signedAt !== null && signedAt <= Date.now() / 1000 + toleranceSeconds) {
    for (const { secrets, connect } of endpoints) {
      for (const secret of secrets) {
        let event: Stripe.Event;
        try {
          event = await client.webhooks.constructEventAsync(raw, signature, secret, undefined, cryptoProvider);
        } catch {
          continue; // try the next secret (rotation, or the other endpoint's)
        }
        // With a separate Connect endpoint, each secret vouches only for its own kind of event.
        if (connectSecrets.length === 0 || Boolean(event.account) === connect) return event;
      }
    }
  }
  countRefusal((n) => sql`select billing.increment_counter('stripe_webhook_signature_failures', ${n}::bigint)`);
  throw new AppError('validation', 'SIGNATURE_INVALID', 'The Stripe-Signature header is missing or does not verify.');
}

app.post('/', limitByAddress('stripe_webhook'), async (c) => {
  const raw = await readBody(c, maxBodyBytes);
  const event = await verify(raw, c.req.header('stripe-signature'));
  const fields = { eventId: event.id, type: event.type, requestId: c.get('requestId') };
  if (event.livemode !== (stripe().env.STRIPE_MODE === 'live')) {
    log.warn('stripe event ignored: livemode does not match STRIPE_MODE', fields);
    return ok(c, { received: true, ignored: 'livemode_mismatch' });
  }
  if ((await sql`select billing.stripe_event_done(${event.id}) as done`)[0].done) {
    return ok(c, { received: true, duplicate: true });
  }
  const created = new Date(event.created * 1000);
  const objectId = 'id' in event.data.object ? String(event.data.object.id) : null;
  try {
    const ref = refOf(event);
    const state = ref ? await fetchState(ref) : null;
    failpoint('webhook.before_commit');
    const [{ outcome }] = await sql`
      select billing.process_stripe_event(${event.id}, ${event.type}, ${created}, ${event.livemode}, ${objectId},
        ${state ? jsonb(state) : null}) as outcome`;
    failpoint('webhook.after_commit');
    log.info('stripe event', { ...fields, outcome });
    if (outcome === 'plan_subscription_refused' && state?.kind === 'subscription') {
      log.warn('a second live plan was paid: cancelling it and refunding its invoice', fields);
      await refuseSubscription(state);
    }
    if (outcome === 'plan_invoice_stale' && state?.kind === 'subscription') {
      log.warn('a plan invoice paid for a period that is over: refunding it', fields);
      failpoint('webhook.before_stale_refund');
      await refundStaleInvoice(state);
      await sql`select billing.finish_stripe_event(${event.id})`;
    }
    const failedPaymentOf = failedPaymentUser(event);
    if (failedPaymentOf && outcome !== 'duplicate') await recordFailedPayment(failedPaymentOf);
    return ok(c, { received: true, ...(outcome === 'duplicate' ? { duplicate: true } : { outcome }) });
  } catch (err) {
    const failure = err instanceof AppError ? err : fromDbError(err);
    log.error('stripe event failed', { ...fields, code: failure.code, ...errorSummary(err) });
    await sql`select billing.record_stripe_event_failure(${event.id}, ${event.type}, ${created}, ${event.livemode},
      ${objectId}, ${failure.code})`.catch(() => {});
    // Any failure here is worth Stripe's retry: answer 5xx.
    throw new AppError(
      'unavailable',
      'WEBHOOK_PROCESSING_FAILED',
      'The event could not be processed; Stripe will retry.',
      {
        status: 500,
        retryable: true,
      },
    );
  }
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
