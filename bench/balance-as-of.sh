#!/usr/bin/env bash
# As-of reads against a long statement: ./bench/balance-as-of.sh [entries] [runs]
# Plants (once per size) an account with that many entries (bench/balance-as-of.sql), then times,
# in one session, the balance and the newest lot as of five instants across the history (each
# read `runs` times; the median is printed), and counts the entries the balance read touched.
# Uses the local stack's database (DB_PORT, default 54322); leaves the planted rows there.
set -euo pipefail
n=${1:-100000}
runs=${2:-21}
export PGPASSWORD=${PGPASSWORD:-postgres}
psql=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${DB_PORT:-54322}" -U postgres -d postgres)
"${psql[@]}" -v n="$n" -f "$(dirname "$0")/balance-as-of.sql"
"${psql[@]}" -v n="$n" -v runs="$runs" -At <<'SQL'
select ('a5a5a5a5-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid as uid \gset
create function pg_temp.median_ms(p_sql text, p_runs integer) returns numeric language plpgsql as $$
declare
  v_t timestamptz;
  v_ms numeric[] := '{}';
begin
  for i in 1 .. p_runs loop
    v_t := clock_timestamp();
    execute p_sql;
    v_ms := v_ms || (extract(epoch from clock_timestamp() - v_t) * 1000)::numeric;
  end loop;
  return round((select percentile_cont(0.5) within group (order by x) from unnest(v_ms) x)::numeric, 2);
end $$;
select format('%s entries; median of %s reads, ms', :n, :runs);
select format('%-9s  balance %8s   lots(limit=1) %8s', f.label,
  pg_temp.median_ms(format('select billing.user_balance_as_of(%L, now() - make_interval(mins => %s))', :'uid', f.mins), :runs),
  pg_temp.median_ms(format('select billing.user_lots_as_of(%L, now() - make_interval(mins => %s), null, 1)', :'uid', f.mins), :runs))
from (values ('oldest', :n), ('1/4', (:n * 3) / 4), ('middle', :n / 2), ('3/4', :n / 4), ('newest', 1)) f(label, mins);
SQL
