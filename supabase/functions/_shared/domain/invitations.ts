// Organisation invitation tokens. The token in an invitation's link is an HMAC-SHA256 of the
// invitation's id with INVITATION_TOKEN_SECRET, which only the functions hold: the database keeps
// the token's SHA-256 (to find the invitation it answers) and the outbox only the id, so no
// stored row holds a token that works, and every send of the email (retries included) derives
// the same link. Accepting needs no secret: the token given is hashed and looked up.
import { createHash, createHmac } from 'node:crypto';
import { z } from 'zod';
import { billingPage } from '../billing-page.ts';
import { db } from '../adapters/db.ts';
import { CommaListSchema, lazyEnv } from '../env.ts';
import { isUuid } from '../values/query.ts';

const env = lazyEnv(z.object({
  // Comma-separated while rotating: the first makes new tokens; a queued email whose token an
  // older one made is derived with that one.
  INVITATION_TOKEN_SECRET: CommaListSchema.refine(
    (l) => l.length > 0 && l.every((s) => s.length >= 32),
    'needs one or more secrets of 32+ characters',
  ),
}));

/**
 * The SHA-256 of a token, as billing.org_invitations.token_hash keeps it.
 * @example await one('answer_invitation', [user.id, user.email, tokenHash(token), true])
 */
export const tokenHash = (token: string) => createHash('sha256').update(token).digest('hex');

/** 32 bytes as base64url: 43 characters, the shape AnswerSchema accepts. */
const tokenOf = (secret: string, id: string) =>
  createHmac('sha256', secret).update(`org-invitation:${id}`).digest('base64url');

/**
 * A new invitation's id, the token its link will carry, and the hash the database keeps.
 * @example const { id, token, hash } = newInvitation()
 */
export function newInvitation(): { id: string; token: string; hash: string } {
  const id = crypto.randomUUID();
  const token = tokenOf(env().INVITATION_TOKEN_SECRET[0], id);
  return { id, token, hash: tokenHash(token) };
}

/** What an invitation's email says, read when it is sent. */
export interface InvitationEmail {
  to: string;
  data: { org_name: string; inviter_email: string | null; role: string; expires_at: string; accept_url: string };
}

/**
 * The email of invitation `id`, or null when there is nothing to send: no such invitation, or it
 * is no longer pending (answered, revoked, expired). Only the invitation's own address receives
 * it, whatever asked for it to be sent.
 * @example const email = await invitationEmail(row.payload.invitation_id)
 */
export async function invitationEmail(id: unknown): Promise<InvitationEmail | null> {
  if (typeof id !== 'string' || !isUuid(id)) return null;
  const [i] = await db()`select * from billing.get_invitation_email(${id})`;
  if (!i) return null;
  const token = env().INVITATION_TOKEN_SECRET.map((s) => tokenOf(s, id)).find((t) => tokenHash(t) === i.token_hash);
  if (!token) throw new Error("no INVITATION_TOKEN_SECRET makes this invitation's token: revoke it and invite again");
  return {
    to: i.email,
    data: {
      org_name: i.org_name,
      inviter_email: i.inviter_email,
      role: i.role,
      expires_at: (i.expires_at as Date).toISOString(),
      accept_url: `${billingPage().BILLING_PAGE_URL}#invitation=${token}`,
    },
  };
}
