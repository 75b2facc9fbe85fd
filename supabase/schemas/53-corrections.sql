-- Corrections: an admin gives charges back. The ledger is append-only, so a void is a new
-- transfer (kind void) from usage_revenue to the account that paid, of exactly the charge's
-- amount, keyed by the charge ('void:' || id): voiding twice, by hand or by a bulk run, answers
-- the first void.
--
-- What a void undoes, under the paying account's lock:
--   - lots: the credits go back into the very lots the charge drew, recorded as negative
--     lot_allocations of kind void (so Σ allocations per lot is what it has net given, and
--     check_lots' deferred revenue stays exact). A lot that has expired since gets its share back
--     and expires it at once, as breakage, under a key of its own: nothing expired comes back to
--     life. Returned credits that pay a debt the account is in are recorded as the allocation's
--     debt_settled: booked as used on the void's day, never on the day the lot was granted.
--   - caps: the room the charge took goes back to the period it was counted in (the hold's
--     placement for a capture) when that period is still the cap's current one; a past period's
--     spending changes only in reports.
--   - revenue: the void's negative allocations reverse what the charge recognised, at the same
--     lots' cost basis (revenue_parts, metrics_of: recognised includes void).
--   - reports: the usage summary and an organisation's usage net the void against the charge's
--     model and day (usage_charges, roll_up_usage, org_usage).
-- Every void has an audit row (charge_voids: who, why, which run).
--
-- Bulk corrections (a provider outage): a filter (model, [from, to), only failed charges) is
-- previewed (count, credits, users, organisations), then applied as a run (correction_runs,
-- idempotent by the admin's Idempotency-Key). A run is processed in batches, each one
-- transaction (the admin call or pg_cron): a batch voids the next charges that match and have no
-- void yet, so a crash halfway rolls back at most one batch and the next batch resumes, never
-- voiding twice. A run completes at the first empty batch that starts at least
-- correction_settle_seconds after `to`, so charges whose transactions began before `to` and
-- committed late are still reached.

-- ============================================================ tables

create table billing.charge_voids (
  charge_id bigint primary key references billing.transfers (id),
  void_transfer_id bigint not null references billing.transfers (id),
  account_id bigint not null,                     -- the account that paid, and got the credits back
  member_id uuid,                                 -- the member an organisation paid for
  amount numeric(38, 18) not null,
  reason text not null,
  voided_by uuid,                                 -- the admin (of the run, for a bulk void)
  run_id uuid,
  created_at timestamptz not null default now(),
  constraint charge_voids_reason_length check (length(reason) between 1 and 500)
);
comment on table billing.charge_voids is 'Audit: every charge an admin voided, with the void transfer, who, why and the bulk run if any. One row per charge.';
alter table billing.charge_voids enable row level security;
grant select on table billing.charge_voids to service_role;

create index charge_voids_run on billing.charge_voids (run_id) where run_id is not null;

create table billing.correction_runs (
  id uuid primary key default gen_random_uuid(),
  requested_by uuid not null,
  idempotency_key text not null,
  model text not null,
  from_at timestamptz not null,
  to_at timestamptz not null,
  failed_only boolean not null default false,
  reason text not null,
  status text not null default 'running',
  voided integer not null default 0,
  credits numeric(38, 18) not null default 0,
  batches integer not null default 0,
  last_charge_id bigint,                          -- the highest charge id voided so far (progress, not a cursor)
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  completed_at timestamptz,
  constraint correction_runs_key unique (requested_by, idempotency_key),
  constraint correction_runs_key_length check (length(idempotency_key) between 1 and 255),
  constraint correction_runs_range check (from_at < to_at),
  constraint correction_runs_reason_length check (length(reason) between 1 and 500),
  constraint correction_runs_status check (status in ('running', 'completed')),
  constraint correction_runs_completed check ((status = 'completed') = (completed_at is not null))
);
comment on table billing.correction_runs is 'A bulk correction: the filter, the reason, and its progress (charges voided, credits given back, batches). Processed in batches until complete.';
alter table billing.correction_runs enable row level security;
grant select on table billing.correction_runs to service_role;

create index correction_runs_running on billing.correction_runs (created_at) where status = 'running';
create index correction_runs_newest on billing.correction_runs (created_at desc, id desc);

-- ============================================================ functions

create or replace function billing.correction_settle_seconds() returns integer
language sql immutable
set search_path = ''
as $$ select 10 $$;
comment on function billing.correction_settle_seconds() is 'How long after a run''s `to` it keeps looking for charges whose transactions began before `to` and committed late (every charge is one short statement).';
revoke execute on function billing.correction_settle_seconds() from public;

create or replace function billing.check_correction_reason(p_reason text) returns text
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_reason is null or length(btrim(p_reason)) = 0 or length(p_reason) > 500 then
    perform billing.raise_error('INVALID_CORRECTION', jsonb_build_object('field', 'reason', 'rule', '1 to 500 characters'));
  end if;
  return btrim(p_reason);
end;
$$;
comment on function billing.check_correction_reason(p_reason text) is 'Internal: the reason of a correction, trimmed; INVALID_CORRECTION unless 1 to 500 characters.';
revoke execute on function billing.check_correction_reason(p_reason text) from public;

create or replace function billing.void_json(p_void billing.charge_voids, p_replayed boolean) returns jsonb
language plpgsql stable
set search_path = ''
as $$
begin
  return (select jsonb_build_object(
      'charge_id', p_void.charge_id::text, 'void_transfer_id', p_void.void_transfer_id::text,
      'amount', trim_scale(p_void.amount)::text, 'user_id', coalesce(p_void.member_id, a.user_id), 'org_id', a.org_id,
      'reason', p_void.reason, 'voided_by', p_void.voided_by, 'run_id', p_void.run_id,
      'voided_at', billing.json_time(p_void.created_at),
      'lots', coalesce((select jsonb_agg(jsonb_build_object('lot_id', la.lot_id::text, 'amount', trim_scale(-la.amount)::text,
                 'expired', exists (select 1 from billing.transfers x where x.kind = 'expiry'
                                    and x.idempotency_key = 'expiry:' || la.lot_id || ':void:' || p_void.void_transfer_id))
               order by la.lot_id)
             from billing.lot_allocations la where la.transfer_id = p_void.void_transfer_id), '[]'),
      'replayed', p_replayed)
    from billing.accounts a where a.id = p_void.account_id);
end;
$$;
comment on function billing.void_json(p_void billing.charge_voids, p_replayed boolean) is 'Internal: a void as the API answers it (the lots credited back, each expired at once or not).';
revoke execute on function billing.void_json(p_void billing.charge_voids, p_replayed boolean) from public;

-- A lot that expired since its charge: the void's share of it expires again at once (breakage),
-- keyed by the void so it never meets the lot's first expiry's key (a frozen lot too: it expires
-- when due like any other). Then the account's next expiry is the earliest of its open lots'.
create or replace function billing.expire_voided_lots(p_account billing.accounts, p_void_id bigint) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_lot record;
begin
  for v_lot in
    select l.id, l.remaining, l.category from billing.lots l
    join billing.lot_allocations la on la.lot_id = l.id and la.transfer_id = p_void_id
    where l.open and l.expires_at <= now()
    order by l.id
  loop
    perform billing.take_credits(p_account.id, 'expiry', v_lot.remaining, 'expiry:' || v_lot.id || ':void:' || p_void_id,
      null, null, jsonb_build_object('lot_id', v_lot.id::text, 'category', v_lot.category,
        'void_transfer_id', p_void_id::text), null, p_account.member_id,
      jsonb_build_object('first', jsonb_build_array(v_lot.id)));
  end loop;
  update billing.accounts a
  set next_expiry = (select min(l.expires_at) from billing.lots l where l.account_id = a.id and l.open)
  where a.id = p_account.id;
end;
$$;
comment on function billing.expire_voided_lots(p_account billing.accounts, p_void_id bigint) is 'Internal: what a void returned to lots that expired since expires again (breakage), keyed by the void; the account''s next expiry recomputed.';
revoke execute on function billing.expire_voided_lots(p_account billing.accounts, p_void_id bigint) from public, anon, authenticated;

create or replace function billing.void_charge_internal(p_charge_id bigint, p_actor uuid, p_reason text, p_run_id uuid)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_charge billing.transfers;
  v_hold billing.holds;
  v_account billing.accounts;
  v_void billing.transfers;
  v_row billing.charge_voids;
  v_model text;
  v_drawn numeric(38, 18);
  v_posted billing.posted_transfer[];
begin
  select * into v_charge from billing.transfers t where t.id = p_charge_id;
  if not found or v_charge.kind not in ('usage', 'hold_capture')
     or v_charge.to_account_id <> billing.platform_account_id('usage_revenue') then
    perform billing.raise_error('CHARGE_NOT_FOUND', jsonb_build_object('charge_id', p_charge_id::text));
  end if;
  -- The paying account's lock first, as every path that moves its credits; then the void is
  -- looked up: a concurrent void of the same charge has committed by now and is answered.
  select * into v_account from billing.accounts a where a.id = v_charge.from_account_id for update;
  select * into v_row from billing.charge_voids v where v.charge_id = p_charge_id;
  if found then
    return billing.void_json(v_row, true);
  end if;
  -- Settled first, as every path that moves credits: what is due expires in full (holds shrink by their part)
  -- before anything comes back, so below only the returned share of an expired lot expires again.
  v_account := billing.settled(v_account);
  select coalesce(sum(la.amount), 0) into v_drawn from billing.lot_allocations la where la.transfer_id = p_charge_id;
  if v_drawn <> v_charge.amount then
    -- A charge older than lots (or one that drew less than it cost) cannot go back into them.
    perform billing.raise_error('CHARGE_NOT_VOIDABLE', jsonb_build_object('charge_id', p_charge_id::text,
      'rule', 'the charge must have drawn its whole amount from lots'));
  end if;
  if v_charge.hold_id is not null then
    select * into v_hold from billing.holds h where h.id = v_charge.hold_id;
  end if;
  v_model := coalesce(v_charge.metadata ->> 'model', v_hold.metadata ->> 'model');

  -- The credits go back into the lots the charge drew (what pays a debt the account is in is
  -- settled, not remaining).
  v_posted := billing.post_transfers(array[('void', v_charge.to_account_id, v_charge.from_account_id, v_charge.amount,
    'void:' || p_charge_id, v_charge.correlation_id, p_charge_id::text,
    -- What the summaries net the void against: the charge's model, day and tokens.
    jsonb_strip_nulls(jsonb_build_object('charge_id', p_charge_id::text, 'charge_kind', v_charge.kind,
      'charged_at', v_charge.created_at, 'model', v_model, 'reason', p_reason, 'run_id', p_run_id))
      || case when billing.charge_counts_tokens(v_charge.kind, v_charge.amount, v_charge.metadata) then (
        select coalesce(jsonb_object_agg(k, v_charge.metadata -> k), '{}') from unnest(array['input_tokens',
          'output_tokens', 'cached_input_tokens', 'reasoning_tokens', 'images', 'audio_seconds']) k
        where jsonb_typeof(v_charge.metadata -> k) = 'number') else '{}' end,
    v_charge.rate_card_id, null, v_charge.member_id,
    jsonb_build_object('return_to', (select jsonb_agg(jsonb_build_object('lot_id', la.lot_id, 'amount', la.amount))
                                     from billing.lot_allocations la where la.transfer_id = p_charge_id))
  )::billing.transfer_spec]);
  select * into v_void from billing.transfers t where t.id = (v_posted[1]).transfer_id;
  select * into v_account from billing.accounts a where a.id = v_account.id;

  -- Credits given back to a lot a dispute froze are frozen with it (the flag is the lot's).
  perform billing.expire_voided_lots(v_account, v_void.id);
  select * into v_account from billing.accounts a where a.id = v_account.id;

  if v_account.caps > 0 then
    -- A capture counted its hold when the hold was placed (and a job's overage not at all).
    perform billing.return_cap_room(v_account.id, least(v_charge.amount, coalesce(v_hold.amount, v_charge.amount)), v_model,
      coalesce(v_hold.created_at, v_charge.created_at), v_charge.member_id,
      case when v_hold.purpose = 'ai' then array(select jsonb_array_elements_text(v_hold.metadata -> 'fallbacks')) end);
  end if;
  if v_account.low_balance_threshold is not null or v_account.auto_recharge_below is not null then
    -- A voided charge gives credits back: never a recharge by itself (docs/spend-controls.md).
    perform billing.watch_account(v_account.id, v_account.balance - v_account.held, null);
  end if;

  insert into billing.charge_voids (charge_id, void_transfer_id, account_id, member_id, amount, reason, voided_by, run_id)
  values (p_charge_id, v_void.id, v_account.id, v_charge.member_id, v_charge.amount, p_reason, p_actor, p_run_id)
  returning * into v_row;
  return billing.void_json(v_row, false);
end;
$$;
comment on function billing.void_charge_internal(p_charge_id bigint, p_actor uuid, p_reason text, p_run_id uuid) is 'Internal: gives a charge back (see the header): void transfer, lots re-credited (expired ones expire again), cap room, audit row. Idempotent per charge.';
revoke execute on function billing.void_charge_internal(p_charge_id bigint, p_actor uuid, p_reason text, p_run_id uuid) from public;

create or replace function billing.void_charge(p_admin uuid, p_charge_id bigint, p_reason text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform billing.assert_user_standing(p_admin, true);
  return billing.void_charge_internal(p_charge_id, p_admin, billing.check_correction_reason(p_reason), null);
end;
$$;
comment on function billing.void_charge(p_admin uuid, p_charge_id bigint, p_reason text) is 'POST /admin/charges/:id/void: an admin (checked now) voids one charge with a reason; voiding it again answers the first void (replayed: true).';
revoke execute on function billing.void_charge(p_admin uuid, p_charge_id bigint, p_reason text) from public, anon, authenticated;
grant execute on function billing.void_charge(p_admin uuid, p_charge_id bigint, p_reason text) to service_role;

create or replace function billing.correction_charges(p_model text, p_from timestamptz, p_to timestamptz, p_failed_only boolean)
returns table (charge_id bigint, account_id bigint, amount numeric, user_id uuid, org_id uuid)
language plpgsql stable
set search_path = ''
as $$
declare
  v_revenue bigint := billing.platform_account_id('usage_revenue');
begin
  -- transfers_created_brin finds the range. A failed charge is one the gateway recorded as failed
  -- (finish_ai_call writes "failed_by"); no caller can write that key (charge_usage strips it).
  return query
    select t.id, t.from_account_id, t.amount, coalesce(t.member_id, a.user_id), a.org_id
    from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    left join billing.holds h on h.id = t.hold_id
    where t.created_at >= p_from and t.created_at < p_to and t.kind in ('usage', 'hold_capture')
      and t.to_account_id = v_revenue
      and coalesce(t.metadata ->> 'model', h.metadata ->> 'model') = p_model
      and (not p_failed_only or t.metadata @> '{"failed_by": "gateway"}')
      and not exists (select 1 from billing.charge_voids v where v.charge_id = t.id)
      -- Only what can go back into its lots (void_charge_internal): a charge part of which is
      -- debt (an excess that found no credits) is given back by an adjustment, never stalls a run.
      and t.amount = (select coalesce(sum(la.amount), 0) from billing.lot_allocations la where la.transfer_id = t.id);
end;
$$;
comment on function billing.correction_charges(p_model text, p_from timestamp with time zone, p_to timestamp with time zone, p_failed_only boolean) is 'Internal: the charges a bulk correction''s filter matches that have no void yet and drew their whole amount from lots.';
revoke execute on function billing.correction_charges(p_model text, p_from timestamp with time zone, p_to timestamp with time zone, p_failed_only boolean) from public;

create or replace function billing.check_correction_filter(p_model text, p_from timestamptz, p_to timestamptz) returns void
language plpgsql stable
set search_path = ''
as $$
begin
  if p_model is null or length(p_model) not between 1 and 200 then
    perform billing.raise_error('INVALID_CORRECTION', jsonb_build_object('field', 'model', 'rule', '1 to 200 characters'));
  elsif p_from is null or p_to is null or p_from >= p_to then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'from', 'rule', 'before to'));
  elsif p_to > clock_timestamp() then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'to', 'rule', 'not in the future'));
  elsif p_to - p_from > interval '366 days' then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'from', 'rule', 'at most 366 days'));
  end if;
end;
$$;
comment on function billing.check_correction_filter(p_model text, p_from timestamp with time zone, p_to timestamp with time zone) is 'Internal: INVALID_CORRECTION or INVALID_RANGE unless the filter names a model and a past range of at most 366 days.';
revoke execute on function billing.check_correction_filter(p_model text, p_from timestamp with time zone, p_to timestamp with time zone) from public;

create or replace function billing.preview_correction(p_admin uuid, p_model text, p_from timestamptz, p_to timestamptz,
  p_failed_only boolean)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  perform billing.assert_user_standing(p_admin, true);
  perform billing.check_correction_filter(p_model, p_from, p_to);
  return (
    with c as (select * from billing.correction_charges(p_model, p_from, p_to, coalesce(p_failed_only, false)))
    select jsonb_build_object(
      'model', p_model, 'from', billing.json_time(p_from), 'to', billing.json_time(p_to),
      'failed_only', coalesce(p_failed_only, false),
      'charges', (select count(*) from c),
      'credits', (select trim_scale(coalesce(sum(c.amount), 0))::text from c),
      'users', (select count(distinct c.user_id) from c),
      'orgs', (select count(distinct c.org_id) from c),
      -- Who: the 100 users given back the most (the counts above are exact).
      'top_users', coalesce((select jsonb_agg(jsonb_build_object('user_id', u.user_id, 'org_id', u.org_id,
          'charges', u.n, 'credits', trim_scale(u.credits)::text) order by u.credits desc, u.user_id)
        from (select c.user_id, c.org_id, count(*) as n, sum(c.amount) as credits from c
              group by 1, 2 order by 4 desc, 1 limit 100) u), '[]'),
      'already_voided', (select count(*) from billing.charge_voids v join billing.transfers t on t.id = v.charge_id
                         left join billing.holds h on h.id = t.hold_id
                         where t.created_at >= p_from and t.created_at < p_to
                           and coalesce(t.metadata ->> 'model', h.metadata ->> 'model') = p_model)));
end;
$$;
comment on function billing.preview_correction(p_admin uuid, p_model text, p_from timestamp with time zone, p_to timestamp with time zone, p_failed_only boolean) is 'POST /admin/corrections/preview: what a bulk correction would give back (charges, credits, users, organisations), moving nothing.';
revoke execute on function billing.preview_correction(p_admin uuid, p_model text, p_from timestamp with time zone, p_to timestamp with time zone, p_failed_only boolean) from public, anon, authenticated;
grant execute on function billing.preview_correction(p_admin uuid, p_model text, p_from timestamp with time zone, p_to timestamp with time zone, p_failed_only boolean) to service_role;

create or replace function billing.correction_run_json(p_run billing.correction_runs, p_replayed boolean) returns jsonb
language plpgsql stable
set search_path = ''
as $$
begin
  return jsonb_build_object('id', p_run.id, 'status', p_run.status, 'model', p_run.model,
    'from', billing.json_time(p_run.from_at), 'to', billing.json_time(p_run.to_at), 'failed_only', p_run.failed_only,
    'reason', p_run.reason, 'requested_by', p_run.requested_by, 'voided', p_run.voided,
    'credits', trim_scale(p_run.credits)::text, 'batches', p_run.batches,
    'created_at', billing.json_time(p_run.created_at), 'updated_at', billing.json_time(p_run.updated_at),
    'completed_at', billing.json_time(p_run.completed_at), 'replayed', p_replayed);
end;
$$;
comment on function billing.correction_run_json(p_run billing.correction_runs, p_replayed boolean) is 'Internal: a correction run as the API answers it.';
revoke execute on function billing.correction_run_json(p_run billing.correction_runs, p_replayed boolean) from public;

create or replace function billing.start_correction_run(p_admin uuid, p_key text, p_model text, p_from timestamptz,
  p_to timestamptz, p_failed_only boolean, p_reason text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_reason text;
  v_run billing.correction_runs;
begin
  perform billing.assert_user_standing(p_admin, true);
  if p_key is null or length(p_key) not between 1 and 255 then
    perform billing.raise_error('IDEMPOTENCY_KEY_REQUIRED', jsonb_build_object('rule', '1 to 255 characters'));
  end if;
  v_reason := billing.check_correction_reason(p_reason);
  -- The key first: a replay answers the run it started, even once its range would be refused.
  insert into billing.correction_runs (requested_by, idempotency_key, model, from_at, to_at, failed_only, reason)
  select p_admin, p_key, p_model, p_from, p_to, coalesce(p_failed_only, false), v_reason
  where not exists (select 1 from billing.correction_runs r where r.requested_by = p_admin and r.idempotency_key = p_key)
  on conflict (requested_by, idempotency_key) do nothing
  returning * into v_run;
  if v_run.id is null then
    select * into v_run from billing.correction_runs r where r.requested_by = p_admin and r.idempotency_key = p_key;
    if v_run.model <> p_model or v_run.from_at <> p_from or v_run.to_at <> p_to
       or v_run.failed_only <> coalesce(p_failed_only, false) or v_run.reason <> v_reason then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', 'correction_run'));
    end if;
    return billing.correction_run_json(v_run, true);
  end if;
  perform billing.check_correction_filter(p_model, p_from, p_to);
  return billing.correction_run_json(v_run, false);
end;
$$;
comment on function billing.start_correction_run(p_admin uuid, p_key text, p_model text, p_from timestamp with time zone, p_to timestamp with time zone, p_failed_only boolean, p_reason text) is 'POST /admin/corrections: records a bulk correction run (idempotent by the admin''s key; the same key with another filter is IDEMPOTENCY_KEY_REUSED). Batches void its charges.';
revoke execute on function billing.start_correction_run(p_admin uuid, p_key text, p_model text, p_from timestamp with time zone, p_to timestamp with time zone, p_failed_only boolean, p_reason text) from public, anon, authenticated;
grant execute on function billing.start_correction_run(p_admin uuid, p_key text, p_model text, p_from timestamp with time zone, p_to timestamp with time zone, p_failed_only boolean, p_reason text) to service_role;

create or replace function billing.process_correction_run(p_run_id uuid, p_batch integer default 500) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_run billing.correction_runs;
  v_charge record;
  v_void jsonb;
  v_seen integer := 0;
  v_voided integer := 0;
  v_credits numeric(38, 18) := 0;
  v_last bigint;
begin
  -- One batch at a time per run (the admin call and pg_cron may meet here).
  select * into v_run from billing.correction_runs r where r.id = p_run_id for update;
  if not found then
    perform billing.raise_error('CORRECTION_NOT_FOUND', jsonb_build_object('run_id', p_run_id));
  end if;
  if v_run.status = 'completed' then
    return billing.correction_run_json(v_run, true);
  end if;
  -- The lowest ids without a void, each account's in turn: accounts are locked in ascending
  -- order, as the usage batch locks them, so the two never deadlock.
  for v_charge in
    select c.charge_id, c.account_id from (
      select x.charge_id, x.account_id from billing.correction_charges(v_run.model, v_run.from_at, v_run.to_at, v_run.failed_only) x
      order by x.charge_id limit least(greatest(coalesce(p_batch, 500), 1), 5000)) c
    order by c.account_id, c.charge_id
  loop
    v_seen := v_seen + 1;
    v_void := billing.void_charge_internal(v_charge.charge_id, v_run.requested_by, v_run.reason, v_run.id);
    if not (v_void ->> 'replayed')::boolean then
      v_voided := v_voided + 1;
      v_credits := v_credits + (v_void ->> 'amount')::numeric;
    end if;
    v_last := greatest(v_last, v_charge.charge_id);
  end loop;
  update billing.correction_runs r
  set voided = r.voided + v_voided, credits = r.credits + v_credits, batches = r.batches + 1,
      last_charge_id = greatest(r.last_charge_id, v_last), updated_at = now(),
      -- Done once nothing is left and no charge that began before `to` can still commit.
      status = case when v_seen = 0 and now() >= r.to_at + make_interval(secs => billing.correction_settle_seconds())
                    then 'completed' else 'running' end,
      completed_at = case when v_seen = 0 and now() >= r.to_at + make_interval(secs => billing.correction_settle_seconds())
                          then now() end
  where r.id = p_run_id returning * into v_run;
  return billing.correction_run_json(v_run, false);
end;
$$;
comment on function billing.process_correction_run(p_run_id uuid, p_batch integer) is 'One batch of a correction run, in the caller''s transaction: voids up to p_batch matching charges without a void and records the progress; completes the run at the first empty batch after its range has settled.';
revoke execute on function billing.process_correction_run(p_run_id uuid, p_batch integer) from public, anon, authenticated;
grant execute on function billing.process_correction_run(p_run_id uuid, p_batch integer) to service_role;

create or replace function billing.process_correction_runs(p_batch integer default 1000) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_run uuid;
begin
  -- The oldest running run a batch is not already processing (skip locked): one batch a tick.
  select r.id into v_run from billing.correction_runs r where r.status = 'running'
  order by r.created_at limit 1 for update skip locked;
  if v_run is null then
    return 0;
  end if;
  perform billing.process_correction_run(v_run, p_batch);
  return 1;
end;
$$;
comment on function billing.process_correction_runs(p_batch integer) is 'pg_cron, every minute: one batch of the oldest running correction run; answers how many runs it advanced (0 or 1).';
revoke execute on function billing.process_correction_runs(p_batch integer) from public, anon, authenticated;
grant execute on function billing.process_correction_runs(p_batch integer) to service_role;

create or replace function billing.get_correction_run(p_admin uuid, p_run_id uuid) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_run billing.correction_runs;
begin
  perform billing.assert_user_standing(p_admin, true);
  select * into v_run from billing.correction_runs r where r.id = p_run_id;
  if not found then
    perform billing.raise_error('CORRECTION_NOT_FOUND', jsonb_build_object('run_id', p_run_id));
  end if;
  return billing.correction_run_json(v_run, false) - 'replayed';
end;
$$;
comment on function billing.get_correction_run(p_admin uuid, p_run_id uuid) is 'GET /admin/corrections/:id: a run''s filter, status and progress, for an admin (checked now).';
revoke execute on function billing.get_correction_run(p_admin uuid, p_run_id uuid) from public, anon, authenticated;
grant execute on function billing.get_correction_run(p_admin uuid, p_run_id uuid) to service_role;

create or replace function billing.continue_correction_run(p_admin uuid, p_run_id uuid, p_batch integer default 500) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform billing.assert_user_standing(p_admin, true);
  return billing.process_correction_run(p_run_id, p_batch) - 'replayed';
end;
$$;
comment on function billing.continue_correction_run(p_admin uuid, p_run_id uuid, p_batch integer) is 'POST /admin/corrections/:id/continue: an admin (checked now) runs the next batch of a run now rather than at the next pg_cron tick.';
revoke execute on function billing.continue_correction_run(p_admin uuid, p_run_id uuid, p_batch integer) from public, anon, authenticated;
grant execute on function billing.continue_correction_run(p_admin uuid, p_run_id uuid, p_batch integer) to service_role;

-- GET /admin/corrections: the runs, newest first, a page of at most 100 after the run p_after.
create or replace function billing.list_correction_runs(p_admin uuid, p_after uuid, p_limit integer) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  perform billing.assert_user_standing(p_admin, true);
  return (select coalesce(jsonb_agg(billing.correction_run_json(r, false) - 'replayed' order by r.created_at desc, r.id desc), '[]')
    from (select * from billing.correction_runs x
          where p_after is null or (x.created_at, x.id) < (select a.created_at, a.id from billing.correction_runs a where a.id = p_after)
          order by x.created_at desc, x.id desc limit least(greatest(p_limit, 1), 101)) r);
end;
$$;
comment on function billing.list_correction_runs(p_admin uuid, p_after uuid, p_limit integer) is 'GET /admin/corrections: correction runs newest first with their status and progress, for an admin (checked now); p_after is the last run of the previous page.';
revoke execute on function billing.list_correction_runs(p_admin uuid, p_after uuid, p_limit integer) from public, anon, authenticated;
grant execute on function billing.list_correction_runs(p_admin uuid, p_after uuid, p_limit integer) to service_role;

-- ============================================================ triggers

create trigger charge_voids_immutable before update or delete on billing.charge_voids
  for each row execute function billing.refuse_ledger_change();

create trigger charge_voids_no_truncate before truncate on billing.charge_voids
  for each statement execute function billing.refuse_ledger_change();
