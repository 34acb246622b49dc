# A Python virtualenv with kazoo (from PyPI) for the ZooKeeper interop test. Source it;
# it needs scripts/lib/common.sh.

# kazoo_setup: exports QUEUELOCK_TEST_KAZOO_PYTHON.
kazoo_setup() {
  QUEUELOCK_TEST_KAZOO_PYTHON=$(ql_venv kazoo-venv kazoo 'kazoo>=2.9,<3')
  export QUEUELOCK_TEST_KAZOO_PYTHON
}
