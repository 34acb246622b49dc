# Shared helpers for queuelock's scripts. Source it; do not run it.

# ql_log MESSAGE...: progress on stderr, with the seconds since the script started (where
# a run's minutes go: CI has a 45-minute budget).
ql_log() { printf '==> %s [%ds]\n' "$*" "$SECONDS" >&2; }

# ql_apt_install PACKAGE...: installs the Debian packages that are missing (apt-get update
# first, once per run). Needs root, as on the project's machines.
ql_apt_install() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  ql_log "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "${QL_APT_UPDATED:-}" ]; then
    $sudo apt-get update -qq
    QL_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ql_build_deps: what building the workspace with every feature needs besides a Rust
# toolchain: etcd-client's build script runs protoc, which also needs protobuf's
# well-known types (google/protobuf/*.proto: libprotobuf-dev, not protobuf-compiler);
# python3 finds free ports for the servers.
ql_build_deps() {
  ql_apt_install protobuf-compiler libprotobuf-dev python3
}

# ql_free_port: prints a TCP port on 127.0.0.1 that nothing listens on right now.
ql_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ql_require_cargo: fails clearly when no Rust toolchain is installed.
ql_require_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the stable Rust toolchain (rustup) first" >&2
    exit 1
  fi
}

# ql_venv NAME MODULE PIP_SPEC: a Python virtualenv NAME in queuelock's cache with PIP_SPEC
# installed (unless MODULE already imports there); prints its python.
ql_venv() {
  local venv="${QUEUELOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/queuelock}/$1"
  if ! "$venv/bin/python" -c "import $2" >/dev/null 2>&1; then
    ql_log "making a virtualenv with $3 in $venv"
    python3 -m venv "$venv" 2>/dev/null || { ql_apt_install python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$3" >&2
  fi
  echo "$venv/bin/python"
}
