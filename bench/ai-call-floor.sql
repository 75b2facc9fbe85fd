-- An AI call's and a usage request's row writes alone (bench money-path-profile, cells (d) and
-- (e)). A call's are the rows the gateway's hold
-- and capture write (the hold placed and posted, the account twice, the transfer, its entry, the
-- lot drawn and its allocation, both report tails, the call's record inserted and finished), as
-- bare statements on copies of the ledger's tables, indexes included. No checks, no answers: the
-- floor of today's data model, against which the real call's cost is read. The caller fills
-- bench_floor.accounts and bench_floor.lots with the run's funded users.
drop schema if exists bench_floor cascade;
create schema bench_floor;
create table bench_floor.accounts (like billing.accounts including all);
create table bench_floor.holds (like billing.holds including all);
create table bench_floor.ai_calls (like billing.ai_calls including all);
create table bench_floor.transfers (like billing.transfers including all);
create table bench_floor.entries (like billing.entries including all);
create table bench_floor.lots (like billing.lots including all);
create table bench_floor.lot_allocations (like billing.lot_allocations including all);
create table bench_floor.ledger_tail (like billing.ledger_tail including all);
create table bench_floor.lots_tail (like billing.lots_tail including all);
-- LIKE leaves storage parameters (a fillfactor kept for HOT updates) behind: the same as the originals.
do $$
declare t text;
begin
  for t in select c.relname from pg_class c where c.relnamespace = 'bench_floor'::regnamespace and c.relkind = 'r' loop
    if (select o.reloptions from pg_class o where o.oid = ('billing.' || t)::regclass) is not null then
      execute format('alter table bench_floor.%I set (%s)', t,
        (select string_agg(x, ', ') from pg_class o, unnest(o.reloptions) x where o.oid = ('billing.' || t)::regclass));
    end if;
  end loop;
end $$;

-- A debit's rows, a call's capture's and a usage request's alike: the transfer, the account
-- (its held moved by p_held_delta in the same write), its entry, the lot drawn and its
-- allocation, both report tails.
create function bench_floor.debit(p_account bigint, p_amount numeric, p_kind billing.transfer_kind, p_key text,
  p_correlation text, p_metadata jsonb, p_hold uuid, p_held_delta numeric) returns bigint
language plpgsql set search_path = '' as $$
declare
  v_id bigint;
  v_balance numeric;
  v_version bigint;
begin
  insert into bench_floor.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id,
    metadata, hold_id)
  values (p_kind, p_account, (select a.id from bench_floor.accounts a where a.code = 'usage_revenue'), p_amount, p_key,
    p_correlation, p_metadata, p_hold)
  on conflict (idempotency_key, kind) do nothing
  returning id into v_id;
  update bench_floor.accounts a set balance = a.balance - p_amount, version = a.version + 1, held = a.held + p_held_delta
  where a.id = p_account returning a.balance, a.version into v_balance, v_version;
  insert into bench_floor.entries (transfer_id, account_id, amount, balance_after, account_version)
  values (v_id, p_account, -p_amount, v_balance, v_version);
  insert into bench_floor.ledger_tail as x (at, backend, kind, rate_card_id, amount, events, credit_change)
  values (date_trunc('second', now()), pg_backend_pid(), p_kind, null, p_amount, 1, -p_amount)
  on conflict (at, backend, kind, rate_card_id) do update
  set amount = x.amount + excluded.amount, events = x.events + 1, credit_change = x.credit_change + excluded.credit_change;
  with drawn as (
    update bench_floor.lots l set remaining = l.remaining - p_amount
    where l.id = (select y.id from bench_floor.lots y where y.account_id = p_account and y.open
                  order by y.frozen, y.priority, y.expires_at nulls last, y.granted_at, y.id limit 1)
      and l.remaining >= p_amount
    returning l.id, l.cost_cents * p_amount / l.amount as cents, l.currency, l.category, l.origin
  ), allocated as (
    insert into bench_floor.lot_allocations (transfer_id, lot_id, kind, amount, cents)
    select v_id, drawn.id, p_kind, p_amount, drawn.cents from drawn
  )
  insert into bench_floor.lots_tail as x (at, backend, currency, category, kind, origin, credits, cents)
  select date_trunc('second', now()), pg_backend_pid(), drawn.currency, drawn.category, p_kind, drawn.origin,
    p_amount, drawn.cents
  from drawn
  on conflict (at, backend, currency, category, kind, origin) do update
  set credits = x.credits + excluded.credits, cents = x.cents + excluded.cents;
  return v_id;
end $$;

create function bench_floor.begin_call(p_user uuid, p_amount numeric) returns uuid
language plpgsql set search_path = '' as $$
declare
  a bench_floor.accounts;
  v_hold uuid := gen_random_uuid();
  v_call uuid := gen_random_uuid();
begin
  select * into a from bench_floor.accounts x where x.user_id = p_user for update;
  insert into bench_floor.holds (id, account_id, amount, idempotency_key, correlation_id, metadata, expires_at, purpose)
  values (v_hold, a.id, p_amount, 'ai:' || v_call, 'ai:' || v_call,
    jsonb_build_object('model', 'gpt-4o-mini', 'ai_call_id', v_call), now() + interval '10 minutes', 'ai');
  update bench_floor.accounts x set held = x.held + p_amount where x.id = a.id;
  insert into bench_floor.ai_calls (id, user_id, idempotency_key, request_hash, model, prompt_tokens, max_output_tokens,
    endpoint, upstream, stream, hold_id, keep_content)
  values (v_call, p_user, 'auto:' || v_call, repeat('0', 64), 'gpt-4o-mini', 40, 60, 'chat', 'openai', false, v_hold, false)
  on conflict (user_id, idempotency_key) where status <> 'failed' do nothing;
  return v_call;
end $$;

create function bench_floor.finish_call(p_call uuid, p_amount numeric) returns bigint
language plpgsql set search_path = '' as $$
declare
  c bench_floor.ai_calls;
  h bench_floor.holds;
  v_id bigint;
begin
  select * into c from bench_floor.ai_calls x where x.id = p_call for update;
  select * into h from bench_floor.holds x where x.id = c.hold_id;
  perform 1 from bench_floor.accounts a where a.id = h.account_id for update;
  v_id := bench_floor.debit(h.account_id, p_amount, 'hold_capture', 'hold:' || h.id, 'ai:' || c.id,
    jsonb_build_object('model', c.model, 'ai_call_id', c.id, 'usage_source', 'provider', 'input_tokens', 40,
      'output_tokens', 20), h.id, -h.amount);
  update bench_floor.holds x set status = 'captured', captured_amount = p_amount, capture_transfer_id = v_id,
    finished_at = now()
  where x.id = h.id;
  update bench_floor.ai_calls x set status = 'charged', usage = '{"input_tokens": 40, "output_tokens": 20}',
    usage_source = 'provider', charged = p_amount, transfer_id = v_id, finished_at = now(), upstream_status = 200,
    first_token_ms = 120, duration_ms = 480, finish_reason = 'stop'
  where x.id = p_call;
  return v_id;
end $$;

-- A usage request's row writes alone (cell (e)).
create function bench_floor.usage_charge(p_user uuid, p_amount numeric) returns bigint
language plpgsql set search_path = '' as $$
declare
  a bench_floor.accounts;
begin
  select * into a from bench_floor.accounts x where x.user_id = p_user for update;
  return bench_floor.debit(a.id, p_amount, 'usage', gen_random_uuid()::text, 'bench',
    jsonb_build_object('model', 'gpt-4o-mini', 'input_tokens', 40, 'output_tokens', 20), null, 0);
end $$;

-- The run's users' accounts (and the platform's usage account) and their lots, as they are now.
create function bench_floor.fill(p_users uuid[]) returns void
language plpgsql set search_path = '' as $$
declare
  t text;
  v_cols text;
begin
  -- Generated columns (an account's `reads_lots`, a lot's `open` and `free`) are computed again, not copied.
  select string_agg(quote_ident(x.attname), ', ' order by x.attnum) into v_cols from pg_attribute x
  where x.attrelid = 'billing.accounts'::regclass and x.attnum > 0 and not x.attisdropped and x.attgenerated = '';
  execute format('insert into bench_floor.accounts (%1$s) overriding system value select %1$s from billing.accounts a
                  where a.user_id = any ($1) or a.code = %2$L', v_cols, 'usage_revenue') using p_users;
  select string_agg(quote_ident(x.attname), ', ' order by x.attnum) into v_cols from pg_attribute x
  where x.attrelid = 'billing.lots'::regclass and x.attnum > 0 and not x.attisdropped and x.attgenerated = '';
  execute format('insert into bench_floor.lots (%1$s) overriding system value select %1$s from billing.lots l
                  where l.account_id in (select a.id from bench_floor.accounts a)', v_cols);
  analyze bench_floor.accounts;
  analyze bench_floor.lots;
end $$;
