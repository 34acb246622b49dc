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

# zk_start [MEMBERS]: starts ZooKeeper standalone (default) or a MEMBERS-server ensemble
# on 127.0.0.1 and exports QUEUELOCK_TEST_ZK=127.0.0.1:PORT (with several servers: their
# client addresses, comma-separated, a ZooKeeper connect string). ZK_PIDS and ZK_DIR
# (per server: config, data, zookeeper.log) are for zk_stop. forceSync stays at its
# default (yes). tickTime 200 ms lets tests use session timeouts from 400 ms; empty
# container nodes are reaped every second (instead of every minute) so that tests can
# watch it happen, unless ZK_CONTAINER_CHECK_MS says otherwise (scripts/bench: 60000,
# ZooKeeper's default, as in production).
zk_start() {
  local members=${1:-1}
  ZK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/queuelock-zk.XXXXXX")
  ZK_PIDS=()
  local i ports=() quorum=() servers="" connect=""
  for i in $(seq 1 "$members"); do
    ports+=("$(ql_free_port)")
    [ "$members" -gt 1 ] && quorum+=("$(ql_free_port):$(ql_free_port)")
  done
  if [ "$members" -gt 1 ]; then
    for i in $(seq 1 "$members"); do servers+="server.$i=127.0.0.1:${quorum[$((i - 1))]}"$'\n'; done
  fi
  local cp="/etc/zookeeper/conf:$ZK_JAR"
  # A logging binding (zookeeper.jar brings slf4j-api only), so the log says something.
  [ -f /usr/share/java/slf4j-simple.jar ] && cp="$cp:/usr/share/java/slf4j-simple.jar"
  local dir port
  for i in $(seq 1 "$members"); do
    dir="$ZK_DIR"; [ "$members" -gt 1 ] && dir="$ZK_DIR/s$i"
    port=${ports[$((i - 1))]}
    connect+="${connect:+,}127.0.0.1:$port"
    mkdir -p "$dir/data"
    [ "$members" -gt 1 ] && echo "$i" >"$dir/data/myid"
    cat >"$dir/zoo.cfg" <<CFG
tickTime=200
initLimit=20
syncLimit=10
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr,cons
minSessionTimeout=400
maxSessionTimeout=60000
maxClientCnxns=0
$servers
CFG
    ql_log "starting ZooKeeper server $i of $members on 127.0.0.1:$port (config, data and log in $dir)"
    java -Xmx512m -cp "$cp" \
      -Dzookeeper.log.dir="$dir" \
      -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
      -Dznode.container.checkIntervalMs="${ZK_CONTAINER_CHECK_MS:-1000}" \
      org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" >"$dir/zookeeper.log" 2>&1 &
    ZK_PIDS+=($!)
  done
  # The old single-server name, for callers that look at one process.
  ZK_PID=${ZK_PIDS[0]}
  local want='^Mode: standalone' try ok pid
  [ "$members" -gt 1 ] && want='^Mode: (leader|follower)'
  for try in $(seq 1 250); do
    ok=1
    for port in "${ports[@]}"; do
      if [ "$(zk_4lw "$port" ruok)" != "imok" ] || ! zk_4lw "$port" srvr | grep -Eq "$want"; then ok=0; break; fi
    done
    if [ "$ok" = 1 ]; then
      export QUEUELOCK_TEST_ZK="$connect"
      return 0
    fi
    for pid in "${ZK_PIDS[@]}"; do zk_alive "$pid" || ok=dead; done
    [ "$ok" = dead ] && break
    sleep 0.2
  done
  echo "ZooKeeper did not start on $connect; its logs:" >&2
  find "$ZK_DIR" -name zookeeper.log -exec tail -n 30 {} + >&2
  zk_stop
  return 1
}

# zk_stop: stops the servers started by zk_start (waits for each to exit; SIGKILL after
# 10 s) and removes their directory.
zk_stop() {
  local pid i
  for pid in "${ZK_PIDS[@]:-${ZK_PID:-}}"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      zk_alive "$pid" || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  ZK_PIDS=()
  ZK_PID=
  if [ -n "${ZK_DIR:-}" ]; then rm -rf "$ZK_DIR"; fi
  ZK_DIR=
  unset QUEUELOCK_TEST_ZK
}
