use std::fmt;
use std::sync::Mutex as StdMutex;
use std::time::Instant;

use tokio::sync::watch;

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

/// A session's state and client-side deadline, as a backend's session and its
/// background tasks (keep-alive, connection watcher) share them. It enforces the
/// contract's rule once for every backend: [`SessionState::Lost`] is final.
#[derive(Debug)]
pub struct SessionStatus {
    state: watch::Sender<SessionState>,
    /// The instant until which the session is known to be alive (etcd: send time of the
    /// last acknowledged keep-alive + TTL), for backends that track one.
    deadline: StdMutex<Option<Instant>>,
}

impl Default for SessionStatus {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionStatus {
    /// A live session without a client-side deadline (its state is always current).
    pub fn new() -> Self {
        SessionStatus {
            state: watch::channel(SessionState::Live).0,
            deadline: StdMutex::new(None),
        }
    }

    /// A live session known to be alive until `deadline` unless renewed.
    pub fn with_deadline(deadline: Instant) -> Self {
        SessionStatus {
            state: watch::channel(SessionState::Live).0,
            deadline: StdMutex::new(Some(deadline)),
        }
    }

    /// The state as a value that changes (what [`crate::Session::state`] returns).
    pub fn subscribe(&self) -> watch::Receiver<SessionState> {
        self.state.subscribe()
    }

    /// The state now.
    pub fn get(&self) -> SessionState {
        *self.state.borrow()
    }

    /// Moves to `state` (waking watchers only if that is a change), unless the session
    /// is already lost.
    pub fn set(&self, state: SessionState) {
        self.state.send_if_modified(|cur| {
            if *cur == state || *cur == SessionState::Lost {
                false
            } else {
                *cur = state;
                true
            }
        });
    }

    /// The client-side deadline (what [`crate::Session::valid_until`] returns).
    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server answered a request sent at some instant: the session is alive until
    /// `until` (that instant + TTL). A deadline never moves back: answers can arrive out
    /// of order.
    pub fn renew(&self, until: Instant) {
        let mut d = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        *d = Some(d.map_or(until, |d| d.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lost_is_final_and_deadlines_only_grow() {
        let t0 = Instant::now();
        let s = SessionStatus::with_deadline(t0);
        let mut rx = s.subscribe();
        s.set(SessionState::Suspended);
        assert!(rx.has_changed().expect("open"));
        assert_eq!(*rx.borrow_and_update(), SessionState::Suspended);
        s.set(SessionState::Suspended);
        assert!(
            !rx.has_changed().expect("open"),
            "no change, no notification"
        );
        s.set(SessionState::Lost);
        s.set(SessionState::Live);
        assert_eq!(s.get(), SessionState::Lost, "Lost is terminal");
        s.renew(t0 + Duration::from_secs(2));
        s.renew(t0 + Duration::from_secs(1));
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(SessionStatus::new().deadline(), None);
    }
}
