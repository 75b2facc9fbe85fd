-- Batched usage ingestion for members of organisations: each member's event is paid by the
-- wallet their spending order picks (an allowance, a pooled wallet within caps, or their own
-- account), exactly as /credits/usage would, so the batch and the single route cannot disagree.
-- Other users' events keep the set-based path. A member's event runs in its own subtransaction
-- (a refusal is that event's outcome, not the batch's), so a batch of members costs more per
-- event than a batch of plain users.

create function billing.charge_member_event(p_user uuid, p_model text, p_input_tokens bigint, p_output_tokens bigint,
  p_event_id text, p_correlation_id text, p_occurred_at timestamptz) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_result billing.usage_result;
  v_org uuid;
  v_token text;
  v_detail jsonb;
begin
  v_result := billing.charge_usage(p_user, p_model, p_input_tokens, p_output_tokens, 'usage-event:' || p_event_id,
    p_correlation_id, jsonb_build_object('occurred_at', p_occurred_at, 'event_id', p_event_id));
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
      'available', v_detail -> 'available') || jsonb_strip_nulls(jsonb_build_object('wallets', v_detail -> 'wallets'));
  elsif v_token = 'SPEND_CAP_REACHED' then
    return jsonb_build_object('event_id', p_event_id, 'status', 'cap_reached', 'cap', v_detail);
  end if;
  raise;
end;
$$;
comment on function billing.charge_member_event(uuid, text, bigint, bigint, text, text, timestamptz)
  is 'Internal: one batch event of an organisation member, charged through the spending order; a refusal is its outcome.';

create or replace function billing.charge_usage_batch(p_events jsonb) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_platform bigint := billing.platform_account_id('usage_revenue');
  v_count integer := jsonb_array_length(p_events);
  e record;
  v_user uuid;
  v_available numeric(38, 18);
  v_balance numeric(38, 18);
  v_version bigint;
  v_account bigint;
  v_outcomes jsonb[] := array_fill(null::jsonb, array[v_count]);
  -- accepted transfers, in order
  a_ord integer[] := '{}';
  a_id bigint[] := '{}';
  a_account bigint[] := '{}';
  a_amount numeric(38, 18)[] := '{}';
  a_balance numeric(38, 18)[] := '{}';
  a_version bigint[] := '{}';
  a_key text[] := '{}';
  a_card bigint[] := '{}';
  a_corr text[] := '{}';
  a_meta jsonb[] := '{}';
  v_id bigint;
  v_cap jsonb;
begin
  if v_count > 1000 then
    perform billing.raise_error('BATCH_TOO_LARGE', jsonb_build_object('max', 1000, 'given', v_count));
  end if;

  create temp table if not exists pg_temp.usage_batch (
    ord integer, event_id text, user_id uuid, model text, input_tokens bigint, output_tokens bigint,
    occurred_at timestamptz, correlation_id text, account_id bigint, amount numeric(38, 18), rate_card_id bigint,
    existing_transfer bigint, existing_amount numeric(38, 18), first_ord integer, member boolean not null default false
  ) on commit drop;
  truncate pg_temp.usage_batch;

  insert into pg_temp.usage_batch (ord, event_id, user_id, model, input_tokens, output_tokens, occurred_at, correlation_id)
  select x.ord::integer, x.ev ->> 'event_id', (x.ev ->> 'user_id')::uuid, x.ev ->> 'model',
         (x.ev ->> 'input_tokens')::bigint, (x.ev ->> 'output_tokens')::bigint,
         (x.ev ->> 'occurred_at')::timestamptz, x.ev ->> 'correlation_id'
  from jsonb_array_elements(p_events) with ordinality as x(ev, ord);

  -- Price every event from its model's current rate card, set-based.
  update pg_temp.usage_batch b set rate_card_id = r.id,
    amount = round((b.input_tokens * r.usd_per_million_input + b.output_tokens * r.usd_per_million_output) * r.markup / 1000, 18)
  from (select distinct on (rc.model) rc.* from billing.rate_cards rc where rc.effective_from <= now()
        order by rc.model, rc.effective_from desc, rc.version desc) r
  where r.model = b.model;

  update pg_temp.usage_batch b set account_id = a.id, member = a.orgs > 0 from billing.accounts a where a.user_id = b.user_id;

  -- One lock per account for the whole batch, in ascending id order (no deadlocks): the users'
  -- own accounts, then the organisation accounts that may pay for members (after, as everywhere).
  perform 1 from billing.accounts a where a.id in (select distinct b.account_id from pg_temp.usage_batch b) order by a.id for update;
  if exists (select 1 from pg_temp.usage_batch b where b.member) then
    perform 1 from billing.accounts a
    join billing.org_members m on m.org_id = a.org_id and m.active and m.role = 'member'
      and (a.member_id is null or a.member_id = m.user_id)
    where m.user_id in (select b.user_id from pg_temp.usage_batch b where b.member)
    order by a.id for update of a;
  end if;
  perform billing.expire_overdue_holds(a.id) from billing.accounts a
  where a.id in (select distinct b.account_id from pg_temp.usage_batch b) and a.held > 0;

  -- Replays, checked under the locks so a concurrent batch with the same events has committed:
  -- an earlier batch already applied this event id.
  update pg_temp.usage_batch b set existing_transfer = t.id, existing_amount = t.amount
  from billing.transfers t where t.idempotency_key = 'usage-event:' || b.event_id and t.kind = 'usage';
  -- Within the batch, only the first occurrence of an id counts.
  update pg_temp.usage_batch b set first_ord = f.first_ord
  from (select b2.event_id, min(b2.ord) as first_ord from pg_temp.usage_batch b2 group by b2.event_id) f
  where f.event_id = b.event_id;

  -- Greedy per user in event order: each event is applied if it still fits.
  for e in
    select b.*, a.balance as acct_balance, a.held as acct_held, a.version as acct_version, a.caps as acct_caps
    from pg_temp.usage_batch b left join billing.accounts a on a.id = b.account_id
    order by b.user_id, b.ord
  loop
    if v_user is distinct from e.user_id then
      v_user := e.user_id;
      v_available := coalesce(e.acct_balance - e.acct_held, 0);
      v_balance := e.acct_balance;
      v_version := e.acct_version;
    end if;
    if e.rate_card_id is null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'invalid', 'error', 'UNKNOWN_MODEL');
    elsif e.existing_transfer is not null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'duplicate',
        'transfer_id', e.existing_transfer::text, 'charged', trim_scale(e.existing_amount)::text);
    elsif e.ord <> e.first_ord then
      -- A repeat within the batch reports what its first occurrence did (sorted by user, then
      -- order, the first was handled already when both name the same user).
      v_outcomes[e.ord] := coalesce(v_outcomes[e.first_ord], '{}'::jsonb)
        || jsonb_build_object('event_id', e.event_id, 'status', 'duplicate');
    elsif e.amount = 0 then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'applied', 'charged', '0', 'transfer_id', null);
    elsif e.member then
      -- A member of funding organisations: the spending order picks the wallet (the same path as
      -- /credits/usage, under the locks taken above).
      v_outcomes[e.ord] := billing.charge_member_event(e.user_id, e.model, e.input_tokens, e.output_tokens, e.event_id,
        e.correlation_id, e.occurred_at);
    elsif e.account_id is null or v_available < e.amount then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'insufficient',
        'required', trim_scale(e.amount)::text, 'available', trim_scale(greatest(coalesce(v_available, 0), 0))::text);
    else
      -- Over a cap: refused alone, like a short event (take_cap_room counted nothing then).
      v_cap := case when e.acct_caps > 0 then billing.take_cap_room(e.account_id, e.amount, e.model) end;
    end if;
    if v_cap is not null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'cap_reached', 'cap', v_cap);
      v_cap := null;
    elsif v_outcomes[e.ord] is null then
      v_id := nextval(pg_get_serial_sequence('billing.transfers', 'id'));
      v_available := v_available - e.amount;
      v_balance := v_balance - e.amount;
      v_version := v_version + 1;
      a_ord := a_ord || e.ord; a_id := a_id || v_id; a_account := a_account || e.account_id;
      a_amount := a_amount || e.amount; a_balance := a_balance || v_balance; a_version := a_version || v_version;
      a_key := a_key || ('usage-event:' || e.event_id); a_card := a_card || e.rate_card_id;
      a_corr := a_corr || e.correlation_id;
      a_meta := a_meta || jsonb_build_object('model', e.model, 'input_tokens', e.input_tokens,
        'output_tokens', e.output_tokens, 'occurred_at', e.occurred_at, 'event_id', e.event_id);
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'applied', 'transfer_id', v_id::text,
        'charged', trim_scale(e.amount)::text, 'balance', trim_scale(v_balance)::text);
    end if;
  end loop;

  if array_length(a_id, 1) > 0 then
    insert into billing.transfers (id, kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, rate_card_id, metadata)
    overriding system value
    select t.id, 'usage', t.account, v_platform, t.amount, t.key, t.corr, t.card, t.meta
    from unnest(a_id, a_account, a_amount, a_key, a_corr, a_card, a_meta) as t(id, account, amount, key, corr, card, meta);

    insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version)
    select t.id, t.account, -t.amount, t.balance, t.version
    from unnest(a_id, a_account, a_amount, a_balance, a_version) as t(id, account, amount, balance, version)
    union all
    select t.id, v_platform, t.amount, null, null from unnest(a_id, a_amount) as t(id, amount);

    update billing.accounts a set balance = a.balance - d.total, version = a.version + d.n
    from (select t.account, sum(t.amount) as total, count(*) as n from unnest(a_account, a_amount) as t(account, amount) group by t.account) d
    where a.id = d.account;

    -- Each account's accepted events draw from its lots in event order.
    perform billing.draw_lots('usage', a_id, a_account, a_amount);
  end if;

  return to_jsonb(v_outcomes);
end;
$$;
comment on function billing.charge_usage_batch(jsonb)
  is 'Prices and debits up to 1,000 usage events in one transaction; outcomes (applied, duplicate, insufficient, invalid) in input order.';


revoke execute on all functions in schema billing from public, anon, authenticated;
grant execute on function billing.balance_of(bigint) to authenticated, service_role;
grant execute on function billing.charge_usage_batch(jsonb) to service_role;
