//! The conformance suite on a real Redis (`QUEUELOCK_TEST_REDIS`, set by `scripts/test`).

mod conformance;

conformance_tests!(queuelock_redis::testkit::RedisHarness::from_env());
