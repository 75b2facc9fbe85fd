-- What a streamed Responses API answer keeps for the references the gateway gave its items
-- (supabase/functions/ai/references.ts, docs/ai-gateway.md § Conversations). A stream names an
-- item before writing it, so its reference cannot carry the item: it carries a fresh content key
-- instead, and the item waits here, sealed (AES-GCM) under that key. The table holds only the
-- key's SHA-256, so neither it nor the operator can open an item: only the reference the student's
-- app holds does. Written after the call is charged (never in the money transaction); deleted at
-- the retention's end (the worker tick), with the call's content and with the account.

-- ============================================================ tables

create table billing.ai_reference_items (
  key_hash bytea primary key,          -- SHA-256 of the item's content key (the key lives only in the reference)
  user_id uuid not null references auth.users (id) on delete cascade,
  call_id uuid not null references billing.ai_calls (id) on delete cascade,
  sealed text not null,                -- the item, AES-GCM under the content key (base64url: iv and ciphertext)
  created_at timestamptz not null default now(),
  constraint ai_reference_items_key_hash check (octet_length(key_hash) = 32),
  constraint ai_reference_items_sealed check (sealed ~ '^v1\.[A-Za-z0-9_-]+$')
);
comment on table billing.ai_reference_items is 'A streamed Responses API answer''s items, each sealed under a key only its reference holds (the table keeps the key''s SHA-256): what the AI SDK''s item_reference opens. Kept for AI_REFERENCE_RETENTION_DAYS (the worker tick deletes them), deleted with the call''s content and the account.';
alter table billing.ai_reference_items enable row level security;
revoke all on table billing.ai_reference_items from public, anon, authenticated;
grant select on table billing.ai_reference_items to service_role;

create index ai_reference_items_created on billing.ai_reference_items (created_at);
create index ai_reference_items_user on billing.ai_reference_items (user_id);
create index ai_reference_items_call on billing.ai_reference_items (call_id);

-- ============================================================ functions

-- A settled stream's items, kept for its references: only for the caller's own call, and nothing
-- once its content was deleted. The call's row is read `for share`, so a deletion of its content
-- either ran first (nothing is kept) or waits for this and then deletes what it kept.
create or replace function billing.keep_ai_reference_items(p_user uuid, p_call uuid, p_items jsonb) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  perform 1 from billing.ai_calls c
  where c.id = p_call and c.user_id = p_user and not c.content_deleted
  for share;
  if not found then
    return 0;
  end if;
  insert into billing.ai_reference_items (key_hash, user_id, call_id, sealed)
  select decode(i.key_hash, 'hex'), p_user, p_call, i.sealed
  from jsonb_to_recordset(p_items) as i(key_hash text, sealed text)
  on conflict (key_hash) do nothing;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
comment on function billing.keep_ai_reference_items(p_user uuid, p_call uuid, p_items jsonb) is 'Gateway: keeps a streamed answer''s sealed items ([{key_hash (hex SHA-256 of the content key), sealed}]) for its references, after the call settled; nothing for a call not the user''s or whose content was deleted. Returns how many were kept.';
revoke execute on function billing.keep_ai_reference_items(p_user uuid, p_call uuid, p_items jsonb) from public, anon, authenticated;
grant execute on function billing.keep_ai_reference_items(p_user uuid, p_call uuid, p_items jsonb) to service_role;

create or replace function billing.open_ai_reference_items(p_user uuid, p_key_hashes jsonb)
returns table (key_hash text, sealed text)
language sql stable
security definer
set search_path = ''
as $$
  select encode(i.key_hash, 'hex'), i.sealed from billing.ai_reference_items i
  where i.key_hash = any (select decode(h, 'hex') from jsonb_array_elements_text(p_key_hashes) as h) and i.user_id = p_user
$$;
comment on function billing.open_ai_reference_items(p_user uuid, p_key_hashes jsonb) is 'Gateway: the sealed items of the user''s own that these key hashes (a JSON array of hex) name; one missing was never kept, or deleted.';
revoke execute on function billing.open_ai_reference_items(p_user uuid, p_key_hashes jsonb) from public, anon, authenticated;
grant execute on function billing.open_ai_reference_items(p_user uuid, p_key_hashes jsonb) to service_role;

-- The retention is the operator's setting (AI_REFERENCE_RETENTION_DAYS), which the functions read:
-- the worker tick passes it, so a shortened retention deletes what it no longer covers at once.
create or replace function billing.delete_expired_ai_reference_items(p_retention_days integer, p_limit integer)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_expired integer;
  v_deleted_accounts integer;
begin
  if p_retention_days is null or p_retention_days < 1 then
    raise exception using errcode = 'P0001', message = 'VALIDATION_FAILED',
      detail = jsonb_build_object('field', 'p_retention_days', 'reason', 'at least 1')::text;
  end if;
  delete from billing.ai_reference_items i where i.key_hash in (
    select x.key_hash from billing.ai_reference_items x
    where x.created_at <= now() - make_interval(days => p_retention_days) limit p_limit);
  get diagnostics v_expired = row_count;
  -- A hard-deleted account's items go with it (the foreign key); a soft-deleted one's here.
  delete from billing.ai_reference_items i where i.key_hash in (
    select x.key_hash from billing.ai_reference_items x
    where x.user_id in (select u.id from auth.users u where u.deleted_at is not null) limit p_limit);
  get diagnostics v_deleted_accounts = row_count;
  return v_expired + v_deleted_accounts;
end;
$$;
comment on function billing.delete_expired_ai_reference_items(p_retention_days integer, p_limit integer) is 'Worker tick: deletes streamed answers'' kept items older than the retention (days), and those of deleted (soft-deleted) accounts, at most p_limit of each; returns how many.';
revoke execute on function billing.delete_expired_ai_reference_items(p_retention_days integer, p_limit integer) from public, anon, authenticated;
grant execute on function billing.delete_expired_ai_reference_items(p_retention_days integer, p_limit integer) to service_role;
