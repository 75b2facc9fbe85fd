# Shared by scripts/dev and scripts/test: where things live, installing what is missing,
# and starting/stopping the local stack (the Docker-free stand-in for `supabase start`).
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL="$ROOT/.local"
LOGS="$LOCAL/logs"
RUN="$LOCAL/run"
# The cluster lives in .local/pg, unless the checkout sits where the postgres OS user cannot
# reach it (e.g. under a 0700 temp dir while running as root): then under /var/lib/postgresql,
# in a folder named after the checkout's path. PG_HOME (and every port below) may be set in
# the environment to drive a second, private stack beside the usual one.
if [ -z "${PG_HOME:-}" ]; then
  PG_HOME="$LOCAL/pg"
  if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -r "$ROOT/scripts/lib.sh"; then
    PG_HOME="/var/lib/postgresql/scholarlink-$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)"
  fi
fi
PGDATA="$PG_HOME/data"
# The transaction-mode pooler's config, log and pid file (regenerated at every start).
POOLER_HOME="$PG_HOME/pgbouncer"
PG_BIN=/usr/lib/postgresql/15/bin
TOOLCHAIN="$ROOT/scripts/toolchain"
DENO="$TOOLCHAIN/node_modules/.bin/deno"
SUPABASE="$TOOLCHAIN/node_modules/.bin/supabase"
MIGRA="$TOOLCHAIN/node_modules/.bin/migra"

# Same ports as `supabase start` where Supabase has one; Redis and its bridge next to them,
# the Stripe emulator on stripe-mock's port.
API_PORT=${API_PORT:-54321}
DB_PORT=${DB_PORT:-54322}
# pgbouncer in transaction mode, as Supavisor's transaction mode (port 6543) on hosted.
DB_POOLER_PORT=${DB_POOLER_PORT:-54329}
REDIS_PORT=${REDIS_PORT:-54379}
REDIS_REST_PORT=${REDIS_REST_PORT:-54380}
STRIPE_PORT=${STRIPE_PORT:-12111}
MAIL_PORT=${MAIL_PORT:-54324}
STUDENT_PORT=${STUDENT_PORT:-54330}
# The OpenAI-compatible provider stand-in the AI gateway calls locally (scripts/local/ai-standin.ts).
AI_STANDIN_PORT=${AI_STANDIN_PORT:-54332}
# Roles as on hosted Supabase: the migrations, tests and functions connect as postgres, which
# is not a superuser; supabase_admin (initdb's bootstrap superuser) owns what the platform
# owns and runs scripts/local/supabase-compat.sql. Local passwords only.
PG_SUPERUSER=supabase_admin
DB_PASSWORD=postgres
DB_URL="postgresql://postgres:$DB_PASSWORD@127.0.0.1:$DB_PORT/postgres"
DB_POOLER_URL="postgresql://postgres:$DB_PASSWORD@127.0.0.1:$DB_POOLER_PORT/postgres"
# Bump when the cluster's shape changes in a way the idempotent bootstrap cannot apply to an
# existing cluster: pg_start then rebuilds it (as ./scripts/dev --reset would).
PG_LAYOUT=hosted-roles-1

APT_PACKAGES=(postgresql-15 postgresql-15-pgtap postgresql-15-cron postgresql-15-plpgsql-check
  libtap-parser-sourcehandler-pgtap-perl redis-server curl chromium pgbouncer)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Every script's arguments, before it installs or starts anything: `--help`/`-h` prints USAGE
# and exits 0; anything else wrong prints what, then USAGE, on stderr and exits 2 (usage_error).
# ALLOWED: `--flag` (a switch), `--flag=` (takes a value: `--rate 200` or `--rate=200`),
# `--flag=#` (a positive whole number), `ARGS` (positional arguments are accepted).
#   cli_args "$USAGE" --rate=# --seconds=# -- "$@"
cli_args() {
  CLI_USAGE=$1
  shift
  local allowed=() positional=0 pending='' a f spec
  while [ "$1" != -- ]; do
    if [ "$1" = ARGS ]; then positional=1; else allowed+=("$1"); fi
    shift
  done
  shift
  for a in "$@"; do
    if [ -n "$pending" ]; then cli_value "$pending" "$a"; pending=''; continue; fi
    case "$a" in
      -h | --help) printf '%s\n' "$CLI_USAGE"; exit 0 ;;
      -*)
        spec=''
        for f in "${allowed[@]}"; do
          if [ "$f" = "$a" ] || [ "${f%%=*}" = "${a%%=*}" ]; then spec=$f; fi
        done
        [ -n "$spec" ] || usage_error "unknown option: $a"
        if [ "$spec" = "${spec%%=*}" ]; then
          [ "$a" = "${a%%=*}" ] || usage_error "${a%%=*} takes no value"
        elif [ "$a" = "${a%%=*}" ]; then pending=$spec
        else cli_value "$spec" "${a#*=}"; fi ;;
      *) [ $positional = 1 ] || usage_error "unexpected argument: $a" ;;
    esac
  done
  [ -z "$pending" ] || usage_error "${pending%%=*} needs a value"
}
# cli_value SPEC VALUE: VALUE for an option declared as SPEC (`--rate=#` wants a positive whole number).
cli_value() {
  if [ "${1#*=}" = '#' ] && ! [[ $2 =~ ^[1-9][0-9]{0,8}$ ]]; then
    usage_error "${1%%=*} must be a positive whole number, not '$2'"
  fi
}
# What was wrong, then the usage, on stderr; exit 2 (a usage error, as getopt-style tools do).
usage_error() { printf '%s\n%s\n' "$1" "$CLI_USAGE" >&2; exit 2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# ---------------------------------------------------------------- install

ensure_apt_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "could not install ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
}

ensure_toolchain() {
  command -v npm >/dev/null || die "npm is required (Node.js 20+)"
  if [ ! -x "$DENO" ] || [ ! -x "$SUPABASE" ] || [ ! -x "$MIGRA" ] ||
    [ "$TOOLCHAIN/package-lock.json" -nt "$TOOLCHAIN/node_modules/.package-lock.json" ]; then
    say "installing the pinned toolchain (Deno, Supabase CLI, migra) from npm"
    (cd "$TOOLCHAIN" && npm install --no-audit --no-fund --loglevel=error) >&2 || die "npm install failed"
  fi
  # Deno fetches the npm: imports of deno.json into ./node_modules on first use.
  (cd "$ROOT" && "$DENO" install --quiet) >&2 || die "deno install failed"
}

# pg_net is not packaged for Debian: its local stand-in (scripts/local/pg_net) is installed as
# an extension, so the migration's `create extension pg_net` works as on hosted.
ensure_pg_net_standin() {
  local dir; dir="$("$PG_BIN/pg_config" --sharedir 2>/dev/null || echo /usr/share/postgresql/15)/extension"
  local f
  for f in "$ROOT"/scripts/local/pg_net/pg_net*; do
    cmp -s "$f" "$dir/${f##*/}" && continue
    as_root install -m 644 "$f" "$dir/" || die "could not install the pg_net stand-in into $dir (run as root, or with sudo)"
  done
}

ensure_installed() {
  ensure_apt_packages
  ensure_pg_net_standin
  ensure_toolchain
  mkdir -p "$LOGS" "$RUN"
}

# ---------------------------------------------------------------- secrets and env

# Local-only secrets are generated once into .local/ (git-ignored) and reused.
local_secret() {
  local f="$LOCAL/secrets/$1"
  if [ ! -s "$f" ]; then
    mkdir -p "$LOCAL/secrets"
    printf '%s%s' "${2:-}" "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$f"
    chmod 600 "$f"
  fi
  cat "$f"
}

# Writes .local/env: everything the functions, tests and tools read. Sourced by the
# gateway (--env-file) and printed by scripts/dev.
write_env() {
  cat >"$LOCAL/env" <<EOF
SUPABASE_URL=http://127.0.0.1:$API_PORT
SUPABASE_DB_URL=$DB_URL
DB_POOLER_URL=$DB_POOLER_URL
CORS_ALLOWED_ORIGINS=http://localhost:3000,http://127.0.0.1:3000,http://127.0.0.1:$API_PORT,http://127.0.0.1:$STUDENT_PORT
UPSTASH_REDIS_REST_URL=http://127.0.0.1:$REDIS_REST_PORT
UPSTASH_REDIS_REST_TOKEN=$(local_secret redis-rest-token)
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
STRIPE_MODE=test
STRIPE_SECRET_KEY=$(local_secret stripe-secret-key sk_test_local)
STRIPE_WEBHOOK_SECRET=$(local_secret stripe-webhook-secret whsec_local)
STRIPE_CONNECT_WEBHOOK_SECRET=$(local_secret stripe-connect-webhook-secret whsec_connect)
STRIPE_API_BASE=http://127.0.0.1:$STRIPE_PORT
STRIPE_WEBHOOK_URL=http://127.0.0.1:$API_PORT/functions/v1/stripe-webhook
FEATURE_B2C_CREDITS=true
FEATURE_B2B_PROVIDER_PAYMENTS=true
PLATFORM_FEE_BPS=300
PROVIDER_ONBOARDING_RETURN_URL=http://127.0.0.1:$API_PORT/functions/v1/health/healthz
PROVIDER_ONBOARDING_REFRESH_URL=http://127.0.0.1:$API_PORT/functions/v1/health/healthz
CHECKOUT_REDIRECT_ORIGINS=http://localhost:3000,http://127.0.0.1:3000,http://127.0.0.1:$API_PORT,http://127.0.0.1:$STUDENT_PORT
CHECKOUT_SUCCESS_URL=http://127.0.0.1:$API_PORT/functions/v1/health/healthz
CHECKOUT_CANCEL_URL=http://127.0.0.1:$API_PORT/functions/v1/health/healthz
STRIPE_EMULATOR_BACKOFF_MS=100
# Every local client, the test suite included, arrives from 127.0.0.1: one shared IP budget
# would throttle the suite. Rate-limit tests run a gateway with their own low limits.
RATE_LIMIT_IP_PER_MIN=1000000
VELOCITY_IP_SESSIONS_PER_10_MIN=1000000
VELOCITY_IP_AMOUNT_CENTS_PER_24_H=1000000000
# Every local client is 127.0.0.1: the per-address limit on unknown codes would stop every test.
CODE_GUESSES_PER_ADDRESS_PER_HOUR=1000000
RATE_LIMIT_STRIPE_WEBHOOK_PER_MIN=1000000
RATE_LIMIT_NOTIFY_PER_MIN=1000000
# Usage is reported by a server (the service role), not a user token: the per-caller usage
# budget then keys on the address, so locally every test's usage would share one 600/min budget.
RATE_LIMIT_CREDITS_USAGE_PER_MIN=1000000
CRON_SECRET=$(local_secret cron-secret)
SUPABASE_SERVICE_ROLE_KEY=$(local_secret service-role-key)
# Hosted Supabase gives every function its project's anon key (the dashboard's password sign-in
# sends it to Auth); locally any value does, as the Auth stand-in accepts any key.
SUPABASE_ANON_KEY=$(local_secret anon-key)
AI_PROVIDER=local
# The AI gateway's provider: locally the stand-in (scripts/local/ai-standin.ts); hosted, the real one.
AI_API_BASE=http://127.0.0.1:$AI_STANDIN_PORT/v1
AI_API_KEY=$(local_secret ai-api-key sk-local-)
# Claude models' upstream (Anthropic's Messages API), and an OpenAI-compatible host (as a school's
# vLLM or OpenRouter would be): locally both are the stand-in too (docs/ai-gateway.md § Upstreams).
AI_ANTHROPIC_BASE=http://127.0.0.1:$AI_STANDIN_PORT/v1
AI_ANTHROPIC_KEY=$(local_secret ai-api-key sk-local-)
AI_UPSTREAMS=compat
AI_UPSTREAM_COMPAT_BASE=http://127.0.0.1:$AI_STANDIN_PORT/v1
AI_UPSTREAM_COMPAT_KEY=$(local_secret ai-api-key sk-local-)
AI_UPSTREAM_COMPAT_SPEAKS=chat,embeddings
AI_STANDIN_URL=http://127.0.0.1:$AI_STANDIN_PORT
AI_REFERENCE_SECRET=$(local_secret ai-reference-secret)
POSTMARK_SERVER_TOKEN=$(local_secret postmark-token)
POSTMARK_API_BASE=http://127.0.0.1:$MAIL_PORT
STUDENT_PAGE_PORT=$STUDENT_PORT
STUDENT_PAGE_URL=http://127.0.0.1:$STUDENT_PORT/
# Invitation and pay links are built on it: the example student page stands in for the frontend.
BILLING_PAGE_URL=http://127.0.0.1:$STUDENT_PORT/
NOTIFY_WEBHOOK_SECRET=$(local_secret notify-secret)
ALERT_EMAIL=ops@scholarlink.invalid
METRICS_TOKEN=$(local_secret metrics-token)
INVITATION_TOKEN_SECRET=$(local_secret invitation-token-secret)
CODE_SECRET=$(local_secret code-secret)
LOCAL_AUTH_DIR=$LOCAL/auth
EOF
  # Lines a developer may add to override the defaults above.
  [ -f "$ROOT/.env.local" ] && cat "$ROOT/.env.local" >>"$LOCAL/env"
  return 0
}

# ---------------------------------------------------------------- processes

# without_inherited_fds COMMAND…: runs COMMAND with no file descriptors beyond 0-2, so a
# daemon never holds a caller's pipe open (a pipeline into `tail` would hang forever).
without_inherited_fds() {
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
    done
    exec "$@"
  )
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# start_deno NAME PORT SCRIPT: a Deno service in its own session, logging to .local/logs
# (PORT empty for a service that listens on none).
# The backgrounded subshell execs setsid, which execs deno: the pid file names deno itself.
start_deno() {
  local name=$1 port=$2 script=$3
  pid_alive "$name" && return 0
  [ -n "$port" ] && port_taken "$port" && die "port $port (for $name) is taken by another process; stop it first (./scripts/dev --stop)"
  (
    cd "$ROOT" || exit 1
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
    done
    exec setsid "$DENO" run -A --env-file="$LOCAL/env" "$script"
  ) >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

stop_pid() {
  local name=$1
  if pid_alive "$name"; then
    local pid; pid=$(cat "$RUN/$name.pid")
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$RUN/$name.pid"
}

wait_for() { # wait_for DESCRIPTION COMMAND…
  local what=$1; shift
  for _ in $(seq 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up (see $LOGS/)"
}

# ---------------------------------------------------------------- postgres

# Postgres server binaries (and pgbouncer) run as the cluster's OS owner, never root.
PG_OWNER=(); [ "$(id -u)" = 0 ] && PG_OWNER=(runuser -u postgres --)
pg_as_owner() { "${PG_OWNER[@]}" "$@"; }

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$DB_PORT"; }

# Run as root, initdb and the server run as the postgres OS user, which must be able to enter
# every folder above PG_HOME (a 0700 folder from mktemp -d is not one): say which folder stops it
# and how to fix it, rather than initdb's "pwfile: Permission denied".
pg_home_check() {
  [ ${#PG_OWNER[@]} -gt 0 ] || return 0
  local path=$PG_HOME dir="" part parts
  [[ $path = /* ]] || path="$PWD/$path"
  IFS=/ read -ra parts <<<"${path#/}"
  for part in "${parts[@]}"; do
    [ -n "$part" ] || continue
    dir="$dir/$part"
    [ -d "$dir" ] || return 0
    pg_as_owner test -x "$dir" ||
      die "PG_HOME ($PG_HOME) is under $dir, which the postgres OS user cannot enter (the scripts run as root, so Postgres runs as postgres). Fix: unset PG_HOME (the default is a folder postgres can reach), or set it to one such as /var/lib/postgresql/<name>, or let postgres through: chmod o+x $dir"
  done
}

pg_init() {
  [ -f "$PGDATA/PG_VERSION" ] && return 0
  pg_home_check
  say "creating the local Postgres cluster in $PG_HOME"
  mkdir -p "$PGDATA"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PG_HOME"
  chmod 700 "$PGDATA"
  local pwfile="$PG_HOME/pwfile"
  echo "$DB_PASSWORD" >"$pwfile"; [ "$(id -u)" = 0 ] && chown postgres "$pwfile"
  # The bootstrap superuser is supabase_admin; supabase-compat.sql creates postgres without it.
  pg_as_owner "$PG_BIN/initdb" -D "$PGDATA" -U "$PG_SUPERUSER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$LOGS/initdb.log" 2>&1 ||
    die "initdb failed (see $LOGS/initdb.log)"
  rm -f "$pwfile"
  # pg_cron runs each job by connecting as the job's owner (postgres): over the socket, where
  # local connections are trusted (it has no password to offer over TCP).
  cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $DB_PORT
unix_socket_directories = '$PGDATA'
shared_preload_libraries = 'pg_cron,pg_stat_statements'
cron.database_name = 'postgres'
cron.host = '$PGDATA'
max_connections = 200
log_min_messages = warning
EOF
  echo "$PG_LAYOUT" >"$PG_HOME/layout"
}

# pg_log_files: the files the local Postgres writes its server log to, as its configuration says:
# with logging_collector on, those in log_directory (relative to the data directory unless
# absolute); otherwise the pg_ctl -l file, $PGDATA/server.log (where pg_start sends it).
pg_log_files() {
  local conf collector dir
  conf=$(cat "$PGDATA/postgresql.conf" "$PGDATA/postgresql.auto.conf" 2>/dev/null)
  collector=$(sed -nE "s/^[[:space:]]*logging_collector[[:space:]]*=[[:space:]]*'?([a-z]+)'?.*/\1/p" <<<"$conf" | tail -1)
  if [[ $collector =~ ^(on|true|yes|1)$ ]]; then
    dir=$(sed -nE "s/^[[:space:]]*log_directory[[:space:]]*=[[:space:]]*'([^']*)'.*/\1/p" <<<"$conf" | tail -1)
    dir=${dir:-log}
    [[ $dir = /* ]] || dir="$PGDATA/$dir"
    find "$dir" -maxdepth 1 -type f 2>/dev/null | sort
  else
    echo "$PGDATA/server.log"
  fi
}

pg_start() {
  if [ -f "$PGDATA/PG_VERSION" ] && [ "$(cat "$PG_HOME/layout" 2>/dev/null)" != "$PG_LAYOUT" ]; then
    say "the cluster in $PG_HOME predates $PG_LAYOUT (postgres was a superuser): rebuilding it from the migrations and seed"
    pooler_stop
    pg_stop
    rm -rf "$PG_HOME"
  fi
  pg_init
  if pg_ready; then
    [ -f "$PGDATA/postmaster.pid" ] && return 0
    die "port $DB_PORT is taken by a Postgres that is not this checkout's ($PG_HOME); stop it first"
  fi
  # A test that makes commits wait for a standby that does not exist, to lose a connection after
  # its commit (tests/integration/session33-attack-2.test.ts), resets it when done; killed midway
  # it would leave every commit waiting, and the setting survives a restart: never start so.
  [ -f "$PGDATA/postgresql.auto.conf" ] && pg_as_owner sed -i '/^synchronous_standby_names/d' "$PGDATA/postgresql.auto.conf"
  say "starting Postgres on 127.0.0.1:$DB_PORT"
  local try
  for try in 1 2 3 4 5; do
    without_inherited_fds "${PG_OWNER[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 start \
      >"$LOGS/pg_ctl.log" 2>&1 </dev/null && return 0
    # The port is in the machine's ephemeral range (32768-60999): another process's outgoing
    # connection may hold it for a moment. Only that is tried again.
    tail -n 5 "$PGDATA/server.log" 2>/dev/null | grep -q 'could not bind' || break
    say "port $DB_PORT is busy for now (try $try of 5): starting Postgres again in 3 s"
    sleep 3
  done
  die "Postgres did not start (see $PGDATA/server.log)"
}

pg_stop() {
  [ -f "$PGDATA/postmaster.pid" ] && pg_as_owner "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1
  return 0
}

# As postgres (the migrations', tests' and functions' role), and as the platform's superuser,
# on database PSQL_DB (default postgres).
psql_db() { PGPASSWORD=$DB_PASSWORD psql -v ON_ERROR_STOP=1 -q -X -h 127.0.0.1 -p "$DB_PORT" -U postgres -d "${PSQL_DB:-postgres}" "$@"; }
psql_admin() {
  PGPASSWORD=$DB_PASSWORD psql -v ON_ERROR_STOP=1 -q -X -h 127.0.0.1 -p "$DB_PORT" -U "$PG_SUPERUSER" -d "${PSQL_DB:-postgres}" "$@"
}
db_url() { echo "postgresql://postgres:$DB_PASSWORD@127.0.0.1:$DB_PORT/$1"; }

# db_bootstrap [DB]: what the platform has before any migration runs, as its superuser.
# Idempotent, so it runs every time and a change to it reaches an existing cluster.
db_bootstrap() {
  PSQL_DB=${1:-postgres} psql_admin -v postgres_password="$DB_PASSWORD" \
    -v functions_url="http://127.0.0.1:$API_PORT/functions/v1" -v cron_secret="$(local_secret cron-secret)" \
    -f "$ROOT/scripts/local/supabase-compat.sql" >/dev/null 2>"$LOGS/compat.log" ||
    { cat "$LOGS/compat.log" >&2; die "the Supabase bootstrap failed"; }
}

# db_push [DB]: the migrations, pushed with the Supabase CLI as postgres, as on hosted.
# A migration can deadlock with a pg_cron job the earlier migrations scheduled (a fresh cluster
# crossing a minute while it migrates: a job reading lots while a migration alters them). The
# deadlock rolls that one migration back; the CLI records only those applied, so pushing again
# goes on from it. Anything else fails at once.
db_push() {
  local attempt
  for attempt in 1 2 3; do
    (cd "$ROOT" && "$SUPABASE" db push --remote="$(db_url "${1:-postgres}")" --yes) >"$LOGS/migrate.log" 2>&1 && return 0
    grep -q 'SQLSTATE 40P01' "$LOGS/migrate.log" || break
    say "a migration deadlocked with a scheduled job (attempt $attempt): pushing again"
  done
  cat "$LOGS/migrate.log" >&2
  die "supabase db push failed"
}

db_migrate() {
  db_bootstrap
  say "applying migrations with the Supabase CLI (as postgres, not a superuser)"
  db_push
}

# ---------------------------------------------------------------- scratch databases

# scratch_db NAME: an empty database NAME in the local cluster, shaped as a new hosted project
# (supabase-compat.sql). pg_cron installs only into the database its scheduler watches or into
# one named contrib_regression (its own test escape), so the database is prepared under that
# name and then renamed; its jobs are never run.
scratch_db() {
  scratch_drop "$1"
  scratch_drop contrib_regression
  psql_admin -c "create database contrib_regression owner postgres"
  db_bootstrap contrib_regression
  psql_admin -c "alter database contrib_regression rename to $1"
}
scratch_drop() { psql_admin -c "set client_min_messages = warning" -c "drop database if exists $1 with (force)"; }

# scratch_from_schemas NAME: a scratch database built from supabase/schemas/*.sql in file order,
# as postgres. Function bodies are checked at call time, as in a pg_dump restore, so a function
# may name an object of a later file.
scratch_from_schemas() {
  scratch_db "$1"
  local f
  for f in "$ROOT"/supabase/schemas/*.sql; do
    PGOPTIONS='-c check_function_bodies=off' PSQL_DB=$1 psql_db -f "$f" >/dev/null 2>"$LOGS/schemas.log" ||
      { cat "$LOGS/schemas.log" >&2; die "${f#"$ROOT"/} does not apply"; }
  done
}

# scratch_from_migrations NAME: a scratch database built from supabase/migrations, as db_migrate does.
scratch_from_migrations() {
  scratch_db "$1"
  db_push "$1"
}

db_seed() { psql_db -f "$ROOT/supabase/seed.sql" >/dev/null; }

# ---------------------------------------------------------------- the pooler

# pgbouncer in transaction mode in front of Postgres, as Supavisor's transaction mode (port
# 6543) is on hosted. The functions connect through it (DB_POOLER_URL), so a session-scoped
# feature (a named prepared statement, SET without LOCAL, a session advisory lock, LISTEN)
# misbehaves here as it would there. Tests and tools keep the direct SUPABASE_DB_URL.
PGBOUNCER=/usr/sbin/pgbouncer
pooler_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$DB_POOLER_PORT" -U postgres -d postgres; }
pooler_alive() { [ -f "$POOLER_HOME/pgbouncer.pid" ] && kill -0 "$(cat "$POOLER_HOME/pgbouncer.pid")" 2>/dev/null; }

pooler_start() {
  pooler_alive && return 0
  port_taken "$DB_POOLER_PORT" && die "port $DB_POOLER_PORT (for pgbouncer) is taken by another process; stop it first"
  mkdir -p "$POOLER_HOME"
  cat >"$POOLER_HOME/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$DB_PORT dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $DB_POOLER_PORT
unix_socket_dir =
pool_mode = transaction
auth_type = scram-sha-256
auth_file = $POOLER_HOME/userlist.txt
stats_users = postgres
default_pool_size = 40
max_client_conn = 1000
logfile = $POOLER_HOME/pgbouncer.log
pidfile = $POOLER_HOME/pgbouncer.pid
log_connections = 0
log_disconnections = 0
log_stats = 0
# After a Postgres restart (tests/reliability/faults.test.ts does one), retry logins after 1 s, not 15.
server_login_retry = 1
EOF
  printf '"postgres" "%s"\n' "$DB_PASSWORD" >"$POOLER_HOME/userlist.txt"
  chmod 600 "$POOLER_HOME/userlist.txt"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$POOLER_HOME"
  say "starting pgbouncer (transaction mode) on 127.0.0.1:$DB_POOLER_PORT"
  without_inherited_fds "${PG_OWNER[@]}" "$PGBOUNCER" -d -q "$POOLER_HOME/pgbouncer.ini" >"$LOGS/pgbouncer.log" 2>&1 </dev/null ||
    { cat "$LOGS/pgbouncer.log" "$POOLER_HOME/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer did not start"; }
  wait_for "pgbouncer" pooler_ready
}

pooler_stop() {
  if pooler_alive; then
    local pid; pid=$(cat "$POOLER_HOME/pgbouncer.pid")
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  return 0
}

# ---------------------------------------------------------------- the stack

stack_up() {
  pg_ready && redis_ping && pid_alive gateway && pid_alive redis-bridge && pid_alive stripe-emulator && pid_alive mail-catcher &&
    pid_alive student-page
}

stack_start() {
  mkdir -p "$LOGS" "$RUN"
  write_env
  "$DENO" run -A "$ROOT/scripts/local/auth-keys.ts" "$LOCAL/auth" || die "could not create the local auth keys"
  pg_start
  db_migrate
  db_seed
  pooler_start
  if ! redis_ping; then
    say "starting Redis on 127.0.0.1:$REDIS_PORT (nothing persisted)"
    without_inherited_fds redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --pidfile "$RUN/redis.pid" --logfile "$LOGS/redis.log" >/dev/null 2>&1 </dev/null
    wait_for "Redis" redis_ping
  fi
  # Each service's own port variable, so a second stack on other ports needs no edits.
  REDIS_REST_PORT=$REDIS_REST_PORT start_deno redis-bridge "$REDIS_REST_PORT" scripts/local/redis-bridge.ts
  STRIPE_EMULATOR_PORT=$STRIPE_PORT start_deno stripe-emulator "$STRIPE_PORT" scripts/local/stripe-emulator/main.ts
  MAIL_CATCHER_PORT=$MAIL_PORT start_deno mail-catcher "$MAIL_PORT" scripts/local/mail-catcher.ts
  AI_STANDIN_PORT=$AI_STANDIN_PORT start_deno ai-standin "$AI_STANDIN_PORT" scripts/local/ai-standin.ts
  GATEWAY_PORT=$API_PORT start_deno gateway "$API_PORT" scripts/local/gateway.ts
  STUDENT_PAGE_PORT=$STUDENT_PORT start_deno student-page "$STUDENT_PORT" scripts/local/student-page.ts
  wait_for "the Redis REST bridge" curl -fs "http://127.0.0.1:$REDIS_REST_PORT/healthz"
  wait_for "the Stripe emulator" curl -fs "http://127.0.0.1:$STRIPE_PORT/_emulator/healthz"
  wait_for "the mail catcher" curl -fs "http://127.0.0.1:$MAIL_PORT/_catcher/healthz"
  wait_for "the AI stand-in" curl -fs "http://127.0.0.1:$AI_STANDIN_PORT/_standin/healthz"
  wait_for "the functions gateway" curl -fs "http://127.0.0.1:$API_PORT/functions/v1/health/healthz"
  wait_for "the example student page" curl -fs "http://127.0.0.1:$STUDENT_PORT/"
  # The test run drives the worker tick itself (deterministic jobs tests): no ticker there.
  [ "${STACK_TICKER:-1}" = 1 ] && start_deno ticker "" scripts/local/ticker.ts
  return 0
}

redis_ping() { redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

stack_stop() {
  for s in ticker student-page gateway ai-standin mail-catcher stripe-emulator redis-bridge; do stop_pid "$s"; done
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  rm -f "$RUN/redis.pid"
  pooler_stop
  pg_stop
}
