-- HTTP idempotency: a mutating route's effect and its stored response commit in one
-- transaction, so a retry with the same Idempotency-Key gets the stored response byte for
-- byte, and a concurrent duplicate waits on the first's uncommitted row, then reads it.

create table billing.idempotency_keys (
  user_id uuid not null,
  action text not null,                           -- the route, e.g. 'credits.usage'
  key text not null,
  request_hash text not null,                     -- sha256 of method, path and body
  response_status integer,                        -- null while in flight
  response_body text,                             -- exactly the bytes sent
  locked_at timestamptz not null default now(),
  expires_at timestamptz not null default now() + interval '24 hours',
  primary key (user_id, action, key),
  constraint idempotency_keys_key_length check (length(key) between 1 and 255),
  constraint idempotency_keys_response_whole check ((response_status is null) = (response_body is null))
);
comment on table billing.idempotency_keys is 'Stored responses of mutating HTTP routes by (user, action, Idempotency-Key), kept 24 hours.';
create index idempotency_keys_expiry on billing.idempotency_keys (expires_at);

revoke all on billing.idempotency_keys from public, anon, authenticated, service_role;
alter table billing.idempotency_keys enable row level security;
-- No policies: nobody but the functions below reads or writes it.

create type billing.idempotency_claim as (
  state text,                                     -- 'claimed' | 'done' | 'in_flight'
  response_status integer,
  response_body text
);

create function billing.claim_idempotency_key(p_user uuid, p_action text, p_key text, p_request_hash text)
returns billing.idempotency_claim
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row billing.idempotency_keys;
begin
  -- A concurrent claim of the same key blocks here until the first transaction ends.
  insert into billing.idempotency_keys as k (user_id, action, key, request_hash)
  values (p_user, p_action, p_key, p_request_hash)
  on conflict (user_id, action, key) do update
    set request_hash = excluded.request_hash, response_status = null, response_body = null,
        locked_at = now(), expires_at = now() + interval '24 hours'
    -- An expired key not yet swept starts over; so does a claim abandoned mid-flight by a
    -- crashed instance (only routes with an external call leave a claim uncommitted-free).
    where k.expires_at <= now() or (k.response_status is null and k.locked_at < now() - interval '60 seconds')
  returning * into v_row;
  if found then
    return ('claimed', null, null)::billing.idempotency_claim;
  end if;
  select * into v_row from billing.idempotency_keys k where k.user_id = p_user and k.action = p_action and k.key = p_key;
  if v_row.request_hash <> p_request_hash then
    perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', p_action));
  end if;
  if v_row.response_status is null then
    return ('in_flight', null, null)::billing.idempotency_claim;
  end if;
  return ('done', v_row.response_status, v_row.response_body)::billing.idempotency_claim;
end;
$$;
comment on function billing.claim_idempotency_key(uuid, text, text, text)
  is 'Claims a key for a request, or returns the stored response; IDEMPOTENCY_KEY_REUSED for another request under the same key.';

create function billing.complete_idempotency_key(p_user uuid, p_action text, p_key text, p_status integer, p_body text)
returns void
language sql
security definer
set search_path = ''
as $$
  update billing.idempotency_keys k set response_status = p_status, response_body = p_body
  where k.user_id = p_user and k.action = p_action and k.key = p_key
$$;
comment on function billing.complete_idempotency_key(uuid, text, text, integer, text) is 'Stores the response of a claimed key.';

create function billing.abandon_idempotency_key(p_user uuid, p_action text, p_key text) returns void
language sql
security definer
set search_path = ''
as $$
  delete from billing.idempotency_keys k
  where k.user_id = p_user and k.action = p_action and k.key = p_key and k.response_status is null
$$;
comment on function billing.abandon_idempotency_key(uuid, text, text)
  is 'Forgets an in-flight claim whose work failed before any effect (routes with an external call), so a retry starts over.';

create function billing.delete_expired_idempotency_keys(p_limit integer default 5000) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  delete from billing.idempotency_keys k
  where ctid = any (array(select k2.ctid from billing.idempotency_keys k2 where k2.expires_at <= now() limit p_limit));
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
comment on function billing.delete_expired_idempotency_keys(integer) is 'pg_cron: deletes up to p_limit expired keys per run. Idempotent.';

revoke execute on all functions in schema billing from public, anon, authenticated;
grant execute on function
  billing.claim_idempotency_key(uuid, text, text, text),
  billing.complete_idempotency_key(uuid, text, text, integer, text),
  billing.abandon_idempotency_key(uuid, text, text),
  billing.delete_expired_idempotency_keys(integer)
to service_role;
