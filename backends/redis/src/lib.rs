//! # queuelock-redis — the Redis backend of queuelock
//!
//! Implements the queuelock backend contract on Redis (the `redis` crate, async, tokio),
//! with every step that touches more than one key as one Lua script (`src/queue.lua`),
//! so that each runs atomically on the server:
//!
//! * a **session** is a key `P:s:<id>` with a PX TTL, renewed every TTL/3 by a script
//!   that refuses once the key has expired (the session is then lost for good). Expiry is
//!   decided by the server's clock, never the client's. The client-side
//!   [`queuelock_core::Session::valid_until`] is the send time of the last acknowledged
//!   renewal + TTL, so a process frozen past its TTL never trusts a stale `Live`.
//! * a **node** is a member of the queue's sorted set `P:{Q}:z`, scored by its fencing
//!   token, with its owner session and kind in `P:{Q}:n` and its payload in `P:{Q}:p`.
//!   The **fencing token** is `INCR P::token`, a counter that is never deleted (the only
//!   key queuelock leaves behind), so tokens grow across the store's history. Creating is
//!   idempotent per `spec.id` (the member *is* the attempt id). Every script that reads a
//!   queue purges the nodes of sessions whose key has expired.
//! * the **deletion watch** subscribes to the node's channel `P:{Q}:d:<id>` first, then
//!   checks the node, then waits for the release message, a timer at the owner
//!   session's expiry (the check returns its PTTL), or a reconnect of the pub/sub
//!   connection (pub/sub is not replayed, so every waiter re-checks). One release
//!   publishes one message to the one waiter behind it.
//! * **guarded deletes and writes** are scripts that check the node's id and token (and
//!   that its owner is alive) first.
//! * **interop with the plain lock**: the key `P:<Q>` is where other tools keep a plain
//!   `SET <name> <token> NX PX <ttl>` lock (redis-py's `Lock`, the usual pattern). While
//!   a queue has nodes, the scripts keep that key set to a queuelock marker (refreshed by
//!   the sessions' renewals), so a plain `SET NX` fails; while someone else's value is
//!   there, it is listed at the head of the queue as a node of unknown kind, so no
//!   waiter is granted past it (waiting on it polls, as it is not ours to be told about).
//!
//! Keys of one queue share the hash tag `{Q}`. Session keys and the token counter do
//! not: this backend is for a single Redis server (or a primary with replicas), not
//! Redis Cluster.
//!
//! What Redis promises less than etcd or ZooKeeper (see the README's "Choosing a
//! backend"): with asynchronous replication a failover can lose acknowledged writes (two
//! holders, a token handed out twice); `appendfsync everysec` loses up to a second on a
//! crash (run `appendfsync always`); expiry follows the server's clock.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock_core::Result<()> {
//! use queuelock_core::{Backend, NodeKind, NodeSpec, SessionOptions};
//! use queuelock_redis::{RedisBackend, RedisOptions};
//!
//! let redis = RedisBackend::connect("127.0.0.1:6379", RedisOptions::default()).await?;
//! let session = redis.open_session(&SessionOptions::default()).await?;
//! let created = session.create_sequential(&NodeSpec::new("jobs", NodeKind::Lock, vec![])).await?;
//! println!("queued as {} with fencing token {}", created.node.key, created.node.token);
//! session.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `testkit` | no | `testkit::RedisHarness`: this backend under queuelock-core's test `Harness`, against the Redis named by `QUEUELOCK_TEST_REDIS` |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod error;
mod session;
mod watch;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queuelock_core::{Backend, Error, Result, Session, SessionOptions, TlsPem};
use redis::Value;

pub use error::map_error;
use session::RedisSession;
use watch::Watcher;

/// How to reach Redis.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Prefix of every key and channel (default `queuelock`); no `{`, `}` or spaces.
    pub prefix: String,
    /// Database number (default 0).
    pub db: i64,
    /// ACL user name (`AUTH user pass`); `None` for the default user.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// TLS (`rediss://`): CA and optional client certificate.
    pub tls: Option<TlsPem>,
    /// How long to wait for a connection (default 10 s).
    pub connect_timeout: Option<Duration>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "queuelock".into(),
            db: 0,
            username: None,
            password: None,
            tls: None,
            connect_timeout: None,
        }
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("prefix", &self.prefix)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl RedisOptions {
    /// Sets the key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the database number.
    pub fn with_db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// Sets ACL credentials (user `None`: the default user). Never shown in `Debug`.
    pub fn with_credentials(mut self, user: Option<String>, password: impl Into<String>) -> Self {
        self.username = user;
        self.password = Some(password.into());
        self
    }

    /// Connects over TLS with this material (server verified against its CA).
    pub fn with_tls(mut self, tls: TlsPem) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }
}

/// A Redis server; sessions share one command connection (multiplexed, reconnecting)
/// and one pub/sub connection.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("addr", &self.inner.addr)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

pub(crate) struct Inner {
    addr: String,
    pub(crate) prefix: String,
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    pub(crate) watcher: Arc<Watcher>,
    /// How long one request may go unanswered before it counts as a connection error.
    pub(crate) op_timeout: Duration,
    /// Waits on other sessions' nodes that a pub/sub message ended.
    pub(crate) woken: std::sync::atomic::AtomicU64,
}

impl Inner {
    /// Runs one step of the script. `queue` routes it (KEYS[1] = the queue's base key).
    pub(crate) async fn call(
        &self,
        op: &str,
        args: &[&[u8]],
        queue: Option<&str>,
    ) -> Result<Value> {
        let mut inv = self.script.prepare_invoke();
        if let Some(q) = queue {
            inv.key(format!("{}:{{{q}}}", self.prefix));
        }
        inv.arg(op).arg(&self.prefix);
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.op_timeout, inv.invoke_async::<Value>(&mut conn)).await {
            Ok(r) => r.map_err(map_error),
            Err(_) => Err(Error::connection(format!(
                "no answer from Redis at {} within {:?}",
                self.addr, self.op_timeout
            ))),
        }
    }

    async fn cmd(&self, cmd: &redis::Cmd) -> Result<Value> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.op_timeout, cmd.query_async::<Value>(&mut conn)).await {
            Ok(r) => r.map_err(map_error),
            Err(_) => Err(Error::connection(format!(
                "no answer from Redis at {} within {:?}",
                self.addr, self.op_timeout
            ))),
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.cmd(redis::cmd("GET").arg(key)).await? {
            Value::BulkString(b) => Ok(Some(b)),
            _ => Ok(None),
        }
    }

    pub(crate) async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>> {
        match self
            .cmd(redis::cmd("SET").arg(key).arg(value).arg("NX").arg("GET"))
            .await?
        {
            Value::BulkString(b) => Ok(Some(b)),
            _ => Ok(None),
        }
    }

    /// The plain lock key other tools use for queue `q`.
    pub(crate) fn plain_key(&self, q: &str) -> String {
        format!("{}:{q}", self.prefix)
    }
}

fn check_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 128
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid Redis key prefix {prefix:?}: use 1-128 of [A-Za-z0-9._/-]"
        )))
    }
}

impl RedisBackend {
    /// Connects to the Redis server at `addr` (`host:port`) and checks that it answers
    /// (and that it is Redis ≥ 7, whose `PEXPIRE ... GT` the scripts use).
    ///
    /// Errors: [`Error::Config`] for a bad address or prefix, [`Error::Auth`] for refused
    /// credentials, [`Error::Connection`] when nothing answers within the connect timeout.
    ///
    /// Cancel safety: safe.
    pub async fn connect(addr: &str, options: RedisOptions) -> Result<Self> {
        check_prefix(&options.prefix)?;
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| Error::Config(format!("Redis address {addr:?} is not host:port")))?;
        let connect_timeout = options.connect_timeout.unwrap_or(Duration::from_secs(10));
        let conn_addr = if options.tls.is_some() {
            redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            redis::ConnectionAddr::Tcp(host.to_owned(), port)
        };
        let info = redis::ConnectionInfo {
            addr: conn_addr,
            redis: redis::RedisConnectionInfo {
                db: options.db,
                username: options.username.clone(),
                password: options.password.clone(),
                ..Default::default()
            },
        };
        let client = match &options.tls {
            None => redis::Client::open(info),
            Some(tls) => {
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: tls.identity.as_ref().map(|(cert, key)| {
                            redis::ClientTlsConfig {
                                client_cert: cert.clone().into_bytes(),
                                client_key: key.clone().into_bytes(),
                            }
                        }),
                        root_cert: tls.ca.clone().map(String::into_bytes),
                    },
                )
            }
        }
        .map_err(|e| Error::Config(format!("Redis connection settings are unusable: {e}")))?;
        let op_timeout = Duration::from_secs(5);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(connect_timeout)
            .set_response_timeout(op_timeout)
            .set_number_of_retries(2)
            .set_max_delay(500);
        let conn = tokio::time::timeout(
            connect_timeout,
            redis::aio::ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| {
            Error::connection(format!(
                "no answer from Redis at {addr} within {connect_timeout:?}"
            ))
        })?
        .map_err(map_error)?;
        let inner = Inner {
            addr: addr.to_owned(),
            prefix: options.prefix.clone(),
            conn,
            script: redis::Script::new(include_str!("queue.lua")),
            watcher: Watcher::start(client),
            op_timeout,
            woken: std::sync::atomic::AtomicU64::new(0),
        };
        // INFO is in ACL category @dangerous: a user limited to queuelock's commands may
        // not run it, and then the version is not checked (the scripts fail clearly on
        // Redis < 7 anyway: PEXPIRE's GT option).
        let text = match inner.cmd(redis::cmd("INFO").arg("server")).await {
            Ok(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            Ok(Value::VerbatimString { text, .. }) => text,
            Ok(_) | Err(Error::Auth { .. }) => String::new(),
            Err(e) => return Err(e),
        };
        let major = text
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .and_then(|v| v.split('.').next()?.trim().parse::<u32>().ok());
        if major.is_some_and(|m| m < 7) {
            return Err(Error::Config(format!(
                "Redis at {addr} is older than 7.0, which queuelock's scripts need"
            )));
        }
        if !inner.watcher.connected(connect_timeout).await {
            return Err(Error::connection(format!(
                "Redis at {addr}: no pub/sub connection within {connect_timeout:?}"
            )));
        }
        Ok(RedisBackend {
            inner: Arc::new(inner),
        })
    }

    /// How many pub/sub messages this backend has delivered to its subscribers (waits on
    /// other sessions' nodes and on its own).
    pub fn messages_delivered(&self) -> u64 {
        self.inner
            .watcher
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many waits on another session's node a pub/sub message ended: a release wakes
    /// the one waiter behind it, once.
    pub fn wakeups_by_message(&self) -> u64 {
        self.inner.woken.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    /// Opens a session: a key with a PX TTL of `options.ttl`, renewed every TTL/3.
    ///
    /// Cancel safety: a dropped call may leave a session key that expires after its TTL.
    async fn open_session(&self, options: &SessionOptions) -> Result<Arc<dyn Session>> {
        Ok(Arc::new(
            RedisSession::open(self.inner.clone(), options.ttl).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::session::{target, Target};

    #[test]
    fn keys_name_nodes_plain_locks_or_values() {
        let id = "0b0e6a6e-1f5e-4d57-9a57-3c1b7a8f9f10";
        assert!(matches!(target(&format!("a/b/lock-{id}")), Target::Node("a/b", i) if i == id));
        assert!(matches!(target("a/b/=plain"), Target::Plain("a/b")));
        assert!(matches!(target("a/meta/permits"), Target::Value(_)));
        assert!(matches!(target("a/lock-notauuid"), Target::Value(_)));
        assert!(super::check_prefix("app").is_ok());
        assert!(super::check_prefix("a{b}").is_err());
        assert!(super::check_prefix("").is_err());
    }
}

/// The test [`queuelock_core::testkit::Harness`] for Redis: connects to the server named
/// by `QUEUELOCK_TEST_REDIS` (`host:port`, set by `scripts/test`) and fails when it is
/// not set.
#[cfg(feature = "testkit")]
pub mod testkit {
    use std::sync::Arc;
    use std::time::Duration;

    /// The raw client this backend is built on, for tests that act as another tool.
    pub use redis;

    use async_trait::async_trait;
    use queuelock_core::testkit::proxy::Proxy;
    use queuelock_core::testkit::{Harness, Link};
    use queuelock_core::{Backend, SessionId};

    use crate::{RedisBackend, RedisOptions};

    /// The prefix the tests use.
    pub const PREFIX: &str = "queuelock-tests";

    /// Harness on a real Redis.
    #[derive(Debug)]
    pub struct RedisHarness {
        addr: String,
    }

    impl RedisHarness {
        /// Reads `QUEUELOCK_TEST_REDIS`; panics (fails the test) when unset.
        pub fn from_env() -> Self {
            let addr = std::env::var("QUEUELOCK_TEST_REDIS").unwrap_or_else(|_| {
                panic!("QUEUELOCK_TEST_REDIS is not set: run ./scripts/test, which starts Redis")
            });
            RedisHarness { addr }
        }

        /// `host:port` of the server.
        pub fn addr(&self) -> &str {
            &self.addr
        }

        /// A backend of the concrete type (for tests that count messages).
        pub async fn redis(&self) -> RedisBackend {
            RedisBackend::connect(&self.addr, RedisOptions::default().with_prefix(PREFIX))
                .await
                .expect("connect to the test Redis")
        }

        /// A raw connection to the server, bypassing queuelock.
        pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
            redis::Client::open(format!("redis://{}/", self.addr))
                .expect("client")
                .get_multiplexed_async_connection()
                .await
                .expect("raw connection to the test Redis")
        }
    }

    #[async_trait]
    impl Harness for RedisHarness {
        async fn backend_with_link(&self) -> (Arc<dyn Backend>, Box<dyn Link>) {
            let proxy = Proxy::start(self.addr.clone()).await;
            let b = RedisBackend::connect(&proxy.addr, RedisOptions::default().with_prefix(PREFIX))
                .await
                .expect("connect to the test Redis through a proxy");
            (Arc::new(b), Box::new(proxy))
        }

        async fn backend(&self) -> Arc<dyn Backend> {
            Arc::new(self.redis().await)
        }

        /// Deletes the session's key from another connection: the server's view of an
        /// expiry (the owner finds out at its next renewal).
        async fn expire(&self, id: SessionId) {
            let mut c = self.raw().await;
            let _: () = redis::cmd("DEL")
                .arg(format!("{PREFIX}:s:{id}"))
                .query_async(&mut c)
                .await
                .expect("DEL session key");
        }

        fn ttl(&self) -> Duration {
            Duration::from_secs(2)
        }
    }
}
