//! The one place where `etcd-client` errors become queuelock errors.

use queuelock_core::Error;

/// Maps an `etcd-client` error into the contract's [`Error`].
pub fn map_error(e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    use tonic::Code;
    let message = e.to_string();
    if refused_our_certificate(&message) {
        return Error::Auth {
            message,
            source: Some(Box::new(e)),
        };
    }
    match e {
        E::GRpcStatus(status) => match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => Error::Auth {
                message,
                source: Some(Box::new(status)),
            },
            // etcd reports a wrong password, a missing user name (auth enabled, no
            // credentials) and credentials sent to a server without auth with other codes.
            Code::InvalidArgument | Code::FailedPrecondition
                if is_auth_message(status.message()) =>
            {
                Error::Auth {
                    message,
                    source: Some(Box::new(status)),
                }
            }
            // A GOAWAY (e.g. "too_many_pings") ends the connection, not the request's
            // chance: the outcome is unknown and a new connection will serve a retry.
            Code::ResourceExhausted if is_goaway(&message) => Error::Connection {
                message,
                source: Some(Box::new(status)),
            },
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown => Error::Connection {
                message,
                source: Some(Box::new(status)),
            },
            _ => Error::Backend {
                backend: "etcd",
                message,
                source: Some(Box::new(status)),
            },
        },
        E::TransportError(t) => Error::Connection {
            message,
            source: Some(Box::new(t)),
        },
        E::IoError(io) => Error::Connection {
            message,
            source: Some(Box::new(io)),
        },
        E::WatchError(_) | E::LeaseKeepAliveError(_) => Error::Connection {
            message,
            source: None,
        },
        E::InvalidArgs(_) | E::InvalidUri(_) => Error::Config(message),
        other => Error::Backend {
            backend: "etcd",
            message,
            source: Some(Box::new(other)),
        },
    }
}

/// etcd's authentication errors that do not come with an auth status code.
fn is_auth_message(m: &str) -> bool {
    m.contains("authentication failed")
        || m.contains("user name is empty")
        || m.contains("authentication is not enabled")
        || m.contains("invalid auth token")
}

/// The server ended the TLS handshake because of our client certificate (missing, not
/// trusted, or not allowed): a credentials problem, not a connection one. tonic keeps the
/// TLS alert only in its error's text. Best effort: with TLS 1.3 the server may close the
/// connection without the alert reaching us, which stays a connection error.
fn refused_our_certificate(m: &str) -> bool {
    [
        "BadCertificate",
        "CertificateRequired",
        "UnknownCA",
        "CertificateUnknown",
        "AccessDenied",
    ]
    .iter()
    .any(|alert| m.contains(&format!("received fatal alert: {alert}")))
}

/// Whether an error is the server closing the HTTP/2 connection (GOAWAY), which tonic
/// reports as a status only in its message.
fn is_goaway(message: &str) -> bool {
    message.contains("GoAway") || message.contains("too_many_pings")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goaway_is_a_connection_error_other_exhaustion_is_not() {
        // What the Jepsen test saw when pings came too often.
        let goaway = tonic::Status::resource_exhausted(
            "h2 protocol error: http2 error: connection error received: GoAway(b\"too_many_pings\", ENHANCE_YOUR_CALM, Remote)",
        );
        assert!(map_error(etcd_client::Error::GRpcStatus(goaway)).is_retryable());
        let full = tonic::Status::resource_exhausted("etcdserver: mvcc: database space exceeded");
        assert!(!map_error(etcd_client::Error::GRpcStatus(full)).is_retryable());
    }
}
