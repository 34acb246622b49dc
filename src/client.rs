//! [`Client`]: one connection to a coordination store and the session it holds for
//! every lock taken through it.

use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use queuelock_core::{
    Backend, Error, LockName, Result, Session, SessionId, SessionOptions, SessionState,
};

use crate::mutex::Mutex;

/// When a held lock counts as lost.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[non_exhaustive]
pub enum LossPolicy {
    /// Only when the session is known lost (expired, revoked, closed) or the node was
    /// deleted. A brief disconnection keeps the lock. On etcd the client computes expiry
    /// conservatively (send time of the last acknowledged keep-alive + TTL), so it never
    /// believes it holds a lock the server has already given away.
    #[default]
    #[serde(rename = "session")]
    OnSessionLoss,
    /// Also as soon as the session is suspended (connection trouble), like Curator's
    /// standard error policy: safer for work that must stop at the first doubt, at the
    /// price of losing locks on brief network blips.
    #[serde(rename = "suspension")]
    OnSuspension,
}

/// How a [`Client`] behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Session TTL (etcd lease TTL, ZooKeeper session timeout). Default 15 s: a crashed
    /// holder's locks pass on within this time.
    pub ttl: Duration,
    /// When a held lock counts as lost. Default [`LossPolicy::OnSessionLoss`].
    pub loss_policy: LossPolicy,
    /// A label stored with every node this client creates (shown in holder metadata).
    pub label: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ttl: SessionOptions::default().ttl,
            loss_policy: LossPolicy::default(),
            label: None,
        }
    }
}

impl ClientOptions {
    /// Sets the session TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the loss policy.
    pub fn with_loss_policy(mut self, policy: LossPolicy) -> Self {
        self.loss_policy = policy;
        self
    }

    /// Sets the label stored with this client's nodes.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

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

/// Counters of what this client's acquires did (for tests and monitoring).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Grants (locks, permits, leaderships) obtained.
    pub grants: u64,
    /// Times a waiter was woken to look at the queue again. With no herd effect, each
    /// waiter is woken once per node it waited behind.
    pub wakeups: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) grants: std::sync::atomic::AtomicU64,
    pub(crate) wakeups: std::sync::atomic::AtomicU64,
}

struct Inner {
    counters: Counters,
    backend: Arc<dyn Backend>,
    options: ClientOptions,
    session: StdMutex<Option<Arc<dyn Session>>>,
    /// Serialises opening a session so concurrent acquires share one.
    opening: tokio::sync::Mutex<()>,
    closed: std::sync::atomic::AtomicBool,
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
        Client {
            inner: Arc::new(Inner {
                counters: Counters::default(),
                backend,
                options,
                session: StdMutex::new(None),
                opening: tokio::sync::Mutex::new(()),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Connects to the store a URL names: `memory://`, `etcd://h1:2379,h2:2379/prefix`,
    /// `zk://h1:2181/chroot`, with options as query parameters (`?ttl=10s`). See
    /// [`Config::from_url`](crate::Config::from_url) for the forms and options.
    ///
    /// Cancel safety: safe; a dropped call leaves nothing behind.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_config(&crate::Config::from_url(url)?).await
    }

    /// Connects as `config` says.
    ///
    /// Cancel safety: safe; a dropped call leaves nothing behind.
    pub async fn with_config(config: &crate::Config) -> Result<Self> {
        let backend = crate::connect::backend(config).await?;
        Ok(Client::new(backend, config.client_options()))
    }

    /// Connects to the store named by the `QUEUELOCK_URL` environment variable, or to the
    /// process-wide in-process store (`memory://`) when it is unset or empty;
    /// `QUEUELOCK_TTL`, `QUEUELOCK_CONNECT_TIMEOUT`, `QUEUELOCK_LOSS_POLICY` and
    /// `QUEUELOCK_LABEL` override the URL's options ([`crate::Config::from_env`]).
    ///
    /// Cancel safety: safe.
    pub async fn from_env() -> Result<Self> {
        Self::with_config(&crate::Config::from_env()?).await
    }

    /// The backend this client talks to.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// What this client's acquires have done so far.
    pub fn stats(&self) -> ClientStats {
        use std::sync::atomic::Ordering::Relaxed;
        ClientStats {
            grants: self.inner.counters.grants.load(Relaxed),
            wakeups: self.inner.counters.wakeups.load(Relaxed),
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The client's options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The current session's id, if one is open.
    pub fn session_id(&self) -> Option<SessionId> {
        self.current().map(|s| s.id())
    }

    /// The session locks are currently taken through, if one is open and not lost
    /// (unlike [`Client::session`], never opens one).
    pub fn current_session(&self) -> Option<Arc<dyn Session>> {
        self.current()
    }

    fn current(&self) -> Option<Arc<dyn Session>> {
        let slot = self.inner.session.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|s| *s.state().borrow() != SessionState::Lost)
            .cloned()
    }

    /// The client's live session, opening a new one if there is none or the last one was
    /// lost. Low level: recipes use it; applications rarely need it.
    ///
    /// Cancel safety: safe; a dropped call opens no session, or one that the next call uses.
    pub async fn session(&self) -> Result<Arc<dyn Session>> {
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _opening = self.inner.opening.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let options = SessionOptions::with_ttl(self.inner.options.ttl);
        let session = self.inner.backend.open_session(&options).await?;
        tracing::debug!(backend = self.inner.backend.name(), session = %session.id(), "session opened");
        *self.inner.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.clone());
        Ok(session)
    }

    /// A fair, re-entrant mutex named `name` (validated: `/`-separated segments of
    /// `[A-Za-z0-9._-]`). Creating the handle touches nothing on the server.
    pub fn mutex(&self, name: &str) -> Result<Mutex> {
        Ok(Mutex::new(self.clone(), LockName::new(name)?))
    }

    /// A fair read-write lock named `name` (validated like [`Client::mutex`]).
    pub fn rwlock(&self, name: &str) -> Result<crate::RwLock> {
        Ok(crate::RwLock::new(self.clone(), LockName::new(name)?))
    }

    /// A semaphore named `name` with `permits` permits (validated like
    /// [`Client::mutex`]; at least 1 permit).
    pub fn semaphore(&self, name: &str, permits: u32) -> Result<crate::Semaphore> {
        crate::Semaphore::new(self.clone(), LockName::new(name)?, permits)
    }

    /// A leader election named `name` (validated like [`Client::mutex`]).
    pub fn election(&self, name: &str) -> Result<crate::Election> {
        Ok(crate::Election::new(self.clone(), LockName::new(name)?))
    }

    /// An empty [`crate::MultiLock`]: add members with its builder methods.
    pub fn multilock(&self) -> crate::MultiLock {
        crate::MultiLock::new(self.clone())
    }

    /// Closes the session: every lock held through this client is released at once (and
    /// reported lost to guards still alive). Later calls fail with [`Error::Closed`].
    ///
    /// Cancel safety: safe; the session is closed at the latest when the client is dropped.
    pub async fn close(&self) -> Result<()> {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let session = self
            .inner
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match session {
            Some(s) => s.close().await,
            None => Ok(()),
        }
    }
}

/// The URL `from_env` connects to, given the value of `QUEUELOCK_URL`.
pub(crate) fn url_from_env(var: std::result::Result<String, std::env::VarError>) -> Result<String> {
    match var {
        Ok(url) if !url.trim().is_empty() => Ok(url.trim().to_owned()),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok("memory://".to_owned()),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(Error::Config("QUEUELOCK_URL is not valid UTF-8".to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::env::VarError;

    #[test]
    fn env_defaults_to_memory() {
        assert_eq!(
            url_from_env(Err(VarError::NotPresent)).expect("url"),
            "memory://"
        );
        assert_eq!(url_from_env(Ok("  ".into())).expect("url"), "memory://");
        assert_eq!(
            url_from_env(Ok(" memory://x ".into())).expect("url"),
            "memory://x"
        );
        let bad = url_from_env(Err(VarError::NotUnicode("x".into())));
        assert!(matches!(bad, Err(Error::Config(m)) if m.contains("QUEUELOCK_URL")));
    }
}
