-- The usage batch: up to 1,000 usage events priced and debited in one transaction
-- (POST /credits/usage/batch), each keyed by user and event id, with one outcome per event in
-- input order (applied, duplicate, insufficient, invalid). Prices with the formula and facts of
-- 12-usage-pricing.sql and writes through billing.post_transfers.

-- ============================================================ functions

-- One lock per account for the whole batch, in ascending id order (no deadlocks): the users'
-- own accounts, then the organisation accounts that may pay for members (after, as everywhere);
-- then each locked user account settled (overdue holds ended, due lots expired). Answers the
-- users' accounts as it locked them (each event's account is read here, not looked up again):
-- whose, which, whether its events are charged alone (a member of funding organisations, credits
-- for some models) and whether it watches its available amount (a low-balance alert,
-- auto-recharge). Settling changes none of these but credits for some models, which an expiry
-- may end: such an account's events are then charged alone, the road for any account.
create or replace function billing.lock_usage_batch(p_users uuid[], out users uuid[], out accounts bigint[],
  out alone boolean[], out watched boolean[])
language plpgsql
set search_path = ''
as $$
declare
  v_users uuid[] := array(select distinct u from unnest(p_users) u);
begin
  select array_agg(a.user_id), array_agg(a.id), array_agg(a.orgs > 0 or a.restricted_lots),
    array_agg(a.low_balance_threshold is not null or a.auto_recharge_below is not null)
  into users, accounts, alone, watched
  from (select * from billing.accounts a where a.user_id = any(v_users) order by a.id for update) a;
  if true = any(alone) and exists (select 1 from billing.accounts a where a.id = any(accounts) and a.orgs > 0) then
    perform 1 from billing.accounts a
    join billing.org_members m on m.org_id = a.org_id and m.active and m.role = 'member'
      and (a.member_id is null or a.member_id = m.user_id)
    where m.user_id in (select u.user_id from billing.accounts u where u.id = any(accounts) and u.orgs > 0)
    order by a.id for update of a;
  end if;
  perform billing.settled(a) from billing.accounts a where a.id = any(accounts) order by a.id;
end;
$$;
comment on function billing.lock_usage_batch(p_users uuid[], out users uuid[], out accounts bigint[], out alone boolean[], out watched boolean[]) is 'Internal: locks every account a usage batch may charge, in id order, and settles the users'' own; answers the users'' accounts as locked (whose, which, charged alone, watching their available amount).';
revoke execute on function billing.lock_usage_batch(p_users uuid[], out users uuid[], out accounts bigint[], out alone boolean[], out watched boolean[]) from public, anon, authenticated;

-- A batch event's ledger key: the caller's event id within its user's namespace (at most 300
-- characters: a long id is hashed, as billing.scoped_key does).
create or replace function billing.usage_event_key(p_user uuid, p_event_id text) returns text
language plpgsql immutable
set search_path = ''
as $$
begin
  return billing.scoped_key('usage-event:' || p_user::text || ':', p_event_id);
end
$$;
comment on function billing.usage_event_key(p_user uuid, p_event_id text) is 'Internal: the idempotency key of a batch usage event (user + event id): two users'' events never share one.';
revoke execute on function billing.usage_event_key(p_user uuid, p_event_id text) from public;

-- A batch event that cannot join the batch's one write: a member's (the spending order picks the
-- wallet) or one on an account with restricted lots (its charge draws for its model).
create or replace function billing.charge_event_alone(p_user uuid, p_model text, p_input_tokens bigint, p_output_tokens bigint,
  p_event_id text, p_correlation_id text, p_occurred_at timestamptz, p_cached_input_tokens bigint default 0,
  p_reasoning_tokens bigint default 0, p_images bigint default 0, p_audio_seconds bigint default 0) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_result billing.usage_result;
  v_org uuid;
  v_token text;
  v_detail jsonb;
begin
  v_result := billing.charge_usage(p_user, p_model, p_input_tokens, p_output_tokens,
    billing.usage_event_key(p_user, p_event_id),
    p_correlation_id, jsonb_build_object('occurred_at', p_occurred_at, 'event_id', p_event_id), p_cached_input_tokens,
    p_reasoning_tokens, p_images, p_audio_seconds);
  select a.org_id into v_org from billing.transfers t join billing.accounts a on a.id = t.from_account_id
  where t.id = v_result.transfer_id;
  -- The member's own balance, or which organisation paid (never an organisation's balance).
  return jsonb_build_object('event_id', p_event_id, 'status', 'applied', 'transfer_id', v_result.transfer_id::text,
    'charged', trim_scale(v_result.charged)::text)
    || case when v_org is null then jsonb_build_object('balance', trim_scale(v_result.balance)::text)
            else jsonb_build_object('org_id', v_org) end;
exception when sqlstate 'P0001' then
  get stacked diagnostics v_token = message_text, v_detail = pg_exception_detail;
  if v_token = 'INSUFFICIENT_CREDITS' then
    return jsonb_build_object('event_id', p_event_id, 'status', 'insufficient', 'required', v_detail -> 'required',
      'available', v_detail -> 'available') || jsonb_strip_nulls(jsonb_build_object('wallets', v_detail -> 'wallets',
      'restricted', v_detail -> 'restricted', 'reason', v_detail -> 'reason'));
  elsif v_token = 'SPEND_CAP_REACHED' then
    return jsonb_build_object('event_id', p_event_id, 'status', 'cap_reached', 'cap', v_detail);
  end if;
  raise;
end;
$$;
comment on function billing.charge_event_alone(p_user uuid, p_model text, p_input_tokens bigint, p_output_tokens bigint, p_event_id text, p_correlation_id text, p_occurred_at timestamp with time zone, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) is 'Internal: one batch event charged alone, through billing.charge_usage (a member''s spending order, an account with restricted lots); a refusal is its outcome.';
revoke execute on function billing.charge_event_alone(p_user uuid, p_model text, p_input_tokens bigint, p_output_tokens bigint, p_event_id text, p_correlation_id text, p_occurred_at timestamp with time zone, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) from public;

-- A batch's events priced, checked and described before any account is locked (none of it reads
-- a balance, so billing.charge_usage_batch holds its locks only for what needs them): by place,
-- whose, the event id and model, why it is refused (null: it is not), its rate card and price, its
-- ledger key, correlation and what its transfer records. Each event is priced from its model's
-- current rate card (an alias's: its card's, billing.card_model; null: a kind the card leaves
-- unpriced), within the same bounds as
-- price_usage (an event out of them is refused alone). Event ids are the caller's, one namespace
-- per user (billing.usage_event_key).
create or replace function billing.priced_usage_events(p_events jsonb, out b_user uuid[], out b_event text[],
  out b_model text[], out b_error text[], out b_card bigint[], out b_amount numeric[], out b_key text[],
  out b_correlation text[], out b_facts jsonb[])
returns record
language sql stable
set search_path = ''
as $$
  with ev as (
    select x.ord::integer as ord, x.ev ->> 'event_id' as event_id, (x.ev ->> 'user_id')::uuid as user_id,
      billing.card_model(x.ev ->> 'model') as model, (x.ev ->> 'input_tokens')::bigint as input_tokens,
      (x.ev ->> 'output_tokens')::bigint as output_tokens, (x.ev ->> 'occurred_at')::timestamptz as occurred_at,
      x.ev ->> 'correlation_id' as correlation_id,
      coalesce((x.ev ->> 'cached_input_tokens')::bigint, 0) as cached_input_tokens,
      coalesce((x.ev ->> 'reasoning_tokens')::bigint, 0) as reasoning_tokens,
      coalesce((x.ev ->> 'images')::bigint, 0) as images, coalesce((x.ev ->> 'audio_seconds')::bigint, 0) as audio_seconds
    from jsonb_array_elements(p_events) with ordinality as x(ev, ord)
  ), checked as (
    select ev.*, not billing.usage_counts_valid(ev.input_tokens, ev.output_tokens, ev.cached_input_tokens,
      ev.reasoning_tokens, ev.images, ev.audio_seconds) as invalid
    from ev
  ), cards as (
    select distinct on (rc.model) rc.* from billing.rate_cards rc
    where rc.model = any(array(select distinct ev.model from ev)) and rc.effective_from <= now()
    order by rc.model, rc.effective_from desc, rc.version desc
  ), priced as materialized (            -- each event priced once, however many aggregates below read it
    select b.*, r.id as rate_card_id,
      case when not b.invalid then billing.usage_amount(b.input_tokens, b.cached_input_tokens, b.output_tokens,
        b.reasoning_tokens, b.images, b.audio_seconds, r.credits_per_input_token, r.credits_per_cached_input_token,
        r.credits_per_output_token, r.credits_per_reasoning_token, r.credits_per_image, r.credits_per_audio_second) end as amount
    from checked b left join cards r on r.model = b.model
  )
  select array_agg(p.user_id order by p.ord), array_agg(p.event_id order by p.ord), array_agg(p.model order by p.ord),
    array_agg(case when p.invalid then 'INVALID_TOKENS' when p.rate_card_id is null then 'UNKNOWN_MODEL'
                   when p.amount is null then 'UNPRICED_USAGE' end order by p.ord),
    array_agg(p.rate_card_id order by p.ord), array_agg(p.amount order by p.ord),
    array_agg(billing.usage_event_key(p.user_id, p.event_id) order by p.ord), array_agg(p.correlation_id order by p.ord),
    array_agg(billing.usage_facts(p.model, p.input_tokens, p.output_tokens, p.cached_input_tokens, p.reasoning_tokens,
      p.images, p.audio_seconds) || jsonb_build_object('occurred_at', p.occurred_at, 'event_id', p.event_id) order by p.ord)
  from priced p
$$;
comment on function billing.priced_usage_events(p_events jsonb) is 'Internal: a usage batch''s events priced and checked, by place, before any lock (billing.charge_usage_batch).';
revoke execute on function billing.priced_usage_events(p_events jsonb) from public;

create or replace function billing.charge_usage_batch(p_events jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer := jsonb_array_length(p_events);
  e record;
  v_ev jsonb;
  v_outcomes jsonb[] := array_fill(null::jsonb, array[v_count]);
  -- every event by its place, as priced before any lock: whose, its id and model, why it is
  -- refused (null: it is not), its rate card and price, its ledger key, what its transfer records
  b_user uuid[];
  b_event text[];
  b_model text[];
  b_error text[];
  b_card bigint[];
  b_amount numeric[];
  b_key text[];
  b_correlation text[];
  b_facts jsonb[];
  -- accepted events, in order: where their outcome goes, what they move, what was written
  a_ord integer[] := '{}'::integer[];
  a_account bigint[] := '{}'::bigint[];
  a_amount numeric[] := '{}'::numeric[];
  a_card bigint[] := '{}'::bigint[];
  a_posted billing.posted_transfer[];
  v_platform bigint;
  v_locked record;                                -- the users' accounts, as billing.lock_usage_batch locked them
  -- accounts charged here that watch their available amount (a low-balance alert, auto-recharge)
  w_account bigint[] := '{}'::bigint[];
  -- repeats within the batch, and their first occurrences
  d_ord integer[] := '{}'::integer[];
  d_first integer[] := '{}'::integer[];
begin
  if v_count > 1000 then
    perform billing.raise_error('BATCH_TOO_LARGE', jsonb_build_object('max', 1000, 'given', v_count));
  end if;

  -- Priced, checked and described before any account is locked (billing.priced_usage_events).
  select * into b_user, b_event, b_model, b_error, b_card, b_amount, b_key, b_correlation, b_facts
  from billing.priced_usage_events(p_events);

  select * into v_locked from billing.lock_usage_batch(b_user);

  -- Greedy per user in event order: each event is applied if it still fits. Replays are found
  -- under the locks, so a concurrent batch with the same events has committed: an earlier batch
  -- already applied this event id for this user. Another user's event with the same id is another
  -- event, charged, and never told of the first. Within the batch, only the first occurrence of a
  -- user's id counts.
  for e in
    select x.ord::integer as ord, x.user_id, x.event_id, x.model, x.error, x.amount, x.rate_card_id,
      a.id as account_id, coalesce(a.alone, false) as alone, coalesce(a.watched, false) as watched,
      t.id as existing_transfer, t.amount as existing_amount,
      min(x.ord) over (partition by x.user_id, x.event_id)::integer as first_ord
    from unnest(b_user, b_event, b_model, b_error, b_amount, b_card, b_key) with ordinality
      x(user_id, event_id, model, error, amount, rate_card_id, key, ord)
    left join unnest(v_locked.users, v_locked.accounts, v_locked.alone, v_locked.watched) a(user_id, id, alone, watched)
      on a.user_id = x.user_id
    -- Lateral: one index probe per event, never a join over the whole ledger.
    left join lateral (select y.id, y.amount from billing.transfers y
                       where y.idempotency_key = x.key and y.kind = 'usage') t on true
    order by x.user_id, x.ord
  loop
    if e.error is not null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'invalid', 'error', e.error);
    elsif e.existing_transfer is not null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'duplicate',
        'transfer_id', e.existing_transfer::text, 'charged', trim_scale(e.existing_amount)::text);
    elsif e.ord <> e.first_ord then
      -- A repeat within the batch reports what its first occurrence did (sorted by user, then
      -- order, the first was handled already when both name the same user).
      v_outcomes[e.ord] := coalesce(v_outcomes[e.first_ord], '{}'::jsonb)
        || jsonb_build_object('event_id', e.event_id, 'status', 'duplicate');
      d_ord := d_ord || e.ord;
      d_first := d_first || e.first_ord;
    elsif e.amount = 0 then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'applied', 'charged', '0', 'transfer_id', null);
    elsif e.alone then
      -- A member of funding organisations, or credits for some models only: charged alone, the
      -- same path as /credits/usage, under the locks billing.lock_usage_batch took.
      v_ev := p_events -> (e.ord - 1);
      v_outcomes[e.ord] := billing.charge_event_alone(e.user_id, e.model, (v_ev ->> 'input_tokens')::bigint,
        (v_ev ->> 'output_tokens')::bigint, e.event_id, v_ev ->> 'correlation_id', (v_ev ->> 'occurred_at')::timestamptz,
        coalesce((v_ev ->> 'cached_input_tokens')::bigint, 0), coalesce((v_ev ->> 'reasoning_tokens')::bigint, 0),
        coalesce((v_ev ->> 'images')::bigint, 0), coalesce((v_ev ->> 'audio_seconds')::bigint, 0));
    elsif e.account_id is null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'insufficient',
        'required', trim_scale(e.amount)::text, 'available', '0');
    else
      -- Scalars only: appending to an array copies it, so a batch's movements are built once, below.
      a_ord := a_ord || e.ord;
      a_account := a_account || e.account_id;
      a_amount := a_amount || e.amount;
      a_card := a_card || e.rate_card_id;
      if e.watched and not e.account_id = any(w_account) then
        w_account := w_account || e.account_id;
      end if;
    end if;
  end loop;

  -- The rest go to the writer user by user, each user's in event order: each account's draw from
  -- its lots in that order, each one applied if it still fits what the account has and its caps
  -- leave, refused if not.
  if cardinality(a_ord) > 0 then
    -- One call to the writer, in that order, so each account's events draw from its lots in event
    -- order (transfer ids follow it, not the batch's). Joined by place, not subscripted: an
    -- element of an array of texts or jsonb is found by walking the array from its start, so
    -- b_key[x.ord] per event made a batch quadratic.
    v_platform := billing.platform_account_id('usage_revenue');
    a_posted := billing.post_transfers(array(
      select ('usage', x.account_id, v_platform, x.amount, b.key, b.correlation_id,
        null, b.facts, x.rate_card_id, null, null, null)::billing.transfer_spec
      from unnest(a_ord, a_account, a_amount, a_card) with ordinality x(ord, account_id, amount, rate_card_id, n)
      join unnest(b_key, b_correlation, b_facts) with ordinality b(key, correlation_id, facts, ord) on b.ord = x.ord
      order by x.n));
    for i in 1 .. cardinality(a_ord) loop
      v_outcomes[a_ord[i]] := jsonb_build_object('event_id', b_event[a_ord[i]]) || case (a_posted[i]).result
        when 'insufficient' then jsonb_build_object('status', 'insufficient') || (a_posted[i]).refusal
        when 'capped' then jsonb_build_object('status', 'cap_reached', 'cap', (a_posted[i]).refusal)
        else jsonb_build_object('status', 'applied', 'charged', trim_scale(a_amount[i])::text,
          'transfer_id', (a_posted[i]).transfer_id::text, 'balance', trim_scale((a_posted[i]).from_balance)::text) end;
    end loop;
    -- What a single charge sets off, once per account: the tick's alerts and auto-recharge see
    -- the account as the batch left it.
    if cardinality(w_account) > 0 then
      perform billing.watch_account(a.id, a.balance - a.held, a.auto_recharge_below) from billing.accounts a
      where a.id = any(w_account) order by a.id;
    end if;
    -- A repeat names what its first occurrence wrote.
    for i in 1 .. coalesce(cardinality(d_ord), 0) loop
      v_outcomes[d_ord[i]] := v_outcomes[d_first[i]] || jsonb_build_object('event_id', v_outcomes[d_ord[i]] ->> 'event_id',
        'status', 'duplicate');
    end loop;
  end if;

  return to_jsonb(v_outcomes);
end;
$$;
comment on function billing.charge_usage_batch(p_events jsonb) is 'Prices and debits up to 1,000 usage events in one transaction; outcomes (applied, duplicate, insufficient, invalid) in input order.';
revoke execute on function billing.charge_usage_batch(p_events jsonb) from public;
grant execute on function billing.charge_usage_batch(p_events jsonb) to service_role;
