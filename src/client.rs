//! [`Client`]: one connection to a coordination store and the session it holds for
//! every lock taken through it.

use std::fmt;
use std::sync::Arc;

use queuelock_core::{Backend, LockName, Result, Session, SessionId};

use crate::barrier::{Barrier, DoubleBarrier};
use crate::election::Election;
use crate::latch::CountDownLatch;
use crate::multilock::MultiLock;
use crate::mutex::Mutex;
use crate::options::ClientOptions;
use crate::queue::{Context, SessionSlot, SessionSource};
use crate::rwlock::RwLock;
use crate::semaphore::Semaphore;

/// A connection to a coordination store (etcd, ZooKeeper or in-process) and the one
/// session every lock taken through it shares.
///
/// Cheap to clone; clones share the session. When the session is lost, locks held through
/// it report it ([`crate::MutexGuard::lost`]) and the next acquire opens a fresh session.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock::Result<()> {
/// let client = queuelock::Client::connect("memory://").await?;
/// let mutex = client.mutex("reports/nightly")?;
/// let guard = mutex.lock().await?;
/// println!("holding with fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Counters of what this client's acquires did (for tests and monitoring): a view of
/// the counts behind the `queuelock_grants_total`, `queuelock_wakeups_total`,
/// `queuelock_acquire_timeouts_total` and `queuelock_losses_total` metrics, fed by the
/// same calls (see the README's Observability section).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Grants (locks, permits, leaderships) obtained.
    pub grants: u64,
    /// Times a waiter was woken to look at the queue again. With no herd effect, each
    /// waiter is woken once per node it waited behind.
    pub wakeups: u64,
    /// Acquires that gave up at their timeout.
    pub timeouts: u64,
    /// Held locks lost (session lost or suspended under the policy, node deleted).
    pub losses: u64,
}

struct Inner {
    backend: Arc<dyn Backend>,
    options: ClientOptions,
    sessions: Arc<SessionSlot>,
    /// What every recipe built by this client shares: the queue layer's view of it.
    ctx: Arc<Context>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("backend", &self.inner.backend.name())
            .field("session", &self.session_id())
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Client {
    /// A client on `backend` (any implementation of the backend contract).
    pub fn new(backend: Arc<dyn Backend>, options: ClientOptions) -> Self {
        let sessions = Arc::new(SessionSlot::new(backend.clone(), options.ttl));
        let ctx = Arc::new(
            Context::new(
                sessions.clone(),
                options.loss_policy,
                options.label.clone(),
                options.ttl,
                backend.name(),
                options.name_label,
            )
            .with_lock_delay(options.lock_delay),
        );
        Client {
            inner: Arc::new(Inner {
                backend,
                options,
                sessions,
                ctx,
            }),
        }
    }

    /// The backend this client talks to.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// What this client's acquires have done so far.
    pub fn stats(&self) -> ClientStats {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = self.inner.ctx.counters();
        ClientStats {
            grants: counters.grants.load(Relaxed),
            wakeups: counters.wakeups.load(Relaxed),
            timeouts: counters.timeouts.load(Relaxed),
            losses: counters.losses.load(Relaxed),
        }
    }

    /// The client's options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The current session's id, if one is open.
    pub fn session_id(&self) -> Option<SessionId> {
        self.inner.sessions.current().map(|s| s.id())
    }

    /// The session locks are currently taken through, if one is open and not lost
    /// (unlike [`Client::session`], never opens one).
    pub fn current_session(&self) -> Option<Arc<dyn Session>> {
        self.inner.sessions.current()
    }

    /// The client's live session, opening a new one if there is none or the last one was
    /// lost. Low level: recipes use it; applications rarely need it.
    ///
    /// Cancel safety: safe; a dropped call opens no session, or one that the next call uses.
    pub async fn session(&self) -> Result<Arc<dyn Session>> {
        self.inner.sessions.session().await
    }

    /// A fair, re-entrant mutex named `name` (validated: `/`-separated segments of
    /// `[A-Za-z0-9._-]`). Creating the handle touches nothing on the server.
    pub fn mutex(&self, name: &str) -> Result<Mutex> {
        Ok(Mutex::new(self.inner.ctx.clone(), LockName::new(name)?))
    }

    /// A fair read-write lock named `name` (validated like [`Client::mutex`]).
    pub fn rwlock(&self, name: &str) -> Result<RwLock> {
        Ok(RwLock::new(self.inner.ctx.clone(), LockName::new(name)?))
    }

    /// A semaphore named `name` with `permits` permits (validated like
    /// [`Client::mutex`]; at least 1 permit).
    pub fn semaphore(&self, name: &str, permits: u32) -> Result<Semaphore> {
        Semaphore::new(self.inner.ctx.clone(), LockName::new(name)?, permits)
    }

    /// A leader election named `name` (validated like [`Client::mutex`]).
    pub fn election(&self, name: &str) -> Result<Election> {
        Ok(Election::new(self.inner.ctx.clone(), LockName::new(name)?))
    }

    /// A barrier named `name` (validated like [`Client::mutex`]): `set`, `remove`,
    /// `wait`. Creating the handle touches nothing on the server.
    pub fn barrier(&self, name: &str) -> Result<Barrier> {
        Ok(Barrier::new(self.inner.ctx.clone(), LockName::new(name)?))
    }

    /// A double barrier named `name` for `n` participants (validated like
    /// [`Client::mutex`]; `n` at least 1, else [`crate::Error::Config`]).
    pub fn double_barrier(&self, name: &str, n: u32) -> Result<DoubleBarrier> {
        DoubleBarrier::new(self.inner.ctx.clone(), LockName::new(name)?, n)
    }

    /// A count-down latch named `name` that opens after `n` count-downs (validated like
    /// [`Client::mutex`]; `n` at least 1, else [`crate::Error::Config`]).
    pub fn count_down_latch(&self, name: &str, n: u32) -> Result<CountDownLatch> {
        CountDownLatch::new(self.inner.ctx.clone(), LockName::new(name)?, n)
    }

    /// An empty [`MultiLock`]: add members with its builder methods.
    pub fn multilock(&self) -> MultiLock {
        MultiLock::new(self.inner.ctx.clone())
    }

    /// Closes the session: every lock held through this client is released at once (and
    /// reported lost to guards still alive). Later calls fail with [`crate::Error::Closed`].
    ///
    /// Cancel safety: safe; the session is closed at the latest when the client is dropped.
    pub async fn close(&self) -> Result<()> {
        self.inner.sessions.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Every public future must be `Send`, or it cannot be spawned on a multi-threaded
    /// runtime. Checked at compile time.
    #[allow(dead_code, clippy::let_underscore_future)]
    fn futures_are_send(
        m: &Mutex,
        g: crate::MutexGuard,
        c: &Client,
        b: &Barrier,
        d: &DoubleBarrier,
        e: crate::Entered,
        l: &CountDownLatch,
    ) {
        fn send<T: Send>(_: T) {}
        send(m.lock());
        send(m.try_lock());
        send(m.lock_timeout(Duration::ZERO));
        send(g.lost());
        send(g.release());
        send(c.session());
        send(c.close());
        send(b.set());
        send(b.remove());
        send(b.wait());
        send(d.enter());
        send(e.leave());
        send(l.count_down());
        send(l.wait());
        send(Client::connect("memory://"));
    }
}
