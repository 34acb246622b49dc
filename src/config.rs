//! Configuration: one [`Config`] value, from a URL ([`Config::from_url`], whose docs
//! list the forms), the environment ([`Config::from_env`]) or anything serde reads.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use queuelock_core::{Error, Result, SessionOptions};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::options::ClientOptions;
use crate::queue::{LossPolicy, NameLabel};

/// A secret (password, digest credentials): kept out of `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// TLS files for etcd or ZooKeeper.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// CA certificate(s) that sign the server's certificate (PEM).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM), for mutual TLS.
    pub key: Option<PathBuf>,
}

impl BackendConfig {
    /// The backend's name, which is also the cargo feature that compiles it in
    /// (`memory`, `etcd`, `zookeeper`).
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Memory { .. } => "memory",
            BackendConfig::Etcd { .. } => "etcd",
            BackendConfig::ZooKeeper { .. } => "zookeeper",
            BackendConfig::Redis { .. } => "redis",
            BackendConfig::Postgres { .. } => "postgres",
        }
    }
}

impl TlsConfig {
    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// Which store to use, and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum BackendConfig {
    /// The in-process store.
    Memory {
        /// A named store shared by every client using the name; `None` for the
        /// process-wide default.
        #[serde(default)]
        name: Option<String>,
    },
    /// etcd.
    Etcd {
        /// `host:port` of each member.
        endpoints: Vec<String>,
        /// Key prefix (`/app`); empty for the root.
        #[serde(default)]
        prefix: String,
        /// User name for etcd authentication.
        #[serde(default)]
        user: Option<String>,
        /// Password for etcd authentication.
        #[serde(default)]
        password: Option<Secret>,
        /// TLS settings (`None`: plain text).
        #[serde(default)]
        tls: Option<TlsConfig>,
    },
    /// ZooKeeper.
    #[serde(rename = "zookeeper", alias = "zk")]
    ZooKeeper {
        /// `host:port` of each server.
        hosts: Vec<String>,
        /// Chroot path (`/app`); empty for the root.
        #[serde(default)]
        chroot: String,
        /// Digest credentials `user:password`.
        #[serde(default)]
        digest: Option<Secret>,
        /// TLS settings (`None`: plain text).
        #[serde(default)]
        tls: Option<TlsConfig>,
        /// How queuelock names its nodes: Curator's (default) or kazoo's naming.
        #[serde(default)]
        naming: ZkNaming,
    },
    /// Redis (a single server, ≥ 7).
    Redis {
        /// `host:port` of the server.
        host: String,
        /// Database number.
        #[serde(default)]
        db: i64,
        /// Prefix of every key queuelock writes (default `queuelock`).
        #[serde(default = "default_redis_prefix")]
        prefix: String,
        /// ACL user name (`None`: the default user).
        #[serde(default)]
        user: Option<String>,
        /// Password.
        #[serde(default)]
        password: Option<Secret>,
        /// TLS settings (`None`: plain text; `rediss://` sets it, possibly empty).
        #[serde(default)]
        tls: Option<TlsConfig>,
    },
    /// PostgreSQL.
    #[serde(rename = "postgres", alias = "postgresql")]
    Postgres {
        /// `host:port` of each server (libpq tries them in order).
        hosts: Vec<String>,
        /// The database (default: the user's name, as libpq does).
        #[serde(default)]
        dbname: Option<String>,
        /// The role to connect as.
        user: String,
        /// Its password (SCRAM or md5, as the server asks).
        #[serde(default)]
        password: Option<Secret>,
        /// The schema queuelock's tables live in (default `queuelock`).
        #[serde(default = "default_pg_schema")]
        schema: String,
        /// libpq's `sslmode` (`disable`, `prefer`, `require`); a CA (`tls.ca`) makes TLS
        /// required and verifies the server's certificate and name.
        #[serde(default)]
        sslmode: Option<String>,
        /// libpq's `application_name` (default `queuelock`).
        #[serde(default)]
        application_name: Option<String>,
        /// TLS settings (`None`: plain text unless `sslmode` says otherwise).
        #[serde(default)]
        tls: Option<TlsConfig>,
    },
}

/// How queuelock names its ZooKeeper nodes (`zk://...?naming=`), so that a peer library
/// running with its default settings queues with queuelock. queuelock itself queues every
/// child that ends in a 10-digit sequence, whatever the dialect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ZkNaming {
    /// Apache Curator's protected names (`_c_<uuid>-lock-<seq>`, `__READ__`, `__WRIT__`,
    /// `latch-`): Curator's `InterProcessMutex`, `InterProcessReadWriteLock` and
    /// `LeaderLatch` exclude queuelock and the reverse; kazoo's `Lock` does only with
    /// `extra_lock_patterns=["-lock-"]`.
    #[default]
    Curator,
    /// kazoo's default names (`<uuid hex>__lock__<seq>`, `__rlock__` for readers):
    /// kazoo's `Lock()`, `WriteLock()`, `ReadLock()` and `Election()` with default
    /// arguments exclude queuelock and the reverse. Do not mix with Curator: its recipes
    /// order children by the text after their own lock name, so they do not order
    /// kazoo-named nodes correctly.
    Kazoo,
}

impl std::str::FromStr for ZkNaming {
    type Err = Error;

    /// `curator` or `kazoo`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "curator" => Ok(ZkNaming::Curator),
            "kazoo" => Ok(ZkNaming::Kazoo),
            _ => Err(config_err(format!(
                "option naming={s:?}: expected \"curator\" or \"kazoo\""
            ))),
        }
    }
}

fn default_redis_prefix() -> String {
    "queuelock".to_owned()
}

fn default_pg_schema() -> String {
    "queuelock".to_owned()
}

/// Everything needed to build a [`crate::Client`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The store.
    pub backend: BackendConfig,
    /// Session TTL / session timeout.
    #[serde(default = "default_ttl", with = "humantime_serde_compat")]
    pub ttl: Duration,
    /// How long to wait for a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// When a held lock counts as lost.
    #[serde(default)]
    pub loss_policy: LossPolicy,
    /// Label stored with this client's nodes.
    #[serde(default)]
    pub label: Option<String>,
    /// How much of the lock name metrics carry as their `lock` label.
    #[serde(default)]
    pub name_label: NameLabel,
    /// Lock-delay after a lost holder ([`ClientOptions::lock_delay`]); default zero.
    #[serde(
        default,
        with = "humantime_serde_compat",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub lock_delay: Duration,
}

fn default_ttl() -> Duration {
    SessionOptions::default().ttl
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Durations as humantime strings ("10s") in serde formats.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendConfig::Memory { name: None },
            ttl: default_ttl(),
            connect_timeout: default_connect_timeout(),
            loss_policy: LossPolicy::default(),
            label: None,
            name_label: NameLabel::None,
            lock_delay: Duration::ZERO,
        }
    }
}

fn config_err(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

/// A loss policy named by `key` (a URL option or an environment variable).
fn loss_policy(key: &str, value: &str) -> Result<LossPolicy> {
    value.parse().map_err(|_| {
        config_err(format!(
            "{key}={value:?}: expected \"session\" or \"suspension\""
        ))
    })
}

fn name_label(key: &str, value: &str) -> Result<NameLabel> {
    value.parse().map_err(|_| {
        config_err(format!(
            "{key}={value:?}: expected \"none\", \"full\" or a positive number of segments"
        ))
    })
}

fn duration(key: &str, value: &str) -> Result<Duration> {
    let d = humantime::parse_duration(value)
        .map_err(|e| config_err(format!("option {key}={value:?} is not a duration: {e}")))?;
    if d < Duration::from_millis(100) {
        return Err(config_err(format!("option {key}={value:?} is below 100ms")));
    }
    Ok(d)
}

/// A lock-delay: any duration, zero included (no delay), up to an hour (anything longer
/// is surely a unit mistake: the lock would stay free that long after every loss).
fn lock_delay(key: &str, value: &str) -> Result<Duration> {
    let d = humantime::parse_duration(value)
        .map_err(|e| config_err(format!("option {key}={value:?} is not a duration: {e}")))?;
    if d > Duration::from_secs(3600) {
        return Err(config_err(format!("option {key}={value:?} is above 1h")));
    }
    Ok(d)
}

/// The URL with any password replaced, for error messages.
fn redact(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "password" || k == "digest" {
                "***".into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    if !pairs.is_empty() {
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

impl Config {
    /// Parses a URL:
    ///
    /// | URL | store |
    /// |---|---|
    /// | `memory://` | the process-wide in-process store (the default) |
    /// | `memory://NAME` | a named in-process store shared by every client using that name |
    /// | `etcd://h1:2379,h2:2379/prefix` | etcd; keys under `/prefix` |
    /// | `zk://h1:2181,h2:2181/chroot` | ZooKeeper; nodes under `/chroot` |
    /// | `redis://[user:pass@]h:6379/0?prefix=app` | Redis database 0; keys under `app:` (`rediss://`: TLS) |
    /// | `postgres://user:pass@h:5432/db?schema=queuelock` | PostgreSQL; tables in schema `queuelock` |
    ///
    /// Query options: `ttl` / `session_timeout` (a duration: `10s`, `500ms`),
    /// `connect_timeout`, `loss_policy` (`session` or `suspension`), `label`,
    /// `name_label` (`none`, `full` or N: the metrics' `lock` label), `lock_delay` (a
    /// duration, `0s` to `1h`: see [`ClientOptions::lock_delay`]), `user`,
    /// `password` (etcd, both or neither), `digest` (ZooKeeper `user:password`), `ca`,
    /// `cert`, `key` (TLS file paths); for PostgreSQL also `schema`, `sslmode` and
    /// `application_name`. Credentials may also be given as URL user-info
    /// (`etcd://user:pass@host`). Anything unknown or malformed is an [`Error::Config`]
    /// naming it; credentials never appear in `Debug` output, errors or logs.
    ///
    /// The same configuration in TOML (serde):
    ///
    /// ```toml
    /// ttl = "10s"
    /// loss_policy = "session"
    /// [backend]
    /// kind = "etcd"
    /// endpoints = ["127.0.0.1:2379"]
    /// prefix = "/app"
    /// ```
    ///
    /// A backend whose cargo feature is off parses; connecting to it fails with
    /// [`Error::FeatureDisabled`].
    pub fn from_url(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        // `url` takes one host per URL; etcd and ZooKeeper list several
        // ("h1:2379,h2:2379"). Take the host list out, and let `url` parse the rest.
        let (scheme, rest) = raw
            .split_once("://")
            .ok_or_else(|| config_err("cannot parse the queuelock URL: expected SCHEME://..."))?;
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_len);
        let (userinfo, host_list) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        // Redis takes one host, but a list is taken out too, to be refused by name.
        let multi_host = matches!(
            scheme,
            "etcd" | "zk" | "zookeeper" | "postgres" | "postgresql" | "redis" | "rediss"
        );
        let parsable = format!(
            "{scheme}://{}{}{tail}",
            userinfo.map(|u| format!("{u}@")).unwrap_or_default(),
            if multi_host {
                "hosts.invalid"
            } else {
                host_list
            }
        );
        let url = Url::parse(&parsable).map_err(|e| {
            // The raw text may hold a password: name only the problem.
            config_err(format!("cannot parse the queuelock URL: {e}"))
        })?;
        let shown = redact(&url).replace("hosts.invalid", host_list);
        let mut cfg = Config::default();
        let mut user = (!url.username().is_empty()).then(|| url.username().to_owned());
        let mut password = url.password().map(Secret::new);
        let mut digest = None;
        let mut tls = TlsConfig::default();
        let mut prefix = None;
        let mut pg = (None, None, None); // schema, sslmode, application_name
        let mut naming = None;
        for (key, value) in url.query_pairs() {
            match &*key {
                "prefix" => prefix = Some(value.into_owned()),
                "ttl" | "session_timeout" => cfg.ttl = duration(&key, &value)?,
                "connect_timeout" => cfg.connect_timeout = duration(&key, &value)?,
                "loss_policy" => cfg.loss_policy = loss_policy("option loss_policy", &value)?,
                "label" => cfg.label = Some(value.into_owned()),
                "name_label" => cfg.name_label = name_label("option name_label", &value)?,
                "lock_delay" => cfg.lock_delay = lock_delay(&key, &value)?,
                "user" => user = Some(value.into_owned()),
                "password" => password = Some(Secret::new(value.into_owned())),
                "digest" => digest = Some(Secret::new(value.into_owned())),
                "ca" => tls.ca = Some(value.into_owned().into()),
                "cert" => tls.cert = Some(value.into_owned().into()),
                "key" => tls.key = Some(value.into_owned().into()),
                "schema" => pg.0 = Some(value.into_owned()),
                "sslmode" => pg.1 = Some(value.into_owned()),
                "application_name" => pg.2 = Some(value.into_owned()),
                "naming" => naming = Some(value.parse::<ZkNaming>()?),
                other => return Err(config_err(format!("unknown option {other:?} in {shown}"))),
            }
        }
        let path = url.path().trim_end_matches('/').to_owned();
        let postgres = matches!(url.scheme(), "postgres" | "postgresql");
        if !postgres && pg != (None, None, None) {
            return Err(config_err(format!(
                "options schema, sslmode and application_name are for postgres:// URLs: {shown}"
            )));
        }
        if naming.is_some() && !matches!(url.scheme(), "zk" | "zookeeper") {
            return Err(config_err(format!(
                "option naming is for zk:// URLs: {shown}"
            )));
        }
        let hosts = || -> Result<Vec<String>> {
            let hosts: Vec<String> = host_list
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
            if hosts.is_empty() {
                return Err(config_err(format!("no host in {shown}")));
            }
            // libpq's default port.
            let hosts = if postgres {
                hosts
                    .into_iter()
                    .map(|h| {
                        if h.contains(':') {
                            h
                        } else {
                            format!("{h}:5432")
                        }
                    })
                    .collect()
            } else {
                hosts
            };
            for h in &hosts {
                let port_ok = h
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok {
                    return Err(config_err(format!(
                        "host {h:?} in {shown} is not host:port"
                    )));
                }
            }
            Ok(hosts)
        };
        let tls = (!tls.is_empty()).then_some(tls);
        if prefix.is_some() && !matches!(url.scheme(), "redis" | "rediss") {
            return Err(config_err(format!(
                "option prefix is for redis://; etcd takes the prefix as the path: {shown}"
            )));
        }
        cfg.backend = match url.scheme() {
            "redis" | "rediss" => {
                if digest.is_some() {
                    return Err(config_err(
                        "option digest is for ZooKeeper; Redis takes user:password@",
                    ));
                }
                let db = match path.trim_start_matches('/') {
                    "" => 0,
                    d => d.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
                        config_err(format!(
                            "the path of a Redis URL is the database number, not {d:?}: {shown}"
                        ))
                    })?,
                };
                let host = hosts()?;
                if host.len() != 1 {
                    return Err(config_err(format!("Redis takes one host:port: {shown}")));
                }
                let tls = match (url.scheme(), tls) {
                    ("rediss", tls) => Some(tls.unwrap_or_default()),
                    (_, None) => None,
                    (_, Some(_)) => {
                        return Err(config_err(format!(
                            "TLS files given for redis://: use rediss:// for TLS: {shown}"
                        )))
                    }
                };
                BackendConfig::Redis {
                    host: host.into_iter().next().unwrap_or_default(),
                    db,
                    prefix: prefix.unwrap_or_else(default_redis_prefix),
                    user,
                    password,
                    tls,
                }
            }
            "memory" => {
                if !path.is_empty() || user.is_some() || tls.is_some() || digest.is_some() {
                    return Err(config_err(format!(
                        "memory URL takes no path, credentials or TLS: {shown}"
                    )));
                }
                BackendConfig::Memory {
                    name: url.host_str().filter(|h| !h.is_empty()).map(str::to_owned),
                }
            }
            "etcd" => {
                if digest.is_some() {
                    return Err(config_err(
                        "option digest is for ZooKeeper; etcd takes user and password",
                    ));
                }
                BackendConfig::Etcd {
                    endpoints: hosts()?,
                    prefix: path,
                    user,
                    password,
                    tls,
                }
            }
            "zk" | "zookeeper" => {
                if user.is_some() || password.is_some() {
                    return Err(config_err(
                        "ZooKeeper takes digest=user:password, not user/password",
                    ));
                }
                BackendConfig::ZooKeeper {
                    hosts: hosts()?,
                    chroot: path,
                    digest,
                    tls,
                    naming: naming.unwrap_or_default(),
                }
            }
            "postgres" | "postgresql" => {
                if digest.is_some() {
                    return Err(config_err(
                        "option digest is for ZooKeeper; postgres takes user and password",
                    ));
                }
                let dbname = path.trim_start_matches('/');
                BackendConfig::Postgres {
                    hosts: hosts()?,
                    dbname: (!dbname.is_empty()).then(|| dbname.to_owned()),
                    user: user.ok_or_else(|| {
                        config_err(format!(
                            "postgres URL needs a user (postgres://USER@host/db): {shown}"
                        ))
                    })?,
                    password,
                    schema: pg.0.unwrap_or_else(default_pg_schema),
                    sslmode: pg.1,
                    application_name: pg.2,
                    tls,
                }
            }
            other => {
                return Err(config_err(format!(
                    "unknown scheme {other:?}: expected memory://, etcd://, zk://, postgres:// or redis://"
                )))
            }
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// The configuration named by `QUEUELOCK_URL` (in-process when unset or empty), with
    /// `QUEUELOCK_TTL`, `QUEUELOCK_CONNECT_TIMEOUT`, `QUEUELOCK_LOSS_POLICY` and
    /// `QUEUELOCK_LABEL` overriding the URL's options.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k))
    }

    pub(crate) fn from_vars(
        var: impl Fn(&str) -> std::result::Result<String, std::env::VarError>,
    ) -> Result<Self> {
        let url = url_from_env(var("QUEUELOCK_URL"))?;
        let mut cfg = Self::from_url(&url)?;
        let get = |k: &str| match var(k) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(_) => Err(config_err(format!("{k} is not valid UTF-8"))),
        };
        if let Some(v) = get("QUEUELOCK_TTL")? {
            cfg.ttl = duration("QUEUELOCK_TTL", &v)?;
        }
        if let Some(v) = get("QUEUELOCK_CONNECT_TIMEOUT")? {
            cfg.connect_timeout = duration("QUEUELOCK_CONNECT_TIMEOUT", &v)?;
        }
        if let Some(v) = get("QUEUELOCK_LOSS_POLICY")? {
            cfg.loss_policy = loss_policy("QUEUELOCK_LOSS_POLICY", &v)?;
        }
        if let Some(v) = get("QUEUELOCK_LABEL")? {
            cfg.label = Some(v);
        }
        if let Some(v) = get("QUEUELOCK_NAME_LABEL")? {
            cfg.name_label = name_label("QUEUELOCK_NAME_LABEL", &v)?;
        }
        Ok(cfg)
    }

    /// The checks a configuration from serde has not had: credentials that cannot work.
    /// `from_url` runs them; connecting runs them for configurations built otherwise.
    pub(crate) fn check(&self) -> Result<()> {
        if self.lock_delay > Duration::from_secs(3600) {
            return Err(config_err(format!(
                "lock_delay {} is above 1h",
                humantime::format_duration(self.lock_delay)
            )));
        }
        match &self.backend {
            BackendConfig::Etcd { user, password, .. } if user.is_some() != password.is_some() => {
                Err(config_err("etcd credentials need both user and password"))
            }
            BackendConfig::Redis {
                user: Some(_),
                password: None,
                ..
            } => Err(config_err("a Redis user needs a password")),
            BackendConfig::ZooKeeper {
                digest: Some(d), ..
            } if !d.expose().contains(':') => Err(config_err(
                "ZooKeeper digest must be user:password (no `:` found)",
            )),
            _ => Ok(()),
        }
    }

    /// The client options this configuration sets.
    pub fn client_options(&self) -> ClientOptions {
        let mut o = ClientOptions::default()
            .with_ttl(self.ttl)
            .with_loss_policy(self.loss_policy);
        o.label = self.label.clone();
        o.with_name_label(self.name_label)
            .with_lock_delay(self.lock_delay)
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
    fn redis_urls() {
        let c = Config::from_url("redis://app:s3cret@127.0.0.1:6379/2?prefix=app&ttl=10s")
            .expect("parse");
        assert_eq!(c.ttl, Duration::from_secs(10));
        match &c.backend {
            BackendConfig::Redis {
                host,
                db,
                prefix,
                user,
                password,
                tls,
            } => {
                assert_eq!(
                    (host.as_str(), *db, prefix.as_str()),
                    ("127.0.0.1:6379", 2, "app")
                );
                assert_eq!(user.as_deref(), Some("app"));
                assert_eq!(password.as_ref().map(Secret::expose), Some("s3cret"));
                assert!(tls.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("s3cret"), "password in Debug");
        let c = Config::from_url("rediss://h:6380?ca=/ca.pem").expect("parse");
        assert!(
            matches!(&c.backend, BackendConfig::Redis { tls: Some(t), db: 0, prefix, .. }
            if t.ca.is_some() && prefix == "queuelock")
        );
        let c = Config::from_url("rediss://h:6380").expect("parse");
        assert!(matches!(
            &c.backend,
            BackendConfig::Redis { tls: Some(_), .. }
        ));
        let err = |u: &str| Config::from_url(u).expect_err(u).to_string();
        assert!(err("redis://h:6379/x").contains("database number"));
        assert!(err("redis://h:6379?ca=/x").contains("rediss://"));
        assert!(err("redis://a:1,b:2").contains("one host"));
        assert!(err("etcd://h:2379?prefix=x").contains("prefix"));
        assert!(
            !err("redis://u:pw@h:1/x").contains("pw@"),
            "password in an error"
        );
        let text = r#"{"backend":{"kind":"redis","host":"h:6379","password":"p"},"ttl":"3s"}"#;
        let c: Config = serde_json::from_str(text).expect("serde");
        assert!(
            matches!(&c.backend, BackendConfig::Redis { prefix, db: 0, .. } if prefix == "queuelock")
        );
    }

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

    fn err(url: &str) -> String {
        match Config::from_url(url) {
            Err(Error::Config(m)) => m,
            other => panic!("{url} gave {other:?}"),
        }
    }

    #[test]
    fn zk_naming_option() {
        let naming = |url: &str| match Config::from_url(url).expect("url").backend {
            BackendConfig::ZooKeeper { naming, .. } => naming,
            other => panic!("{other:?}"),
        };
        assert_eq!(naming("zk://h:2181/app"), ZkNaming::Curator);
        assert_eq!(naming("zk://h:2181/app?naming=curator"), ZkNaming::Curator);
        assert_eq!(naming("zk://h:2181/app?naming=kazoo"), ZkNaming::Kazoo);
        assert!(err("zk://h:2181/app?naming=zkcli").contains("naming=\"zkcli\""));
        assert!(err("etcd://h:2379/app?naming=kazoo").contains("for zk:// URLs"));
        let text = r#"{"backend":{"kind":"zookeeper","hosts":["h:2181"],"naming":"kazoo"}}"#;
        let c: Config = serde_json::from_str(text).expect("json");
        assert!(matches!(
            c.backend,
            BackendConfig::ZooKeeper {
                naming: ZkNaming::Kazoo,
                ..
            }
        ));
    }

    #[test]
    fn lock_delay_option() {
        assert_eq!(
            Config::from_url("memory://").expect("url").lock_delay,
            Duration::ZERO
        );
        let c = Config::from_url("etcd://h:2379/p?lock_delay=5s").expect("url");
        assert_eq!(c.lock_delay, Duration::from_secs(5));
        assert_eq!(c.client_options().lock_delay, Duration::from_secs(5));
        assert_eq!(
            Config::from_url("memory://?lock_delay=0s")
                .expect("url")
                .lock_delay,
            Duration::ZERO
        );
        assert!(err("memory://?lock_delay=soon").contains("lock_delay=\"soon\""));
        assert!(err("memory://?lock_delay=2h").contains("above 1h"));
        let c: Config = toml::from_str("lock_delay = \"1500ms\"\n[backend]\nkind = \"memory\"\n")
            .expect("toml");
        assert_eq!(c.lock_delay, Duration::from_millis(1500));
        let back = toml::to_string(&c).expect("serialize");
        assert_eq!(toml::from_str::<Config>(&back).expect("round trip"), c);
        let plain = toml::to_string(&Config::default()).expect("serialize");
        assert!(
            !plain.contains("lock_delay"),
            "zero is not written: {plain}"
        );
        let far: Config =
            toml::from_str("lock_delay = \"2h\"\n[backend]\nkind = \"memory\"\n").expect("toml");
        assert!(far.check().is_err());
    }

    #[test]
    fn name_label_option() {
        assert_eq!(
            Config::from_url("memory://").expect("url").name_label,
            NameLabel::None
        );
        let full = Config::from_url("memory://?name_label=full").expect("url");
        assert_eq!(full.client_options().name_label, NameLabel::Full);
        let two = Config::from_url("memory://?name_label=2").expect("url");
        assert_eq!(two.name_label, NameLabel::Segments(2));
        for bad in ["0", "-1", "some"] {
            let m = err(&format!("memory://?name_label={bad}"));
            assert!(m.contains("name_label") && m.contains(bad), "{m}");
        }
    }

    #[test]
    fn etcd_url() {
        let c = Config::from_url("etcd://u:s3cret@h1:2379,h2:2380/app/locks?ttl=5s&connect_timeout=2s&loss_policy=suspension&label=w1&ca=/c.pem").expect("url");
        assert_eq!(c.ttl, Duration::from_secs(5));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.loss_policy, LossPolicy::OnSuspension);
        assert_eq!(c.label.as_deref(), Some("w1"));
        match &c.backend {
            BackendConfig::Etcd {
                endpoints,
                prefix,
                user,
                password,
                tls,
            } => {
                assert_eq!(endpoints, &["h1:2379", "h2:2380"]);
                assert_eq!(prefix, "/app/locks");
                assert_eq!(user.as_deref(), Some("u"));
                assert_eq!(password.as_ref().map(Secret::expose), Some("s3cret"));
                assert_eq!(
                    tls.as_ref().and_then(|t| t.ca.clone()),
                    Some("/c.pem".into())
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("s3cret"), "password in Debug");
    }

    #[test]
    fn zk_and_memory_urls() {
        let c = Config::from_url("zk://127.0.0.1:2181/app?session_timeout=30s&digest=a:b")
            .expect("url");
        match &c.backend {
            BackendConfig::ZooKeeper {
                hosts,
                chroot,
                digest,
                tls,
                naming,
            } => {
                assert_eq!(*naming, ZkNaming::Curator);
                assert_eq!(hosts, &["127.0.0.1:2181"]);
                assert_eq!(chroot, "/app");
                assert_eq!(digest.as_ref().map(Secret::expose), Some("a:b"));
                assert!(tls.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("a:b"));
        assert_eq!(
            Config::from_url("memory://").expect("url"),
            Config::default()
        );
        assert_eq!(
            Config::from_url("memory://tests").expect("url").backend,
            BackendConfig::Memory {
                name: Some("tests".into())
            }
        );
    }

    #[test]
    fn postgres_urls() {
        let c = Config::from_url(
            "postgres://app:s3cret@db1:6432,db2/appdb?schema=locks&ttl=7s&sslmode=require&ca=/ca.pem",
        )
        .expect("parse");
        assert_eq!(c.ttl, Duration::from_secs(7));
        match &c.backend {
            BackendConfig::Postgres {
                hosts,
                dbname,
                user,
                password,
                schema,
                sslmode,
                tls,
                ..
            } => {
                assert_eq!(hosts, &["db1:6432", "db2:5432"]);
                assert_eq!(dbname.as_deref(), Some("appdb"));
                assert_eq!(user, "app");
                assert_eq!(password.as_ref().map(Secret::expose), Some("s3cret"));
                assert_eq!(schema, "locks");
                assert_eq!(sslmode.as_deref(), Some("require"));
                assert!(tls.as_ref().is_some_and(|t| t.ca.is_some()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.backend.kind(), "postgres");
        assert!(!format!("{c:?}").contains("s3cret"), "password in Debug");
        let c = Config::from_url("postgresql://app@h/").expect("parse");
        assert!(matches!(
            &c.backend,
            BackendConfig::Postgres { dbname: None, schema, .. } if schema == "queuelock"
        ));
        assert!(err("postgres://h:5432/db").contains("user"));
        assert!(err("etcd://h:2379?schema=x").contains("postgres"));
        let e = err("postgres://u:topsecret@h/db?bogus=1");
        assert!(e.contains("bogus") && !e.contains("topsecret"), "{e}");
    }

    #[test]
    fn errors_name_the_culprit_and_hide_secrets() {
        assert!(err("consul://h:1").contains("\"consul\""));
        assert!(err("etcd://h:1?tll=1s").contains("\"tll\""));
        assert!(err("etcd://h:1?ttl=soon").contains("ttl=\"soon\""));
        assert!(err("etcd://h:1?ttl=1ms").contains("below 100ms"));
        assert!(err("etcd://h/x").contains("\"h\" in"));
        assert!(err("etcd://h:99999/x").contains("not host:port"));
        assert!(err("memory:///x").contains("no path"));
        assert!(err("zk://u:p@h:1").contains("digest"));
        let e = err("etcd://u:topsecret@h:1?bogus=1");
        assert!(e.contains("bogus") && !e.contains("topsecret"), "{e}");
        let e = err("etcd://h:1?password=topsecret&bogus=1");
        assert!(!e.contains("topsecret"), "{e}");
        let e = err("etcd://u:topsecret@h:1 :: garbage");
        assert!(!e.contains("topsecret"), "{e}");
    }

    #[test]
    fn env_overrides() {
        let vars = |k: &str| match k {
            "QUEUELOCK_URL" => Ok("etcd://h:2379/p?ttl=5s".to_owned()),
            "QUEUELOCK_TTL" => Ok("7s".to_owned()),
            "QUEUELOCK_LABEL" => Ok("box".to_owned()),
            _ => Err(std::env::VarError::NotPresent),
        };
        let c = Config::from_vars(vars).expect("config");
        assert_eq!(c.ttl, Duration::from_secs(7));
        assert_eq!(c.label.as_deref(), Some("box"));
        let bad = |k: &str| match k {
            "QUEUELOCK_LOSS_POLICY" => Ok("often".to_owned()),
            _ => Err(std::env::VarError::NotPresent),
        };
        assert!(
            matches!(Config::from_vars(bad), Err(Error::Config(m)) if m.contains("QUEUELOCK_LOSS_POLICY"))
        );
        let none = |_: &str| Err(std::env::VarError::NotPresent);
        assert_eq!(Config::from_vars(none).expect("config"), Config::default());
    }

    #[test]
    fn toml_config() {
        let text = r#"
            ttl = "10s"
            loss_policy = "session"
            [backend]
            kind = "etcd"
            endpoints = ["127.0.0.1:2379"]
            prefix = "/app"
            password = "pw"
        "#;
        let c: Config = toml::from_str(text).expect("toml");
        assert_eq!(c.ttl, Duration::from_secs(10));
        assert!(matches!(&c.backend, BackendConfig::Etcd { prefix, .. } if prefix == "/app"));
        assert!(!format!("{c:?}").contains("pw\""));
        let e = toml::from_str::<Config>("ttl = \"forever\"\n[backend]\nkind = \"memory\"\n")
            .expect_err("bad duration")
            .to_string();
        assert!(e.contains("forever"), "{e}");
    }

    #[test]
    fn serde_round_trip_and_unknown_fields() {
        let text = r#"{"backend":{"kind":"zookeeper","hosts":["h:2181"],"chroot":"/x","digest":"u:p"},"ttl":"3s","loss_policy":"suspension"}"#;
        let c: Config = serde_json::from_str(text).expect("json");
        assert_eq!(c.ttl, Duration::from_secs(3));
        let back: Config =
            serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("de");
        assert_eq!(back, c);
        let bad = r#"{"backend":{"kind":"memory"},"ttl":"3s","tll":"1s"}"#;
        let e = serde_json::from_str::<Config>(bad)
            .expect_err("unknown field")
            .to_string();
        assert!(e.contains("tll"), "{e}");
    }
}
