//! [`Mutex`]: a fair (FIFO), fenced, re-entrant distributed mutex.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use queuelock_core::{Ahead, LockName, NodeKind, Result};

use crate::guard::{Guard, HoldCount};
use crate::metadata::QueueEntry;
use crate::queue::{self, predecessor, Context, Deadline, Request};

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
        Request::new(self.name.as_str(), NodeKind::Lock, Ahead::Predecessor)
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
            }),
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.inner.name.as_str()
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

/// The guard of a [`Mutex`]: the shared [`Guard`] type.
pub type MutexGuard = Guard;
