//! The backend contract tests, run against the in-process store.

use queuelock_memory::testkit::MemoryHarness;

queuelock_core::contract_tests!(MemoryHarness::default());
