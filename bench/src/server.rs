//! What the driver reads from the server itself, the same way for every implementation:
//! its version, the watch notifications it has delivered (etcd, ZooKeeper) or the pub/sub
//! messages published (Redis), the work it did (PostgreSQL, Redis), and the sessions or
//! connections it holds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::impls::members;
use crate::scenario::BResult;

fn exchange(endpoint: &str, request: &[u8]) -> BResult<String> {
    let mut s = TcpStream::connect(endpoint)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn http_get(endpoint: &str, path: &str) -> BResult<String> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: {endpoint}\r\n\r\n");
    let resp = exchange(endpoint, req.as_bytes())?;
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// A ZooKeeper four-letter word's answer.
pub fn zk_4lw(endpoint: &str, word: &str) -> BResult<String> {
    exchange(endpoint, word.as_bytes())
}

fn zk_mntr(endpoint: &str, key: &str) -> BResult<f64> {
    let out = zk_4lw(endpoint, "mntr")?;
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('\t')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| format!("mntr has no {key}").into())
}

/// The server's version string (of the first member of a cluster).
pub async fn version(backend: &str, endpoint: &str) -> BResult<String> {
    let endpoint = members(endpoint)[0];
    if backend == "postgres" {
        let c = crate::stores::pg_connect(endpoint).await?;
        let v: String = c.query_one("SHOW server_version", &[]).await?.get(0);
        return Ok(format!("PostgreSQL {v}"));
    }
    if backend == "redis" {
        let mut c = crate::stores::redis_connect(endpoint).await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut c).await?;
        return Ok(format!(
            "Redis {}",
            info_field(&info, "redis_version").unwrap_or("?")
        ));
    }
    if backend == "etcd" {
        let body = http_get(endpoint, "/version")?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(format!("etcd {}", v["etcdserver"].as_str().unwrap_or("?")))
    } else {
        let out = zk_4lw(endpoint, "srvr")?;
        let line = out.lines().next().unwrap_or("?");
        let v = line.split_once(':').map(|x| x.1).unwrap_or(line).trim();
        Ok(format!(
            "ZooKeeper {}",
            v.split(['-', ',']).next().unwrap_or(v)
        ))
    }
}

/// Watch notifications the server (every member of a cluster, summed) has delivered so
/// far: etcd's
/// `etcd_debugging_mvcc_events_total` (events sent to watchers), ZooKeeper's sum of
/// watchers triggered by node creations, deletions, data and children changes (`mntr`).
pub fn notifications(backend: &str, endpoint: &str) -> BResult<f64> {
    members(endpoint)
        .into_iter()
        .map(|m| member_notifications(backend, m))
        .sum()
}

fn member_notifications(backend: &str, endpoint: &str) -> BResult<f64> {
    if backend == "postgres" || backend == "redis" {
        // PostgreSQL counts no NOTIFYs (the harness counts them at its LISTEN
        // connection); Redis's published messages are counted by `PubSubMonitor`.
        return Err(format!("{backend} has no server-side notification counter").into());
    }
    if backend == "etcd" {
        let body = http_get(endpoint, "/metrics")?;
        body.lines()
            .find_map(|l| {
                l.strip_prefix("etcd_debugging_mvcc_events_total ")
                    .and_then(|v| v.trim().parse().ok())
            })
            .ok_or_else(|| "no etcd_debugging_mvcc_events_total in /metrics".into())
    } else {
        let mut sum = 0.0;
        for kind in ["created", "deleted", "changed", "children"] {
            sum += zk_mntr(endpoint, &format!("zk_sum_node_{kind}_watch_count"))?;
        }
        Ok(sum)
    }
}

/// Sessions the server holds now, as identities: etcd lease ids (LeaseLeases), ZooKeeper
/// client connections (each ZooKeeper session is one connection; counted by `mntr`, whose
/// own connection is excluded, so identities are `0..count`). New sessions are the
/// identities present later and not before; on etcd that is exact even while leases left
/// behind by earlier runs expire.
///
/// PostgreSQL: the process ids of its client connections (each connection is a server
/// process; a queuelock session is a row, but its cost is the connections); Redis: the
/// ids of its client connections (`CLIENT LIST`). The driver's own connection is left out.
pub async fn sessions(backend: &str, endpoint: &str) -> BResult<std::collections::HashSet<i64>> {
    if backend == "postgres" {
        let c = crate::stores::pg_connect(endpoint).await?;
        let rows = c
            .query(
                "SELECT pid::int8 FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await?;
        return Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect());
    }
    if backend == "redis" {
        let mut c = crate::stores::redis_connect(endpoint).await?;
        let me: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut c).await?;
        let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut c).await?;
        return Ok(list
            .lines()
            .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
            .filter(|id| *id != me)
            .collect());
    }
    if backend == "etcd" {
        // Leases are cluster-wide: any member answers for all.
        let mut c = etcd_client::Client::connect(members(endpoint), None).await?;
        Ok(c.leases().await?.leases().iter().map(|l| l.id()).collect())
    } else {
        let mut n = 0;
        for m in members(endpoint) {
            n += (zk_mntr(m, "zk_num_alive_connections")? as i64).saturating_sub(1);
        }
        Ok((0..n).collect())
    }
}

/// `field:value` of an `INFO` answer.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// The server's count of work done so far, where it keeps one the same way for every
/// client: PostgreSQL's committed + rolled-back transactions in the database
/// (`pg_stat_database`), Redis's `total_commands_processed` (`INFO stats`, commands run by
/// scripts included). With what it counts, in words.
pub async fn work(backend: &str, endpoint: &str) -> BResult<(f64, &'static str)> {
    match backend {
        "postgres" => {
            let c = crate::stores::pg_connect(endpoint).await?;
            let row = c
                .query_one(
                    "SELECT (xact_commit + xact_rollback)::float8 FROM pg_stat_database \
                     WHERE datname = current_database()",
                    &[],
                )
                .await?;
            Ok((
                row.get(0),
                "transactions in the database over the whole herd run (pg_stat_database xact_commit + xact_rollback)",
            ))
        }
        "redis" => {
            let mut c = crate::stores::redis_connect(endpoint).await?;
            let info: String = redis::cmd("INFO").arg("stats").query_async(&mut c).await?;
            let n = info_field(&info, "total_commands_processed")
                .and_then(|v| v.parse().ok())
                .ok_or("INFO stats has no total_commands_processed")?;
            Ok((
                n,
                "commands over the whole herd run (INFO stats total_commands_processed; a script's commands count singly)",
            ))
        }
        other => Err(format!("no work counter on {other}").into()),
    }
}

/// [`work`] once the harness has exited: PostgreSQL's statistics of a server process
/// reach `pg_stat_database` when it ends, which follows the client's exit by a moment.
pub async fn work_after(backend: &str, endpoint: &str) -> BResult<(f64, &'static str)> {
    if backend == "postgres" {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    work(backend, endpoint).await
}

/// A subscriber to every channel (`PSUBSCRIBE *`) that counts the messages published
/// while it runs: the pub/sub traffic of an implementation, seen from the server.
pub struct PubSubMonitor {
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PubSubMonitor {
    /// Subscribes; messages published after this returns are counted.
    pub async fn start(endpoint: &str) -> BResult<Self> {
        use futures::StreamExt;
        let client = redis::Client::open(format!("redis://{endpoint}/0"))?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.psubscribe("*").await?;
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = count.clone();
        let task = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while messages.next().await.is_some() {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        Ok(PubSubMonitor { count, task })
    }

    /// Stops after a moment for messages still in flight; the count.
    pub async fn stop(self) -> u64 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.task.abort();
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}
