# etcd 3.4 for the tests: install if missing, start on 127.0.0.1 on free ports with a
# temporary data dir, wait until healthy, stop. Source it; it needs scripts/lib/common.sh.

etcd_install() {
  ql_apt_install etcd-server etcd-client
}

# etcd_start: exports QUEUELOCK_TEST_ETCD=127.0.0.1:PORT.
etcd_start() {
  ETCD_DIR=$(mktemp -d /tmp/queuelock-etcd.XXXXXX)
  local client peer
  client=$(ql_free_port)
  peer=$(ql_free_port)
  ql_log "starting etcd on 127.0.0.1:$client (data and log in $ETCD_DIR)"
  ETCD_UNSUPPORTED_ARCH=$(dpkg --print-architecture) etcd \
    --name queuelock-test --data-dir "$ETCD_DIR/data" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "queuelock-test=http://127.0.0.1:$peer" \
    >"$ETCD_DIR/etcd.log" 2>&1 &
  ETCD_PID=$!
  local i
  for i in $(seq 1 150); do
    if ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$client" --dial-timeout=1s endpoint health >/dev/null 2>&1; then
      export QUEUELOCK_TEST_ETCD="127.0.0.1:$client"
      return 0
    fi
    if ! kill -0 "$ETCD_PID" 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "etcd did not become healthy; its log:" >&2
  tail -n 30 "$ETCD_DIR/etcd.log" >&2
  return 1
}

etcd_stop() {
  if [ -n "${ETCD_PID:-}" ]; then
    kill "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
    ETCD_PID=
  fi
  [ -n "${ETCD_DIR:-}" ] && rm -rf "$ETCD_DIR"
  ETCD_DIR=
}
