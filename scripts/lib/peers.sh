# The peer lock implementations scripts/bench measures beside queuelock: installs and
# builds their harnesses (bench/peers/). Source it; it needs scripts/lib/common.sh.
#
# peers_setup [--quick]: fills the array peer_args with "BACKEND:--peer=NAME=COMMAND" or
# "BACKEND:--unavailable=NAME=REASON" entries for `queuelock-bench run`. A peer that
# cannot be installed or built is reported with the reason, never dropped.

source scripts/lib/curator.sh

QL_CACHE="${QUEUELOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/queuelock}"
PEERS_BUILD="$PWD/target/bench-peers"

peer_ok() { peer_args+=("$1:--peer=$2=$3"); }
peer_unavailable() { peer_args+=("$1:--unavailable=$2=$3"); ql_log "peer $2 unavailable: $3"; }

# peers_venv DIR PIP-SPEC...: a virtualenv with the given packages (from PyPI).
peers_venv() {
  local venv=$1
  shift
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >/dev/null 2>&1; then
    python3 -m venv "$venv" 2>/dev/null || { ql_apt_install python3-venv && python3 -m venv "$venv"; } || return 1
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" || return 1
  fi
}

peers_python() {
  local venv="$QL_CACHE/bench-venv" venv3="$QL_CACHE/bench-etcd3-venv" py=bench/peers/python/locks.py
  if peers_venv "$venv" 'kazoo>=2.9,<3' 'aetcd>=1,<2' >&2; then
    peer_ok zookeeper "kazoo Lock (Python)" "$venv/bin/python $py kazoo"
    peer_ok etcd "aetcd Lock (Python)" "$venv/bin/python $py aetcd"
  else
    peer_unavailable zookeeper "kazoo Lock (Python)" "pip install kazoo failed"
    peer_unavailable etcd "aetcd Lock (Python)" "pip install aetcd failed"
  fi
  # python-etcd3 0.12 predates protobuf 4 and tenacity 7: its own virtualenv, pinned.
  if peers_venv "$venv3" 'etcd3==0.12.0' 'protobuf==3.20.3' 'tenacity==6.3.1' >&2; then
    peer_ok etcd "etcd3 Lock (Python)" "$venv3/bin/python $py etcd3"
  else
    peer_unavailable etcd "etcd3 Lock (Python)" "pip install etcd3==0.12.0 protobuf==3.20.3 tenacity==6.3.1 failed"
  fi
}

# Go concurrency.Mutex, built against Debian's etcd 3.4 client sources (GOPATH mode).
peers_go() {
  local name="Go concurrency.Mutex (etcdctl lock's code)" go=/usr/lib/go-1.19/bin/go log="$PEERS_BUILD/go-build.log"
  if ! ql_apt_install golang-1.19-go golang-etcd-server-dev >&2; then
    peer_unavailable etcd "$name" "apt-get install golang-1.19-go golang-etcd-server-dev failed"
    return 0
  fi
  ql_log "building the Go concurrency.Mutex harness"
  if GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$QL_CACHE/go-build" \
    "$go" build -o "$PEERS_BUILD/etcdmutex" bench/peers/go/etcdmutex.go >"$log" 2>&1; then
    peer_ok etcd "$name" "$PEERS_BUILD/etcdmutex"
  else
    peer_unavailable etcd "$name" "go build failed: $(tail -n 3 "$log" | tr '\n' ' ')"
  fi
}

# Apache Curator InterProcessMutex (scripts/lib/curator.sh: Debian's Curator 5.4 jars),
# compiled with plain javac.
peers_java() {
  local name="Curator InterProcessMutex (Java)" out="$PEERS_BUILD/java"
  if ! curator_install >&2; then
    peer_unavailable zookeeper "$name" "apt-get install of Curator's jars and a JDK failed"
    return 0
  fi
  ql_log "compiling the Curator harness"
  if curator_compile "$out" bench/peers/java/CuratorBench.java; then
    peer_ok zookeeper "$name" "java -Xss512k -cp $out:$CURATOR_CP CuratorBench"
  else
    peer_unavailable zookeeper "$name" "javac failed: $(tail -n 3 "$out/javac.log" | tr '\n' ' ')"
  fi
}

peers_setup() {
  mkdir -p "$PEERS_BUILD"
  peer_args=()
  peers_go
  peers_java
  peers_python
}
