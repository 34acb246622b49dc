# ZooKeeper 3.8 for the tests: install if missing, start standalone on 127.0.0.1 on a
# free port with its own config and temporary data dir, wait until it answers `ruok` and
# serves (`srvr`), stop. Source it; it needs scripts/lib/common.sh (ql_log,
# ql_apt_install, ql_free_port). There is no `nc`: the four-letter words go through
# python3, or bash's /dev/tcp when python3 is missing.
#
# Debian's zkServer.sh/zkEnv.sh ignore ZOOCFGDIR, so the server is started directly:
# `java -cp <Debian's jars> org.apache.zookeeper.server.quorum.QuorumPeerMain zoo.cfg`
# (zookeeper.jar's manifest names its dependencies).

ZK_JAR=/usr/share/java/zookeeper.jar

# zk_install: Debian's `zookeeper` package and a Java runtime, each only if missing
# (apt-get update first, once per run).
zk_install() {
  local pkgs=()
  [ -f "$ZK_JAR" ] || pkgs+=(zookeeper)
  command -v java >/dev/null 2>&1 || pkgs+=(default-jre-headless)
  [ ${#pkgs[@]} -eq 0 ] || ql_apt_install "${pkgs[@]}"
  [ -f "$ZK_JAR" ] || { echo "zk_install: $ZK_JAR missing after installing zookeeper" >&2; return 1; }
  command -v java >/dev/null 2>&1 || { echo "zk_install: no java after installing a JRE" >&2; return 1; }
}

# zk_4lw PORT WORD: prints the server's answer to a four-letter word (empty on failure).
zk_4lw() {
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.settimeout(2)
s.sendall(sys.argv[2].encode())
out = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    out += chunk
print(out.decode(errors="replace"))
PY
  else
    (
      exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      printf '%s' "$2" >&3
      timeout 2 cat <&3
    ) 2>/dev/null
  fi
}

# zk_alive PID: true while the process runs (a zombie awaiting `wait` counts as exited).
zk_alive() {
  [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z ' "/proc/$1/stat" 2>/dev/null
}

# zk_start: starts ZooKeeper and exports QUEUELOCK_TEST_ZK=127.0.0.1:PORT; ZK_PID and
# ZK_DIR (config, data, zookeeper.log) are for zk_stop. tickTime 200 ms lets tests use
# session timeouts from 400 ms; empty container nodes are reaped every second (instead
# of every minute) so that tests can watch it happen.
zk_start() {
  ZK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/queuelock-zk.XXXXXX")
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
4lw.commands.whitelist=ruok,srvr,stat,mntr,cons
minSessionTimeout=400
maxSessionTimeout=60000
maxClientCnxns=0
CFG
  local cp="/etc/zookeeper/conf:$ZK_JAR"
  # A logging binding (zookeeper.jar brings slf4j-api only), so the log says something.
  [ -f /usr/share/java/slf4j-simple.jar ] && cp="$cp:/usr/share/java/slf4j-simple.jar"
  ql_log "starting ZooKeeper on 127.0.0.1:$port (config, data and log in $ZK_DIR)"
  java -Xmx512m -cp "$cp" \
    -Dzookeeper.log.dir="$ZK_DIR" \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -Dznode.container.checkIntervalMs=1000 \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZK_DIR/zoo.cfg" >"$ZK_DIR/zookeeper.log" 2>&1 &
  ZK_PID=$!
  local i
  for i in $(seq 1 150); do
    if [ "$(zk_4lw "$port" ruok)" = "imok" ] && zk_4lw "$port" srvr | grep -q '^Mode: standalone'; then
      export QUEUELOCK_TEST_ZK="127.0.0.1:$port"
      return 0
    fi
    zk_alive "$ZK_PID" || break
    sleep 0.2
  done
  echo "ZooKeeper did not start on 127.0.0.1:$port; its log:" >&2
  tail -n 30 "$ZK_DIR/zookeeper.log" >&2
  zk_stop
  return 1
}

# zk_stop: stops the server started by zk_start (waits for it to exit; SIGKILL after 10 s)
# and removes its directory.
zk_stop() {
  if [ -n "${ZK_PID:-}" ]; then
    kill "$ZK_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
      zk_alive "$ZK_PID" || break
      sleep 0.1
    done
    kill -9 "$ZK_PID" 2>/dev/null || true
    wait "$ZK_PID" 2>/dev/null || true
    ZK_PID=
  fi
  if [ -n "${ZK_DIR:-}" ]; then rm -rf "$ZK_DIR"; fi
  ZK_DIR=
  unset QUEUELOCK_TEST_ZK
}
