//! [`RwLock`]: a fair distributed read-write lock.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use queuelock_core::{LockName, NodeKind, Result};

use crate::guard::Guard;
use crate::metadata::QueueEntry;
use crate::queue::{self, by_kind, shared_or_exclusive, Context, Deadline, Request};

/// A fair distributed read-write lock.
///
/// Readers and writers queue in one FIFO queue. Consecutive readers hold the lock
/// together; a writer holds it alone. A reader waits only on the nearest writer queued
/// before it, so readers arriving after a queued writer wait for that writer: writers
/// never starve. On ZooKeeper the nodes are named like Apache Curator's
/// `InterProcessReadWriteLock` (`__READ__` / `__WRIT__`); a [`crate::Mutex`] of the same
/// name acts as a writer.
///
/// Guards are not re-entrant: each `read()`/`write()` joins the queue.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock::Result<()> {
/// let client = queuelock::Client::connect("memory://").await?;
/// let lock = client.rwlock("catalog")?;
/// let r1 = lock.read().await?;
/// let r2 = client.rwlock("catalog")?.read().await?; // readers share
/// assert!(client.rwlock("catalog")?.try_write().await?.is_none());
/// r1.release().await?;
/// r2.release().await?;
/// let w = lock.write().await?;
/// w.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RwLock {
    ctx: Arc<Context>,
    name: LockName,
    label: Arc<str>,
}

impl fmt::Debug for RwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock").field("name", &self.name).finish()
    }
}

impl RwLock {
    pub(crate) fn new(ctx: Arc<Context>, name: LockName) -> Self {
        let label = Arc::from(name.as_str());
        RwLock { ctx, name, label }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Who holds the lock (readers sharing it, or one writer), in queue order.
    ///
    /// Cancel safety: safe (read only).
    pub async fn holders(&self) -> Result<Vec<QueueEntry>> {
        Ok(queue::describe(&self.ctx, self.name.as_str(), by_kind)
            .await?
            .0)
    }

    /// Who waits for the lock, in queue order.
    ///
    /// Cancel safety: safe (read only).
    pub async fn waiters(&self) -> Result<Vec<QueueEntry>> {
        Ok(queue::describe(&self.ctx, self.name.as_str(), by_kind)
            .await?
            .1)
    }

    fn request(&self, kind: NodeKind) -> Request<'_> {
        Request::new(self.name.as_str(), kind, shared_or_exclusive(kind))
    }

    /// Waits (until `deadline`, applied by the queue so a timeout is recorded as one).
    ///
    /// Cancel safety: safe; a dropped call leaves nothing behind.
    async fn wait(&self, kind: NodeKind, deadline: Option<Deadline>) -> Result<Guard> {
        let request = Request {
            deadline,
            ..self.request(kind)
        };
        let lease = queue::acquire(&self.ctx, request).await?;
        Ok(Guard::new(self.label.clone(), lease))
    }

    async fn take(&self, kind: NodeKind) -> Result<Option<Guard>> {
        let lease = queue::try_acquire(&self.ctx, self.request(kind)).await?;
        Ok(lease.map(|l| Guard::new(self.label.clone(), l)))
    }

    /// Waits for shared (read) access.
    ///
    /// Cancel safety: safe; a dropped call leaves nothing behind.
    pub async fn read(&self) -> Result<Guard> {
        self.wait(NodeKind::Read, None).await
    }

    /// Waits for exclusive (write) access.
    ///
    /// Cancel safety: safe; a dropped call leaves nothing behind.
    pub async fn write(&self) -> Result<Guard> {
        self.wait(NodeKind::Write, None).await
    }

    /// Read access if no writer is held or queued, without waiting (`None` otherwise,
    /// leaving nothing behind).
    ///
    /// Cancel safety: safe.
    pub async fn try_read(&self) -> Result<Option<Guard>> {
        self.take(NodeKind::Read).await
    }

    /// Write access if nobody holds or waits for the lock, without waiting.
    ///
    /// Cancel safety: safe.
    pub async fn try_write(&self) -> Result<Option<Guard>> {
        self.take(NodeKind::Write).await
    }

    /// [`RwLock::read`] that fails with [`Error::Timeout`](crate::Error::Timeout) after `timeout`.
    ///
    /// Cancel safety: safe.
    pub async fn read_timeout(&self, timeout: Duration) -> Result<Guard> {
        self.wait(NodeKind::Read, Some(Deadline::after(timeout)))
            .await
    }

    /// [`RwLock::write`] that fails with [`Error::Timeout`](crate::Error::Timeout) after `timeout`.
    ///
    /// Cancel safety: safe.
    pub async fn write_timeout(&self, timeout: Duration) -> Result<Guard> {
        self.wait(NodeKind::Write, Some(Deadline::after(timeout)))
            .await
    }
}
