//! [`Mutex`]: a fair (FIFO), fenced, re-entrant distributed mutex.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use queuelock_core::{Ahead, Error, LockName, Node, NodeKind, Result};

use crate::guard::{Guard, HoldCount};
use crate::metadata::{HolderInfo, QueueEntry};
use crate::queue::{self, predecessor, Context, Deadline, Request};

/// The bytes Curator's `Revoker.attemptRevoke` writes into a lock node on ZooKeeper.
const CURATOR_REVOKE: &[u8] = b"__REVOKE__";

/// A fair distributed mutex.
///
/// Waiters are granted the lock in the order they asked for it; each waiter watches only
/// the node just ahead of it, so a release wakes exactly one waiter. Every grant carries a
/// **fencing token** larger than any earlier holder's ([`MutexGuard::fencing_token`]), and
/// the holder learns when the lock is lost ([`MutexGuard::lost`]).
///
/// On etcd the layout is that of etcd's Go `concurrency.Mutex` (`etcdctl lock NAME`); on
/// ZooKeeper that of Apache Curator's `InterProcessMutex` at path `NAME`: mixed fleets
/// exclude each other.
///
/// **Re-entrancy**: locking again through the *same handle* while it holds the lock is
/// counted, not queued (the node is deleted when the last guard goes). Two handles — even
/// of one client — exclude each other. Give each task its own handle
/// ([`crate::Client::mutex`]) when tasks must exclude each other.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock::Result<()> {
/// use std::time::Duration;
/// let client = queuelock::Client::connect("memory://").await?;
/// let m = client.mutex("inventory")?;
/// // Cancel safe: a timed-out lock() leaves nothing behind in the store.
/// let guard = tokio::time::timeout(Duration::from_secs(5), m.lock()).await.expect("timed out")?;
/// let other = client.mutex("inventory")?;
/// assert!(other.try_lock().await?.is_none()); // held by `m`
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub struct Mutex {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<Context>,
    name: LockName,
    label: Arc<str>,
    /// One acquire at a time per handle; a second waits and then re-enters.
    acquiring: tokio::sync::Mutex<()>,
    holds: Arc<HoldCount>,
    /// Holds taken from now on watch for revocation requests ([`Mutex::revocable`]).
    revocable: AtomicBool,
}

impl fmt::Debug for Mutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("name", &self.inner.name)
            .field("holds", &self.inner.holds.holds())
            .finish()
    }
}

impl Inner {
    fn reenter(&self) -> Result<Option<MutexGuard>> {
        self.holds.reenter(&self.label)
    }

    fn request(&self) -> Request<'_> {
        Request {
            revocable: self.revocable.load(Ordering::Relaxed),
            ..Request::new(self.name.as_str(), NodeKind::Lock, Ahead::Predecessor)
        }
    }
}

impl Mutex {
    pub(crate) fn new(ctx: Arc<Context>, name: LockName) -> Self {
        Mutex {
            inner: Arc::new(Inner {
                label: Arc::from(name.as_str()),
                ctx,
                name,
                acquiring: tokio::sync::Mutex::new(()),
                holds: Arc::default(),
                revocable: AtomicBool::new(false),
            }),
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.inner.name.as_str()
    }

    /// Makes this handle's holds **revocable** (cooperative revocation, Curator's
    /// `makeRevocable`): a hold taken through it watches for revocation requests
    /// ([`Mutex::request_revoke`], `queuelock revoke NAME`, or on ZooKeeper Curator's
    /// `Revoker.attemptRevoke`), and [`Guard::revoke_requested`] resolves once one
    /// comes. The holder decides what to do: a request never takes the lock away, so a
    /// holder that ignores it keeps the lock. Applies to holds taken after the call
    /// (a re-entered hold shares the first hold's node and its revocability).
    ///
    /// The holder's metadata says it is revocable (`status` shows it), and once a request
    /// is seen, when it was. How a request travels: ZooKeeper — Curator's protocol (the
    /// requester sets the lock node's data to `__REVOKE__`, the holder has a data watch
    /// on its node and then writes its metadata back); etcd — a key beside the holder's,
    /// `~queuelock/revoke/<holder key>` under the prefix (outside every lock's prefix, so
    /// `etcdctl lock` does not queue behind it), bound to the holder's lease and watched
    /// by the holder; PostgreSQL — a row that goes with the holder's node, announced by
    /// `NOTIFY`; Redis — a mark beside the node, announced on a pub/sub channel; memory —
    /// a flag on the node. On ZooKeeper, Curator's requester writes `__REVOKE__` into any
    /// holder's node, revocable or not: a holder that is not revocable then shows no
    /// metadata (`status` lists it as another tool's node) until it releases.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock::Result<()> {
    /// use queuelock::Revocation;
    /// let client = queuelock::Client::connect("memory://").await?;
    /// let m = client.mutex("reports")?.revocable();
    /// let guard = m.lock().await?;
    /// let other = client.mutex("reports")?;
    /// assert!(matches!(other.request_revoke().await?, Revocation::Requested { .. }));
    /// tokio::select! {
    ///     _ = guard.revoke_requested() => { /* finish up, then let go */ }
    ///     _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => unreachable!(),
    /// }
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn revocable(self) -> Self {
        self.inner.revocable.store(true, Ordering::Relaxed);
        self
    }

    /// Whether this handle's holds are revocable ([`Mutex::revocable`]).
    pub fn is_revocable(&self) -> bool {
        self.inner.revocable.load(Ordering::Relaxed)
    }

    /// Asks the current holder of the lock to let go (cooperative revocation): reads the
    /// holder and, unless it is a queuelock holder that did not opt in
    /// ([`Mutex::revocable`]), leaves it a revocation request. The holder sees it
    /// through [`Guard::revoke_requested`] (or Curator's `RevocationListener`) and
    /// decides; nothing is deleted. Asking a holder that was already asked is harmless.
    /// Holders of other tools are asked too (their metadata cannot say whether they
    /// listen): a Curator holder on ZooKeeper made revocable hears it, others ignore it.
    ///
    /// Two round trips (read the holder, write the request) where nothing races.
    ///
    /// Cancel safety: a dropped call may still leave the request.
    pub async fn request_revoke(&self) -> Result<Revocation> {
        let ctx = &self.inner.ctx;
        let session = ctx.session().await?;
        let queue = self.inner.name.as_str();
        let listing = queue::retry(&*session, || session.list(queue)).await?;
        let Some(first) = listing.nodes.first() else {
            return Ok(Revocation::NotHeld);
        };
        let Some((payload, token)) =
            queue::retry(&*session, || session.read_node(&first.key)).await?
        else {
            // Released between the listing and the read.
            return Ok(Revocation::NotHeld);
        };
        let holder = QueueEntry {
            key: first.key.clone(),
            fencing_token: token,
            kind: first.kind,
            holder: HolderInfo::decode(&payload),
        };
        if holder.holder.as_ref().is_some_and(|h| !h.revocable) {
            return Ok(Revocation::NotRevocable { holder });
        }
        let node = Node {
            token,
            ..first.clone()
        };
        if payload == CURATOR_REVOKE {
            // Asked already (a ZooKeeper holder that has not answered, or not one of ours).
            return Ok(Revocation::Requested { holder });
        }
        match queue::retry(&*session, || session.request_revoke(&node)).await {
            Ok(true) => Ok(Revocation::Requested { holder }),
            Ok(false) => Ok(Revocation::NotHeld),
            // A holder the store cannot leave a request for (Redis: a plain SET NX lock).
            Err(Error::NotSupported { .. }) if holder.holder.is_none() => {
                Ok(Revocation::NotRevocable { holder })
            }
            Err(e) => Err(e),
        }
    }

    /// Who holds the lock (at most one entry), with holder metadata.
    ///
    /// Cancel safety: safe (read only).
    pub async fn holders(&self) -> Result<Vec<QueueEntry>> {
        Ok(
            queue::describe(&self.inner.ctx, self.inner.name.as_str(), predecessor)
                .await?
                .0,
        )
    }

    /// Who waits for the lock, in queue order, with holder metadata.
    ///
    /// Cancel safety: safe (read only).
    pub async fn waiters(&self) -> Result<Vec<QueueEntry>> {
        Ok(
            queue::describe(&self.inner.ctx, self.inner.name.as_str(), predecessor)
                .await?
                .1,
        )
    }

    /// How many guards of this handle currently hold the lock (0 when not held).
    pub fn hold_count(&self) -> usize {
        self.inner.holds.holds()
    }

    /// Waits in the queue until the lock is ours. Re-entrant through this handle.
    ///
    /// If the session is lost while waiting (nothing held yet), it joins the queue again
    /// on a fresh session, at the back. Connection trouble is retried for twice the TTL
    /// (at least 10 s) before failing with [`Error::Connection`](crate::Error::Connection). Fails with
    /// [`Error::LockLost`](crate::Error::LockLost) when this handle already holds the lock but has lost it:
    /// release those guards first.
    ///
    /// Cancel safety: safe. Dropping the future (for example through
    /// `tokio::time::timeout`) removes our place in the queue in the background; no node
    /// is left behind and no lock is held.
    pub async fn lock(&self) -> Result<MutexGuard> {
        self.lock_until(None).await
    }

    /// Like [`Mutex::lock`], but fails with [`Error::Timeout`](crate::Error::Timeout) after `timeout`.
    ///
    /// Cancel safety: safe, as `lock`.
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard> {
        self.lock_until(Some(Deadline::after(timeout))).await
    }

    /// `lock`, giving up at `deadline`: the queue applies it, so a timeout is recorded as
    /// one (not as a cancelled acquire).
    ///
    /// Cancel safety: safe, as `lock`.
    async fn lock_until(&self, deadline: Option<Deadline>) -> Result<MutexGuard> {
        if let Some(g) = self.inner.reenter()? {
            return Ok(g);
        }
        let _one = Deadline::run(deadline, async { Ok(self.inner.acquiring.lock().await) }).await?;
        if let Some(g) = self.inner.reenter()? {
            return Ok(g);
        }
        let request = Request {
            deadline,
            ..self.inner.request()
        };
        let lease = queue::acquire(&self.inner.ctx, request).await?;
        Ok(self.inner.holds.install(&self.inner.label, lease))
    }

    /// Takes the lock if nobody is ahead of us, without waiting: `Ok(None)` when it is
    /// held by someone else, having removed our node again (nothing is left behind).
    /// Also `Ok(None)` while another `lock()` call on this same handle is still waiting.
    ///
    /// Cancel safety: safe; a dropped call's node is removed in the background.
    pub async fn try_lock(&self) -> Result<Option<MutexGuard>> {
        if let Some(g) = self.inner.reenter()? {
            return Ok(Some(g));
        }
        let Ok(_one) = self.inner.acquiring.try_lock() else {
            return Ok(None);
        };
        if let Some(g) = self.inner.reenter()? {
            return Ok(Some(g));
        }
        let lease = queue::try_acquire(&self.inner.ctx, self.inner.request()).await?;
        Ok(lease.map(|l| self.inner.holds.install(&self.inner.label, l)))
    }
}

/// What [`Mutex::request_revoke`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revocation {
    /// The holder was asked to let go: it sees the request through
    /// [`Guard::revoke_requested`] (or, for another tool's holder, in that tool's own
    /// way, if it listens at all — `holder.holder` is `None` then).
    Requested {
        /// The holder that was asked.
        holder: QueueEntry,
    },
    /// The holder is a queuelock holder that does not watch for revocation requests
    /// (its mutex was not made [`Mutex::revocable`]), or one of another tool the store
    /// cannot leave a request for: nothing was written.
    NotRevocable {
        /// The holder.
        holder: QueueEntry,
    },
    /// Nobody holds the lock (or the holder let go before the request was written).
    NotHeld,
}

/// The guard of a [`Mutex`]: the shared [`Guard`] type.
pub type MutexGuard = Guard;
