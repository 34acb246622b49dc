//! The one place where `zookeeper-client` errors become queuelock errors.

use queuelock_core::Error;
use zookeeper_client::Error as ZkError;

/// Maps a `zookeeper-client` error into the contract's [`Error`]. `NoNode` and
/// `NodeExists` are handled where they are expected; here they become backend errors.
pub fn map_error(e: ZkError) -> Error {
    let message = e.to_string();
    match e {
        // `Custom` is what zookeeper-client fails in-flight requests with when it gives
        // up on a connection ("no response from connection in ...ms", I/O errors): the
        // outcome is unknown, exactly like ConnectionLoss, and must be retried. As a
        // plain backend error it once ended a release early and left the node behind
        // while the session lived on, stalling the queue (found by tests/jepsen).
        ZkError::ConnectionLoss
        | ZkError::Timeout
        | ZkError::NoHosts
        | ZkError::Throttled
        | ZkError::Custom(_) => Error::Connection {
            message,
            source: Some(Box::new(e)),
        },
        ZkError::SessionExpired | ZkError::SessionMoved | ZkError::ClientClosed => {
            Error::SessionExpired(queuelock_core::SessionId(0))
        }
        ZkError::NoAuth | ZkError::AuthFailed => Error::Auth {
            message,
            source: Some(Box::new(e)),
        },
        other => Error::Backend {
            backend: "zookeeper",
            message,
            source: Some(Box::new(other)),
        },
    }
}
