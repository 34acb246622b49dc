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
