//! Choosing a backend from a URL.
//!
//! | URL | store |
//! |---|---|
//! | `memory://` | the process-wide in-process store (the default) |
//! | `memory://NAME` | a named in-process store, shared by every client using that name |
//!
//! Query parameters set client options: `ttl` (a duration such as `10s` or `500ms`),
//! `loss_policy` (`session` or `suspension`), `label`. An unknown scheme or option, or a
//! malformed value, is an [`Error::Config`] naming it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};

use queuelock_core::{Backend, Error, Result};
use url::Url;

use crate::client::{Client, ClientOptions, LossPolicy};

pub(crate) async fn connect(raw: &str) -> Result<Client> {
    let url =
        Url::parse(raw).map_err(|e| Error::Config(format!("cannot parse URL {raw:?}: {e}")))?;
    let options = client_options(&url)?;
    let backend: Arc<dyn Backend> = match url.scheme() {
        "memory" => memory_backend(&url)?,
        "etcd" | "etcds" => {
            return Err(Error::FeatureDisabled {
                backend: "etcd",
                feature: "etcd",
            })
        }
        "zk" | "zookeeper" => {
            return Err(Error::FeatureDisabled {
                backend: "zookeeper",
                feature: "zookeeper",
            })
        }
        other => {
            return Err(Error::Config(format!(
                "unknown scheme {other:?} in {raw:?}: expected memory://, etcd:// or zk://"
            )))
        }
    };
    Ok(Client::new(backend, options))
}

fn client_options(url: &Url) -> Result<ClientOptions> {
    let mut options = ClientOptions::default();
    for (key, value) in url.query_pairs() {
        match &*key {
            "ttl" | "session_timeout" => {
                options.ttl = humantime::parse_duration(&value).map_err(|e| {
                    Error::Config(format!("option {key}={value:?} is not a duration: {e}"))
                })?;
                if options.ttl.as_millis() < 100 {
                    return Err(Error::Config(format!(
                        "option {key}={value:?} is below 100ms"
                    )));
                }
            }
            "loss_policy" => {
                options.loss_policy = match &*value {
                    "session" => LossPolicy::OnSessionLoss,
                    "suspension" => LossPolicy::OnSuspension,
                    _ => {
                        return Err(Error::Config(format!(
                            "option loss_policy={value:?}: expected \"session\" or \"suspension\""
                        )))
                    }
                }
            }
            "label" => options.label = Some(value.into_owned()),
            other => return Err(Error::Config(format!("unknown option {other:?}"))),
        }
    }
    Ok(options)
}

#[cfg(feature = "memory")]
fn memory_backend(url: &Url) -> Result<Arc<dyn Backend>> {
    use queuelock_memory::MemoryBackend;
    static NAMED: OnceLock<StdMutex<HashMap<String, MemoryBackend>>> = OnceLock::new();
    if !url.path().is_empty() && url.path() != "/" {
        return Err(Error::Config(format!(
            "memory URL takes no path, got {:?}",
            url.path()
        )));
    }
    let backend = match url.host_str().unwrap_or("") {
        "" => MemoryBackend::global(),
        name => NAMED
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
fn memory_backend(_url: &Url) -> Result<Arc<dyn Backend>> {
    Err(Error::FeatureDisabled {
        backend: "memory",
        feature: "memory",
    })
}
