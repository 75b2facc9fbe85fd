// A student's side of the call log: their own calls (never anyone else's), one call with what
// was kept of its content (only ever with consent), deleting that content, and the consent
// itself. The operator's side is in admin/ai-calls.ts; both read _shared/domain/ai-calls.ts.
import type { AppContext } from '../_shared/app-env.ts';
import { sql } from '../_shared/adapters/db.ts';
import { callWithContent, deleteContent, pageOfCalls } from '../_shared/domain/ai-calls.ts';
import { ok } from '../_shared/http/app.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { readJson, readQuery } from '../_shared/http/validate.ts';
import { ContentConsentSchema, MyCallsQuerySchema } from './schemas.ts';

export async function myCalls(c: AppContext): Promise<Response> {
  const q = readQuery(c, MyCallsQuerySchema);
  return ok(c, await pageOfCalls({ ...q, user: currentUser(c).id }));
}

export const myCall = async (c: AppContext) => ok(c, await callWithContent(currentUser(c).id, c.req.param('id')));

export async function deleteMyContent(c: AppContext): Promise<Response> {
  const id = c.req.param('id');
  await deleteContent(currentUser(c).id, id);
  return ok(c, { id, content_kept: false });
}

export async function getConsent(c: AppContext): Promise<Response> {
  const [{ consent }] = await sql`select billing.get_ai_content_consent(${currentUser(c).id}) as consent`;
  return ok(c, consent);
}

export async function setConsent(c: AppContext): Promise<Response> {
  const { keep_content } = await readJson(c, ContentConsentSchema);
  const [{ consent }] = await sql`select billing.set_ai_content_consent(${
    currentUser(c).id
  }, ${keep_content}) as consent`;
  return ok(c, consent);
}
