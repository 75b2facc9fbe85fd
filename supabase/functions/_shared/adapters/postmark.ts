// Email through Postmark's HTTP API (locally: the mail catcher, which speaks the same format).
import { z } from 'zod';
import { parseEnv } from '../env.ts';

export const PostmarkEnvSchema = z.object({
  POSTMARK_SERVER_TOKEN: z.string().min(1),
  POSTMARK_API_BASE: z.url().default('https://api.postmarkapp.com'),
  NOTIFY_FROM: z.string().min(3).default('ScholarLink Billing <billing@scholarlink.invalid>'),
});

export interface Email {
  to: string;
  subject: string;
  text: string;
  tag: string;
}

let env: z.infer<typeof PostmarkEnvSchema> | undefined;

/** Sends one email; throws with Postmark's error code (never the token) when it is refused. */
export async function sendEmail(email: Email): Promise<string> {
  env ??= parseEnv(PostmarkEnvSchema);
  const res = await fetch(`${env.POSTMARK_API_BASE.replace(/\/$/, '')}/email`, {
    method: 'POST',
    headers: {
      accept: 'application/json',
      'content-type': 'application/json',
      'X-Postmark-Server-Token': env.POSTMARK_SERVER_TOKEN,
    },
    body: JSON.stringify({
      From: env.NOTIFY_FROM,
      To: email.to,
      Subject: email.subject,
      TextBody: email.text,
      Tag: email.tag,
      MessageStream: 'outbound',
    }),
    signal: AbortSignal.timeout(10_000),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok || body.ErrorCode) {
    throw new Error(`postmark refused the email: HTTP ${res.status}, ErrorCode ${body.ErrorCode ?? 'n/a'}`);
  }
  return String(body.MessageID);
}
