# ZooKeeper 3.8 for the tests: install if missing, start standalone on 127.0.0.1 on a
# free port with its own config and temporary data dir, wait until it answers `ruok` and
# serves (`srvr`), stop. Source it; it needs scripts/lib/common.sh. There is no `nc`: the
# four-letter words go through python3.

zk_install() {
  ql_apt_install zookeeper default-jre-headless
}

zk_4lw() { # zk_4lw PORT WORD
  python3 - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(sys.argv[2].encode())
out = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    out += chunk
print(out.decode())
PY
}

# zk_start: exports QUEUELOCK_TEST_ZK=127.0.0.1:PORT.
zk_start() {
  ZK_DIR=$(mktemp -d /tmp/queuelock-zk.XXXXXX)
  local port
  port=$(ql_free_port)
  mkdir -p "$ZK_DIR/data"
  cat >"$ZK_DIR/zoo.cfg" <<CFG
tickTime=200
initLimit=20
syncLimit=10
dataDir=$ZK_DIR/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
minSessionTimeout=400
maxSessionTimeout=60000
maxClientCnxns=0
CFG
  ql_log "starting ZooKeeper on 127.0.0.1:$port (data and log in $ZK_DIR)"
  java -Xmx512m -cp "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar" \
    -Dzookeeper.log.dir="$ZK_DIR" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZK_DIR/zoo.cfg" >"$ZK_DIR/zookeeper.log" 2>&1 &
  ZK_PID=$!
  local i
  for i in $(seq 1 150); do
    if [ "$(zk_4lw "$port" ruok)" = "imok" ] && zk_4lw "$port" srvr | grep -q '^Mode:'; then
      export QUEUELOCK_TEST_ZK="127.0.0.1:$port"
      return 0
    fi
    if ! kill -0 "$ZK_PID" 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "ZooKeeper did not start; its log:" >&2
  tail -n 30 "$ZK_DIR/zookeeper.log" >&2
  return 1
}

zk_stop() {
  if [ -n "${ZK_PID:-}" ]; then
    kill "$ZK_PID" 2>/dev/null || true
    wait "$ZK_PID" 2>/dev/null || true
    ZK_PID=
  fi
  [ -n "${ZK_DIR:-}" ] && rm -rf "$ZK_DIR"
  ZK_DIR=
}
