//! From a [`Config`] to a connected [`Client`]: the one place that knows every backend
//! crate. Each backend is an arm compiled in with its cargo feature; one fallback names
//! the feature a configuration needs that this build lacks.

use std::sync::Arc;

use queuelock_core::{Backend, Error, Result};

use crate::client::Client;
#[cfg(any(
    feature = "etcd",
    feature = "zookeeper",
    feature = "postgres",
    feature = "redis"
))]
use crate::config::TlsConfig;
use crate::config::{BackendConfig, Config};

impl Client {
    /// Connects to the store a URL names: `memory://`, `etcd://h1:2379,h2:2379/prefix`,
    /// `zk://h1:2181/chroot`, with options as query parameters (`?ttl=10s`). See
    /// [`Config::from_url`] for the forms.
    ///
    /// Cancel safety: safe; a dropped call leaves nothing behind.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_config(&Config::from_url(url)?).await
    }

    /// Connects as `config` says.
    ///
    /// Cancel safety: safe; a dropped call leaves nothing behind.
    pub async fn with_config(config: &Config) -> Result<Self> {
        config.check()?;
        let backend = backend(config).await?;
        Ok(Client::new(backend, config.client_options()))
    }

    /// Connects to the store named by the `QUEUELOCK_URL` environment variable, or to the
    /// process-wide in-process store (`memory://`) when it is unset or empty;
    /// `QUEUELOCK_TTL`, `QUEUELOCK_CONNECT_TIMEOUT`, `QUEUELOCK_LOSS_POLICY` and
    /// `QUEUELOCK_LABEL` override the URL's options ([`Config::from_env`]).
    ///
    /// Cancel safety: safe.
    pub async fn from_env() -> Result<Self> {
        Self::with_config(&Config::from_env()?).await
    }
}

/// Builds (and connects) the backend a configuration names.
async fn backend(config: &Config) -> Result<Arc<dyn Backend>> {
    match &config.backend {
        #[cfg(feature = "memory")]
        BackendConfig::Memory { name } => Ok(memory(name.as_deref())),
        #[cfg(feature = "etcd")]
        BackendConfig::Etcd {
            endpoints,
            prefix,
            user,
            password,
            tls,
        } => {
            etcd(
                config,
                endpoints,
                prefix,
                user.as_deref(),
                password.as_ref(),
                tls.as_ref(),
            )
            .await
        }
        #[cfg(feature = "zookeeper")]
        BackendConfig::ZooKeeper {
            hosts,
            chroot,
            digest,
            tls,
            naming,
        } => {
            zookeeper(
                config,
                hosts,
                chroot,
                digest.as_ref(),
                tls.as_ref(),
                *naming,
            )
            .await
        }
        #[cfg(feature = "redis")]
        BackendConfig::Redis {
            host,
            db,
            prefix,
            user,
            password,
            tls,
        } => {
            redis(
                config,
                host,
                *db,
                prefix,
                user.clone(),
                password.as_ref(),
                tls.as_ref(),
            )
            .await
        }
        #[cfg(feature = "postgres")]
        BackendConfig::Postgres { .. } => postgres(config).await,
        #[cfg(not(all(
            feature = "memory",
            feature = "etcd",
            feature = "zookeeper",
            feature = "postgres",
            feature = "redis"
        )))]
        other => Err(Error::FeatureDisabled {
            backend: other.kind(),
            feature: other.kind(),
        }),
    }
}

#[cfg(feature = "etcd")]
async fn etcd(
    config: &Config,
    endpoints: &[String],
    prefix: &str,
    user: Option<&str>,
    password: Option<&crate::Secret>,
    tls: Option<&TlsConfig>,
) -> Result<Arc<dyn Backend>> {
    use queuelock_etcd::{EtcdBackend, EtcdOptions};
    let mut options = EtcdOptions::default().with_connect_timeout(config.connect_timeout);
    if let Some(tls) = load_tls(tls)? {
        options = options.with_tls(tls);
    }
    // Config::check refused a user without a password and the reverse.
    if let (Some(u), Some(p)) = (user, password) {
        options = options.with_credentials(u, p.expose());
    }
    let connect = EtcdBackend::connect(endpoints, prefix, options);
    let at = format!("etcd at {}", endpoints.join(","));
    within(config, at, "", connect).await
}

#[cfg(feature = "zookeeper")]
async fn zookeeper(
    config: &Config,
    hosts: &[String],
    chroot: &str,
    digest: Option<&crate::Secret>,
    tls: Option<&TlsConfig>,
    naming: crate::ZkNaming,
) -> Result<Arc<dyn Backend>> {
    use queuelock_zookeeper::{Naming, ZkBackend, ZkOptions};
    let naming = match naming {
        crate::ZkNaming::Curator => Naming::Curator,
        crate::ZkNaming::Kazoo => Naming::Kazoo,
    };
    let mut options = ZkOptions::default()
        .with_connect_timeout(config.connect_timeout)
        .with_naming(naming);
    // Config::check refused a digest without `:`.
    if let Some(d) = digest {
        options = options.with_digest(d.expose());
    }
    let tls_on = tls.is_some();
    if let Some(tls) = load_tls(tls)? {
        options = options.with_tls(tls);
    }
    let hosts = hosts.join(",");
    // A TLS handshake ZooKeeper's client cannot complete shows as no answer at all.
    let hint = if tls_on {
        " (TLS: check that this is the secure client port, that the server's \
         certificate chains to ca= and names the host, and the client certificate)"
    } else {
        ""
    };
    let connect = ZkBackend::connect(&hosts, chroot, options);
    within(config, format!("ZooKeeper at {hosts}"), hint, connect).await
}

#[cfg(feature = "redis")]
async fn redis(
    config: &Config,
    host: &str,
    db: i64,
    prefix: &str,
    user: Option<String>,
    password: Option<&crate::Secret>,
    tls: Option<&TlsConfig>,
) -> Result<Arc<dyn Backend>> {
    use queuelock_redis::{RedisBackend, RedisOptions};
    let mut options = RedisOptions::default()
        .with_prefix(prefix)
        .with_db(db)
        .with_connect_timeout(config.connect_timeout);
    if let Some(p) = password {
        options = options.with_credentials(user, p.expose());
    }
    if let Some(tls) = tls {
        // `rediss://` without files: TLS with an empty CA set would verify nothing.
        let pem = load_tls(Some(tls))?
            .filter(|p| p.ca.is_some())
            .ok_or_else(|| {
                Error::Config(
                    "rediss:// needs ca= (the CA that signs the server's certificate)".into(),
                )
            })?;
        options = options.with_tls(pem);
    }
    let connect = RedisBackend::connect(host, options);
    within(config, format!("Redis at {host}"), "", connect).await
}

#[cfg(feature = "postgres")]
async fn postgres(config: &Config) -> Result<Arc<dyn Backend>> {
    use queuelock_postgres::{PgBackend, PgConfig, PgOptions};
    let BackendConfig::Postgres {
        hosts,
        dbname,
        user,
        password,
        schema,
        sslmode,
        application_name,
        tls,
    } = &config.backend
    else {
        return Err(Error::Config("not a PostgreSQL configuration".into()));
    };
    let mut pg = PgConfig::new();
    for h in hosts {
        let (host, port) = h
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| Error::Config(format!("host {h:?} is not host:port")))?;
        pg.host(host.trim_start_matches('[').trim_end_matches(']'))
            .port(port);
    }
    pg.user(user)
        .dbname(dbname.as_deref().unwrap_or(user))
        .connect_timeout(config.connect_timeout);
    if let Some(p) = password {
        pg.password(p.expose());
    }
    if let Some(name) = application_name {
        pg.application_name(name);
    }
    match sslmode.as_deref() {
        None => {}
        Some("disable") => {
            pg.ssl_mode(queuelock_postgres::SslMode::Disable);
        }
        Some("prefer") | Some("allow") => {
            pg.ssl_mode(queuelock_postgres::SslMode::Prefer);
        }
        Some("require") | Some("verify-ca") | Some("verify-full") => {
            pg.ssl_mode(queuelock_postgres::SslMode::Require);
        }
        Some(other) => {
            return Err(Error::Config(format!(
                "sslmode={other:?}: expected disable, prefer, require, verify-ca or verify-full"
            )))
        }
    }
    let mut options = PgOptions::default()
        .with_schema(schema.clone())
        .with_connect_timeout(config.connect_timeout);
    if let Some(tls) = load_tls(tls.as_ref())? {
        options = options.with_tls(tls);
    }
    let connect = PgBackend::connect(pg, options);
    let at = format!("PostgreSQL at {}", hosts.join(","));
    within(config, at, "", connect).await
}

/// Bounds a backend's connect by `connect_timeout`: past it, an `Error::Connection`
/// "no answer from {at} within ...{hint}" (a store that never answers must not hang
/// `Client::connect`).
///
/// Cancel safety: safe; dropping it drops the half-made connection.
#[cfg(any(
    feature = "etcd",
    feature = "zookeeper",
    feature = "postgres",
    feature = "redis"
))]
async fn within<B: Backend + 'static>(
    config: &Config,
    at: String,
    hint: &str,
    connect: impl std::future::Future<Output = Result<B>>,
) -> Result<Arc<dyn Backend>> {
    let backend = tokio::time::timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| Error::Connection {
            message: format!(
                "no answer from {at} within {:?}{hint}",
                config.connect_timeout
            ),
            source: None,
        })??;
    Ok(Arc::new(backend))
}

/// Reads the TLS files a configuration names. Errors name the file and what is wrong,
/// never its contents.
#[cfg(any(
    feature = "etcd",
    feature = "zookeeper",
    feature = "postgres",
    feature = "redis"
))]
fn load_tls(tls: Option<&TlsConfig>) -> Result<Option<queuelock_core::TlsPem>> {
    let Some(tls) = tls else { return Ok(None) };
    let read = |what: &str, path: &Option<std::path::PathBuf>| -> Result<Option<String>> {
        match path {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(p).map(Some).map_err(|e| {
                Error::Config(format!("cannot read TLS {what} file {}: {e}", p.display()))
            }),
        }
    };
    let pem = queuelock_core::TlsPem::new(
        read("CA (ca=)", &tls.ca)?,
        read("client certificate (cert=)", &tls.cert)?,
        read("client key (key=)", &tls.key)?,
    )?;
    Ok(Some(pem))
}

#[cfg(feature = "memory")]
fn memory(name: Option<&str>) -> Arc<dyn Backend> {
    use queuelock_memory::MemoryBackend;
    use std::collections::HashMap;
    use std::sync::{Mutex as StdMutex, OnceLock};
    static NAMED: OnceLock<StdMutex<HashMap<String, MemoryBackend>>> = OnceLock::new();
    let backend = match name {
        None => MemoryBackend::global(),
        Some(name) => NAMED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone(),
    };
    Arc::new(backend)
}

#[cfg(test)]
mod tests {
    use crate::Client;

    #[tokio::test]
    async fn named_memory_stores() {
        // Named in-process stores are shared by name, and distinct from the default.
        let a = Client::connect("memory://shared-a").await.expect("connect");
        let b = Client::connect("memory://shared-a").await.expect("connect");
        let other = Client::connect("memory://").await.expect("connect");
        let g = a.mutex("x").expect("name").lock().await.expect("lock");
        assert!(b
            .mutex("x")
            .expect("name")
            .try_lock()
            .await
            .expect("try")
            .is_none());
        let g2 = other
            .mutex("x")
            .expect("name")
            .try_lock()
            .await
            .expect("try");
        assert!(
            g2.is_some(),
            "memory:// shares state with memory://shared-a"
        );
        g.release().await.expect("release");
    }
}
