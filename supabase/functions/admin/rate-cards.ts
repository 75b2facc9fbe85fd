// Rate cards for admins (docs/pricing.md): the cards in effect and scheduled, drafts, the dry
// run of a draft over past usage, publishing from a time not in the past, and the audit. Each
// change records the admin (checked against the database by requireAdmin) and the reason.
import type { Hono } from 'hono';
import type { AppEnv } from '../_shared/app-env.ts';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { AppError } from '../_shared/errors.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { ok } from '../_shared/http/app.ts';
import { requireAdmin } from '../_shared/http/require-admin.ts';
import { readJson, readQuery } from '../_shared/http/validate.ts';
import { isUuid } from '../_shared/values/query.ts';
import {
  DiscardRateCardSchema,
  PublishRateCardSchema,
  type RateCardDraft,
  RateCardDraftSchema,
  SimulationQuerySchema,
} from './schemas.ts';

function draftId(raw: string): string {
  if (!isUuid(raw)) throw new AppError('not_found', 'RATE_CARD_DRAFT_NOT_FOUND', 'No such rate-card draft.');
  return raw;
}

/** The card's prices as SQL takes them (strings, nulls for the defaults), without the reason. */
const cardOf = ({ reason: _, ...card }: RateCardDraft) => card;

/** One SQL function's JSON answer. */
type Answer = { answer: Record<string, unknown> };

/** Adds the rate-card routes to the admin app (relative to /admin). */
export function rateCardRoutes(app: Hono<AppEnv>): void {
  app.get('/rate-cards', requireAdmin, async (c) => {
    const [r] = await sql<Answer[]>`select billing.rate_cards_overview(50) as answer`;
    return ok(c, r.answer);
  });

  app.post('/rate-cards/drafts', requireAdmin, async (c) => {
    const body = await readJson(c, RateCardDraftSchema);
    const [r] = await sql<Answer[]>`select billing.draft_rate_card(${currentUser(c).id}, ${jsonb(cardOf(body))},
        ${body.reason}) as answer`;
    return ok(c, r.answer, 201);
  });

  app.get('/rate-cards/drafts/:id/simulation', requireAdmin, async (c) => {
    const id = draftId(c.req.param('id'));
    const q = readQuery(c, SimulationQuerySchema);
    const [r] = await sql<
      Answer[]
    >`select billing.simulate_rate_card(${id}::uuid, ${q.from}::timestamptz, ${q.to}::timestamptz) as answer`;
    return ok(c, r.answer);
  });

  app.post('/rate-cards/drafts/:id/publish', requireAdmin, async (c) => {
    const id = draftId(c.req.param('id'));
    const body = await readJson(c, PublishRateCardSchema);
    const [r] = await sql<Answer[]>`select billing.publish_rate_card(${currentUser(c).id}, ${id}::uuid,
        ${body.effective_from ?? null}::timestamptz, ${body.reason}) as answer`;
    return ok(c, r.answer);
  });

  app.post('/rate-cards/drafts/:id/discard', requireAdmin, async (c) => {
    const id = draftId(c.req.param('id'));
    const body = await readJson(c, DiscardRateCardSchema);
    const [r] = await sql<Answer[]>`select billing.discard_rate_card_draft(${
      currentUser(c).id
    }, ${id}::uuid, ${body.reason}) as answer`;
    return ok(c, r.answer);
  });
}
