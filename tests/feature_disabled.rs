//! A URL for a store whose cargo feature is off is a typed error that says which feature
//! to enable, and how. `scripts/test` runs this file with the default features (the
//! in-process store only); with `--all-features` it has nothing to check.

#![allow(unused_imports)] // with every feature on, every test here is compiled out

use queuelock::{Client, Error};

#[cfg(not(feature = "etcd"))]
#[tokio::test]
async fn etcd_url_names_the_etcd_feature() {
    let err = Client::connect("etcd://127.0.0.1:2379/app")
        .await
        .expect_err("no etcd backend");
    assert!(
        matches!(
            err,
            Error::FeatureDisabled {
                backend: "etcd",
                feature: "etcd"
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("`etcd` cargo feature") && text.contains("--features etcd"),
        "{text}"
    );
}

#[cfg(not(feature = "zookeeper"))]
#[tokio::test]
async fn zk_url_names_the_zookeeper_feature() {
    let err = Client::connect("zk://127.0.0.1:2181/app")
        .await
        .expect_err("no zookeeper backend");
    assert!(
        matches!(
            err,
            Error::FeatureDisabled {
                backend: "zookeeper",
                feature: "zookeeper"
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("--features zookeeper"), "{err}");
}

#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn redis_url_names_the_redis_feature() {
    let err = Client::connect("redis://127.0.0.1:6379/0?prefix=app")
        .await
        .expect_err("no redis backend");
    assert!(
        matches!(
            err,
            Error::FeatureDisabled {
                backend: "redis",
                feature: "redis"
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("--features redis"), "{err}");
}

#[cfg(not(feature = "postgres"))]
#[tokio::test]
async fn postgres_url_names_the_postgres_feature() {
    let err = Client::connect("postgres://app@127.0.0.1:5432/app?schema=locks")
        .await
        .expect_err("no postgres backend");
    assert!(
        matches!(
            err,
            Error::FeatureDisabled {
                backend: "postgres",
                feature: "postgres"
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("--features postgres"), "{err}");
}
