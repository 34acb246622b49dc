//! From a [`Config`] to a backend: the one place that knows every backend crate.

use std::sync::Arc;

use queuelock_core::{Backend, Error, Result};

use crate::config::{BackendConfig, Config, TlsConfig};

/// Builds (and connects) the backend a configuration names.
pub(crate) async fn backend(config: &Config) -> Result<Arc<dyn Backend>> {
    match &config.backend {
        BackendConfig::Memory { name } => memory(name.as_deref()),
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
        BackendConfig::ZooKeeper {
            hosts,
            chroot,
            digest,
            tls,
        } => zookeeper(config, hosts, chroot, digest.as_ref(), tls.as_ref()).await,
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
    match (user, password) {
        (Some(u), Some(p)) => options = options.with_credentials(u, p.expose()),
        (None, None) => {}
        _ => {
            return Err(Error::Config(
                "etcd credentials need both user and password".to_owned(),
            ))
        }
    }
    let connect = EtcdBackend::connect(endpoints, prefix, options);
    let backend = tokio::time::timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| Error::Connection {
            message: format!(
                "no answer from etcd at {} within {:?}",
                endpoints.join(","),
                config.connect_timeout
            ),
            source: None,
        })??;
    Ok(Arc::new(backend))
}

#[cfg(not(feature = "etcd"))]
async fn etcd(
    _config: &Config,
    _endpoints: &[String],
    _prefix: &str,
    _user: Option<&str>,
    _password: Option<&crate::Secret>,
    _tls: Option<&TlsConfig>,
) -> Result<Arc<dyn Backend>> {
    Err(Error::FeatureDisabled {
        backend: "etcd",
        feature: "etcd",
    })
}

#[cfg(feature = "zookeeper")]
async fn zookeeper(
    config: &Config,
    hosts: &[String],
    chroot: &str,
    digest: Option<&crate::Secret>,
    tls: Option<&TlsConfig>,
) -> Result<Arc<dyn Backend>> {
    use queuelock_zookeeper::{ZkBackend, ZkOptions};
    let mut options = ZkOptions::default().with_connect_timeout(config.connect_timeout);
    if let Some(d) = digest {
        if !d.expose().contains(':') {
            return Err(Error::Config(
                "ZooKeeper digest must be user:password (no `:` found)".to_owned(),
            ));
        }
        options = options.with_digest(d.expose());
    }
    let tls_on = tls.is_some();
    if let Some(tls) = load_tls(tls)? {
        options = options.with_tls(tls);
    }
    let hosts = hosts.join(",");
    let backend = tokio::time::timeout(
        config.connect_timeout,
        ZkBackend::connect(&hosts, chroot, options),
    )
    .await
    .map_err(|_| Error::Connection {
        message: format!(
            "no answer from ZooKeeper at {hosts} within {:?}{}",
            config.connect_timeout,
            if tls_on {
                " (TLS: check that this is the secure client port, that the server's \
                 certificate chains to ca= and names the host, and the client certificate)"
            } else {
                ""
            }
        ),
        source: None,
    })??;
    Ok(Arc::new(backend))
}

#[cfg(not(feature = "zookeeper"))]
async fn zookeeper(
    _config: &Config,
    _hosts: &[String],
    _chroot: &str,
    _digest: Option<&crate::Secret>,
    _tls: Option<&TlsConfig>,
) -> Result<Arc<dyn Backend>> {
    Err(Error::FeatureDisabled {
        backend: "zookeeper",
        feature: "zookeeper",
    })
}

/// Reads the TLS files a configuration names. Errors name the file and what is wrong,
/// never its contents.
#[cfg_attr(not(any(feature = "etcd", feature = "zookeeper")), allow(dead_code))]
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
fn memory(name: Option<&str>) -> Result<Arc<dyn Backend>> {
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
    Ok(Arc::new(backend))
}

#[cfg(not(feature = "memory"))]
fn memory(_name: Option<&str>) -> Result<Arc<dyn Backend>> {
    Err(Error::FeatureDisabled {
        backend: "memory",
        feature: "memory",
    })
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
