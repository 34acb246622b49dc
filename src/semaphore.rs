//! [`Semaphore`]: at most N holders, admitted in FIFO order.
//!
//! Layout under the semaphore's name: `waiters/` is a FIFO queue (each waiter watches its
//! predecessor); `holders/` holds one node per permit in use; `meta/permits` stores N.
//! Only the head of `waiters/` may enter: it watches the holders while all N permits are
//! taken, and enters (creates its holder node, then deletes its waiter node) as soon as
//! fewer than N are. So a release wakes one waiter (the head), and an admission wakes one
//! (the next head): O(1) per release, and live, because whichever holder goes, the head
//! hears it. A holder that dies frees its permit with its session. The waiting, both in
//! line and at its head, is the shared queue algorithm's (an `Admission` request).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use queuelock_core::{Ahead, LockName, NodeKind, Result};

use crate::barrier::{agree_on_count, positive};
use crate::guard::Guard;
use crate::metadata::QueueEntry;
use crate::queue::{self, everyone_holds, predecessor, Admission, Context, Deadline, Request};

/// A distributed counting semaphore with N permits and FIFO admission.
///
/// The permit count is stored with the semaphore: every user must agree on it, and a
/// caller asking for another count gets [`crate::Error::Conflict`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock::Result<()> {
/// let client = queuelock::Client::connect("memory://").await?;
/// let pool = client.semaphore("gpu-slots", 2)?;
/// let a = pool.acquire().await?;
/// let b = client.semaphore("gpu-slots", 2)?.acquire().await?;
/// assert!(client.semaphore("gpu-slots", 2)?.try_acquire().await?.is_none()); // both taken
/// a.release().await?;
/// b.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    ctx: Arc<Context>,
    name: LockName,
    permits: u32,
    label: Arc<str>,
    waiters: String,
    holders: String,
    count_key: String,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .finish()
    }
}

impl Semaphore {
    pub(crate) fn new(ctx: Arc<Context>, name: LockName, permits: u32) -> Result<Self> {
        let permits = positive(permits, "semaphore", &name, "permit")?;
        let n = name.as_str();
        Ok(Semaphore {
            waiters: format!("{n}/waiters"),
            holders: format!("{n}/holders"),
            count_key: format!("{n}/meta/permits"),
            label: Arc::from(n),
            ctx,
            name,
            permits,
        })
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The number of permits.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// Who holds permits.
    ///
    /// Cancel safety: safe (read only).
    pub async fn holders(&self) -> Result<Vec<QueueEntry>> {
        Ok(queue::describe(&self.ctx, &self.holders, everyone_holds)
            .await?
            .0)
    }

    /// Who waits for a permit, in queue order.
    ///
    /// Cancel safety: safe (read only).
    pub async fn waiters(&self) -> Result<Vec<QueueEntry>> {
        let (head, rest) = queue::describe(&self.ctx, &self.waiters, predecessor).await?;
        Ok(head.into_iter().chain(rest).collect())
    }

    /// Stores the permit count, or checks ours against the stored one.
    async fn check_permits(&self) -> Result<()> {
        let session = self.ctx.session().await?;
        agree_on_count(
            &*session,
            &self.count_key,
            self.permits,
            &format!("semaphore {}", self.name),
            "permits",
        )
        .await
    }

    fn request(&self) -> Request<'_> {
        Request {
            admission: Some(Admission {
                holders: &self.holders,
                permits: self.permits,
            }),
            name: self.name.as_str(),
            ..Request::new(&self.waiters, NodeKind::Permit, Ahead::Predecessor)
        }
    }

    /// Waits for a permit, in FIFO order.
    ///
    /// Cancel safety: safe; a dropped call leaves nothing behind.
    pub async fn acquire(&self) -> Result<Guard> {
        self.acquire_until(None).await
    }

    /// `acquire`, giving up at `deadline` (applied by the queue, so recorded as a
    /// timeout).
    ///
    /// Cancel safety: safe, as `acquire`.
    async fn acquire_until(&self, deadline: Option<Deadline>) -> Result<Guard> {
        Deadline::run(deadline, self.check_permits()).await?;
        let request = Request {
            deadline,
            ..self.request()
        };
        let lease = queue::acquire(&self.ctx, request).await?;
        Ok(Guard::new(self.label.clone(), lease))
    }

    /// A permit if one is free and nobody waits, without waiting (`None` otherwise,
    /// leaving nothing behind).
    ///
    /// Cancel safety: safe.
    pub async fn try_acquire(&self) -> Result<Option<Guard>> {
        self.check_permits().await?;
        let lease = queue::try_acquire(&self.ctx, self.request()).await?;
        Ok(lease.map(|l| Guard::new(self.label.clone(), l)))
    }

    /// [`Semaphore::acquire`] that fails with [`crate::Error::Timeout`] after `timeout`.
    ///
    /// Cancel safety: safe.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Guard> {
        self.acquire_until(Some(Deadline::after(timeout))).await
    }
}
