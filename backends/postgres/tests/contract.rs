//! The backend contract tests on a real PostgreSQL (`QUEUELOCK_TEST_POSTGRES`, set by
//! `scripts/test`).

queuelock_core::contract_tests!(queuelock_postgres::testkit::PgHarness::from_env());
