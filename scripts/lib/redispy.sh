# A Python virtualenv with redis-py (PyPI `redis`) for the Redis interop test. Source it;
# it needs scripts/lib/common.sh.

# redispy_setup: exports QUEUELOCK_TEST_REDISPY_PYTHON.
redispy_setup() {
  QUEUELOCK_TEST_REDISPY_PYTHON=$(ql_venv redispy-venv redis.lock 'redis>=5,<7')
  export QUEUELOCK_TEST_REDISPY_PYTHON
}
