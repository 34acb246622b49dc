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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config_err(url: &str) -> String {
        match Url::parse(url)
            .map_err(|e| e.to_string())
            .and_then(|u| client_options(&u).map_err(|e| e.to_string()))
        {
            Err(e) => e,
            Ok(o) => panic!("{url} accepted: {o:?}"),
        }
    }

    #[test]
    fn options_from_query() {
        let u = Url::parse("memory://?ttl=2s&loss_policy=suspension&label=worker-1").expect("url");
        let o = client_options(&u).expect("options");
        assert_eq!(o.ttl, Duration::from_secs(2));
        assert_eq!(o.loss_policy, LossPolicy::OnSuspension);
        assert_eq!(o.label.as_deref(), Some("worker-1"));
    }

    #[test]
    fn bad_options_are_named() {
        assert!(config_err("memory://?tll=2s").contains("\"tll\""));
        assert!(config_err("memory://?ttl=soon").contains("ttl=\"soon\""));
        assert!(config_err("memory://?ttl=1ms").contains("below 100ms"));
        assert!(config_err("memory://?loss_policy=never").contains("loss_policy"));
    }

    #[tokio::test]
    async fn schemes() {
        let e = connect("redis://x").await.expect_err("unknown scheme");
        assert!(
            matches!(&e, Error::Config(m) if m.contains("\"redis\"")),
            "{e}"
        );
        let e = connect("not a url").await.expect_err("garbage");
        assert!(
            matches!(&e, Error::Config(m) if m.contains("cannot parse")),
            "{e}"
        );
        let e = connect("memory:///path").await.expect_err("path");
        assert!(
            matches!(&e, Error::Config(m) if m.contains("no path")),
            "{e}"
        );
        // Named in-process stores are shared by name, and distinct from the default.
        let a = connect("memory://shared-a").await.expect("connect");
        let b = connect("memory://shared-a").await.expect("connect");
        let other = connect("memory://").await.expect("connect");
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
