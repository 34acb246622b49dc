//! Contract tests (being written).
