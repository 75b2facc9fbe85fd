// Creates or updates the Stripe webhook endpoints of the stripe-webhook function with exactly
// the events it subscribes to (stripe-webhook/events.ts), through the official SDK: one for
// the platform's own account, one for connected accounts (Connect). Secrets go to stdout as
// NAME=value lines, shown only when Stripe creates an endpoint; everything else to stderr.
import Stripe from 'stripe';
import { parseArgs } from 'node:util';
import { stripeClient } from '../../supabase/functions/_shared/adapters/stripe.ts';
import { connectEvents, platformEvents } from '../../supabase/functions/stripe-webhook/events.ts';

/** One endpoint this script keeps: which events, and where its signing secret goes. */
export const endpointSides = [
  { side: 'platform', connect: false, events: platformEvents as string[], secretName: 'STRIPE_WEBHOOK_SECRET' },
  { side: 'connect', connect: true, events: connectEvents as string[], secretName: 'STRIPE_CONNECT_WEBHOOK_SECRET' },
] as const;
/** The metadata key that marks an endpoint as this script's, with the side as its value. */
const tag = 'scholarlink_endpoint';

export interface EndpointResult {
  side: string;
  id: string;
  action: 'created' | 'updated';
  /** Only when created: Stripe never shows it again. */
  secret?: string;
  secretName: string;
}

/**
 * Makes the endpoints at `url` listen to exactly the service's events: updates the ones this
 * script made earlier (found by URL and metadata), creates the missing ones.
 * @example await syncEndpoints(stripeClient(key), 'https://<ref>.supabase.co/functions/v1/stripe-webhook', console.error)
 */
export async function syncEndpoints(
  client: Stripe,
  url: string,
  say: (line: string) => void,
): Promise<EndpointResult[]> {
  const existing: Stripe.WebhookEndpoint[] = [];
  for await (const e of client.webhookEndpoints.list({ limit: 100 })) if (e.url === url) existing.push(e);
  const results: EndpointResult[] = [];
  for (const { side, connect, events, secretName } of endpointSides) {
    const enabled_events = events as Stripe.WebhookEndpointCreateParams.EnabledEvent[];
    const description = `scholarlink ${side} (./scripts/stripe-webhook-endpoint)`;
    const mine = existing.find((e) => e.metadata?.[tag] === side);
    if (mine) {
      await client.webhookEndpoints.update(mine.id, { enabled_events, description });
      say(`updated ${mine.id} (${side}): ${events.length} events; its signing secret is unchanged`);
      if (mine.status !== 'enabled') say(`  ${mine.id} is ${mine.status}: enable it in the Dashboard when ready`);
      if (mine.api_version !== Stripe.API_VERSION) {
        say(`  ${mine.id} sends API version ${mine.api_version ?? 'default'}, not the SDK's ${Stripe.API_VERSION}`);
      }
      results.push({ side, id: mine.id, action: 'updated', secretName });
    } else {
      const made = await client.webhookEndpoints.create({
        url,
        enabled_events,
        connect,
        api_version: Stripe.API_VERSION,
        description,
        metadata: { [tag]: side },
      });
      say(`created ${made.id} (${side}): ${events.length} events`);
      results.push({ side, id: made.id, action: 'created', secret: made.secret, secretName });
    }
  }
  for (const other of existing.filter((e) => !endpointSides.some(({ side }) => e.metadata?.[tag] === side))) {
    say(`${other.id} also points at this URL but was not made here: it delivers events twice; delete it`);
  }
  return results;
}

if (import.meta.main) {
  const { values } = parseArgs({ args: Deno.args, options: { url: { type: 'string' } } });
  const url = values.url ?? '';
  const key = Deno.env.get('STRIPE_SECRET_KEY') ?? '';
  const mode = key.match(/^(?:sk|rk)_(test|live)_/)?.[1];
  const fail = (message: string) => {
    console.error(message);
    Deno.exit(1);
  };
  if (!mode) fail('STRIPE_SECRET_KEY must be set to a Stripe secret key (sk_test_… or sk_live_…).');
  if (!URL.canParse(url)) {
    fail('--url must be the stripe-webhook function URL, e.g. https://<ref>.supabase.co/functions/v1/stripe-webhook');
  }
  if (mode === 'live' && new URL(url).protocol !== 'https:') fail('--url must be https with a live key.');
  const client = stripeClient(key, Deno.env.get('STRIPE_API_BASE') || undefined);
  const results = await syncEndpoints(client, url, (line) => console.error(line)).catch((err) =>
    fail(`Stripe refused: ${err instanceof Error ? err.message : String(err)}`)
  );
  const created = (results ?? []).filter((r) => r.secret);
  for (const r of created) console.log(`${r.secretName}=${r.secret}`);
  console.error(
    created.length
      ? `${mode} mode. Store the secret(s) above now (supabase secrets set, or prod.env): Stripe shows an endpoint's secret only when it creates it.`
      : `${mode} mode. No endpoint was created, so no secret is printed: keep the ones you stored (the Dashboard can reveal them).`,
  );
}
