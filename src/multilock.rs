//! [`MultiLock`]: several locks taken all-or-nothing, in one global order.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use queuelock_core::{Error, LockName, LossReason, Result};

use crate::guard::Guard;
use crate::mutex::Mutex;
use crate::queue::Context;
use crate::semaphore::Semaphore;

/// One member of a [`MultiLock`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Member {
    Mutex(LockName),
    Semaphore(LockName, u32),
}

impl Member {
    fn name(&self) -> &LockName {
        match self {
            Member::Mutex(n) | Member::Semaphore(n, _) => n,
        }
    }
}

/// Several mutexes and semaphore permits acquired all-or-nothing.
///
/// Members are always acquired in one global order (by name), whatever order they were
/// listed in, so two MultiLocks over overlapping sets can never deadlock each other. If
/// any acquire fails (or the call is cancelled), everything already taken is released.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock::Result<()> {
/// let client = queuelock::Client::connect("memory://").await?;
/// let both = client.multilock()
///     .mutex("accounts/alice")?
///     .mutex("accounts/bob")?
///     .semaphore("db-connections", 10)?;
/// let guard = both.lock().await?;
/// println!("tokens {:?}", guard.fencing_tokens());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MultiLock {
    ctx: Arc<Context>,
    members: Vec<Member>,
}

impl fmt::Debug for MultiLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiLock")
            .field("members", &self.members)
            .finish()
    }
}

impl MultiLock {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        MultiLock {
            ctx,
            members: Vec::new(),
        }
    }

    fn add(mut self, m: Member) -> Result<Self> {
        if self.members.iter().any(|x| x.name() == m.name()) {
            return Err(Error::Config(format!(
                "lock {} is listed twice in one MultiLock",
                m.name()
            )));
        }
        self.members.push(m);
        self.members.sort();
        Ok(self)
    }

    /// Adds a mutex.
    pub fn mutex(self, name: &str) -> Result<Self> {
        self.add(Member::Mutex(LockName::new(name)?))
    }

    /// Adds one permit of a semaphore with `permits` permits.
    pub fn semaphore(self, name: &str, permits: u32) -> Result<Self> {
        if permits == 0 {
            return Err(Error::Config(format!(
                "semaphore {name} needs at least 1 permit"
            )));
        }
        self.add(Member::Semaphore(LockName::new(name)?, permits))
    }

    /// Acquires every member, in name order; waits as long as it takes.
    ///
    /// Cancel safety: safe; whatever was taken is released in the background.
    pub async fn lock(&self) -> Result<MultiGuard> {
        if self.members.is_empty() {
            return Err(Error::Config(
                "a MultiLock needs at least one lock".to_owned(),
            ));
        }
        let mut guards = Vec::with_capacity(self.members.len());
        for m in &self.members {
            // On error or cancellation, `guards` drops and releases what was taken.
            let g = match m {
                Member::Mutex(n) => Mutex::new(self.ctx.clone(), n.clone()).lock().await?,
                Member::Semaphore(n, p) => {
                    Semaphore::new(self.ctx.clone(), n.clone(), *p)?
                        .acquire()
                        .await?
                }
            };
            guards.push(g);
        }
        Ok(MultiGuard { guards })
    }

    /// [`MultiLock::lock`] that fails with [`Error::Timeout`] after `timeout`, holding
    /// nothing.
    ///
    /// Cancel safety: safe.
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<MultiGuard> {
        tokio::time::timeout(timeout, self.lock())
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }
}

/// Holds every lock of a [`MultiLock`]. Dropping it releases them all.
#[must_use = "the locks are released when the guard is dropped"]
#[derive(Debug)]
pub struct MultiGuard {
    guards: Vec<Guard>,
}

impl MultiGuard {
    /// The member guards, in acquisition (name) order.
    pub fn guards(&self) -> &[Guard] {
        &self.guards
    }

    /// The fencing tokens of the members, in name order.
    pub fn fencing_tokens(&self) -> Vec<u64> {
        self.guards.iter().map(Guard::fencing_token).collect()
    }

    /// Why some member is no longer safely held, if one is not.
    pub fn is_lost(&self) -> Option<LossReason> {
        self.guards.iter().find_map(Guard::is_lost)
    }

    /// Resolves when any member is lost.
    ///
    /// Cancel safety: safe.
    pub async fn lost(&self) -> LossReason {
        let all = self.guards.iter().map(|g| Box::pin(g.lost()));
        futures::future::select_all(all).await.0
    }

    /// Releases every member (in reverse order); reports the first error.
    ///
    /// Cancel safety: safe; releases continue in the background.
    pub async fn release(self) -> Result<()> {
        let mut first = Ok(());
        for g in self.guards.into_iter().rev() {
            let r = g.release().await;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}
