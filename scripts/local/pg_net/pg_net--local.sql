-- pg_net's SQL interface (v0.20), kept to what this project calls: net.http_post with the same
-- signature and defaults, and the queue and response tables with pg_net's columns. pg_net
-- sends the queued requests from a background worker; here scripts/local/ticker.ts does,
-- recording each answer in net._http_response as pg_net does.
\echo Use "create extension pg_net" to load this file. \quit

create schema if not exists net;

create domain net.http_method as text
  check (value ilike 'get' or value ilike 'post' or value ilike 'delete');

-- Requests waiting to be sent; the sender deletes a row when it takes it.
create unlogged table net.http_request_queue (
  id bigserial,
  method net.http_method not null,
  url text not null,
  headers jsonb,
  body bytea,
  timeout_milliseconds int not null
);

-- One row per request sent, by its id.
create unlogged table net._http_response (
  id bigint,
  status_code integer,
  content_type text,
  headers jsonb,
  content text,
  timed_out bool,
  error_msg text,
  created timestamptz not null default now()
);
create index on net._http_response (created);

-- pg_net does this in C (curl): percent-encodes every byte outside the unreserved set.
create function net._urlencode_string(string varchar) returns text
language sql immutable strict
as $$
  select coalesce(string_agg(case when chr(b) ~ '^[A-Za-z0-9_.~-]$' then chr(b)
                                  else '%' || upper(lpad(to_hex(b), 2, '0')) end, '' order by i), '')
  from (select i, get_byte(convert_to(string, 'UTF8'), i) as b
        from generate_series(0, octet_length(convert_to(string, 'UTF8')) - 1) i) bytes
$$;

create function net._encode_url_with_params_array(url text, params_array text[]) returns text
language sql immutable strict
as $$
  select case when cardinality(params_array) = 0 then url
              else url || case when url like '%?%' then '&' else '?' end || array_to_string(params_array, '&') end
$$;

-- The same signature, defaults and checks as pg_net's http_post.
create function net.http_post(
  url text,
  body jsonb default '{}'::jsonb,
  params jsonb default '{}'::jsonb,
  headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
  timeout_milliseconds int default 5000
) returns bigint
language plpgsql
as $$
declare
  request_id bigint;
  params_array text[];
  content_type text;
begin
  select header_value into content_type
  from jsonb_each_text(coalesce(headers, '{}'::jsonb)) r(header_name, header_value)
  where lower(header_name) = 'content-type'
  limit 1;
  if content_type is null then
    headers := headers || '{"Content-Type": "application/json"}'::jsonb;
  end if;
  if content_type <> 'application/json' then
    raise exception 'Content-Type header must be "application/json"';
  end if;
  if body is null then
    raise exception 'body must not be null';
  end if;

  select coalesce(array_agg(net._urlencode_string(key) || '=' || net._urlencode_string(value)), '{}')
  into params_array
  from jsonb_each_text(params);

  insert into net.http_request_queue (method, url, headers, body, timeout_milliseconds)
  values ('POST', net._encode_url_with_params_array(url, params_array), headers, convert_to(body::text, 'UTF8'),
          timeout_milliseconds)
  returning id into request_id;
  return request_id;
end
$$;

-- pg_net's own grants (its install script ends with these).
grant usage on schema net to public;
grant all on all sequences in schema net to public;
grant all on all tables in schema net to public;
