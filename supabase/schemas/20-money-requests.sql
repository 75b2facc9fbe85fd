-- Money requests and HTTP idempotency. A money route runs one transaction, its route group's
-- door (run_usage_report, run_code_request, run_money_request): it checks the caller's
-- standing, claims the Idempotency-Key, performs the action and stores the answer, so a retry
-- gets the stored answer and a concurrent duplicate waits. Any other idempotent route claims its
-- key (claim_idempotency_key), does its work (a Stripe call, outside any transaction) and stores
-- the answer (complete_idempotency_key). Both keep the answer in one format (idempotency_keys).
-- The doors call into the domains (a code's redemption among them), so they sit above them, in
-- 78-money-actions.sql; here, what they and others build on.

-- ============================================================ types

create type billing.request_answer as (
  status integer,                                 -- a success's HTTP status; null for a refusal
  data jsonb,                                     -- a success's data
  refusal_token text,
  refusal_fields jsonb,
  request_id text,                                -- the first request's id
  responded_at timestamptz,                       -- when the first request was answered
  replayed boolean
);
comment on type billing.request_answer is 'The answer to an idempotent HTTP request, in the one format billing.idempotency_keys stores: a success''s status and data, or a refusal''s token and fields, with the first request''s id and time; _shared/http/idempotency.ts renders every one.';

-- ============================================================ tables

-- What an answer is rather than its bytes: the usage fast path (run_usage_request) stores no row
-- and answers a retry from its transfer in the same format, and the functions render every
-- answer with one reader (_shared/http/idempotency.ts), so a replay is the first answer byte for
-- byte. A money route's effect and its answer commit in one transaction, so a concurrent
-- duplicate waits on the first's uncommitted row, then reads it.
create table billing.idempotency_keys (
  user_id uuid not null,
  action text not null,                           -- the route, e.g. 'credits.usage'
  key text not null,
  request_hash text not null,                     -- sha256 of method, path and body
  request_id text,                                -- the first request's id, sent with every replay
  response_status integer,                        -- a success's HTTP status; null for a refusal
  response_data jsonb,                            -- a success's data
  -- A refusal: its token (an error token of _shared/adapters/sql-errors.ts, or the code of a
  -- refusal made in TypeScript), and the fields of the error that the token's entry there does
  -- not give: {details} for a SQL token; every field for a refusal made in TypeScript.
  refusal_token text,
  refusal_fields jsonb,
  responded_at timestamptz,                       -- null while in flight
  locked_at timestamptz not null default now(),
  expires_at timestamptz not null default now() + interval '24 hours',
  primary key (user_id, action, key),
  constraint idempotency_keys_key_length check (length(key) between 1 and 255),
  constraint idempotency_keys_one_answer check (
    responded_at is null or (response_status is null) <> (refusal_token is null))
);
comment on table billing.idempotency_keys is 'The answers of idempotent HTTP routes by (user, action, Idempotency-Key), kept 24 hours, in one format: a success''s status and data, or a refusal''s token and fields, with the first request''s id and time.';
alter table billing.idempotency_keys enable row level security;

create index idempotency_keys_expiry on billing.idempotency_keys (expires_at);

-- ============================================================ functions

create or replace function billing.answer_of(p_row billing.idempotency_keys, p_replayed boolean)
returns billing.request_answer
language sql immutable
set search_path = ''
as $$
  select (p_row.response_status, p_row.response_data, p_row.refusal_token, p_row.refusal_fields, p_row.request_id,
          p_row.responded_at, p_replayed)::billing.request_answer
$$;
comment on function billing.answer_of(p_row billing.idempotency_keys, p_replayed boolean) is 'Internal: the answer a key''s row stores, as the functions render it.';
revoke execute on function billing.answer_of(p_row billing.idempotency_keys, p_replayed boolean) from public;

create or replace function billing.refusal_answer(p_token text, p_details jsonb, p_request_id text)
returns billing.request_answer
language sql stable
set search_path = ''
as $$
  select (null, null, p_token, jsonb_build_object('details', p_details), p_request_id, now(), false)::billing.request_answer
$$;
comment on function billing.refusal_answer(p_token text, p_details jsonb, p_request_id text) is 'Internal: a refusal with its details, answered to this request and stored nowhere.';
revoke execute on function billing.refusal_answer(p_token text, p_details jsonb, p_request_id text) from public;

-- The one upsert of a key (claim_idempotency_key and claim_money_request): the row of another
-- request under the key, answered or not, or null when this request now holds it. A concurrent
-- claim of the same key blocks here until the first transaction ends.
create or replace function billing.take_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text,
  p_request_id text)
returns billing.idempotency_keys
language plpgsql
set search_path = ''
as $$
declare
  v_row billing.idempotency_keys;
begin
  insert into billing.idempotency_keys as k (user_id, action, key, request_hash, request_id)
  values (p_user, p_action, p_key, p_request_hash, p_request_id)
  on conflict (user_id, action, key) do update
    set request_hash = excluded.request_hash, request_id = excluded.request_id, response_status = null,
        response_data = null, refusal_token = null, refusal_fields = null, responded_at = null,
        locked_at = now(), expires_at = now() + interval '24 hours'
    -- An expired key not yet swept starts over; so does the same request's claim abandoned
    -- mid-flight by a crashed instance (its answer was never stored: only a claim route's can be,
    -- a money request stores its answer in the transaction that claims). Another request under a
    -- stalled claim is refused by the caller, never given the key: the first may still be running.
    where k.expires_at <= now()
       or (k.responded_at is null and k.locked_at < now() - interval '60 seconds' and k.request_hash = excluded.request_hash)
  returning * into v_row;
  if found then
    return null;
  end if;
  select * into v_row from billing.idempotency_keys k where k.user_id = p_user and k.action = p_action and k.key = p_key;
  return v_row;
end;
$$;
comment on function billing.take_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text) is 'Internal: claims a key for this request (null), or returns the row of the request that holds it.';
revoke execute on function billing.take_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text) from public;

create or replace function billing.claim_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text,
  p_request_id text)
returns billing.request_answer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row billing.idempotency_keys;
begin
  perform billing.assert_user_standing(p_user);
  v_row := billing.take_idempotency_key(p_user, p_action, p_key, p_request_hash, p_request_id);
  if v_row.user_id is null then
    return null;
  end if;
  if v_row.request_hash <> p_request_hash then
    perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', p_action));
  end if;
  if v_row.responded_at is null then
    perform billing.raise_error('IDEMPOTENCY_KEY_IN_USE', jsonb_build_object('action', p_action));
  end if;
  return billing.answer_of(v_row, true);
end;
$$;
comment on function billing.claim_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text) is 'Claims a key for a request of a user in good standing (null: the key is this request''s now), or returns the stored answer; IDEMPOTENCY_KEY_REUSED for another request under the key, IDEMPOTENCY_KEY_IN_USE while the first is unanswered.';
revoke execute on function billing.claim_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text) from public;
grant execute on function billing.claim_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text, p_request_id text) to service_role;

create or replace function billing.complete_idempotency_key(p_user uuid, p_action text, p_key text, p_request_id text,
  p_status integer, p_data jsonb, p_refusal_token text, p_refusal_fields jsonb)
returns setof billing.request_answer
language sql
security definer
set search_path = ''
as $$
  update billing.idempotency_keys k
  set response_status = p_status, response_data = p_data, refusal_token = p_refusal_token,
      refusal_fields = p_refusal_fields, responded_at = now()
  where k.user_id = p_user and k.action = p_action and k.key = p_key and k.request_id = p_request_id
    and k.responded_at is null
  returning (billing.answer_of(k, false)).*
$$;
comment on function billing.complete_idempotency_key(p_user uuid, p_action text, p_key text, p_request_id text, p_status integer, p_data jsonb, p_refusal_token text, p_refusal_fields jsonb) is 'Stores the answer of a key this request (p_request_id) still holds (a success''s status and data, or a refusal''s token and fields) and returns it as every replay will; no row when the claim went to a retry of the same request.';
revoke execute on function billing.complete_idempotency_key(p_user uuid, p_action text, p_key text, p_request_id text, p_status integer, p_data jsonb, p_refusal_token text, p_refusal_fields jsonb) from public;
grant execute on function billing.complete_idempotency_key(p_user uuid, p_action text, p_key text, p_request_id text, p_status integer, p_data jsonb, p_refusal_token text, p_refusal_fields jsonb) to service_role;

create or replace function billing.abandon_idempotency_key(p_user uuid, p_action text, p_key text, p_request_id text)
returns void
language sql
security definer
set search_path = ''
as $$
  delete from billing.idempotency_keys k
  where k.user_id = p_user and k.action = p_action and k.key = p_key and k.request_id = p_request_id
    and k.responded_at is null
$$;
comment on function billing.abandon_idempotency_key(p_user uuid, p_action text, p_key text, p_request_id text) is 'Forgets this request''s in-flight claim when its work failed before any effect or its refusal says to retry (routes with an external call), so a retry starts over.';
revoke execute on function billing.abandon_idempotency_key(p_user uuid, p_action text, p_key text, p_request_id text) from public;
grant execute on function billing.abandon_idempotency_key(p_user uuid, p_action text, p_key text, p_request_id text) to service_role;

create or replace function billing.hold_json(h billing.hold_result) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return jsonb_build_object('hold_id', h.hold_id, 'status', h.status, 'amount', trim_scale(h.amount)::text,
    'captured', trim_scale(h.captured)::text, 'released', trim_scale(h.released)::text,
    'transfer_id', h.transfer_id::text, 'expires_at', billing.json_time(h.expires_at),
    'balance', trim_scale(h.balance)::text, 'available', trim_scale(h.available)::text);
end
$$;
comment on function billing.hold_json(h billing.hold_result) is 'A hold as the API returns it (Hold in _shared/contract/index.ts).';
revoke execute on function billing.hold_json(h billing.hold_result) from public;

-- POST /credits/usage for a student paying from their own account (nearly every request), in the
-- fewest statements: the transfer is the request's record. It carries the request's hash and
-- id, so a retry is answered from it (the balance from its entry) and another request under the
-- key is refused; nothing else is stored, and no subtransaction is opened. The writer answers
-- what the account has and what its caps leave (counting the charge against them). Null hands
-- the request to the general path (run_usage_report), which answers and stores everything
-- else: a refusal, an organisation member, credits for some models, an account with something
-- fallen due (that path settles it), an unknown model, a zero-priced event, an answer that path
-- stored already. The account lock serialises this path
-- with that one: a request under the same key there finds this transfer, and the other way round.
create or replace function billing.run_usage_request(p_user uuid, p_key text, p_request_hash text, p_request_id text,
  p_args jsonb, p_success_status integer)
returns billing.request_answer
language plpgsql
set search_path = ''
as $$
declare
  v_key text := billing.scoped_key('http:' || p_user::text || ':credits.usage:', p_key);
  v_price billing.usage_price := billing.quote_usage(p_args ->> 'model', (p_args ->> 'input_tokens')::bigint,
    (p_args ->> 'output_tokens')::bigint, (p_args ->> 'cached_input_tokens')::bigint,
    (p_args ->> 'reasoning_tokens')::bigint, (p_args ->> 'images')::bigint, (p_args ->> 'audio_seconds')::bigint);
  v_account billing.accounts;
  v_t billing.transfers;
  v_posted billing.posted_transfer;
begin
  -- The key first, whatever this request is: a charge recorded under it answers a retry and
  -- refuses another request, on whichever path this one would go.
  select * into v_account from billing.accounts a where a.user_id = p_user for update;
  if not found then
    return null;
  end if;
  perform 1 from billing.idempotency_keys k where k.user_id = p_user and k.action = 'credits.usage' and k.key = p_key;
  if found then
    return null;
  end if;
  select * into v_t from billing.transfers t where t.idempotency_key = v_key and t.kind = 'usage';
  if found then
    if not v_t.metadata ? 'request_hash' then
      return null;
    elsif v_t.metadata ->> 'request_hash' <> p_request_hash then
      return billing.refusal_answer('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'credits.usage'), p_request_id);
    end if;
    return (p_success_status, billing.usage_answer(v_t.id, v_t.amount,
        (select e.balance_after from billing.entries e where e.transfer_id = v_t.id and e.account_id = v_t.from_account_id),
        coalesce((v_t.metadata ->> 'held_after')::numeric, 0),
        (select c.version from billing.rate_cards c where c.id = v_t.rate_card_id)),
      null, null, v_t.metadata ->> 'request_id', v_t.created_at, true)::billing.request_answer;
  end if;
  -- Anything else goes the general way: a refusal, a school's account, credits for some models,
  -- or something fallen due, which the general path settles first (billing.settled).
  if v_price.amount is null or v_price.amount <= 0 or v_account.orgs > 0 or v_account.restricted_lots
     or billing.falls_due(v_account) then
    return null;
  end if;

  v_posted := billing.post_debit(('usage', v_account.id, billing.platform_account_id('usage_revenue'),
    v_price.amount, v_key, p_args ->> 'correlation_id', null,
    (coalesce(p_args -> 'metadata', '{}'::jsonb) - billing.ledger_owned_keys())
    || billing.usage_facts(p_args ->> 'model', (p_args ->> 'input_tokens')::bigint, (p_args ->> 'output_tokens')::bigint,
      (p_args ->> 'cached_input_tokens')::bigint, (p_args ->> 'reasoning_tokens')::bigint, (p_args ->> 'images')::bigint,
      (p_args ->> 'audio_seconds')::bigint)
    || jsonb_strip_nulls(jsonb_build_object('request_hash', p_request_hash, 'request_id', p_request_id,
      'held_after', case when v_account.held > 0 then trim_scale(v_account.held)::text end)),
    v_price.rate_card_id, null, null, null)::billing.transfer_spec);
  if v_posted.result <> 'applied' then
    return null;                                    -- nothing written: the general path refuses it
  end if;
  v_account.balance := v_posted.from_balance;
  v_account.version := v_account.version + 1;
  if v_account.low_balance_threshold is not null or v_account.auto_recharge_below is not null then
    perform billing.watch_account(v_account.id, v_account.balance - v_account.held, v_account.auto_recharge_below);
  end if;
  return (p_success_status, billing.usage_answer(v_posted.transfer_id, v_price.amount, v_account.balance, v_account.held,
      v_price.rate_card_version),
    null, null, p_request_id, now(), false)::billing.request_answer;
end;
$$;
comment on function billing.run_usage_request(p_user uuid, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer) is 'Internal: POST /credits/usage for a student paying from their own account, the transfer its only record; null hands the request to run_usage_report''s general path.';
revoke execute on function billing.run_usage_request(p_user uuid, p_key text, p_request_hash text, p_request_id text, p_args jsonb, p_success_status integer) from public;

-- A usage charge as POST /credits/usage answers it when the student paid (UsageResult).
create or replace function billing.usage_answer(p_transfer_id bigint, p_charged numeric, p_balance numeric, p_held numeric,
  p_rate_card_version integer)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return jsonb_build_object('transfer_id', p_transfer_id::text, 'charged', trim_scale(p_charged)::text,
    'balance', trim_scale(p_balance)::text, 'available', trim_scale(p_balance - p_held)::text,
    'rate_card_version', p_rate_card_version, 'paid_by', 'self');
end
$$;
comment on function billing.usage_answer(p_transfer_id bigint, p_charged numeric, p_balance numeric, p_held numeric, p_rate_card_version integer) is 'Internal: a usage charge the student paid, as POST /credits/usage answers it.';
revoke execute on function billing.usage_answer(p_transfer_id bigint, p_charged numeric, p_balance numeric, p_held numeric, p_rate_card_version integer) from public;

create or replace function billing.delete_expired_idempotency_keys(p_limit integer default 5000) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  -- `expires_at <= now()` again on the row itself: a request that claimed the expired key again
  -- (take_idempotency_key) while this waited on the row keeps it and its answer, whether or not
  -- the server re-checks a TID scan's ctid on the row's new version (15.20 here does).
  delete from billing.idempotency_keys k
  where ctid = any (array(select k2.ctid from billing.idempotency_keys k2 where k2.expires_at <= now() limit p_limit))
    and k.expires_at <= now();
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
comment on function billing.delete_expired_idempotency_keys(p_limit integer) is 'pg_cron: deletes up to p_limit expired keys per run. Idempotent.';
revoke execute on function billing.delete_expired_idempotency_keys(p_limit integer) from public;
grant execute on function billing.delete_expired_idempotency_keys(p_limit integer) to service_role;

create or replace function billing.as_seen_by(p_user uuid, p_account_id bigint, p_answer jsonb)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_paid billing.accounts;
  v_own billing.balance;
begin
  select * into v_paid from billing.accounts a where a.id = p_account_id;
  if v_paid.org_id is null then
    return p_answer;
  end if;
  -- Paid by an organisation: which one; its pool's balance never (the caller's own account's
  -- instead, as GET /credits/balance shows it); an allowance is the member's own to see.
  if v_paid.member_id is not null then
    return p_answer || jsonb_build_object('org_id', v_paid.org_id);
  end if;
  v_own := billing.balance_of((select a.id from billing.accounts a where a.user_id = p_user));
  return p_answer || jsonb_build_object('org_id', v_paid.org_id,
    'balance', trim_scale(coalesce(v_own.balance, 0))::text, 'available', trim_scale(coalesce(v_own.available, 0))::text);
end
$$;
comment on function billing.as_seen_by(p_user uuid, p_account_id bigint, p_answer jsonb) is 'Internal: a money answer as p_user may see it when p_account_id (the account that paid or holds) is an organisation''s: its org_id added, and for a pooled wallet the caller''s own balance and available instead of the pool''s.';
revoke execute on function billing.as_seen_by(p_user uuid, p_account_id bigint, p_answer jsonb) from public;
