//! # queuelock-zookeeper — the ZooKeeper backend of queuelock
//!
//! Implements the queuelock backend contract on ZooKeeper (`zookeeper-client`):
//!
//! * a **session** is a ZooKeeper session: `Suspended` while disconnected, `Lost` on
//!   expiry or close — and, like Curator, once the session timeout has passed since the
//!   last answer from the server, even before the server says so. A heartbeat keeps a
//!   conservative deadline ([`queuelock_core::Session::valid_until`]) so that a process
//!   frozen past its timeout never trusts a stale `Live` when it wakes;
//! * queue nodes are **protected ephemeral-sequential** nodes named as Apache Curator
//!   names them: `_c_<uuid>-lock-<seq>`, `_c_<uuid>-__READ__<seq>`,
//!   `_c_<uuid>-__WRIT__<seq>`, `_c_<uuid>-latch-<seq>`, `_c_<uuid>-permit-<seq>`, under
//!   container parents (reaped when empty). Children named by kazoo (`<uuid>__lock__<seq>`,
//!   `__rlock__`) or plainly (`lock-<seq>`) are ordered by their 10-digit sequence too;
//!   anything else is ignored with a warning. The create and the children read are sent
//!   back to back (one round trip). After a connection loss the node is found again by
//!   its uuid and adopted only if our session owns it;
//! * fencing token = the node's `czxid`; a waiter watches only its predecessor, with a
//!   data watch; guarded writes are a `multi` with a `check` of the guard node.
//!
//! Tokens of nodes in a listing other than the caller's own are 0 (reading every
//! child's `czxid` would cost a round trip per wake-up); the holder's own token, which
//! is what fencing uses, is always exact.
#![forbid(unsafe_code)]

mod error;
mod names;
mod session;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use queuelock_core::{Backend, Result, Session, SessionOptions};

pub use error::map_error;
use session::ZkSession;

/// How to reach ZooKeeper.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ZkOptions {
    /// How long to wait for a connection (default 10 s).
    pub connect_timeout: Option<Duration>,
    /// Digest credentials `user:password`, added to every session.
    pub digest: Option<String>,
}

impl fmt::Debug for ZkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("digest", &self.digest.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ZkOptions {
    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }
}

/// A ZooKeeper ensemble; every session is its own ZooKeeper session.
#[derive(Clone)]
pub struct ZkBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) hosts: String,
    /// `""` or `/app`: prepended to every path.
    pub(crate) chroot: String,
    pub(crate) options: ZkOptions,
    /// Session id -> the session's credentials (for tests that end a session from
    /// another connection, as ZooKeeper allows).
    pub(crate) sessions: StdMutex<
        HashMap<
            i64,
            (
                zookeeper_client::SessionInfo,
                tokio::sync::watch::Receiver<queuelock_core::SessionState>,
            ),
        >,
    >,
}

impl fmt::Debug for ZkBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkBackend")
            .field("hosts", &self.inner.hosts)
            .field("chroot", &self.inner.chroot)
            .finish()
    }
}

impl ZkBackend {
    /// Connects to `hosts` (`h1:2181,h2:2181`) with every path under `chroot` (`""` or
    /// `/app`, created if missing). Checks the ensemble answers.
    ///
    /// Cancel safety: safe.
    pub async fn connect(hosts: &str, chroot: &str, options: ZkOptions) -> Result<Self> {
        let chroot = chroot.trim_end_matches('/').to_owned();
        let backend = ZkBackend {
            inner: Arc::new(Inner {
                hosts: hosts.to_owned(),
                chroot,
                options,
                sessions: StdMutex::new(HashMap::new()),
            }),
        };
        let probe = session::connect(&backend.inner, Duration::from_secs(10), None).await?;
        if !backend.inner.chroot.is_empty() {
            let opts = zookeeper_client::CreateMode::Persistent
                .with_acls(zookeeper_client::Acls::anyone_all());
            probe
                .mkdir(&backend.inner.chroot, &opts)
                .await
                .map_err(map_error)?;
        }
        Ok(backend)
    }

    /// The credentials and state of one of this backend's open sessions.
    pub fn session_info(
        &self,
        id: i64,
    ) -> Option<(
        zookeeper_client::SessionInfo,
        tokio::sync::watch::Receiver<queuelock_core::SessionState>,
    )> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }
}

#[async_trait]
impl Backend for ZkBackend {
    fn name(&self) -> &'static str {
        "zookeeper"
    }

    /// Opens a ZooKeeper session with `options.ttl` as its timeout.
    ///
    /// Cancel safety: a dropped call closes the half-open session when dropped.
    async fn open_session(&self, options: &SessionOptions) -> Result<Arc<dyn Session>> {
        Ok(Arc::new(
            ZkSession::open(self.inner.clone(), options.ttl).await?,
        ))
    }
}

/// The test [`queuelock_core::testkit::Harness`] for ZooKeeper: connects to the server
/// named by `QUEUELOCK_TEST_ZK` (`host:port`, set by `scripts/test`) and fails when it is
/// not set.
#[cfg(feature = "testkit")]
pub mod testkit {
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use queuelock_core::testkit::Harness;
    use queuelock_core::{Backend, SessionId};

    use crate::{ZkBackend, ZkOptions};

    /// Harness on a real ZooKeeper.
    #[derive(Debug)]
    pub struct ZkHarness {
        hosts: String,
        handed_out: StdMutex<Vec<ZkBackend>>,
    }

    impl ZkHarness {
        /// Reads `QUEUELOCK_TEST_ZK`; panics (fails the test) when unset.
        pub fn from_env() -> Self {
            let hosts = std::env::var("QUEUELOCK_TEST_ZK").unwrap_or_else(|_| {
                panic!("QUEUELOCK_TEST_ZK is not set: run ./scripts/test, which starts ZooKeeper")
            });
            ZkHarness {
                hosts,
                handed_out: StdMutex::new(Vec::new()),
            }
        }
    }

    #[async_trait]
    impl Harness for ZkHarness {
        async fn backend(&self) -> Arc<dyn Backend> {
            let b = ZkBackend::connect(&self.hosts, "/queuelock-tests", ZkOptions::default())
                .await
                .expect("connect to the test ZooKeeper");
            self.handed_out.lock().expect("harness").push(b.clone());
            Arc::new(b)
        }

        /// Ends the session from another connection with the same credentials, the way
        /// ZooKeeper tests expire sessions; tries again until the session's owner has
        /// seen it end (the owner may win the reconnection race once or twice).
        async fn expire(&self, id: SessionId) {
            let (info, mut state) = {
                let backends = self.handed_out.lock().expect("harness");
                backends.iter().find_map(|b| b.session_info(id.0 as i64))
            }
            .unwrap_or_else(|| panic!("no session {id} among this harness's backends"));
            for _ in 0..10 {
                let other = zookeeper_client::Client::connector()
                    .with_session(info.clone())
                    .with_connection_timeout(Duration::from_secs(2))
                    .connect(&self.hosts)
                    .await;
                drop(other); // closes the session on the server
                let lost = tokio::time::timeout(
                    Duration::from_secs(3),
                    state.wait_for(|s| *s == queuelock_core::SessionState::Lost),
                )
                .await;
                if lost.is_ok() {
                    return;
                }
            }
            panic!("could not end ZooKeeper session {id}");
        }

        fn ttl(&self) -> Duration {
            Duration::from_secs(2)
        }
    }
}
