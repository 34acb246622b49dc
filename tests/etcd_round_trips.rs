//! What a lock costs on etcd, counted by etcd itself (its gRPC metrics): an uncontended
//! `lock()` + `release()` is exactly 2 round trips (a create transaction, a delete), and a
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

/// One uncontended lock + release.
async fn once(m: &queuelock::Mutex) {
    m.lock()
        .await
        .expect("lock")
        .release()
        .await
        .expect("release");
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
    once(&m).await;
    let before = unary_calls(&endpoint);
    for _ in 0..CYCLES {
        let g = m.lock().await.expect("lock");
        g.release().await.expect("release");
    }
    let calls = delta(&unary_calls(&endpoint), &before);
    println!("unary etcd calls for {CYCLES} lock+release cycles: {calls:?}");
    let total: u64 = calls.values().sum();
    // The create is a transaction; the release of our own node a plain delete.
    assert_eq!(calls.get("Txn").copied(), Some(CYCLES), "{calls:?}");
    assert_eq!(calls.get("DeleteRange").copied(), Some(CYCLES), "{calls:?}");
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
            once(&m).await;
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

/// A handoff to the next in line costs no read: the waiter's create already showed that
/// its predecessor was the last node ahead, so the predecessor's deletion alone is the
/// grant. Per cycle: two creates, two deletes and the mark of the waiter's hold (a write
/// that lets a waiter behind it skip its read too: `Session::mark_held`), no read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_to_the_next_in_line_reads_nothing() {
    const CYCLES: u64 = 20;
    let cluster = EtcdCluster::start(1);
    let endpoint = cluster.endpoints()[0].clone();
    let a = Client::connect(&cluster.url("next", "ttl=30s"))
        .await
        .expect("connect");
    let b = Client::new(a.backend().clone(), a.options().clone());
    let ma = a.mutex("next").expect("name");
    // Warm up: each client's session and watch stream.
    for c in [&a, &b] {
        let m = c.mutex("next").expect("name");
        once(&m).await;
    }
    let before = unary_calls(&endpoint);
    for _ in 0..CYCLES {
        let held = ma.lock().await.expect("lock");
        let mb = b.mutex("next").expect("name");
        let waiter = tokio::spawn(async move {
            once(&mb).await;
        });
        // Waiting for the waiter to queue reads with Range calls only.
        while ma.waiters().await.expect("waiters").is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        held.release().await.expect("release");
        waiter.await.expect("waiter");
    }
    let calls = delta(&unary_calls(&endpoint), &before);
    println!("unary etcd calls for {CYCLES} handoffs: {calls:?}");
    assert_eq!(
        (calls.get("Txn").copied(), calls.get("DeleteRange").copied()),
        (Some(3 * CYCLES), Some(2 * CYCLES)),
        "a handoff must cost two creates, one mark and two deletes, no read: {calls:?}"
    );
}

/// The keys etcd has seen under `prefix` since revision `from` (puts and deletes), read
/// from a watch that replays history (etcd keeps it until compaction).
fn keys_written_since(
    cluster: &EtcdCluster,
    prefix: &str,
    from: i64,
) -> std::collections::BTreeSet<String> {
    let out = std::process::Command::new("timeout")
        .args(["3", "etcdctl"])
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cluster.endpoints().join(",")))
        .args(["watch", "--prefix", &format!("--rev={from}"), prefix])
        .output()
        .expect("etcdctl watch");
    // Output: "PUT\nkey\nvalue\n" / "DELETE\nkey\n"; keep the line after each event name.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "PUT" || w[0] == "DELETE")
        .map(|w| w[1].to_owned())
        .collect()
}

/// The store revision now.
fn revision(cluster: &EtcdCluster) -> i64 {
    let out = cluster
        .etcdctl(&cluster.endpoints(), &["endpoint", "status", "-w", "json"])
        .expect("etcdctl endpoint status");
    let i = out.find("\"revision\":").expect("revision in status") + "\"revision\":".len();
    out[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .expect("revision")
}

/// A session takes one lock after another under the same key: etcd keeps every deleted
/// key in its index until compaction and every read of the queue visits them, so fresh
/// keys per attempt made reads grow with every grant. And a key reused while a waiter is
/// blocked on its previous node (the holder releases and queues again at once, behind
/// the waiter) must not make the waiter wait for the new node: the waiter is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reuses_its_key_and_waiters_tell_the_nodes_apart() {
    const CYCLES: usize = 30;
    let cluster = EtcdCluster::start(1);
    let a = Client::connect(&cluster.url("reuse", "ttl=30s"))
        .await
        .expect("connect");
    let b = Client::new(a.backend().clone(), a.options().clone());
    let ma = a.mutex("q").expect("name");
    let from = revision(&cluster) + 1;
    for _ in 0..CYCLES {
        once(&ma).await;
    }
    let keys = keys_written_since(&cluster, "/reuse/q/", from);
    assert_eq!(
        keys.len(),
        1,
        "{CYCLES} cycles of one session used keys {keys:?}"
    );

    for round in 0..10 {
        let held = ma.lock().await.expect("lock");
        let mb = b.mutex("q").expect("name");
        let waiter = tokio::spawn(async move { mb.lock().await.expect("waiter lock") });
        while ma.waiters().await.expect("waiters").is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // Release and queue again at once: `a`'s next node reuses the key `b` waits on.
        held.release().await.expect("release");
        let ma2 = a.mutex("q").expect("name");
        let again = tokio::spawn(async move { ma2.lock().await.expect("relock") });
        let granted = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: the waiter was not granted after the release")
            })
            .expect("waiter task");
        granted.release().await.expect("waiter release");
        let relocked = tokio::time::timeout(std::time::Duration::from_secs(10), again)
            .await
            .expect("the relock was not granted")
            .expect("relock task");
        relocked.release().await.expect("relock release");
    }
}
