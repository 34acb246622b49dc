//! What the driver reads from the server itself, the same way for every implementation:
//! its version, the watch notifications it has delivered, and the sessions it holds.

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
pub fn version(backend: &str, endpoint: &str) -> BResult<String> {
    let endpoint = members(endpoint)[0];
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
pub async fn sessions(backend: &str, endpoint: &str) -> BResult<std::collections::HashSet<i64>> {
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
