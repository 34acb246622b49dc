//! [`CountDownLatch`]: `wait` until `count_down` has been called `n` times (Redisson's
//! `RCountDownLatch`, Java's `CountDownLatch`, across processes).
//!
//! Layout under the latch's name: `meta/count` stores `n`; `down/1` … `down/n` are
//! persistent keys, one per `count_down` (each records who counted down). A `count_down`
//! takes the lowest free one with a create-if-absent, so they fill in order: the count
//! left is `n` minus the highest taken, found by binary search (O(log n) reads).
//! `waiters/` holds one ephemeral node per waiting call. The `count_down` that takes
//! `down/n` deletes every waiter's node: each waiter waits on its own node's deletion,
//! so a waiter wakes exactly once and nothing polls. A waiter creates its node, then
//! reads `down/n`; the opener writes `down/n`, then lists the waiters: on a linearizable
//! store one of the two sees the other, so no waiter is missed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use queuelock_core::{Ahead, LockName, NodeKind, NodeSpec, Result, Session};

use crate::barrier::{agree_on_count, positive, recover};
use crate::queue::{self, Context, Deadline};

/// A distributed count-down latch: [`CountDownLatch::wait`] returns once
/// [`CountDownLatch::count_down`] has been called `n` times, by anyone. One-shot: at zero
/// it stays open.
///
/// The count `n` is stored with the latch: every user must agree on it, and a handle
/// asking for another count gets [`crate::Error::Conflict`].
///
/// # Session loss
///
/// A latch counts events, not participants: a `count_down` is persistent, so it stays
/// counted after the process that made it dies (its session is lost). A waiter whose
/// session is lost keeps waiting through a new session and leaves nothing behind. If
/// the process of the final `count_down` dies between counting and waking the waiters,
/// any later `count_down` (which finds the count at zero) wakes them, and every new
/// `wait` returns at once.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock::Result<()> {
/// let client = queuelock::Client::connect("memory://").await?;
/// let latch = client.count_down_latch("jobs/shards-ready", 2)?;
/// let waiter = {
///     let latch = latch.clone();
///     tokio::spawn(async move { latch.wait().await })
/// };
/// assert_eq!(latch.count_down().await?, 1);
/// assert_eq!(latch.count_down().await?, 0); // the waiter goes on
/// waiter.await.unwrap()?;
/// assert_eq!(latch.count().await?, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CountDownLatch {
    ctx: Arc<Context>,
    name: LockName,
    n: u32,
    count_key: String,
    downs: String,
    waiters: String,
}

impl fmt::Debug for CountDownLatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountDownLatch")
            .field("name", &self.name)
            .field("n", &self.n)
            .finish()
    }
}

impl CountDownLatch {
    pub(crate) fn new(ctx: Arc<Context>, name: LockName, n: u32) -> Result<Self> {
        let n = positive(n, "count-down latch", &name, "count")?;
        Ok(CountDownLatch {
            count_key: format!("{name}/meta/count"),
            downs: format!("{name}/down"),
            waiters: format!("{name}/waiters"),
            ctx,
            name,
            n,
        })
    }

    /// The latch's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The count the latch started from.
    pub fn initial_count(&self) -> u32 {
        self.n
    }

    fn slot(&self, k: u32) -> String {
        format!("{}/{k}", self.downs)
    }

    /// A live session, with the stored count checked against ours.
    async fn session(&self) -> Result<Arc<dyn Session>> {
        let session = self.ctx.session().await?;
        agree_on_count(
            &*session,
            &self.count_key,
            self.n,
            &format!("count-down latch {}", self.name),
            "counts",
        )
        .await?;
        Ok(session)
    }

    /// How many `count_down`s have been made: the highest taken slot (slots fill in
    /// order), by binary search.
    async fn taken(&self, session: &dyn Session) -> Result<u32> {
        let (mut present, mut absent) = (0u32, self.n + 1);
        while absent - present > 1 {
            let mid = present + (absent - present) / 2;
            let key = self.slot(mid);
            if queue::retry(session, || session.get(&key)).await?.is_some() {
                present = mid;
            } else {
                absent = mid;
            }
        }
        Ok(present)
    }

    /// The count left (0: open).
    ///
    /// # Cancel safety
    ///
    /// Safe (read only, but for storing the count on first use).
    pub async fn count(&self) -> Result<u32> {
        let session = self.session().await?;
        Ok(self.n - self.taken(&*session).await?)
    }

    /// Counts down by one and returns the count left; at zero, wakes every waiter. At
    /// zero already, it changes nothing (and wakes any waiter still asleep).
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have counted down (at most once).
    pub async fn count_down(&self) -> Result<u32> {
        let session = self.session().await?;
        let payload = self.ctx.payload();
        let mut k = self.taken(&*session).await? + 1;
        while k <= self.n {
            let key = self.slot(k);
            match queue::retry(&*session, || session.put_if_absent(&key, &payload)).await? {
                None if k < self.n => return Ok(self.n - k),
                None => break,
                Some(_) => k += 1, // taken by a concurrent count_down: the next one
            }
        }
        self.open(&*session).await?;
        Ok(0)
    }

    /// Wakes every waiter: deletes their nodes.
    async fn open(&self, session: &dyn Session) -> Result<()> {
        let listing = queue::retry(session, || session.list(&self.waiters)).await?;
        for node in &listing.nodes {
            queue::retry(session, || session.delete(node)).await?;
        }
        Ok(())
    }

    /// Whether the final `count_down` has been made.
    async fn is_open(&self, session: &dyn Session) -> Result<bool> {
        let last = self.slot(self.n);
        Ok(queue::retry(session, || session.get(&last))
            .await?
            .is_some())
    }

    /// Waits until the count is zero (at once if it is). Waits on the deletion of its
    /// own waiter node, which the final `count_down` deletes: no polling.
    /// Connection trouble and a lost session of our own are waited out (through a new
    /// session); bound the wait with the `_timeout` variant.
    ///
    /// # Cancel safety
    ///
    /// Safe: a dropped call removes its waiter node in the background, leaving nothing
    /// behind.
    pub async fn wait(&self) -> Result<()> {
        let mut pause = Duration::from_millis(20);
        loop {
            let session = self.session().await?;
            match self.is_open(&*session).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    recover(e, &mut pause).await?;
                    continue;
                }
            }
            let mut waiter = queue::Pending::new(
                session.clone(),
                NodeSpec::new(&self.waiters, NodeKind::Latch, self.ctx.payload())
                    .with_ahead(Ahead::Nothing),
            );
            let step = async {
                let created = waiter.create().await?;
                // Created, then read: the opener writes, then lists the waiters.
                if self.is_open(&*session).await? {
                    return Ok(true);
                }
                session
                    .deleted(&created.node.key, created.turn.revision)
                    .await?;
                // Deleted by the opener: the node is gone.
                waiter.node = None;
                Ok(false)
            };
            match step.await {
                Ok(true) => {
                    // Open while our node still stands: take it away ourselves.
                    let node = waiter.node.take();
                    waiter.armed = queue::remove_node(session, None, node).await.is_err();
                    return Ok(());
                }
                Ok(false) => {
                    waiter.armed = false;
                    // Look again (an opener deleted it, so this normally returns).
                }
                Err(e) => recover(e, &mut pause).await?,
            }
        }
    }

    /// [`CountDownLatch::wait`] that fails with [`crate::Error::Timeout`] after `timeout`.
    ///
    /// # Cancel safety
    ///
    /// Safe, as [`CountDownLatch::wait`].
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        Deadline::run(Some(Deadline::after(timeout)), self.wait()).await
    }
}
