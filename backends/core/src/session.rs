use std::fmt;

/// Identity of a session: an etcd lease id, a ZooKeeper session id, or the memory
/// backend's counter. Displayed in lowercase hex, as etcd prints lease ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({:x})", self.0)
    }
}

/// The state of a session, observable as a value through [`crate::Session::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Connected and kept alive: nodes owned by the session are safe.
    Live,
    /// Connection trouble: the session may still be alive on the server, or not. Nodes
    /// are not known to be lost yet.
    Suspended,
    /// Expired, revoked or closed: every node the session owned is gone (or will be before
    /// anyone else can be granted a lock behind it). Terminal.
    Lost,
}

/// Why a held lock is no longer safely held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossReason {
    /// The session that owns the lock's node expired or was closed.
    SessionLost,
    /// The session is suspended and the configured loss policy counts that as lost.
    SessionSuspended,
    /// The lock's node was deleted by someone else.
    NodeDeleted,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossReason::SessionLost => "the session expired or was closed",
            LossReason::SessionSuspended => "the session's connection is suspended",
            LossReason::NodeDeleted => "the lock's node was deleted by someone else",
        })
    }
}
