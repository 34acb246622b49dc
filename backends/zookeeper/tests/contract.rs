//! The backend contract tests on a real ZooKeeper (`QUEUELOCK_TEST_ZK`, set by
//! `scripts/test`; the tests fail when it is not set).

use queuelock_zookeeper::testkit::ZkHarness;

queuelock_core::contract_tests!(ZkHarness::from_env());
