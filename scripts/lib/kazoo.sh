# A Python virtualenv with kazoo (from PyPI) for the ZooKeeper interop test. Source it;
# it needs scripts/lib/common.sh.

# kazoo_setup: exports QUEUELOCK_TEST_KAZOO_PYTHON.
kazoo_setup() {
  local venv="${QUEUELOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/queuelock}/kazoo-venv"
  if ! "$venv/bin/python" -c 'import kazoo' >/dev/null 2>&1; then
    ql_log "making a virtualenv with kazoo in $venv"
    python3 -m venv "$venv" 2>/dev/null || { ql_apt_install python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'kazoo>=2.9,<3'
  fi
  export QUEUELOCK_TEST_KAZOO_PYTHON="$venv/bin/python"
}
