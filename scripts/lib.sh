# Shared by scripts/dev and scripts/test: where things live, installing what is missing,
# and starting/stopping the local stack (the Docker-free stand-in for `supabase start`).
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL="$ROOT/.local"
LOGS="$LOCAL/logs"
RUN="$LOCAL/run"
# The cluster lives in .local/pg, unless the checkout sits where the postgres OS user cannot
# reach it (e.g. under a 0700 temp dir while running as root): then under /var/lib/postgresql,
# in a folder named after the checkout's path.
PG_HOME="$LOCAL/pg"
if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -r "$ROOT/scripts/lib.sh"; then
  PG_HOME="/var/lib/postgresql/scholarlink-$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)"
fi
PGDATA="$PG_HOME/data"
PG_BIN=/usr/lib/postgresql/15/bin
TOOLCHAIN="$ROOT/scripts/toolchain"
DENO="$TOOLCHAIN/node_modules/.bin/deno"
SUPABASE="$TOOLCHAIN/node_modules/.bin/supabase"

# Same ports as `supabase start` where Supabase has one; Redis and its bridge next to them,
# the Stripe emulator on stripe-mock's port.
API_PORT=54321
DB_PORT=54322
REDIS_PORT=54379
REDIS_REST_PORT=54380
STRIPE_PORT=12111
MAIL_PORT=54324
STUDENT_PORT=54330
DB_URL="postgresql://postgres:postgres@127.0.0.1:$DB_PORT/postgres"

APT_PACKAGES=(postgresql-15 postgresql-15-pgtap postgresql-15-cron
  libtap-parser-sourcehandler-pgtap-perl redis-server curl chromium)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

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
  if [ ! -x "$DENO" ] || [ ! -x "$SUPABASE" ] ||
    [ "$TOOLCHAIN/package-lock.json" -nt "$TOOLCHAIN/node_modules/.package-lock.json" ]; then
    say "installing the pinned toolchain (Deno, Supabase CLI) from npm"
    (cd "$TOOLCHAIN" && npm install --no-audit --no-fund --loglevel=error) >&2 || die "npm install failed"
  fi
  # Deno fetches the npm: imports of deno.json into ./node_modules on first use.
  (cd "$ROOT" && "$DENO" install --quiet) >&2 || die "deno install failed"
}

ensure_installed() {
  ensure_apt_packages
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
CRON_SECRET=$(local_secret cron-secret)
SUPABASE_SERVICE_ROLE_KEY=$(local_secret service-role-key)
AI_PROVIDER=local
POSTMARK_SERVER_TOKEN=$(local_secret postmark-token)
POSTMARK_API_BASE=http://127.0.0.1:$MAIL_PORT
STUDENT_PAGE_PORT=$STUDENT_PORT
STUDENT_PAGE_URL=http://127.0.0.1:$STUDENT_PORT/
NOTIFY_WEBHOOK_SECRET=$(local_secret notify-secret)
ALERT_EMAIL=ops@scholarlink.invalid
METRICS_TOKEN=$(local_secret metrics-token)
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

# Postgres server binaries run as the cluster's OS owner, never root.
PG_OWNER=(); [ "$(id -u)" = 0 ] && PG_OWNER=(runuser -u postgres --)
pg_as_owner() { "${PG_OWNER[@]}" "$@"; }

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$DB_PORT"; }

pg_init() {
  [ -f "$PGDATA/PG_VERSION" ] && return 0
  say "creating the local Postgres cluster in $PG_HOME"
  mkdir -p "$PGDATA"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PG_HOME"
  chmod 700 "$PGDATA"
  local pwfile="$PG_HOME/pwfile"
  echo postgres >"$pwfile"; [ "$(id -u)" = 0 ] && chown postgres "$pwfile"
  pg_as_owner "$PG_BIN/initdb" -D "$PGDATA" -U postgres --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$LOGS/initdb.log" 2>&1 ||
    die "initdb failed (see $LOGS/initdb.log)"
  rm -f "$pwfile"
  cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $DB_PORT
unix_socket_directories = '$PGDATA'
shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
max_connections = 200
log_min_messages = warning
EOF
}

pg_start() {
  pg_init
  if pg_ready; then
    [ -f "$PGDATA/postmaster.pid" ] && return 0
    die "port $DB_PORT is taken by a Postgres that is not this checkout's ($PG_HOME); stop it first"
  fi
  say "starting Postgres on 127.0.0.1:$DB_PORT"
  without_inherited_fds "${PG_OWNER[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 start >"$LOGS/pg_ctl.log" 2>&1 </dev/null ||
    die "Postgres did not start (see $PGDATA/server.log)"
}

pg_stop() {
  [ -f "$PGDATA/postmaster.pid" ] && pg_as_owner "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1
  return 0
}

psql_db() { PGPASSWORD=postgres psql -v ON_ERROR_STOP=1 -q -X -h 127.0.0.1 -p "$DB_PORT" -U postgres -d postgres "$@"; }

db_migrate() {
  # Idempotent, so it runs every time and a change to it reaches an existing cluster.
  psql_db -f "$ROOT/scripts/local/supabase-compat.sql" >/dev/null 2>"$LOGS/compat.log" ||
    { cat "$LOGS/compat.log" >&2; die "the Supabase bootstrap failed"; }
  say "applying migrations with the Supabase CLI"
  (cd "$ROOT" && "$SUPABASE" db push --remote="$DB_URL" --yes) >"$LOGS/migrate.log" 2>&1 ||
    { cat "$LOGS/migrate.log" >&2; die "supabase db push failed"; }
}

db_seed() { psql_db -f "$ROOT/supabase/seed.sql" >/dev/null; }

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
  if ! redis_ping; then
    say "starting Redis on 127.0.0.1:$REDIS_PORT (nothing persisted)"
    without_inherited_fds redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --pidfile "$RUN/redis.pid" --logfile "$LOGS/redis.log" >/dev/null 2>&1 </dev/null
    wait_for "Redis" redis_ping
  fi
  start_deno redis-bridge "$REDIS_REST_PORT" scripts/local/redis-bridge.ts
  start_deno stripe-emulator "$STRIPE_PORT" scripts/local/stripe-emulator/main.ts
  start_deno mail-catcher "$MAIL_PORT" scripts/local/mail-catcher.ts
  start_deno gateway "$API_PORT" scripts/local/gateway.ts
  start_deno student-page "$STUDENT_PORT" scripts/local/student-page.ts
  wait_for "the Redis REST bridge" curl -fs "http://127.0.0.1:$REDIS_REST_PORT/healthz"
  wait_for "the Stripe emulator" curl -fs "http://127.0.0.1:$STRIPE_PORT/_emulator/healthz"
  wait_for "the mail catcher" curl -fs "http://127.0.0.1:$MAIL_PORT/_catcher/healthz"
  wait_for "the functions gateway" curl -fs "http://127.0.0.1:$API_PORT/functions/v1/health/healthz"
  wait_for "the example student page" curl -fs "http://127.0.0.1:$STUDENT_PORT/"
  # The test run drives the worker tick itself (deterministic jobs tests): no ticker there.
  [ "${STACK_TICKER:-1}" = 1 ] && start_deno ticker "" scripts/local/ticker.ts
  return 0
}

redis_ping() { redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

stack_stop() {
  for s in ticker student-page gateway mail-catcher stripe-emulator redis-bridge; do stop_pid "$s"; done
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  rm -f "$RUN/redis.pid"
  pg_stop
}
