// Service-to-service notifications. Authenticated by an HMAC-SHA256 signature over
// "<timestamp>.<body>" with NOTIFY_WEBHOOK_SECRET (several during rotation), 5-minute
// tolerance, constant-time comparison: header `X-Signature: t=<unix>,v1=<hex>`. A plain
// `X-Webhook-Secret` is accepted for older callers, also compared in constant time. Every
// route is limited per client address before the body is read; bodies are read up to 64 KiB.
import { z } from 'zod';
import { createApp, ok } from '../_shared/http/app.ts';
import type { AppContext } from '../_shared/app-env.ts';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { lazyEnv } from '../_shared/env.ts';
import { AppError } from '../_shared/errors.ts';
import { dispatchOutbox } from './notifications.ts';
import { limitByAddress } from '../_shared/http/ratelimit.ts';
import { constantTimeEqual, requireCronSecret } from '../_shared/http/secrets.ts';
import { readBody } from '../_shared/http/validate.ts';
import { SendSchema } from './schemas.ts';

const env = lazyEnv(z.object({
  NOTIFY_WEBHOOK_SECRET: z.string().transform((s) => s.split(',').map((x) => x.trim()).filter((x) => x.length >= 16))
    .refine((l) => l.length > 0, 'needs at least one secret of 16+ characters'),
}));
const app = createApp('notify', { rateLimited: false });
app.use('*', limitByAddress('notify'));
const toleranceSeconds = 300;

async function hmacHex(secret: string, message: string): Promise<string> {
  const enc = new TextEncoder();
  const key = await crypto.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, [
    'sign',
  ]);
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, enc.encode(message)));
  return Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function authenticate(
  signature: string | undefined,
  plainSecret: string | undefined,
  body: string,
): Promise<void> {
  if (signature) {
    const t = Number(signature.match(/(?:^|,)t=(\d+)/)?.[1]);
    const given = [...signature.matchAll(/(?:^|,)v1=([0-9a-f]{64})/g)].map((m) => m[1]);
    if (Number.isFinite(t) && Math.abs(Date.now() / 1000 - t) <= toleranceSeconds) {
      for (const secret of env().NOTIFY_WEBHOOK_SECRET) {
        const expected = await hmacHex(secret, `${t}.${body}`);
        if (given.some((g) => constantTimeEqual(g, expected))) return;
      }
    }
  } else if (plainSecret && env().NOTIFY_WEBHOOK_SECRET.some((s) => constantTimeEqual(plainSecret, s))) {
    return;
  }
  throw new AppError('auth', 'SIGNATURE_INVALID', 'The request signature is missing, stale or does not verify.');
}

async function send(c: AppContext) {
  const raw = await readBody(c, 64 * 1024);
  await authenticate(c.req.header('x-signature'), c.req.header('x-webhook-secret'), raw);
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    throw new AppError('validation', 'INVALID_JSON', 'The body is not valid JSON.');
  }
  const parsed = SendSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue.path.join('.');
    throw new AppError(
      'validation',
      issue.path[0] === 'template' ? 'UNKNOWN_TEMPLATE' : 'VALIDATION_FAILED',
      `${field}: ${issue.message}`,
      {
        field,
      },
    );
  }
  const n = parsed.data;
  const [{ id }] = await sql`select billing.enqueue_notification(${n.template}, null, ${'notify:' + n.idempotency_key},
      ${jsonb({ to: n.to, data: n.data })}) as id`;
  const sent = await dispatchOutbox(20);
  return ok(c, { notification_id: String(id), queued: true, dispatched: sent });
}

app.post('/send', send);
app.post('/send-notification', send);

app.post('/dispatch', async (c) => {
  requireCronSecret(c);
  return ok(c, await dispatchOutbox(100));
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
