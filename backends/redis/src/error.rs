//! The one place where `redis` errors become queuelock errors.

use queuelock_core::Error;

/// Maps a `redis` crate error into the contract's [`Error`]: I/O, dropped connections,
/// timeouts and a server that is loading or busy are [`Error::Connection`] (outcome
/// unknown, retry); refused credentials or commands are [`Error::Auth`].
pub fn map_error(e: redis::RedisError) -> Error {
    use redis::ErrorKind as K;
    let message = e.to_string();
    let connection = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            K::BusyLoadingError | K::TryAgain | K::ClusterDown | K::MasterDown | K::ReadOnly
        );
    if connection {
        return Error::Connection {
            message,
            source: Some(Box::new(e)),
        };
    }
    // An ACL refusal inside a script arrives as a plain script error.
    let auth = matches!(e.kind(), K::AuthenticationFailed)
        || e.code()
            .is_some_and(|c| matches!(c, "NOPERM" | "NOAUTH" | "WRONGPASS"))
        || message.contains("NOPERM")
        || message.contains("can't access at least one of the keys")
        || message.contains("has no permissions");
    if auth {
        return Error::Auth {
            message,
            source: Some(Box::new(e)),
        };
    }
    Error::Backend {
        backend: "redis",
        message,
        source: Some(Box::new(e)),
    }
}
