use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::Result;
use crate::node::{Ahead, Created, Listing, Node, NodeSpec, Op, Revision, Turn};
use crate::session::{SessionId, SessionState};

/// A coordination store: opens sessions. Object safe: the facade holds an
/// `Arc<dyn Backend>` chosen at run time.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Short name of the backend (`"memory"`, `"etcd"`, `"zookeeper"`).
    fn name(&self) -> &'static str;

    /// Opens a new session: an etcd lease kept alive in the background, a ZooKeeper
    /// session, ... The session stays [`SessionState::Live`] until closed, expired or
    /// dropped.
    ///
    /// Cancel safety: dropping the future may leave a lease that expires after its TTL.
    async fn open_session(&self, options: &SessionOptions) -> Result<Arc<dyn Session>>;
}

/// Options for [`Backend::open_session`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionOptions {
    /// Lease TTL / session timeout: how long the session survives without keep-alives.
    pub ttl: Duration,
}

impl SessionOptions {
    /// Options with the given TTL.
    pub fn with_ttl(ttl: Duration) -> Self {
        SessionOptions { ttl }
    }
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ttl: Duration::from_secs(15),
        }
    }
}

/// A session and everything done through it.
///
/// Nodes created through a session are owned by it and disappear when it is closed or
/// lost. All keys are relative to the backend root.
///
/// Every method is cancel safe in the sense that dropping its future leaves the store
/// consistent; where a dropped call may still take effect on the server, the method says
/// so and says how to undo it.
#[async_trait]
pub trait Session: Send + Sync + fmt::Debug {
    /// The session's id.
    fn id(&self) -> SessionId;

    /// The TTL the session was opened with.
    fn ttl(&self) -> Duration;

    /// The session's state as a value that changes: `borrow()` for now, `changed()` to
    /// wait. Once [`SessionState::Lost`], it never changes again.
    fn state(&self) -> watch::Receiver<SessionState>;

    /// The instant until which the session is known to be alive, computed on the client
    /// (etcd: send time of the last acknowledged keep-alive + TTL), if the backend
    /// tracks one. Past it, locks held through the session count as lost even before the
    /// state channel says so: a process frozen past its TTL must not act on a stale
    /// `Live` when it wakes. `None` (the default): rely on [`Session::state`] alone.
    fn valid_until(&self) -> Option<std::time::Instant> {
        None
    }

    /// Asks the server whether the session is still alive and returns its state (updating
    /// [`Session::state`] if the server says it is gone). Used to tell a lost session from
    /// a node deleted by someone else. Default: the current state, for backends whose
    /// state is always current.
    ///
    /// Cancel safety: safe.
    async fn probe(&self) -> Result<SessionState> {
        Ok(*self.state().borrow())
    }

    /// Creates an ephemeral node owned by this session in `spec.queue`, at the end of the
    /// queue's total order, and answers the waiter's read for it (what `spec.ahead`
    /// selects ahead of it, as [`Session::turn`]; in one round trip where the backend
    /// can). Idempotent per `spec.id`: a retry after connection loss returns the node
    /// created by the first try instead of creating a second one.
    ///
    /// Cancel safety: a dropped call may still create the node; [`Session::abandon`] with
    /// the same spec removes it.
    async fn create_sequential(&self, spec: &NodeSpec) -> Result<Created>;

    /// Removes the node created for `spec` (by [`Session::create_sequential`] with the
    /// same `spec.id`), if there is one, and makes sure a create for `spec` still in
    /// flight can no longer take effect. `Ok` when there is nothing to remove.
    ///
    /// Cancel safety: safe; call again to finish.
    async fn abandon(&self, spec: &NodeSpec) -> Result<()>;

    /// The queue's nodes in order and the revision they were read at.
    ///
    /// Cancel safety: safe (read only).
    async fn list(&self, queue: &str) -> Result<Listing>;

    /// The waiter's read: the one node that `me` (a node of `queue`) waits for as
    /// `ahead` says, read together with `me` itself, without reading the whole queue
    /// where the store can (etcd: one range, `limit 1`, sorted by create revision
    /// descending, `max_create_revision` = ours − 1). This is what keeps a handoff O(1)
    /// at any queue length; full listings ([`Session::list`]) are for rules that need
    /// them. The default reads the whole queue.
    ///
    /// Errors: [`crate::Error::LockLost`] if `me` no longer exists.
    ///
    /// Cancel safety: safe (read only).
    async fn turn(&self, queue: &str, me: &Node, ahead: Ahead) -> Result<Turn> {
        self.list(queue).await?.turn(&me.key, ahead)
    }

    /// Resolves when `key` does not exist: at once if it is already gone, otherwise when
    /// it is deleted. `since` is a revision at which `key` was known to exist (the
    /// revision of a listing that contained it), or 0 when unknown: a deletion after it
    /// is never missed, however soon after the listing this is called.
    ///
    /// Errors: [`crate::Error::SessionExpired`] if this session is lost while waiting;
    /// [`crate::Error::Connection`] if the watch broke (call again to resume).
    ///
    /// Cancel safety: safe; dropping it cancels the watch.
    async fn deleted(&self, key: &str, since: Revision) -> Result<()>;

    /// Like [`Session::deleted`] for the node a waiter waits for, and whether the store
    /// shows that node was **held** before it went: `Ok(true)` only if it had been marked
    /// with [`Session::mark_held`] (or, on a store that says so, written while held) and
    /// is an exclusive node (not a [`crate::NodeKind::Read`]). Such a node had nothing
    /// older than it left in its queue, and nothing can join ahead of a node later, so
    /// after its deletion only nodes between it and the waiter can be ahead of the
    /// waiter: none its rule selects (else the waiter would have waited for that one).
    /// The waiter's turn then needs no second read. `Ok(false)` when the store cannot
    /// tell, which is always safe. Default: [`Session::deleted`], then `false`.
    ///
    /// Errors: as [`Session::deleted`].
    ///
    /// Cancel safety: safe; dropping it cancels the watch.
    async fn blocker_deleted(&self, blocker: &Node, since: Revision) -> Result<bool> {
        self.deleted(&blocker.key, since).await.map(|()| false)
    }

    /// Records, in the background and at best effort, that `node` (this session's own
    /// exclusive node, just granted: nothing older is left in its queue) holds, so that
    /// the waiter behind it learns so from its deletion ([`Session::blocker_deleted`]).
    /// The write applies only while `node` still exists. Default: nothing.
    fn mark_held(&self, node: &Node) {
        let _ = node;
    }

    /// Like [`Session::deleted`] for a node we hold (so `since` is when we knew it
    /// existed): may report the deletion somewhat later (etcd: up to ~100 ms) in exchange
    /// for no extra round trip, since the session's state reports a lost session anyway.
    /// Default: [`Session::deleted`].
    ///
    /// Cancel safety: safe.
    async fn deleted_lazily(&self, key: &str, since: Revision) -> Result<()> {
        self.deleted(key, since).await
    }

    /// Resolves when `queue` changes after revision `since`: a node joins or leaves it, or
    /// the payload of its first node changes. It may also resolve when nothing that
    /// matters changed (callers read the queue again), but never misses such a change
    /// after `since`. Used to observe an election's leader.
    ///
    /// The default implementation fails with [`crate::Error::NotSupported`].
    ///
    /// Cancel safety: safe; dropping it cancels the watch.
    async fn queue_changed(&self, queue: &str, since: Revision) -> Result<()> {
        let _ = (queue, since);
        Err(crate::Error::NotSupported {
            operation: "queue_changed",
        })
    }

    /// Asks the owner of `holder` (a node of **any** session, named by key and exact
    /// token, as [`Session::read_node`] reads it) to let go: leaves a revocation mark
    /// that the owner's [`Session::revoke_requested`] sees, in the store's own way
    /// (ZooKeeper: Curator's protocol, the node's data set to `__REVOKE__`; etcd: a key
    /// beside the node, bound to its owner's lease; elsewhere a mark that goes with the
    /// node). The owner decides whether to let go: the mark never deletes anything.
    /// Returns `false`, writing nothing, when `holder` no longer exists. Asking twice is
    /// harmless.
    ///
    /// The default fails with [`crate::Error::NotSupported`].
    ///
    /// Cancel safety: a dropped call may still leave the mark.
    async fn request_revoke(&self, holder: &Node) -> Result<bool> {
        let _ = holder;
        Err(crate::Error::NotSupported {
            operation: "request_revoke",
        })
    }

    /// Resolves once a revocation of `node` (one of this session's nodes) has been
    /// requested through [`Session::request_revoke`] (or, on ZooKeeper, by Curator's
    /// `Revoker.attemptRevoke`): at once if one already was. Never misses a request made
    /// after the call began; a request made earlier is seen too, as long as its mark is
    /// still there.
    ///
    /// On ZooKeeper the mark replaces the node's data (Curator's protocol): the caller
    /// may write its payload back with [`Session::guarded`] afterwards.
    ///
    /// Errors: [`crate::Error::LockLost`] once `node` is gone;
    /// [`crate::Error::SessionExpired`] if this session is lost while waiting;
    /// [`crate::Error::Connection`] if the watch broke (call again to resume). The default
    /// fails with [`crate::Error::NotSupported`].
    ///
    /// Cancel safety: safe; dropping it cancels the watch.
    async fn revoke_requested(&self, node: &Node) -> Result<()> {
        let _ = node;
        Err(crate::Error::NotSupported {
            operation: "revoke_requested",
        })
    }

    /// Deletes `node` if it still is the very node given (same key and fencing token): a
    /// retried or late delete never removes a newer node. `Ok` if it is already gone.
    ///
    /// Cancel safety: a dropped call may still delete; call again to be sure.
    async fn delete(&self, node: &Node) -> Result<()>;

    /// Applies `ops` atomically if and only if `guard` still exists (same key and token).
    /// Fails with [`crate::Error::LockLost`] otherwise, writing nothing. A `Put` on the
    /// guard's own key replaces its payload and keeps it owned by the session.
    ///
    /// Cancel safety: a dropped call may or may not have applied the whole batch.
    async fn guarded(&self, guard: &Node, ops: &[Op]) -> Result<()>;

    /// Reads a node's payload and exact fencing token (for showing who holds a lock).
    ///
    /// Cancel safety: safe (read only).
    async fn read_node(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>>;

    /// Reads a key's value.
    ///
    /// Cancel safety: safe (read only).
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Creates a persistent key with `value` unless it exists. Returns the existing value
    /// if there was one (and writes nothing then), `None` if it created the key.
    ///
    /// Cancel safety: a dropped call may still create the key.
    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Closes the session: every node it owns is removed at once and its state becomes
    /// [`SessionState::Lost`]. Idempotent.
    ///
    /// Cancel safety: a dropped call may or may not have closed the session; dropping the
    /// last handle to the session closes it in the background.
    async fn close(&self) -> Result<()>;
}
