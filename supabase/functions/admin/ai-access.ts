// The AI gateway's admin side: which models a plan (or everyone else) may call, and the server
// keys trusted servers report usage with. A key's secret is shown once, in the answer that
// creates it; the database keeps its SHA-256. Rotating is creating a new key, moving the server
// to it, then revoking the old one.
import { randomBytes } from 'node:crypto';
import type { AppContext } from '../_shared/app-env.ts';
import { sql } from '../_shared/adapters/db.ts';
import { AppError } from '../_shared/errors.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { ok } from '../_shared/http/app.ts';
import { serverKeyHash } from '../_shared/http/usage-reporter.ts';
import { readJson } from '../_shared/http/validate.ts';
import { isUuid } from '../_shared/values/query.ts';
import { ModelAccessSchema, ServerKeySchema } from './schemas.ts';

export async function getModelAccess(c: AppContext): Promise<Response> {
  const [{ lists }] = await sql`select billing.get_model_access() as lists`;
  return ok(c, { items: lists, next_cursor: null });
}

export async function setModelAccess(c: AppContext): Promise<Response> {
  const a = await readJson(c, ModelAccessSchema);
  const [{ list }] = await sql`select billing.set_model_access(${
    currentUser(c).id
  }, ${a.plan_id}, ${a.models}::text[]) as list`;
  return ok(c, list);
}

export async function createServerKey(c: AppContext): Promise<Response> {
  const { name } = await readJson(c, ServerKeySchema);
  const secret = `slk_${randomBytes(24).toString('hex')}`;
  const [{ key }] = await sql`select billing.create_server_key(${currentUser(c).id}, ${name}, ${
    serverKeyHash(secret)
  }, ${secret.slice(0, 10)}) as key`;
  return ok(c, { ...key, secret }, 201);
}

export async function listServerKeys(c: AppContext): Promise<Response> {
  const [{ keys }] = await sql`select billing.list_server_keys() as keys`;
  return ok(c, { items: keys, next_cursor: null });
}

export async function revokeServerKey(c: AppContext): Promise<Response> {
  const id = c.req.param('id') ?? '';
  if (!isUuid(id)) throw new AppError('not_found', 'SERVER_KEY_NOT_FOUND', 'No such server key.');
  const [{ key }] = await sql`select billing.revoke_server_key(${currentUser(c).id}, ${id}) as key`;
  return ok(c, key);
}
