//! The backend contract tests on a real etcd (`QUEUELOCK_TEST_ETCD`, set by
//! `scripts/test`; the tests fail when it is not set).

use queuelock_etcd::testkit::EtcdHarness;

queuelock_core::contract_tests!(EtcdHarness::from_env());
