//! The backend contract tests on a real Redis (`QUEUELOCK_TEST_REDIS`, set by
//! `scripts/test`; the tests fail when it is not set).

use queuelock_redis::testkit::RedisHarness;

queuelock_core::contract_tests!(RedisHarness::from_env());
