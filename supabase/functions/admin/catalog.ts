// Packages and plans for admins (docs/pricing.md § Packages and plans): list them with their
// versions, create, change (a new version, with a Stripe Price of its own) and retire. A version
// is made in three steps, each safe to repeat: SQL says which version and what it sells
// (billing.next_*_version), Stripe makes its Price (an idempotency key from that version and
// spec, so a retry or an identical twin gets the same Price), SQL saves it (billing.save_*_version,
// which refuses a change that lost a race and answers an identical one again). What was sold
// before keeps its version: a purchase copies its package version, a subscription names its
// plan version's row.
import type { Hono } from 'hono';
import type { AppContext, AppEnv } from '../_shared/app-env.ts';
import { jsonb, sql, sqlName } from '../_shared/adapters/db.ts';
import { stripe, stripeCall } from '../_shared/adapters/stripe.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { ok } from '../_shared/http/app.ts';
import { requireAdmin } from '../_shared/http/require-admin.ts';
import { type Effect, idempotent, scopedKey } from '../_shared/http/idempotency.ts';
import { readJson } from '../_shared/http/validate.ts';
import { AppError } from '../_shared/errors.ts';
import { createHash } from 'node:crypto';
import {
  CatalogPackageIdSchema,
  CatalogPlanIdSchema,
  ChangePackageSchema,
  ChangePlanSchema,
  CreatePackageSchema,
  CreatePlanSchema,
  RetireSchema,
} from './schemas.ts';

type Kind = 'package' | 'plan';
type Spec = {
  name: string;
  price_cents: number;
  currency: string;
  credits: string;
  interval?: 'month' | 'year';
};
type Next = { answer?: Record<string, unknown>; version?: number; spec?: Spec; version_id?: string };
type Saved = Record<string, unknown> & { replayed: boolean };

const itemId = (kind: Kind, raw: string): string => {
  const parsed = (kind === 'package' ? CatalogPackageIdSchema : CatalogPlanIdSchema).safeParse(raw);
  if (parsed.success) return parsed.data;
  throw kind === 'package'
    ? new AppError('not_found', 'PACKAGE_NOT_FOUND', 'No such credit package.')
    : new AppError('not_found', 'PLAN_NOT_FOUND', 'No such plan.');
};

/** The Stripe Price a version sells at: one-time for a package, recurring for a plan. */
async function createPrice(kind: Kind, id: string, version: number, spec: Spec): Promise<string> {
  const hash = createHash('sha256').update(JSON.stringify(spec)).digest('hex').slice(0, 32);
  const name = kind === 'package'
    ? `${spec.name}: ${spec.credits} credits`
    : `${spec.name}: ${spec.credits} credits a ${spec.interval}`;
  const price = await stripeCall(() =>
    stripe().client.prices.create({
      currency: spec.currency,
      unit_amount: spec.price_cents,
      ...(spec.interval ? { recurring: { interval: spec.interval } } : {}),
      product_data: { name },
      metadata: { [`${kind}_id`]: id, version: String(version) },
    }, { idempotencyKey: scopedKey(`catalog-price:${kind}:${id}:v${version}:`, hash, 255) })
  );
  return price.id;
}

/** Creates (`create`) or changes an item: the version SQL names, its Stripe Price, then the save. */
async function saveVersion(
  c: AppContext,
  kind: Kind,
  id: string,
  body: { reason: string; sort_order?: number } & Record<string, unknown>,
  create: boolean,
): Promise<Effect> {
  const { reason, sort_order, id: _, ...fields } = body;
  const [{ next }] = await sql<{ next: Next }[]>`select billing.${sqlName(`next_${kind}_version`)}(${id}, ${
    jsonb(fields)
  },
      ${create}) as next`;
  if (next.answer) return { status: 200, data: next.answer };
  const spec = next.spec as Spec;
  const version = next.version as number;
  const priceId = await createPrice(kind, id, version, spec);
  const [{ saved }] = await sql<{ saved: Saved }[]>`select billing.${sqlName(`save_${kind}_version`)}(${
    currentUser(c).id
  }, ${id}, ${version},
      ${jsonb(spec)}, ${priceId}, ${sort_order ?? null}, ${reason}) as saved`;
  return { status: saved.replayed ? 200 : 201, data: saved };
}

/** Adds the catalogue routes to the admin app (relative to /admin). */
export function catalogRoutes(app: Hono<AppEnv>): void {
  app.get('/catalog', requireAdmin, async (c) => {
    const [{ catalog }] = await sql`select billing.catalog_overview(50) as catalog`;
    return ok(c, catalog);
  });

  for (const kind of ['package', 'plan'] as const) {
    const path = `/${kind}s`;
    const createSchema = kind === 'package' ? CreatePackageSchema : CreatePlanSchema;
    const changeSchema = kind === 'package' ? ChangePackageSchema : ChangePlanSchema;

    app.post(path, requireAdmin, async (c) => {
      const body = await readJson(c, createSchema);
      return idempotent(c, `admin.${kind}s.create`, body, () => saveVersion(c, kind, body.id, body, true));
    });

    app.post(`${path}/:id/versions`, requireAdmin, async (c) => {
      const id = itemId(kind, c.req.param('id'));
      const body = await readJson(c, changeSchema);
      return idempotent(
        c,
        `admin.${kind}s.change`,
        { id, ...body },
        () => saveVersion(c, kind, id, body, false),
      );
    });

    app.post(`${path}/:id/retire`, requireAdmin, async (c) => {
      const id = itemId(kind, c.req.param('id'));
      const { reason } = await readJson(c, RetireSchema);
      const [{ retired }] = await sql<{ retired: Saved }[]>`select billing.${sqlName(`retire_${kind}`)}(${
        currentUser(c).id
      }, ${id}, ${reason}) as retired`;
      return ok(c, retired);
    });
  }
}
