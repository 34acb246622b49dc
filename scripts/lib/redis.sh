# Redis for the tests: install Debian's redis-server if missing, start a fresh server on
# 127.0.0.1 on a free port (temporary dir, append-only file fsynced on every write, not
# daemonized), wait until it answers, stop. Source it; it needs scripts/lib/common.sh.

redis_install() {
  ql_apt_install redis-server redis-tools
}

# redis_start [APPENDFSYNC]: exports QUEUELOCK_TEST_REDIS=127.0.0.1:PORT and REDIS_DIR,
# REDIS_PORT, REDIS_PID (for tests that kill and restart it). APPENDFSYNC defaults to
# `always`, which is what queuelock's guarantees on Redis assume.
redis_start() {
  local fsync="${1:-always}"
  REDIS_DIR=$(mktemp -d /tmp/queuelock-redis.XXXXXX)
  REDIS_PORT=$(ql_free_port)
  cat >"$REDIS_DIR/redis.conf" <<CONF
bind 127.0.0.1
port $REDIS_PORT
dir $REDIS_DIR
daemonize no
save ""
appendonly yes
appendfsync $fsync
maxclients 10000
logfile $REDIS_DIR/redis.log
CONF
  ql_log "starting redis-server on 127.0.0.1:$REDIS_PORT (appendfsync $fsync, data and log in $REDIS_DIR)"
  redis-server "$REDIS_DIR/redis.conf" &
  REDIS_PID=$!
  local i
  for i in $(seq 1 100); do
    if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
      export QUEUELOCK_TEST_REDIS="127.0.0.1:$REDIS_PORT"
      export REDIS_DIR REDIS_PORT REDIS_PID
      return 0
    fi
    if ! kill -0 "$REDIS_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "redis-server did not answer; its log:" >&2
  tail -n 30 "$REDIS_DIR/redis.log" >&2 || true
  return 1
}

redis_stop() {
  if [ -n "${REDIS_PID:-}" ]; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
  fi
  [ -n "${REDIS_DIR:-}" ] && rm -rf "$REDIS_DIR"
  REDIS_DIR=
}
