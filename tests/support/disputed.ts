// What the attacks on disputes beside credits for some models share (session34-attack*.test.ts):
// a student's figures, usage and gateway calls as they send them, and the core's invariants.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, key, reportUsage, testDb } from './helpers.ts';

/** POST /credits/usage of `credits` of a 1-credit-a-token model (creditPerToken), as the product's server reports it. */
export const chargeTokens = (token: string, model: string, credits: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model, input_tokens: credits, output_tokens: 0 },
  });

/** A gateway chat call for `model` (the stand-in steered by `directives`). */
export const chat = (
  token: string,
  model: string,
  directives: string,
  max_tokens = 40,
  headers: Record<string, string> = key(),
) =>
  api('/ai/v1/chat/completions', {
    token,
    headers,
    body: { model, messages: [{ role: 'user', content: `#standin ${directives}` }], max_tokens },
  });

/** The student's own account: balance, held, and what its lots hold for any model and for some. */
export async function figures(userId: string) {
  const [r] =
    await testDb`select a.id::text as id, trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
      trim_scale(coalesce((select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.open
                           and l.applies_to is null), 0))::text as for_any,
      trim_scale(coalesce((select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.open
                           and l.applies_to is not null), 0))::text as for_some,
      billing.in_debt(a) as in_debt
    from billing.accounts a where a.user_id = ${userId} and a.org_id is null`;
  return r as { id: string; balance: string; held: string; for_any: string; for_some: string; in_debt: boolean };
}

/**
 * The core's invariants over the ledger, and over `users`' accounts: every charge drawn only from
 * lots that may pay for its model, a reversal only from its purchase's lots and lots for any
 * model, held equal to the live holds.
 */
export async function coreInvariants(users: string[]) {
  await assertLedgerInvariants();
  const [r] = await testDb`
    with acc as (select a.id from billing.accounts a where a.user_id = any(${users}::uuid[]))
    select
      (select count(*)::int from billing.lot_allocations x join billing.lots l on l.id = x.lot_id
        join billing.transfers t on t.id = x.transfer_id
        where l.account_id in (select id from acc) and x.amount > 0 and t.kind in ('usage', 'hold_capture')
          and not billing.lot_pays_for(l.applies_to, coalesce(t.metadata ->> 'model',
            (select c.model from billing.rate_cards c where c.id = t.rate_card_id)))) as restricted_paid_other_model,
      (select count(*)::int from billing.lot_allocations x join billing.lots l on l.id = x.lot_id
        join billing.transfers t on t.id = x.transfer_id
        where l.account_id in (select id from acc) and x.amount > 0 and t.kind in ('refund_reversal', 'dispute_reversal')
          and l.applies_to is not null and l.purchase_id is null) as reversal_took_restricted,
      (select count(*)::int from billing.accounts a where a.id in (select id from acc)
        and a.held <> coalesce((select sum(h.amount) from billing.holds h where h.account_id = a.id and h.status = 'active'), 0))
        as held_mismatch`;
  assert.deepEqual({ ...r }, { restricted_paid_other_model: 0, reversal_took_restricted: 0, held_mismatch: 0 });
}
