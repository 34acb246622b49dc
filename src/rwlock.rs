//! [`RwLock`]: a fair distributed read-write lock.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use queuelock_core::{Error, LockName, Node, NodeKind, Result};

use crate::client::Client;
use crate::guard::{Guard, Hold};
use crate::metadata::QueueEntry;
use crate::queue::{self, Mode, Request, WaitRule};

/// A reader waits only on the nearest earlier node that is not a reader (a writer, a
/// mutex holder, or a node some other tool wrote): readers share until the next queued
/// writer, and every reader queued behind that writer waits for it.
fn nearest_earlier_writer(nodes: &[Node], me: usize) -> Option<usize> {
    nodes[..me].iter().rposition(|n| n.kind != NodeKind::Read)
}

/// A writer waits on its immediate predecessor, like a mutex: FIFO, and writers never
/// starve because readers arriving later queue behind them.
fn predecessor(_nodes: &[Node], me: usize) -> Option<usize> {
    me.checked_sub(1)
}

/// The rule a node of either kind follows.
fn rule_for(nodes: &[Node], me: usize) -> Option<usize> {
    match nodes[me].kind {
        NodeKind::Read => nearest_earlier_writer(nodes, me),
        _ => predecessor(nodes, me),
    }
}

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
    client: Client,
    name: LockName,
    label: Arc<str>,
}

impl fmt::Debug for RwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock").field("name", &self.name).finish()
    }
}

impl RwLock {
    pub(crate) fn new(client: Client, name: LockName) -> Self {
        let label = Arc::from(name.as_str());
        RwLock {
            client,
            name,
            label,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Who holds the lock (readers sharing it, or one writer), in queue order.
    ///
    /// Cancel safety: safe (read only).
    pub async fn holders(&self) -> Result<Vec<QueueEntry>> {
        Ok(queue::describe(&self.client, self.name.as_str(), rule_for)
            .await?
            .0)
    }

    /// Who waits for the lock, in queue order.
    ///
    /// Cancel safety: safe (read only).
    pub async fn waiters(&self) -> Result<Vec<QueueEntry>> {
        Ok(queue::describe(&self.client, self.name.as_str(), rule_for)
            .await?
            .1)
    }

    async fn take(&self, kind: NodeKind, rule: WaitRule, mode: Mode) -> Result<Option<Guard>> {
        let req = Request {
            queue: self.name.as_str(),
            kind,
            rule,
            mode,
            payload: None,
        };
        let lease = queue::acquire(&self.client, req).await?;
        Ok(lease.map(|l| Guard::new(self.label.clone(), l, Hold::Single)))
    }

    async fn wait(&self, kind: NodeKind, rule: WaitRule) -> Result<Guard> {
        self.take(kind, rule, Mode::Wait)
            .await?
            .ok_or_else(|| Error::Backend {
                backend: "queue",
                message: "waiting acquire returned without a grant".to_owned(),
                source: None,
            })
    }

    /// Waits for shared (read) access.
    ///
    /// Cancel safety: safe; a dropped call leaves nothing behind.
    pub async fn read(&self) -> Result<Guard> {
        self.wait(NodeKind::Read, nearest_earlier_writer).await
    }

    /// Waits for exclusive (write) access.
    ///
    /// Cancel safety: safe; a dropped call leaves nothing behind.
    pub async fn write(&self) -> Result<Guard> {
        self.wait(NodeKind::Write, predecessor).await
    }

    /// Read access if no writer is held or queued, without waiting (`None` otherwise,
    /// leaving nothing behind).
    ///
    /// Cancel safety: safe.
    pub async fn try_read(&self) -> Result<Option<Guard>> {
        self.take(NodeKind::Read, nearest_earlier_writer, Mode::Try)
            .await
    }

    /// Write access if nobody holds or waits for the lock, without waiting.
    ///
    /// Cancel safety: safe.
    pub async fn try_write(&self) -> Result<Option<Guard>> {
        self.take(NodeKind::Write, predecessor, Mode::Try).await
    }

    /// [`RwLock::read`] that fails with [`Error::Timeout`] after `timeout`.
    ///
    /// Cancel safety: safe.
    pub async fn read_timeout(&self, timeout: Duration) -> Result<Guard> {
        tokio::time::timeout(timeout, self.read())
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    /// [`RwLock::write`] that fails with [`Error::Timeout`] after `timeout`.
    ///
    /// Cancel safety: safe.
    pub async fn write_timeout(&self, timeout: Duration) -> Result<Guard> {
        tokio::time::timeout(timeout, self.write())
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: NodeKind, seq: u64) -> Node {
        Node {
            key: format!("k{seq}"),
            sequence: seq,
            token: seq,
            kind,
        }
    }

    #[test]
    fn reader_waits_on_nearest_earlier_writer_only() {
        use NodeKind::*;
        let q: Vec<Node> = [Read, Write, Read, Read, Write, Read, Unknown, Read]
            .iter()
            .enumerate()
            .map(|(i, k)| node(*k, i as u64))
            .collect();
        assert_eq!(nearest_earlier_writer(&q, 0), None);
        assert_eq!(nearest_earlier_writer(&q, 2), Some(1));
        assert_eq!(nearest_earlier_writer(&q, 3), Some(1));
        assert_eq!(nearest_earlier_writer(&q, 5), Some(4));
        assert_eq!(
            nearest_earlier_writer(&q, 7),
            Some(6),
            "unknown nodes are exclusive"
        );
        assert_eq!(predecessor(&q, 4), Some(3));
        assert_eq!(predecessor(&q, 0), None);
    }
}
