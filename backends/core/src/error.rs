use std::time::Duration;

use crate::name::NameError;
use crate::session::{LossReason, SessionId};

/// A boxed error from a backend's client library, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with queuelock's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in queuelock, with variants a caller can act on.
///
/// Backends map their client library's errors into this enum in one place, so recipes and
/// users see the same error whatever the backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A lock or key name was rejected before any network call.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: NameError,
    },

    /// The operation did not complete within the time allowed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),

    /// The session (etcd lease, ZooKeeper session) expired or was closed; nodes it owned
    /// are gone. A new acquire opens a fresh session.
    #[error("session {0} expired")]
    SessionExpired(SessionId),

    /// A lock that was held, or a place in its queue, is no longer safely ours.
    #[error("lock lost: {0}")]
    LockLost(LossReason),

    /// The server could not be reached or the connection broke. Usually worth retrying.
    #[error("connection error: {message}")]
    Connection {
        /// What failed.
        message: String,
        /// The client library's error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The server refused our credentials or the operation is not permitted.
    #[error("authentication or authorization failed: {message}")]
    Auth {
        /// What was refused.
        message: String,
        /// The client library's error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// A URL or configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The configuration names a backend whose cargo feature is not compiled in.
    #[error(
        "the {backend} backend is not compiled in: enable queuelock's `{feature}` cargo feature \
         (`queuelock = {{ version = \"0.1\", features = [\"{feature}\"] }}` in Cargo.toml, or \
         `--features {feature}` on the cargo command line)"
    )]
    FeatureDisabled {
        /// The backend asked for (`etcd`, `zookeeper`, ...).
        backend: &'static str,
        /// The cargo feature that enables it.
        feature: &'static str,
    },

    /// Data stored by someone else conflicts with what this call asked for (for example a
    /// semaphore created with a different permit count).
    #[error("conflict at {key}: {message}")]
    Conflict {
        /// The key holding the conflicting data.
        key: String,
        /// What conflicts.
        message: String,
    },

    /// The backend does not offer this optional operation of the contract (for example
    /// [`crate::Session::queue_changed`], which only observers need).
    #[error("this backend does not support {operation}")]
    NotSupported {
        /// The operation asked for.
        operation: &'static str,
    },

    /// The client or session was closed by its owner.
    #[error("client is closed")]
    Closed,

    /// Any other failure reported by the backend.
    #[error("{backend} backend error: {message}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// What failed.
        message: String,
        /// The client library's error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// A [`Error::Connection`] from a message.
    pub fn connection(message: impl Into<String>) -> Self {
        Error::Connection {
            message: message.into(),
            source: None,
        }
    }

    /// True when retrying the same operation may succeed (connection trouble, timeouts).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Connection { .. } | Error::Timeout(_))
    }
}
