//! The conformance suite on a real PostgreSQL (`QUEUELOCK_TEST_POSTGRES`, set by
//! `scripts/test`).

mod conformance;

conformance_tests!(queuelock_postgres::testkit::PgHarness::from_env());
