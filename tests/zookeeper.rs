//! The conformance suite on a real ZooKeeper (`QUEUELOCK_TEST_ZK`, set by `scripts/test`).

mod conformance;

conformance_tests!(queuelock_zookeeper::testkit::ZkHarness::from_env());
