# The peer lock implementations scripts/bench measures beside queuelock: installs and
# builds their harnesses (bench/peers/). Source it; it needs scripts/lib/common.sh.
#
# peers_setup [--quick]: fills the array peer_args with "BACKEND:--peer=NAME=COMMAND" or
# "BACKEND:--unavailable=NAME=REASON" entries for `queuelock-bench run`. A peer that
# cannot be installed or built is reported with the reason, never dropped. A REASON that
# starts with "not built:" is a decision (written in the results), not a set-up failure:
# `scripts/bench --setup-only` fails on every other.

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

# The Redis peers in Python: redis-py's Lock, python-redis-lock, pottery's Redlock (one
# master), in one virtualenv.
peers_python_redis() {
  local venv="$QL_CACHE/bench-redis-venv" py=bench/peers/python/locks.py
  local names=("redis-py Lock (Python)=redispy" "python-redis-lock (Python)=redis-lock" "pottery Redlock, one master (Python)=pottery")
  local n
  if peers_venv "$venv" 'redis>=5,<9' 'python-redis-lock>=4,<5' 'pottery>=3,<4' >&2; then
    for n in "${names[@]}"; do peer_ok redis "${n%%=*}" "$venv/bin/python $py ${n#*=}"; done
  else
    for n in "${names[@]}"; do
      peer_unavailable redis "${n%%=*}" "pip install redis python-redis-lock pottery failed"
    done
  fi
}

# node's redis-semaphore Mutex (npm, over ioredis), installed into the cache (never into
# the repository: no node_modules, no lockfile); Debian's nodejs/npm when node is missing.
peers_node() {
  local name="redis-semaphore Mutex (node)" dir="$QL_CACHE/node-peers" log="$PEERS_BUILD/npm.log"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    ql_apt_install nodejs npm >&2 || { peer_unavailable redis "$name" "apt-get install nodejs npm failed"; return 0; }
  fi
  mkdir -p "$dir"
  if [ -f "$dir/node_modules/redis-semaphore/package.json" ] && [ -f "$dir/node_modules/ioredis/package.json" ] ||
    (cd "$dir" && npm install --no-save --no-package-lock --no-audit --no-fund --silent 'redis-semaphore@5' 'ioredis@5') >"$log" 2>&1; then
    peer_ok redis "$name" "env NODE_PATH=$dir/node_modules node bench/peers/node/redis-semaphore.js"
  else
    peer_unavailable redis "$name" "npm install redis-semaphore@5 ioredis@5 failed: $(tail -n 3 "$log" | tr '\n' ' ')"
  fi
}

# A Rust Redlock: rslock, the maintained crate, is built on redis 1.x (0.8-0.10) or 0.27
# (0.6-0.7), queuelock's backend on redis 0.32: a second Redis client crate in the
# build, more than "builds quickly" on the shared machine. Recorded, not dropped.
peers_rust_redlock() {
  peer_unavailable redis "rslock Redlock (Rust)" \
    "not built: rslock 0.8-0.10 needs redis 1.x and 0.6-0.7 redis 0.27, while queuelock's Redis backend uses redis 0.32 (a second Redis client crate in the build)"
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
  peers_python_redis
  peers_node
  peers_rust_redlock
}
