# PostgreSQL and Redis for the CeleryExecutor layout (CONVEYOR_EXECUTOR=celery). Sourced, not executed.
# shellcheck shell=bash
#
#   backends_up STATE ENV_FILE   start both (first time: install them, make the database cluster, the
#                                roles and databases, the passwords in ENV_FILE) and export the URLs
#   backends_down STATE          stop both (a no-op when they are not running)
#
# Both are Conveyor's own copies, not Debian's system services: data under STATE/postgres and
# STATE/redis, listening on 127.0.0.1 only, ports CONVEYOR_POSTGRES_PORT (5433) and
# CONVEYOR_REDIS_PORT (6380) so a system PostgreSQL or Redis on the usual ports is left alone.
# Two database roles: `airflow` owns Airflow's metadata database, `conveyor` owns Conveyor's
# records; each has its own password (generated once, kept in ENV_FILE, mode 600).

_backends_lib="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=ports.sh
source "$_backends_lib/ports.sh"

_pg_port() { echo "${CONVEYOR_POSTGRES_PORT:-5433}"; }
_redis_port() { echo "${CONVEYOR_REDIS_PORT:-6380}"; }

_pg_bin() {
  local bin
  bin="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
  [[ -x $bin/pg_ctl ]] || { echo "error: PostgreSQL's pg_ctl is missing under /usr/lib/postgresql; reinstall: apt-get install --reinstall postgresql" >&2; return 1; }
  echo "$bin"
}

# The value of KEY in ENV_FILE, made (a random hex token) and appended the first time.
_secret() {
  local env_file=$1 key=$2 value
  (umask 077; touch "$env_file")
  value="$(sed -n "s/^$key=//p" "$env_file" | tail -n 1)"
  if [[ -z $value ]]; then
    value="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
    (umask 077; echo "$key=$value" >> "$env_file")
  fi
  echo "$value"
}

_postgres_up() {
  local state=$1 env_file=$2 bin data port log airflow_pw conveyor_pw
  bin="$(_pg_bin)" || return 1
  data="$state/postgres/data"
  port="$(_pg_port)"
  log="$state/postgres/postgres.log"
  airflow_pw="$(_secret "$env_file" CONVEYOR_POSTGRES_AIRFLOW_PASSWORD)"
  conveyor_pw="$(_secret "$env_file" CONVEYOR_POSTGRES_CONVEYOR_PASSWORD)"
  mkdir -p "$state/postgres"
  chown postgres:postgres "$state/postgres"
  chmod 700 "$state/postgres"
  if [[ ! -s $data/PG_VERSION ]]; then
    printf '>> creating the PostgreSQL database cluster in %s\n' "$data"
    runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=peer --auth-host=scram-sha-256 > "$state/postgres/initdb.log" 2>&1 \
      || { tail -n 15 "$state/postgres/initdb.log" >&2; echo "error: initdb failed (log: $state/postgres/initdb.log)" >&2; return 1; }
  fi
  if ! runuser -u postgres -- "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    port_free "$port" "Conveyor's PostgreSQL" "stop it or set CONVEYOR_POSTGRES_PORT" || return 1
    printf '>> starting PostgreSQL on 127.0.0.1:%s (log: %s)\n' "$port" "$log"
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c max_connections=300" start >/dev/null \
      || { tail -n 15 "$log" >&2; echo "error: PostgreSQL did not start (log: $log)" >&2; return 1; }
  fi
  # The roles and databases, made when missing; the passwords are set each time from ENV_FILE
  # (psql quotes them: :'name' is a literal, never pasted into SQL).
  runuser -u postgres -- psql -q -X -h "$data" -p "$port" -d postgres -v ON_ERROR_STOP=1 \
    -v airflow_pw="$airflow_pw" -v conveyor_pw="$conveyor_pw" > "$state/postgres/setup.log" 2>&1 <<'SQL' \
    || { cat "$state/postgres/setup.log" >&2; echo "error: setting up PostgreSQL's roles and databases failed (above)" >&2; return 1; }
SELECT 'CREATE ROLE airflow LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'airflow')\gexec
SELECT 'CREATE ROLE conveyor LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'conveyor')\gexec
ALTER ROLE airflow PASSWORD :'airflow_pw';
ALTER ROLE conveyor PASSWORD :'conveyor_pw';
SELECT 'CREATE DATABASE airflow OWNER airflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'airflow')\gexec
SELECT 'CREATE DATABASE conveyor OWNER conveyor' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'conveyor')\gexec
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE conveyor FROM PUBLIC;
SQL
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg://airflow:$airflow_pw@127.0.0.1:$port/airflow"
  # psycopg (3) serves Airflow's async sessions too (Airflow would otherwise want asyncpg for them).
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC="$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
  export AIRFLOW__CONVEYOR__SQL_ALCHEMY_CONN="postgresql+psycopg://conveyor:$conveyor_pw@127.0.0.1:$port/conveyor"
}

# Whether Conveyor's Redis answers on PORT with PASSWORD (given in the environment, not on a command line).
_redis_answers() { REDISCLI_AUTH="$2" redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }

_redis_up() {
  local state=$1 env_file=$2 port dir password
  port="$(_redis_port)"
  dir="$state/redis"
  password="$(_secret "$env_file" CONVEYOR_REDIS_PASSWORD)"
  mkdir -p "$dir"
  chmod 700 "$dir"
  # The password is in a file only root reads, not on a command line everyone's `ps` shows.
  (umask 077; cat > "$dir/redis.conf" <<EOF
bind 127.0.0.1
port $port
protected-mode yes
requirepass $password
dir $dir
pidfile $dir/redis.pid
logfile $dir/redis.log
daemonize yes
appendonly yes
EOF
  )
  if ! _redis_answers "$port" "$password"; then
    port_free "$port" "Conveyor's Redis" "stop it or set CONVEYOR_REDIS_PORT" || return 1
    printf '>> starting Redis on 127.0.0.1:%s (log: %s)\n' "$port" "$dir/redis.log"
    redis-server "$dir/redis.conf" || { tail -n 15 "$dir/redis.log" >&2; echo "error: Redis did not start (log: $dir/redis.log)" >&2; return 1; }
    local _
    for _ in $(seq 1 50); do
      _redis_answers "$port" "$password" && break
      sleep 0.2
    done
  fi
  export AIRFLOW__CELERY__BROKER_URL="redis://:$password@127.0.0.1:$port/0"
}

backends_up() {
  local state=$1 env_file=$2
  need_package postgresql "the CeleryExecutor layout keeps Airflow's and Conveyor's databases in it"
  need_package redis-server "the CeleryExecutor layout's task queue (Celery's broker)" redis-server
  (umask 022 && install_needed_packages) || return 1
  _needed_packages=() _needed_reasons=()
  _postgres_up "$state" "$env_file" && _redis_up "$state" "$env_file"
}

backends_down() {
  local state=$1 bin
  if [[ -s $state/postgres/data/PG_VERSION ]] && bin="$(_pg_bin 2>/dev/null)" \
    && runuser -u postgres -- "$bin/pg_ctl" -D "$state/postgres/data" status >/dev/null 2>&1; then
    echo ">> stopping PostgreSQL"
    runuser -u postgres -- "$bin/pg_ctl" -D "$state/postgres/data" -m fast -w stop >/dev/null
  fi
  local pid
  if [[ -f $state/redis/redis.pid ]] && pid="$(cat "$state/redis/redis.pid")" && kill -0 "$pid" 2>/dev/null; then
    echo ">> stopping Redis"
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
}
