//! tokio-postgres errors as queuelock errors, in one place.

use queuelock_core::{Error, LossReason};
use tokio_postgres::error::SqlState;

/// Maps a tokio-postgres error. `QL0xx` codes are raised by queuelock's own functions.
/// Messages never hold credentials: tokio-postgres errors carry none.
pub fn map_error(e: tokio_postgres::Error) -> Error {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection broke, timed out or never opened.
        return Error::Connection {
            message: format!("PostgreSQL: {e}"),
            source: Some(Box::new(e)),
        };
    };
    let c = code.code();
    let message = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned());
    match c {
        "QL004" => Error::LockLost(LossReason::NodeDeleted),
        // QL003 (session expired) is mapped by the session, which knows its id.
        _ if code == &SqlState::INSUFFICIENT_PRIVILEGE
            || code == &SqlState::INVALID_PASSWORD
            || code == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            Error::Auth {
                message: format!("PostgreSQL refused: {message} (SQLSTATE {c})"),
                source: Some(Box::new(e)),
            }
        }
        // Connection exceptions, shutdowns, "cannot connect now", serialization failures
        // and deadlocks: the outcome is unknown or the statement can simply be retried.
        _ if c.starts_with("08")
            || c.starts_with("57P")
            || code == &SqlState::T_R_SERIALIZATION_FAILURE
            || code == &SqlState::T_R_DEADLOCK_DETECTED
            || code == &SqlState::TOO_MANY_CONNECTIONS =>
        {
            Error::Connection {
                message: format!("PostgreSQL: {message} (SQLSTATE {c})"),
                source: Some(Box::new(e)),
            }
        }
        _ => Error::Backend {
            backend: "postgres",
            message: format!("{message} (SQLSTATE {c})"),
            source: Some(Box::new(e)),
        },
    }
}

/// True when `e` was raised with SQLSTATE `code`.
pub(crate) fn has_code(e: &tokio_postgres::Error, code: &str) -> bool {
    e.code().is_some_and(|c| c.code() == code)
}
