//! What a lock costs on etcd, counted by etcd itself (its gRPC metrics): an uncontended
//! `lock()` + `release()` is exactly 2 round trips (one transaction each way), and a
//! handoff sends the same bytes at any queue length (a waiter reads the one key it waits
//! for, never the queue).

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use queuelock::Client;
use support::etcd::EtcdCluster;

/// Unary gRPC calls etcd has handled, by method.
fn unary_calls(endpoint: &str) -> BTreeMap<String, u64> {
    let mut s = TcpStream::connect(endpoint).expect("metrics");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    let mut calls = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{"))
    {
        if !line.contains("grpc_type=\"unary\"") {
            continue;
        }
        let method = line
            .split("grpc_method=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_owned();
        let n: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *calls.entry(method).or_insert(0) += n as u64;
    }
    calls
}

/// A counter of etcd's `/metrics` (summed over its labels).
fn metric(endpoint: &str, name: &str) -> f64 {
    let mut s = TcpStream::connect(endpoint).expect("metrics");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncontended_lock_and_release_is_two_round_trips() {
    const CYCLES: u64 = 50;
    let cluster = EtcdCluster::start(1);
    let endpoint = cluster.endpoints()[0].clone();
    let client = Client::connect(&cluster.url("rt", "ttl=30s"))
        .await
        .expect("connect");
    let m = client.mutex("round-trips").expect("name");
    // Warm up: the session (lease) and the watch stream are opened once per client.
    m.lock()
        .await
        .expect("lock")
        .release()
        .await
        .expect("release");
    let before = unary_calls(&endpoint);
    for _ in 0..CYCLES {
        let g = m.lock().await.expect("lock");
        g.release().await.expect("release");
    }
    let calls = delta(&unary_calls(&endpoint), &before);
    println!("unary etcd calls for {CYCLES} lock+release cycles: {calls:?}");
    let total: u64 = calls.values().sum();
    assert_eq!(calls.get("Txn").copied(), Some(2 * CYCLES), "{calls:?}");
    assert_eq!(
        total,
        2 * CYCLES,
        "lock+release must cost exactly 2 round trips: {calls:?}"
    );
}

/// Bytes etcd sends to clients per grant while a queue of `waiters` drains, each waiter a
/// client of its own (its own lease) on one connection.
async fn bytes_per_grant(cluster: &EtcdCluster, waiters: usize) -> f64 {
    let endpoint = cluster.endpoints()[0].clone();
    let first = Client::connect(&cluster.url("drain", "ttl=30s"))
        .await
        .expect("connect");
    let name = format!("drain-{waiters}");
    let held = first
        .mutex(&name)
        .expect("name")
        .lock()
        .await
        .expect("lock");
    let mut tasks = Vec::new();
    for _ in 0..waiters {
        let c = Client::new(first.backend().clone(), first.options().clone());
        let m = c.mutex(&name).expect("name");
        tasks.push(tokio::spawn(async move {
            m.lock()
                .await
                .expect("lock")
                .release()
                .await
                .expect("release");
        }));
    }
    let m = first.mutex(&name).expect("name");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while m.waiters().await.expect("waiters").len() < waiters {
        assert!(std::time::Instant::now() < deadline, "waiters never queued");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let before = metric(&endpoint, "etcd_network_client_grpc_sent_bytes_total");
    held.release().await.expect("release");
    for t in tasks {
        t.await.expect("waiter");
    }
    let sent = metric(&endpoint, "etcd_network_client_grpc_sent_bytes_total") - before;
    sent / waiters as f64
}

/// A handoff is O(1): etcd sends about the same bytes per grant draining 200 waiters as
/// draining 20. (Reading the queue after every wake, as before, sent ~20x more at 200:
/// every remaining key, per grant.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_costs_the_same_at_any_queue_length() {
    let cluster = EtcdCluster::start(1);
    let short = bytes_per_grant(&cluster, 20).await;
    let long = bytes_per_grant(&cluster, 200).await;
    println!("etcd bytes sent per grant: {short:.0} draining 20 waiters, {long:.0} draining 200");
    assert!(short > 0.0, "no bytes counted");
    assert!(
        long < short * 1.5 + 512.0,
        "bytes per grant grow with the queue: {short:.0} at 20 waiters, {long:.0} at 200"
    );
}
