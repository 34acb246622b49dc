//! What a lock costs on etcd, counted by etcd itself (its gRPC metrics): an uncontended
//! `lock()` + `release()` is exactly 2 round trips (one transaction each way).

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
