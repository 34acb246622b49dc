# etcd 3.4 for the tests and the bench: install if missing, start on 127.0.0.1 on free
# ports with a temporary data dir (fsync on: etcd's default), wait until healthy, stop.
# Source it; it needs scripts/lib/common.sh.

etcd_install() {
  ql_apt_install etcd-server etcd-client
}

# etcd_start [MEMBERS]: starts a single member (default) or a MEMBERS-member cluster on
# 127.0.0.1, each member with its own fresh data dir under ETCD_DIR, and exports
# QUEUELOCK_TEST_ETCD=127.0.0.1:PORT (with several members: their client endpoints,
# comma-separated). Waits until every member is healthy.
etcd_start() {
  local members=${1:-1}
  ETCD_DIR=$(mktemp -d /tmp/queuelock-etcd.XXXXXX)
  ETCD_PIDS=()
  local i clients=() peers=() initial="" name
  for i in $(seq 1 "$members"); do
    clients+=("$(ql_free_port)")
    peers+=("$(ql_free_port)")
  done
  for i in $(seq 0 $((members - 1))); do
    name=queuelock-test; [ "$members" -gt 1 ] && name="queuelock-test-$((i + 1))"
    initial+="${initial:+,}$name=http://127.0.0.1:${peers[$i]}"
  done
  local endpoints=""
  for i in $(seq 0 $((members - 1))); do
    name=queuelock-test; [ "$members" -gt 1 ] && name="queuelock-test-$((i + 1))"
    endpoints+="${endpoints:+,}127.0.0.1:${clients[$i]}"
    ql_log "starting etcd member $name on 127.0.0.1:${clients[$i]} (data and log in $ETCD_DIR/$name)"
    mkdir -p "$ETCD_DIR/$name"
    ETCD_UNSUPPORTED_ARCH=$(dpkg --print-architecture) etcd \
      --name "$name" --data-dir "$ETCD_DIR/$name/data" \
      --listen-client-urls "http://127.0.0.1:${clients[$i]}" --advertise-client-urls "http://127.0.0.1:${clients[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${peers[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${peers[$i]}" \
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "queuelock-$$" \
      >"$ETCD_DIR/$name/etcd.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
  # The old single-member name, for callers that stop one process.
  ETCD_PID=${ETCD_PIDS[0]}
  local try pid alive
  for try in $(seq 1 150); do
    if ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --dial-timeout=1s endpoint health >/dev/null 2>&1; then
      export QUEUELOCK_TEST_ETCD="$endpoints"
      return 0
    fi
    alive=1
    for pid in "${ETCD_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || alive=0; done
    [ "$alive" = 1 ] || break
    sleep 0.2
  done
  echo "etcd did not become healthy; its logs:" >&2
  tail -n 30 "$ETCD_DIR"/*/etcd.log >&2
  return 1
}

# etcd_stop: stops every member etcd_start started and removes their data.
etcd_stop() {
  local pid
  for pid in "${ETCD_PIDS[@]:-${ETCD_PID:-}}"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  ETCD_PIDS=()
  ETCD_PID=
  [ -n "${ETCD_DIR:-}" ] && rm -rf "$ETCD_DIR"
  ETCD_DIR=
}
