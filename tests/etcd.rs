//! The conformance suite on a real etcd (`QUEUELOCK_TEST_ETCD`, set by `scripts/test`).

mod conformance;

conformance_tests!(queuelock_etcd::testkit::EtcdHarness::from_env());
