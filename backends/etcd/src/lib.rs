//! # queuelock-etcd — the etcd backend of queuelock
//!
//! Implements the queuelock backend contract on etcd v3 (`etcd-client`):
//!
//! * a **session** is a lease kept alive in the background at TTL/3, by one renewal task
//!   per backend for all its sessions (each renewal a short keep-alive stream). It turns
//!   `Suspended` when keep-alives fail and `Lost` when the lease is gone or when the
//!   client's conservative deadline passes (send time of the last acknowledged keep-alive
//!   + TTL), so the client never believes in a lease the server has already expired;
//! * a queue node is the key `<prefix>/<queue>/<lease id hex>-<kind>-<slot>`, where the
//!   slot is the lowest number of the queue no other live attempt of the session holds:
//!   a session reuses its keys, as Go's Mutex reuses `<queue>/<lease hex>`, because
//!   etcd's index keeps every deleted key until compaction and every read of the queue
//!   walks them. It is bound to the lease and created with one transaction that also reads the queue, as
//!   etcd's Go `concurrency.Mutex` does. The queue is every key under `<queue>/`, ordered
//!   by `create_revision` — the layout `etcdctl lock <queue>` uses, so Go clients and
//!   queuelock exclude each other. Order and fencing token are the `create_revision`;
//! * waiting watches one key for deletion, over **one watch stream per backend**
//!   multiplexing every watch. A watch is opened at the current revision and only then is
//!   the key read: etcd 3.4 serves watches that start in the past from a slow "unsynced"
//!   path polled every 100 ms, which caps Go's mutex at ~10 grants/s per waiter. Even a
//!   watch from "now" lands there when a write holds etcd's watch lock as it is opened,
//!   so a key's deletion watch is shared and kept for a few seconds after use: the next
//!   waiter on the key (sessions reuse keys; contenders keep their order) finds it in
//!   sync. It hears deletions only, with the key as it was: a holder marks its node with
//!   a write when it was granted after a wait (`mark_held`), so the waiter behind learns
//!   from the deletion itself that nothing older is left and holds without a read. A
//!   waiter's reads are served without a round of consensus (serializable) unless the
//!   member's revision is older than what the waiter has already seen;
//! * deletes and guarded writes compare the node's `create_revision`, so a late delete
//!   never removes a newer key.
//!
//! Most users reach it through the facade crate, `queuelock::Client::connect("etcd://h1:2379,h2:2379/app")`
//! (feature `etcd` of `queuelock`); to use the backend directly:
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock_core::Result<()> {
//! use queuelock_core::{Backend, NodeKind, NodeSpec, SessionOptions};
//! use queuelock_etcd::{EtcdBackend, EtcdOptions};
//!
//! let etcd = EtcdBackend::connect(&["127.0.0.1:2379"], "/app", EtcdOptions::default()).await?;
//! let session = etcd.open_session(&SessionOptions::default()).await?; // a lease, kept alive
//! let created = session.create_sequential(&NodeSpec::new("jobs", NodeKind::Lock, vec![])).await?;
//! println!("queued at {} with fencing token {}", created.node.key, created.node.token);
//! session.close().await?; // revokes the lease: its keys go with it
//! # Ok(()) }
//! ```
//!
//! ## Building
//!
//! `etcd-client` compiles etcd's protobuf definitions at build time: `protoc` and
//! protobuf's well-known types must be installed (Debian/Ubuntu: `protobuf-compiler` and
//! `libprotobuf-dev`; or point `PROTOC` at a `protoc` binary).
//!
//! ## Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `testkit` | no | `testkit::EtcdHarness`: this backend under queuelock-core's test `Harness`, against the etcd named by `QUEUELOCK_TEST_ETCD` |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod error;
mod keys;
mod renew;
mod session;
mod watch;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queuelock_core::{Backend, Result, Session, SessionOptions, TlsPem};

pub use error::map_error;
use keys::Keys;
use session::EtcdSession;
use watch::WatchHub;

/// How to reach etcd.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// How long to wait for a connection (default 10 s).
    pub connect_timeout: Option<Duration>,
    /// Per-request timeout (default: none).
    pub request_timeout: Option<Duration>,
    /// User name and password for etcd authentication.
    pub credentials: Option<(String, String)>,
    /// TLS: connect with `https`, verify the server with this CA, optionally present a
    /// client certificate.
    pub tls: Option<TlsPem>,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("password", &self.credentials.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl EtcdOptions {
    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// Sets user and password.
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Connects over TLS with this material (server verified against its CA).
    pub fn with_tls(mut self, tls: TlsPem) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// etcd-client's TLS options from PEM material.
fn tls_options(tls: &TlsPem) -> etcd_client::TlsOptions {
    let mut o = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca {
        o = o.ca_certificate(etcd_client::Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &tls.identity {
        o = o.identity(etcd_client::Identity::from_pem(cert, key));
    }
    o
}

/// A connection to an etcd cluster; opens lease-backed sessions.
#[derive(Clone)]
pub struct EtcdBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: etcd_client::Client,
    pub(crate) keys: Keys,
    pub(crate) watches: WatchHub,
    pub(crate) renewer: renew::Renewer,
    endpoints: Vec<String>,
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.keys.prefix())
            .finish()
    }
}

impl EtcdBackend {
    /// Connects to the cluster at `endpoints` (`host:port`), keeping every key under
    /// `prefix` (`""` for the root, or `/app`).
    ///
    /// Cancel safety: safe; a dropped call leaves nothing behind.
    pub async fn connect(
        endpoints: &[impl AsRef<str>],
        prefix: &str,
        options: EtcdOptions,
    ) -> Result<Self> {
        let endpoints: Vec<String> = endpoints.iter().map(|e| e.as_ref().to_owned()).collect();
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout.unwrap_or(Duration::from_secs(10)))
            // HTTP/2 pings find a dead connection without waiting for TCP. etcd answers
            // pings closer than --grpc-keepalive-min-time (5 s by default), or any ping
            // on a connection without streams, with GOAWAY "too_many_pings": 6 s, and
            // only while streams (lease keep-alives, watches) are open.
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
            .with_keep_alive_while_idle(false);
        if let Some(t) = options.request_timeout {
            opts = opts.with_timeout(t);
        }
        if let Some((u, p)) = &options.credentials {
            opts = opts.with_user(u.clone(), p.clone());
        }
        if let Some(tls) = &options.tls {
            opts = opts.with_tls(tls_options(tls));
        }
        let keys = Keys::new(prefix);
        let client = etcd_client::Client::connect(&endpoints, Some(opts))
            .await
            .map_err(map_error)?;
        let mut probe = client.kv_client();
        // Fail now, not at the first lock, when the cluster cannot be reached or does not
        // let us read: the probe key is under the prefix, so a role limited to the
        // prefix passes.
        probe
            .get(keys.abs("queuelock-probe"), None)
            .await
            .map_err(map_error)?;
        Ok(EtcdBackend {
            inner: Arc::new(Inner {
                watches: WatchHub::new(client.watch_client()),
                renewer: renew::Renewer::new(client.clone()),
                client,
                keys,
                endpoints,
            }),
        })
    }
}

#[async_trait]
impl Backend for EtcdBackend {
    fn name(&self) -> &'static str {
        "etcd"
    }

    /// Grants a lease and starts keeping it alive.
    ///
    /// Cancel safety: a dropped call may leave a lease that expires after its TTL.
    async fn open_session(&self, options: &SessionOptions) -> Result<Arc<dyn Session>> {
        Ok(Arc::new(
            EtcdSession::open(self.inner.clone(), options.ttl).await?,
        ))
    }
}

/// The test [`queuelock_core::testkit::Harness`] for etcd: connects to the server named
/// by `QUEUELOCK_TEST_ETCD` (`host:port`, set by `scripts/test`) and fails when it is not
/// set.
#[cfg(feature = "testkit")]
pub mod testkit {
    /// The raw client this backend is built on (the same version and features), for
    /// tests that act as another identity, bypassing queuelock.
    pub use etcd_client;
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use queuelock_core::testkit::proxy::Proxy;
    use queuelock_core::testkit::{Harness, Link};
    use queuelock_core::{Backend, SessionId};

    use crate::{EtcdBackend, EtcdOptions};

    /// Harness on a real etcd.
    #[derive(Clone, Debug)]
    pub struct EtcdHarness {
        endpoint: String,
        prefix: String,
    }

    impl EtcdHarness {
        /// Reads `QUEUELOCK_TEST_ETCD`; panics (fails the test) when unset.
        pub fn from_env() -> Self {
            let endpoint = std::env::var("QUEUELOCK_TEST_ETCD").unwrap_or_else(|_| {
                panic!("QUEUELOCK_TEST_ETCD is not set: run ./scripts/test, which starts etcd")
            });
            EtcdHarness {
                endpoint,
                prefix: "/queuelock-tests".to_owned(),
            }
        }

        /// The `etcd://` URL of the server under test.
        pub fn url(&self) -> String {
            format!("etcd://{}{}", self.endpoint, self.prefix)
        }
    }

    #[async_trait]
    impl Harness for EtcdHarness {
        async fn backend_with_link(&self) -> (Arc<dyn Backend>, Box<dyn Link>) {
            let proxy = Proxy::start(self.endpoint.clone()).await;
            let b = EtcdBackend::connect(&[&proxy.addr], &self.prefix, EtcdOptions::default())
                .await
                .expect("connect to the test etcd through a proxy");
            (Arc::new(b), Box::new(proxy))
        }

        async fn backend(&self) -> Arc<dyn Backend> {
            Arc::new(
                EtcdBackend::connect(&[&self.endpoint], &self.prefix, EtcdOptions::default())
                    .await
                    .expect("connect to the test etcd"),
            )
        }

        async fn expire(&self, id: SessionId) {
            let mut c = etcd_client::Client::connect([&self.endpoint], None)
                .await
                .expect("connect to the test etcd");
            c.lease_revoke(id.0 as i64).await.expect("revoke lease");
        }

        fn ttl(&self) -> Duration {
            Duration::from_secs(2)
        }
    }
}
