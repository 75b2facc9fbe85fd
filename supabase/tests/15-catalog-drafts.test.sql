-- Rate-card drafts: drafted and audited, never priced by usage, simulated against past charges
-- without moving money, published from a time not in the past, idempotently, and audited.
begin;
select plan(31);
\ir helpers.psql

insert into auth.users (id, email) values
  ('d1000000-0000-4000-8000-000000000001', 'one@drafts.test'), ('d1000000-0000-4000-8000-000000000002', 'two@drafts.test'),
  ('d1000000-0000-4000-8000-000000000003', 'owner@drafts.test'), ('d1000000-0000-4000-8000-000000000004', 'member@drafts.test'),
  ('d1000000-0000-4000-8000-0000000000ad', 'admin@drafts.test');
create temp table ids as select 'd1000000-0000-4000-8000-0000000000ad'::uuid as admin,
  (billing.create_org('d1000000-0000-4000-8000-000000000003', 'Drafts School', 'pool', true) ->> 'id')::uuid as org;
grant select on ids to public;

-- A model of its own, so other tests' charges never enter the range.
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from,
  usd_per_image) values ('draft-model', 1, 1, 2, 1, now() - interval '1 day', 0.01);

-- Past charges: two students on their own, one member paid by the school's pool.
select billing.grant_credits('d1000000-0000-4000-8000-000000000001', 100000, 'purchase', 'drafts:g1');
select billing.grant_credits('d1000000-0000-4000-8000-000000000002', 100000, 'purchase', 'drafts:g2');
select billing.grant_org_credits((select org from ids), 100000, 'adjustment', 'drafts:org', 'pilot', null);
select billing.invite_member('d1000000-0000-4000-8000-000000000003', (select org from ids), 'member@drafts.test', 'member',
  'drafts-hash', 86400);
select billing.answer_invitation('d1000000-0000-4000-8000-000000000004', 'member@drafts.test', 'drafts-hash', true);
select billing.charge_usage('d1000000-0000-4000-8000-000000000001', 'draft-model', 1000000, 1000000, 'drafts:u1'); -- 3,000
select billing.charge_usage('d1000000-0000-4000-8000-000000000001', 'draft-model', 0, 0, 'drafts:u2', null, null, 0, 0, 2); -- 20
select billing.charge_usage('d1000000-0000-4000-8000-000000000002', 'draft-model', 2000000, 0, 'drafts:u3'); -- 2,000
select billing.charge_usage('d1000000-0000-4000-8000-000000000004', 'draft-model', 0, 1000000, 'drafts:u4'); -- 2,000, the pool

create temp table money as select (select count(*) from billing.transfers) as transfers,
  (select sum(balance) from billing.accounts) as balances;

-- ============================================================ drafting

create temp table d as select billing.draft_rate_card((select admin from ids),
  '{"model": "draft-model", "usd_per_million_input": "2", "usd_per_million_output": "4", "markup": "1",
    "usd_per_million_cached_input": "0.5"}', 'prices double') as draft;
create temp table dn as select billing.draft_rate_card((select admin from ids),
  '{"model": "draft-only-model", "usd_per_million_input": "1", "usd_per_million_output": "1", "markup": "1"}', 'a new model')
  as draft;

select is((select draft ->> 'status' from d), 'draft', 'a draft starts as a draft');
select is((select draft ->> 'usd_per_image' from d), null, 'a price left out stays null (images refused under it)');
select is((select c.admin_id || ':' || c.reason || ':' || (c.before ->> 'version') || ':' || (c.after ->> 'usd_per_million_input')
   from billing.rate_card_changes c, d where c.draft_id = (d.draft ->> 'id')::uuid),
  'd1000000-0000-4000-8000-0000000000ad:prices double:1:2', 'drafting is audited: who, why, the card in effect and the draft');
select is(pg_temp.err($$select billing.price_usage('draft-only-model', 1, 1)$$), 'UNKNOWN_MODEL',
  'a model with a draft only prices nothing');
select is((billing.price_usage('draft-model', 1000000, 0)).amount, 1000.0::numeric, 'a draft never changes what usage costs');
select is(pg_temp.err($$select billing.draft_rate_card((select admin from ids),
  '{"model": "draft-model", "usd_per_million_input": "-1", "usd_per_million_output": "1", "markup": "1"}', 'x')$$),
  'INVALID_RATE_CARD', 'a negative price is refused');
select is(pg_temp.err($$select billing.draft_rate_card((select admin from ids),
  '{"model": "draft-model", "usd_per_million_input": "1e400", "usd_per_million_output": "1", "markup": "1"}', 'x')$$),
  'INVALID_RATE_CARD', 'a price Postgres cannot hold is refused, not a 5xx');
select is(pg_temp.err($$select billing.draft_rate_card((select admin from ids),
  '{"model": "draft model", "usd_per_million_input": "1", "usd_per_million_output": "1", "markup": "0"}', 'x')$$),
  'INVALID_RATE_CARD', 'a bad model name or a zero markup is refused');
select is(pg_temp.err($$select billing.draft_rate_card((select admin from ids),
  '{"model": "draft-model", "usd_per_million_input": "1", "usd_per_million_output": "1", "markup": "1"}', '')$$),
  'INVALID_RATE_CARD', 'a change without a reason is refused');

-- ============================================================ the dry run

create temp table sim as select billing.simulate_rate_card((select (draft ->> 'id')::uuid from d), now() - interval '1 hour',
  now() + interval '1 minute') as s;
select is((select s -> 'totals' from sim),
  '{"charges": 4, "students": 3, "organisations": 1, "before": "7000", "after": "14000", "change": "7000", "change_percent": "100",
    "unpriced_charges": 1, "unpriced_before": "20"}'::jsonb,
  'totals: every charge re-priced under the draft, the image charge it cannot price counted apart');
select is((select count(*)::int from billing.transfers), (select transfers::int from money), 'the dry run writes no transfer');
select is((select sum(balance) from billing.accounts), (select balances from money), 'the dry run moves no money');
select is((select jsonb_path_query_array(s, '$.most_affected[*].user_id') from sim),
  '["d1000000-0000-4000-8000-000000000001", "d1000000-0000-4000-8000-000000000002", "d1000000-0000-4000-8000-000000000004"]',
  'the most affected students, most first');
select is((select s -> 'most_affected' -> 0 ->> 'change_percent' from sim), '100', 'each with the change in percent');
select is((select jsonb_path_query_array(s, '$.by_organisation[*] ? (@.org_id != null).after') from sim), '["4000"]',
  'per organisation: what the school''s pool would have paid');
select is((select s -> 'by_rate_card' -> 0 ->> 'version' from sim), '1', 'per card version re-priced');
select is((select jsonb_path_query_first(s, '$.distribution.buckets[*] ? (@.bucket == "up more than 50%").students') from sim),
  '3', 'the distribution of the change per student');
select is((select s -> 'totals' ->> 'charges' from (select billing.simulate_rate_card((select (draft ->> 'id')::uuid from d),
  now() - interval '2 days', now() - interval '1 day') as s) x), '0', 'a range with no charges re-prices none');
create temp table same as select (billing.draft_rate_card((select admin from ids),
  '{"model": "draft-model", "usd_per_million_input": "1", "usd_per_million_output": "2", "markup": "1", "usd_per_image": "0.01"}',
  'the same prices') ->> 'id')::uuid as id;
select is((select billing.simulate_rate_card(same.id, now() - interval '1 hour', now() + interval '1 minute')
  -> 'totals' ->> 'change' from same), '0',
  'a draft with the card''s own prices changes nothing: the dry run prices as price_usage did');
select is(pg_temp.err($$select billing.simulate_rate_card((select (draft ->> 'id')::uuid from d), '2025-01-01', '2026-06-01')$$),
  'INVALID_RANGE', 'a range over 366 days is refused');
select is(pg_temp.err($$select billing.simulate_rate_card(gen_random_uuid(), now() - interval '1 day', now())$$),
  'RATE_CARD_DRAFT_NOT_FOUND', 'an unknown draft is refused');

-- ============================================================ publishing

select is(pg_temp.err($$select billing.publish_rate_card((select admin from ids), (select (draft ->> 'id')::uuid from d),
  now() - interval '1 second', 'retro')$$), 'INVALID_EFFECTIVE_FROM', 'a price never takes effect in the past');
create temp table pub as select billing.publish_rate_card((select admin from ids), (select (draft ->> 'id')::uuid from d),
  now() + interval '1 day', 'prices double from tomorrow') as p;
select is((select p -> 'rate_card' ->> 'version' from pub), '2', 'publishing makes the model''s next version');
select is((billing.price_usage('draft-model', 1000000, 0)).rate_card_version, 1,
  'a card published for tomorrow leaves today''s price alone');
select is((select (p ->> 'replayed')::boolean from (select billing.publish_rate_card((select admin from ids),
  (select (draft ->> 'id')::uuid from d), now() + interval '2 days', 'again') as p) x), true,
  'publishing a published draft again replays it');
select is((select count(*)::int from billing.rate_cards where model = 'draft-model'), 2, 'and makes no second version');
select is((select c.admin_id || ':' || c.reason || ':' || (c.before ->> 'version') || ':' || (c.after ->> 'version')
   from billing.rate_card_changes c, d where c.draft_id = (d.draft ->> 'id')::uuid and c.action = 'published'),
  'd1000000-0000-4000-8000-0000000000ad:prices double from tomorrow:1:2', 'publishing is audited with before and after');
select is(pg_temp.err($$select billing.discard_rate_card_draft((select admin from ids), (select (draft ->> 'id')::uuid from d), 'x')$$),
  'RATE_CARD_DRAFT_CLOSED', 'a published draft cannot be discarded');
select is((select billing.discard_rate_card_draft((select admin from ids), (select (draft ->> 'id')::uuid from dn), 'not now')
  ->> 'status'), 'discarded', 'an open draft can be discarded');
select is(pg_temp.err($$select billing.publish_rate_card((select admin from ids), (select (draft ->> 'id')::uuid from dn), null, 'x')$$),
  'RATE_CARD_DRAFT_CLOSED', 'a discarded draft cannot be published');
select is(pg_temp.err($$update billing.rate_card_changes set reason = 'edited'$$), 'LEDGER_IMMUTABLE',
  'the audit is append-only');

select * from finish();
rollback;
