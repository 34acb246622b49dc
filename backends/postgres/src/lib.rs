//! # queuelock-postgres — the PostgreSQL backend of queuelock
//!
//! Implements the queuelock backend contract on PostgreSQL (`tokio-postgres` 0.7), in a
//! schema of its own (`queuelock` by default) that the client creates and migrates
//! itself:
//!
//! * a **session** is a row of `sessions` whose `expires_at` is computed on the
//!   **server's clock** (`clock_timestamp() + ttl`) and extended by a keep-alive
//!   (`UPDATE ... WHERE expires_at > clock_timestamp()`: an expired session stays
//!   expired). The client-side deadline ([`queuelock_core::Session::valid_until`]) is the
//!   send time of the last answered keep-alive + TTL, so a process frozen past its TTL
//!   never trusts a stale `Live`. PostgreSQL expires nothing by itself: **every client
//!   reaps** expired sessions (each keep-alive does, and so does a waiter whose
//!   predecessor's session expiry has passed); deleting a session cascades to its nodes.
//! * an **ephemeral sequential node** is a row of `nodes` bound to its session. Its
//!   sequence and **fencing token** are one value from a global sequence, taken after
//!   locking the queue's row in `queues`, so that within a queue token order is commit
//!   order; its key is `<queue>/<kind>-<token, 19 digits>`. Creates are idempotent per
//!   attempt id (a unique column), and `abandon` leaves a tombstone (under the same row
//!   lock) that a create still in flight checks.
//! * the **deletion watch** is LISTEN-then-read-then-wait: a trigger NOTIFYs the
//!   channel of a node's key when the node is deleted (release, close, reap) and the
//!   channel of its queue on any change. A waiter LISTENs on the one key it waits for
//!   (one channel per key, so a release wakes only the waiter behind it), then reads the
//!   node, then waits for the notification, for a timer armed at the node's session
//!   expiry (nothing on the server would delete it then), or for the LISTEN connection's
//!   loss (NOTIFY is not replayed after a reconnect: the waiter reads again).
//! * **guarded writes** are one function call that share-locks the guard's row (key and
//!   token, session not expired) and then writes; **delete** is identity-guarded on key
//!   and token.
//!
//! Each backend holds one LISTEN connection and a few request connections; every
//! contract operation is one statement (a function call) on a prepared statement, so
//! sessions pipeline on the shared connections. PgBouncer in transaction mode breaks
//! LISTEN: connect directly or through session pooling.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock_core::Result<()> {
//! use queuelock_core::{Backend, NodeKind, NodeSpec, SessionOptions};
//! use queuelock_postgres::{PgBackend, PgConfig, PgOptions};
//!
//! let pg: PgConfig = "host=127.0.0.1 port=5432 user=app dbname=app".parse().expect("config");
//! let backend = PgBackend::connect(pg, PgOptions::default()).await?;
//! let session = backend.open_session(&SessionOptions::default()).await?;
//! let created = session.create_sequential(&NodeSpec::new("jobs", NodeKind::Lock, vec![])).await?;
//! println!("queued as {} with fencing token {}", created.node.key, created.node.token);
//! session.close().await?; // deletes the session row: its nodes go with it
//! # Ok(()) }
//! ```
//!
//! ## Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `testkit` | no | `testkit::PgHarness`: this backend under queuelock-core's test `Harness`, against the PostgreSQL named by `QUEUELOCK_TEST_POSTGRES` |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod conn;
mod error;
mod schema;
mod session;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queuelock_core::{Backend, Error, Result, Session, SessionOptions, TlsPem};

pub use error::map_error;
/// libpq's `sslmode`, as tokio-postgres knows it.
pub use tokio_postgres::config::SslMode;
/// tokio-postgres' connection settings (host, port, user, password, dbname, sslmode,
/// application_name, ...), parsed from a libpq URL or `key=value` string.
pub use tokio_postgres::Config as PgConfig;

use conn::{Listener, Pool};

/// How queuelock uses the database.
#[derive(Clone)]
#[non_exhaustive]
pub struct PgOptions {
    /// The schema queuelock's tables live in (created if missing; default `queuelock`).
    pub schema: String,
    /// How long to wait for a connection (default 10 s).
    pub connect_timeout: Duration,
    /// TLS: the CA the server's certificate must chain to, and an optional client
    /// certificate. `None`: plain TCP (or whatever `sslmode` allows without TLS).
    pub tls: Option<TlsPem>,
    /// Request connections per backend (default 2), besides its LISTEN connection.
    pub connections: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: "queuelock".to_owned(),
            connect_timeout: Duration::from_secs(10),
            tls: None,
            connections: 2,
        }
    }
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("schema", &self.schema)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .field("connections", &self.connections)
            .finish()
    }
}

impl PgOptions {
    /// Sets the schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Connects with TLS (server verified against the CA, host name checked).
    pub fn with_tls(mut self, tls: TlsPem) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// A PostgreSQL database; every session is a row, sharing the backend's connections.
#[derive(Clone)]
pub struct PgBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pg: PgConfig,
    pub(crate) tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pub(crate) schema: String,
    pub(crate) connect_timeout: Duration,
    /// `host:port/dbname` for messages (never credentials).
    pub(crate) shown: String,
    pub(crate) pool: Pool,
    pub(crate) listener: Listener,
}

impl fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBackend")
            .field("server", &self.inner.shown)
            .field("schema", &self.inner.schema)
            .finish()
    }
}

/// What a configuration's hosts and database look like in messages.
fn shown(pg: &PgConfig) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = pg.get_ports().get(i).or(pg.get_ports().first()).copied();
            let host = match h {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            match port {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }
        })
        .collect();
    format!(
        "{}/{}",
        hosts.join(","),
        pg.get_dbname().unwrap_or_default()
    )
}

/// rustls client configuration from PEM material.
fn tls_config(tls: &TlsPem) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let bad = |what: &str, e: String| Error::Config(format!("TLS {what} for PostgreSQL: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    let Some(ca) = &tls.ca else {
        return Err(Error::Config(
            "TLS for PostgreSQL needs ca= (the CA that signed the server's certificate)".into(),
        ));
    };
    for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
        let cert = cert.map_err(|e| bad("CA", e.to_string()))?;
        roots.add(cert).map_err(|e| bad("CA", e.to_string()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("protocol versions", e.to_string()))?
    .with_root_certificates(roots);
    let config = match &tls.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = rustls_pemfile::certs(&mut cert.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad("client certificate", e.to_string()))?;
            // The key's text never goes into a message.
            let key = rustls_pemfile::private_key(&mut key.as_bytes())
                .ok()
                .flatten()
                .ok_or_else(|| bad("client key", "no private key in the PEM".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| bad("client certificate/key", "refused".into()))?
        }
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PgBackend {
    /// Connects to the database `pg` names, creates or migrates queuelock's schema
    /// (`options.schema`) if needed, and checks that it is usable.
    ///
    /// Errors: [`Error::Config`] for an invalid schema name or TLS material;
    /// [`Error::Connection`] when the server does not answer; [`Error::Auth`] when it
    /// refuses the credentials, or the user may neither use nor create the schema (the
    /// message says which right is missing).
    ///
    /// Cancel safety: safe; a dropped call may leave the schema created or migrated.
    pub async fn connect(pg: PgConfig, options: PgOptions) -> Result<Self> {
        schema::check_schema(&options.schema)?;
        let tls = options.tls.as_ref().map(tls_config).transpose()?;
        let mut pg = pg;
        if tls.is_some() && pg.get_ssl_mode() == tokio_postgres::config::SslMode::Prefer {
            // With a CA given, TLS is required, not merely preferred.
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("queuelock");
        }
        let inner = Arc::new(Inner {
            shown: shown(&pg),
            pg,
            tls,
            schema: options.schema.clone(),
            connect_timeout: options.connect_timeout,
            pool: Pool::new(options.connections),
            listener: Listener::new(),
        });
        let client = migrate(&inner).await?;
        // The migration's connection becomes the first request connection.
        inner.pool.adopt(client, &inner.schema).await?;
        Ok(PgBackend { inner })
    }

    /// Notifications the LISTEN connection has received so far (each is one wake-up
    /// signal for some waiter of this backend): what shows that a release wakes one
    /// waiter, not a herd.
    pub fn notifications_received(&self) -> u64 {
        self.inner
            .listener
            .received
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The schema this backend uses.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }
}

/// Brings the schema to [`schema::VERSION`]: a quick check first (a role that may only
/// use the schema needs no more), then, if needed, the migrations in one transaction
/// under an advisory transaction lock, each applied once.
async fn migrate(inner: &Arc<Inner>) -> Result<tokio_postgres::Client> {
    let s = &inner.schema;
    let (mut client, _ended) = conn::open(inner, None).await?;
    let current = client
        .query_opt(&format!("SELECT max(version) FROM {s}.migrations"), &[])
        .await;
    match current {
        Ok(Some(row)) => {
            let v: Option<i32> = row.get(0);
            if v == Some(schema::VERSION) {
                return Ok(client);
            }
            if v.is_some_and(|v| v > schema::VERSION) {
                return Err(Error::Config(format!(
                    "schema {s} is at version {} but this queuelock knows only up to {}: \
                     upgrade queuelock",
                    v.unwrap_or_default(),
                    schema::VERSION
                )));
            }
        }
        Ok(None) => {}
        // undefined_table / invalid_schema_name: not created yet.
        Err(e) if error::has_code(&e, "42P01") || error::has_code(&e, "3F000") => {}
        Err(e) => return Err(map_error(e)),
    }
    let rights = |e: tokio_postgres::Error| match map_error(e) {
        Error::Auth { message, source } => Error::Auth {
            message: format!(
                "cannot create or migrate queuelock's schema {s:?} ({message}): run queuelock \
                 once as a role with CREATE on the database (or ownership of schema {s}), \
                 then grant this role USAGE on it and the rights on its tables and functions"
            ),
            source,
        },
        other => other,
    };
    let tx = client.transaction().await.map_err(map_error)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('queuelock schema ' || $1::text))",
        &[s],
    )
    .await
    .map_err(map_error)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s}; \
         CREATE TABLE IF NOT EXISTS {s}.migrations (version int PRIMARY KEY, \
         applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(rights)?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {s}.migrations"),
            &[],
        )
        .await
        .map_err(map_error)?;
    let have: i32 = row.get(0);
    for v in have..schema::VERSION {
        tracing::info!(schema = %s, version = v + 1, "migrating queuelock's schema");
        tx.batch_execute(&schema::migration(v as usize, s))
            .await
            .map_err(rights)?;
        tx.execute(
            &format!("INSERT INTO {s}.migrations (version) VALUES ($1)"),
            &[&(v + 1)],
        )
        .await
        .map_err(map_error)?;
    }
    tx.commit().await.map_err(map_error)?;
    debug_assert_eq!(schema::count(), schema::VERSION as usize);
    Ok(client)
}

#[async_trait]
impl Backend for PgBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    /// Inserts the session row (expiry on the server's clock) and starts its keep-alive.
    ///
    /// Cancel safety: a dropped call may leave a session row, reaped after its TTL.
    async fn open_session(&self, options: &SessionOptions) -> Result<Arc<dyn Session>> {
        Ok(Arc::new(
            session::PgSession::open(self.inner.clone(), options.ttl).await?,
        ))
    }
}

/// The test [`queuelock_core::testkit::Harness`] for PostgreSQL: connects to the server
/// named by `QUEUELOCK_TEST_POSTGRES` (a libpq URL, set by `scripts/test`) and fails when
/// it is not set.
#[cfg(feature = "testkit")]
pub mod testkit {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use queuelock_core::testkit::proxy::Proxy;
    use queuelock_core::testkit::{Harness, Link};
    use queuelock_core::{Backend, SessionId};
    /// The raw client this backend is built on, for tests that act as another role.
    pub use tokio_postgres;

    use crate::{PgBackend, PgConfig, PgOptions};

    /// The libpq URL of the test server (`QUEUELOCK_TEST_POSTGRES`); panics (fails the
    /// test) when unset.
    pub fn url() -> String {
        std::env::var("QUEUELOCK_TEST_POSTGRES").unwrap_or_else(|_| {
            panic!(
                "QUEUELOCK_TEST_POSTGRES is not set: run ./scripts/test (or scripts/with-servers), \
                 which starts PostgreSQL"
            )
        })
    }

    /// The test server's settings.
    pub fn config() -> PgConfig {
        url()
            .parse()
            .expect("QUEUELOCK_TEST_POSTGRES is a libpq URL")
    }

    /// A raw tokio-postgres client on the test server (as its superuser), driven in the
    /// background.
    pub async fn raw() -> tokio_postgres::Client {
        let (client, conn) = config()
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(conn);
        client
    }

    /// Harness on a real PostgreSQL, schema `queuelock_tests`.
    #[derive(Debug, Default)]
    pub struct PgHarness;

    /// The schema the harness's backends use.
    pub const SCHEMA: &str = "queuelock_tests";

    impl PgHarness {
        /// Reads `QUEUELOCK_TEST_POSTGRES`; panics (fails the test) when unset.
        pub fn from_env() -> Self {
            let _ = url();
            PgHarness
        }

        /// A backend on the test server (its own connections).
        pub async fn pg_backend(&self) -> PgBackend {
            PgBackend::connect(config(), PgOptions::default().with_schema(SCHEMA))
                .await
                .expect("connect to the test PostgreSQL")
        }
    }

    #[async_trait]
    impl Harness for PgHarness {
        async fn backend(&self) -> Arc<dyn Backend> {
            Arc::new(self.pg_backend().await)
        }

        async fn backend_with_link(&self) -> (Arc<dyn Backend>, Box<dyn Link>) {
            let base = config();
            let port = base.get_ports().first().copied().unwrap_or(5432);
            let proxy = Proxy::start(format!("127.0.0.1:{port}")).await;
            let (host, pport) = proxy.addr.rsplit_once(':').expect("host:port");
            // A new config with only the proxy's address: `host()`/`port()` on the parsed
            // one would add a second host after the server's own, which libpq-style
            // clients try first, so no connection would cross the proxy at all.
            let mut pg = PgConfig::new();
            pg.host(host).port(pport.parse().expect("port"));
            if let Some(user) = base.get_user() {
                pg.user(user);
            }
            if let Some(db) = base.get_dbname() {
                pg.dbname(db);
            }
            if let Some(pw) = base.get_password() {
                pg.password(pw);
            }
            let b = PgBackend::connect(pg, PgOptions::default().with_schema(SCHEMA))
                .await
                .expect("connect to the test PostgreSQL through a proxy");
            (Arc::new(b), Box::new(proxy))
        }

        /// Moves the session's expiry into the past on the server's clock and reaps it,
        /// as the first client to notice an expired session does.
        async fn expire(&self, id: SessionId) {
            let c = raw().await;
            c.execute(
                &format!(
                    "UPDATE {SCHEMA}.sessions SET expires_at = clock_timestamp() - interval '1 ms' \
                     WHERE id = $1"
                ),
                &[&(id.0 as i64)],
            )
            .await
            .expect("expire session");
            c.execute(&format!("SELECT {SCHEMA}.reap()"), &[])
                .await
                .expect("reap");
        }

        fn ttl(&self) -> Duration {
            Duration::from_secs(2)
        }
    }
}
