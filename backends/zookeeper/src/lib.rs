//! # queuelock-zookeeper — the ZooKeeper backend of queuelock
//!
//! Implements the queuelock backend contract on ZooKeeper (`zookeeper-client` 0.11):
//!
//! * a **session** is one ZooKeeper session (one client connection), its timeout the
//!   contract's TTL. State: `Suspended` while disconnected, `Lost` on expiry, close or
//!   auth failure — and, like Curator, once the session timeout has passed without an
//!   answer from the server, even before any server says so. A heartbeat keeps that
//!   deadline (send time of the last answered request + timeout, never later than
//!   Curator's "disconnected + timeout"), exposed as
//!   [`queuelock_core::Session::valid_until`], so that a process frozen past its timeout
//!   never trusts a stale `Live` when it wakes. Closing (or dropping the last handle)
//!   closes the ZooKeeper session, which removes its ephemeral nodes at once.
//! * keys are `/`-separated paths under the chroot (`/<chroot>/<key>`); parents are
//!   created as **container** nodes, so empty lock directories are reaped by the server
//!   (a parent reaped between our `mkdir` and our create is re-created and the create
//!   retried).
//! * queue nodes are **protected ephemeral-sequential** nodes named as Apache Curator
//!   names them, with the attempt's [`queuelock_core::NodeSpec::id`] as the uuid:
//!
//!   | kind | name | as in |
//!   |---|---|---|
//!   | `Lock` | `_c_<uuid>-lock-<seq>` | Curator `InterProcessMutex` |
//!   | `Read` | `_c_<uuid>-__READ__<seq>` | Curator `InterProcessReadWriteLock` |
//!   | `Write` | `_c_<uuid>-__WRIT__<seq>` | Curator `InterProcessReadWriteLock` |
//!   | `Latch` | `_c_<uuid>-latch-<seq>` | Curator `LeaderLatch` |
//!   | `Permit` | `_c_<uuid>-permit-<seq>` | queuelock's own (Curator's semaphore has another layout) |
//!
//!   With [`Naming::Kazoo`] (`zk://...?naming=kazoo`) they are named as kazoo names them
//!   by default instead (the uuid in simple hex): `Lock`, `Write` and `Latch` nodes
//!   `<uuid>__lock__<seq>` (kazoo `Lock`, `WriteLock`, `Election`), `Read` nodes
//!   `<uuid>__rlock__<seq>` (kazoo `ReadLock`); `Permit` nodes keep the name above.
//!
//!   Listing orders every child ending in a 10-digit sequence by that sequence, so nodes
//!   of kazoo (`<uuid>__lock__<seq>`, `<uuid>__rlock__<seq>`) and plain ones
//!   (`lock-<seq>`) queue with ours; the kind is read from the name (`Unknown`, which
//!   recipes treat as exclusive, when it says nothing); other children are ignored with
//!   a warning.
//! * **create** sends the create and the children read back to back (zookeeper-client
//!   sends a request when the method is called, and ZooKeeper answers a session's
//!   requests in order): one round trip, and the listing includes our node. After a
//!   connection loss (or on a retry of the same attempt) the node is found again by its
//!   uuid and adopted only if its `ephemeral_owner` is our session.
//! * **fencing token** = the node's `czxid`, from the create's answer (or, after an
//!   adoption, from the node's stat). Other nodes in a listing carry token 0: ZooKeeper's
//!   children read returns names only, and reading each child's stat would cost a round
//!   trip per wake-up; the recipes only need their own token. The listing's revision is
//!   the parent's `pzxid`.
//! * **waiting** sets a *data* watch on the one node waited for (`getData` + watch: it
//!   cannot leak like an `exists` watch on a missing node, and a missing node resolves
//!   at once).
//! * **identity**: a node name carries its attempt's uuid, so it is unique — except when
//!   a reaped container is re-created and its sequence counter restarts, which can hand
//!   a retried attempt its old node's exact name. The session remembers the `czxid` of
//!   each node it created, so `delete` and `guarded` through an old node never touch the
//!   newer one without costing a round trip; for a node of another session they compare
//!   the `czxid` read with the node's version.
//! * **guarded writes** are one `multi`: a `check` of the guard, then the writes (a
//!   `Put` creates or sets the key, chosen after reading whether it exists, and retried
//!   on a race).
//! * **revocation** is Curator's protocol: a request sets the holder's node data to
//!   `__REVOKE__` (guarded by the `czxid` and version read just before), and the holder
//!   has a data watch on its own node (then writes its metadata back). A Curator
//!   `InterProcessMutex` made revocable and queuelock understand each other both ways.
//!
//! **Security.** Digest credentials (`ZkOptions::digest`) are added to every session, and
//! then every node queuelock creates — the chroot, lock directories (containers), queue
//! nodes, election proclamations and other stored values — carries the ACL
//! *creator: all, world: read*: only sessions authenticated as the same identity can
//! create children in, delete or change them; everyone else may read (`status` works). Without
//! credentials nodes get the open ACL. A chroot that already exists keeps its ACL; if it
//! lets anyone create or delete, connecting logs a warning. `ZkOptions::tls` reaches the
//! servers' secure client port with TLS (server verified against the CA, optional client
//! certificate).
//!
//! Most users reach it through the facade crate, `queuelock::Client::connect("zk://h1:2181/app")`
//! (feature `zookeeper` of `queuelock`); to use the backend directly:
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock_core::Result<()> {
//! use queuelock_core::{Backend, NodeKind, NodeSpec, SessionOptions};
//! use queuelock_zookeeper::{ZkBackend, ZkOptions};
//!
//! let zk = ZkBackend::connect("127.0.0.1:2181", "/app", ZkOptions::default()).await?;
//! let session = zk.open_session(&SessionOptions::default()).await?; // a ZooKeeper session
//! let created = session.create_sequential(&NodeSpec::new("jobs", NodeKind::Lock, vec![])).await?;
//! println!("queued as {} with fencing token {}", created.node.key, created.node.token);
//! session.close().await?; // closes the session: its ephemeral nodes go with it
//! # Ok(()) }
//! ```
//!
//! Building needs a Rust toolchain and a C compiler (for `aws-lc-rs`, rustls' crypto).
//!
//! ## Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `testkit` | no | `testkit::ZkHarness`: this backend under queuelock-core's test `Harness`, against the ZooKeeper named by `QUEUELOCK_TEST_ZK` |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod error;
mod names;
mod session;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use queuelock_core::{Backend, Result, Session, SessionOptions, TlsPem};

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
    /// TLS to the secure client port: CA and optional client certificate.
    pub tls: Option<TlsPem>,
    /// How queuelock names its queue nodes (default [`Naming::Curator`]).
    pub naming: Naming,
}

/// How queuelock names its ZooKeeper queue nodes, so that a peer library with its
/// default settings sees them as contenders (whatever the dialect, queuelock itself
/// queues every child that ends in a 10-digit sequence, so it sees both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Naming {
    /// Apache Curator's protected names (`_c_<uuid>-lock-<seq>`, `__READ__`, `__WRIT__`,
    /// `latch-`): Curator's recipes exclude queuelock and the reverse. kazoo's `Lock`
    /// sees them only with `extra_lock_patterns=["-lock-"]`.
    #[default]
    Curator,
    /// kazoo's default names (`<uuid hex>__lock__<seq>` for locks, write locks and
    /// election candidates, `<uuid hex>__rlock__<seq>` for readers): kazoo's `Lock()`,
    /// `WriteLock()`, `ReadLock()` and `Election()` with default arguments exclude
    /// queuelock and the reverse. Semaphore nodes keep queuelock's own `permit-` names
    /// (kazoo's `Semaphore` has another layout). kazoo's names do not tell a writer or
    /// an election candidate from a lock: such nodes list as [`queuelock_core::NodeKind::Lock`]
    /// (every recipe treats the three alike: exclusive), so `queuelock status` shows them
    /// as locks.
    Kazoo,
}

impl std::str::FromStr for Naming {
    type Err = queuelock_core::Error;

    /// `curator` or `kazoo`, as in `zk://...?naming=`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "curator" => Ok(Naming::Curator),
            "kazoo" => Ok(Naming::Kazoo),
            _ => Err(queuelock_core::Error::Config(format!(
                "ZooKeeper naming {s:?}: expected \"curator\" or \"kazoo\""
            ))),
        }
    }
}

impl fmt::Debug for ZkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("digest", &self.digest.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("naming", &self.naming)
            .finish()
    }
}

impl ZkOptions {
    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// Sets digest credentials (`user:password`), added to every session. They never
    /// appear in `Debug` output or logs.
    pub fn with_digest(mut self, user_password: impl Into<String>) -> Self {
        self.digest = Some(user_password.into());
        self
    }

    /// Sets how queuelock names its queue nodes ([`Naming`]).
    pub fn with_naming(mut self, naming: Naming) -> Self {
        self.naming = naming;
        self
    }

    /// Connects over TLS with this material (server verified against its CA).
    pub fn with_tls(mut self, tls: TlsPem) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// zookeeper-client's TLS options from PEM material. Installs rustls' aws-lc-rs provider
/// as the process default if none is installed yet: zookeeper-client builds its rustls
/// config with the process default, which rustls cannot choose when the application
/// compiles in a second provider (ring, say).
pub(crate) fn tls_options(tls: &TlsPem) -> Result<zookeeper_client::TlsOptions> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bad = |what: &str, e: zookeeper_client::Error| {
        queuelock_core::Error::Config(format!("TLS {what} for ZooKeeper is unusable: {e}"))
    };
    let mut o = zookeeper_client::TlsOptions::new();
    if let Some(ca) = &tls.ca {
        o = o.with_pem_ca(ca).map_err(|e| bad("CA", e))?;
    }
    if let Some((cert, key)) = &tls.identity {
        // The key is not part of the message: only that the pair was refused.
        o = o.with_pem_identity(cert, key).map_err(|_| {
            queuelock_core::Error::Config(
                "TLS client certificate/key for ZooKeeper is unusable".to_owned(),
            )
        })?;
    }
    Ok(o)
}

/// The data a revocation request writes into the holder's lock node: Curator's
/// `LockInternals.REVOKE_MESSAGE`, so that Curator's `Revoker.attemptRevoke` and a
/// revocable `InterProcessMutex` understand queuelock's requests and holders, both ways.
/// With credentials, the node's ACL lets only the holder's own identity write it.
pub(crate) const REVOKE_MESSAGE: &[u8] = b"__REVOKE__";

/// The ACL of every node queuelock creates: with credentials, full rights for the creating
/// identity and read for the world; without, the open ACL.
static OWNER_ALL_WORLD_READ: [zookeeper_client::Acl; 2] = [
    zookeeper_client::Acl::new_const(zookeeper_client::Permission::ALL, "auth", ""),
    zookeeper_client::Acl::new_const(zookeeper_client::Permission::READ, "world", "anyone"),
];

impl Inner {
    pub(crate) fn acls(&self) -> zookeeper_client::Acls<'static> {
        if self.options.digest.is_some() {
            zookeeper_client::Acls::new(&OWNER_ALL_WORLD_READ)
        } else {
            zookeeper_client::Acls::anyone_all()
        }
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
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
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
    /// Connects to `hosts` (`h1:2181,h2:2181`) with every path under `chroot` (`""`, `/`
    /// or `/app/x`; a missing leading `/` is added; created as persistent nodes if
    /// missing). Checks that the ensemble answers, with a short-lived session.
    ///
    /// Errors: [`queuelock_core::Error::Config`] for an invalid chroot, a connection
    /// error when no server answers within the connect timeout.
    ///
    /// Cancel safety: safe (a dropped call may leave the chroot created).
    pub async fn connect(hosts: &str, chroot: &str, options: ZkOptions) -> Result<Self> {
        let chroot = normalize_chroot(chroot)?;
        let backend = ZkBackend {
            inner: Arc::new(Inner {
                hosts: hosts.to_owned(),
                chroot,
                options,
                sessions: StdMutex::new(HashMap::new()),
            }),
        };
        let probe = session::connect(&backend.inner, Duration::from_secs(10), None).await?;
        // Create the chroot only when missing: ZooKeeper checks the create permission
        // before existence, so a reader without rights in a protected chroot could not
        // even connect.
        let chroot = &backend.inner.chroot;
        if !chroot.is_empty() && probe.check_stat(chroot).await.map_err(map_error)?.is_none() {
            let opts = zookeeper_client::CreateMode::Persistent.with_acls(backend.inner.acls());
            match probe.mkdir(chroot, &opts).await {
                Ok(()) | Err(zookeeper_client::Error::NodeExists) => {}
                Err(e) => return Err(map_error(e)),
            }
        }
        if backend.inner.options.digest.is_some() {
            warn_if_open(&probe, &backend.inner.chroot).await;
        }
        Ok(backend)
    }

    /// The credentials and state of one of this backend's open sessions (for tests that
    /// end a session from another connection).
    #[cfg(feature = "testkit")]
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

/// Warns when the chroot lets anyone create or delete children: then a client without our
/// identity can create a lock directory with an open ACL before we do, and delete nodes in
/// it.
async fn warn_if_open(client: &zookeeper_client::Client, chroot: &str) {
    use zookeeper_client::Permission;
    let path = if chroot.is_empty() { "/" } else { chroot };
    if let Ok((acls, _)) = client.get_acl(path).await {
        let open = acls.iter().any(|a| {
            a.scheme() == "world"
                && (a.permission().has(Permission::CREATE)
                    || a.permission().has(Permission::DELETE))
        });
        if open {
            tracing::warn!(
                chroot = path,
                "ZooKeeper chroot lets anyone create or delete children: use a chroot created \
                 with credentials so that other clients cannot tamper with lock directories"
            );
        }
    }
}

/// `""` for the root, else `/a/b`: no trailing slash, no empty, `.` or `..` segments.
fn normalize_chroot(chroot: &str) -> Result<String> {
    let trimmed = chroot.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let mut out = String::with_capacity(trimmed.len() + 1);
    for segment in trimmed.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.contains('\0') {
            return Err(queuelock_core::Error::Config(format!(
                "invalid ZooKeeper chroot {chroot:?}: empty, `.` or `..` segment"
            )));
        }
        out.push('/');
        out.push_str(segment);
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::normalize_chroot;

    #[test]
    fn chroots() {
        assert_eq!(normalize_chroot("").ok().as_deref(), Some(""));
        assert_eq!(normalize_chroot("/").ok().as_deref(), Some(""));
        assert_eq!(normalize_chroot("app").ok().as_deref(), Some("/app"));
        assert_eq!(normalize_chroot("/app/x/").ok().as_deref(), Some("/app/x"));
        assert!(normalize_chroot("/a//b").is_err());
        assert!(normalize_chroot("/a/../b").is_err());
    }
}

/// The test [`queuelock_core::testkit::Harness`] for ZooKeeper: connects to the server
/// named by `QUEUELOCK_TEST_ZK` (`host:port`, set by `scripts/test`) and fails when it is
/// not set.
#[cfg(feature = "testkit")]
pub mod testkit {
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Duration;
    /// The raw client this backend is built on (the same version and features), for
    /// tests that act as another identity, bypassing queuelock.
    pub use zookeeper_client;

    use async_trait::async_trait;
    use queuelock_core::testkit::proxy::Proxy;
    use queuelock_core::testkit::{Harness, Link};
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
        async fn backend_with_link(&self) -> (Arc<dyn Backend>, Box<dyn Link>) {
            let proxy = Proxy::start(self.hosts.clone()).await;
            let b = ZkBackend::connect(&proxy.addr, "/queuelock-tests", ZkOptions::default())
                .await
                .expect("connect to the test ZooKeeper through a proxy");
            self.handed_out.lock().expect("harness").push(b.clone());
            (Arc::new(b), Box::new(proxy))
        }

        async fn backend(&self) -> Arc<dyn Backend> {
            let b = ZkBackend::connect(&self.hosts, "/queuelock-tests", ZkOptions::default())
                .await
                .expect("connect to the test ZooKeeper");
            self.handed_out.lock().expect("harness").push(b.clone());
            Arc::new(b)
        }

        /// Ends the session from another connection with the same credentials, the way
        /// ZooKeeper tests expire sessions; tries again until the session's owner has
        /// seen it end (the owner may win the reconnection race a few times).
        async fn expire(&self, id: SessionId) {
            let (info, mut state) = {
                let backends = self.handed_out.lock().expect("harness");
                backends.iter().find_map(|b| b.session_info(id.0 as i64))
            }
            .unwrap_or_else(|| panic!("no session {id} among this harness's backends"));
            // The owner reconnects as soon as the server hands its session to the other
            // connection and may take it back before the close arrives: short attempts.
            for _ in 0..100 {
                let other = zookeeper_client::Client::connector()
                    .with_session(info.clone())
                    .with_connection_timeout(Duration::from_millis(500))
                    .with_session_timeout(self.ttl())
                    .with_fail_eagerly()
                    .connect(&self.hosts);
                if let Ok(Ok(other)) = tokio::time::timeout(Duration::from_secs(1), other).await {
                    drop(other); // sends closeSession
                }
                let lost = tokio::time::timeout(
                    Duration::from_millis(300),
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
