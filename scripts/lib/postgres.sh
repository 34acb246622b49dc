# PostgreSQL 15 for the tests: install Debian's `postgresql` if missing, start a fresh
# cluster (initdb in a temporary dir, a free 127.0.0.1 port, fsync on, the unix socket in
# the temporary dir; over TCP, SCRAM for members of role queuelock_scram and trust for
# the rest), wait until it accepts connections, stop. Source it; it needs scripts/lib/common.sh (ql_log, ql_apt_install, ql_free_port).
#
# initdb and the server refuse to run as root: as root they run as the `postgres` system
# user that Debian's package creates, and the temporary dir belongs to it.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

# pg_install: Debian's postgresql (server, initdb, pg_ctl) and psql, only if missing.
pg_install() {
  [ -x "$PG_BIN/initdb" ] && command -v psql >/dev/null 2>&1 && return 0
  ql_apt_install postgresql postgresql-client
  [ -x "$PG_BIN/initdb" ] || { echo "pg_install: $PG_BIN/initdb missing after installing postgresql" >&2; return 1; }
}

# pg_as_owner CMD...: runs CMD as the cluster's owner (the `postgres` user when root).
pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# pg_start: exports QUEUELOCK_TEST_POSTGRES=postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres
# (the cluster's superuser), and PG_TEST_DIR, PG_TEST_PORT.
pg_start() {
  PG_TEST_DIR=$(mktemp -d /tmp/queuelock-pg.XXXXXX)
  chmod 700 "$PG_TEST_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$PG_TEST_DIR"
  PG_TEST_PORT=$(ql_free_port)
  local password
  password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  printf '%s\n' "$password" >"$PG_TEST_DIR/pwfile"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$PG_TEST_DIR/pwfile"
  ql_log "starting PostgreSQL on 127.0.0.1:$PG_TEST_PORT (data and log in $PG_TEST_DIR)"
  pg_as_owner "$PG_BIN/initdb" -D "$PG_TEST_DIR/data" -U postgres --pwfile="$PG_TEST_DIR/pwfile" \
    --auth-host=scram-sha-256 --auth-local=peer -E UTF8 --no-locale >"$PG_TEST_DIR/initdb.log" 2>&1 || {
    echo "initdb failed:" >&2; tail -n 30 "$PG_TEST_DIR/initdb.log" >&2; return 1; }
  rm -f "$PG_TEST_DIR/pwfile"
  # TCP from 127.0.0.1: SCRAM for members of queuelock_scram (the security tests' roles),
  # trust for the rest: a debug build's SCRAM (4096 PBKDF2 rounds, unoptimized) costs
  # ~0.3 s a connection, and the suites open hundreds.
  cat >"$PG_TEST_DIR/data/pg_hba.conf" <<'HBA'
local all all peer
host all +queuelock_scram 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
HBA
  # Many test clients at once, each with a LISTEN connection and a few request connections
  # (PG_MAX_CONNECTIONS overrides the 600: scripts/bench's herd has a connection per waiter).
  pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_TEST_PORT -c unix_socket_directories=$PG_TEST_DIR \
        -c fsync=on -c max_connections=${PG_MAX_CONNECTIONS:-600} -c shared_buffers=64MB" start >/dev/null || {
    echo "PostgreSQL did not start; its log:" >&2; tail -n 30 "$PG_TEST_DIR/server.log" >&2; return 1; }
  pg_as_owner psql -h "$PG_TEST_DIR" -p "$PG_TEST_PORT" -U postgres -d postgres -qAt \
    -c "CREATE ROLE queuelock_scram NOLOGIN" >/dev/null || return 1
  export PG_TEST_DIR PG_TEST_PORT
  export QUEUELOCK_TEST_POSTGRES="postgres://postgres:$password@127.0.0.1:$PG_TEST_PORT/postgres"
}

pg_stop() {
  if [ -n "${PG_TEST_DIR:-}" ] && [ -d "$PG_TEST_DIR/data" ]; then
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  [ -n "${PG_TEST_DIR:-}" ] && rm -rf "$PG_TEST_DIR"
  PG_TEST_DIR=
}
