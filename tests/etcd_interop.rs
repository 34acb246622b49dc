//! queuelock and etcd's own `etcdctl lock` (Go `concurrency.Mutex`) contend for one name
//! and exclude each other in both directions, in queue order.

mod support;

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use queuelock::Client;
use support::etcd::EtcdCluster;
use support::TempDir;
use tokio::time::timeout;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

fn read_ns(path: &std::path::Path) -> Option<u128> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_queuelock_exclude_each_other_in_queue_order() {
    let cluster = EtcdCluster::start(1);
    let dir = TempDir::new("queuelock-interop");
    let url = cluster.url("", "ttl=5s");
    let a = Client::connect(&url).await.expect("connect");
    let b = Client::connect(&url).await.expect("connect");
    let observer = Client::connect(&url).await.expect("connect");
    let name = format!("interop/{}", uuid::Uuid::new_v4().simple());

    // 1. queuelock holds; etcdctl queues behind it.
    let ga = a.mutex(&name).expect("name").lock().await.expect("lock");
    let (start, end) = (dir.0.join("start"), dir.0.join("end"));
    let script = format!(
        "date +%s%N > {s}; sleep 0.5; date +%s%N > {e}",
        s = start.display(),
        e = end.display()
    );
    let mut etcdctl = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cluster.endpoints()[0]))
        .args(["lock", &name, "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .expect("etcdctl");
    support::await_queue_len(&observer, &name, 2).await;
    // 2. a second queuelock client queues behind etcdctl.
    let name_b = name.clone();
    let waiter = tokio::spawn(async move {
        let g = b.mutex(&name_b).expect("name").lock().await.expect("lock");
        let at = now_ns();
        g.release().await.expect("release");
        at
    });
    support::await_queue_len(&observer, &name, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        read_ns(&start).is_none(),
        "etcdctl ran while queuelock held the lock"
    );
    let released_at = now_ns();
    ga.release().await.expect("release");
    let status = timeout(Duration::from_secs(30), etcdctl.wait())
        .await
        .expect("etcdctl hung")
        .expect("etcdctl");
    assert!(status.success(), "etcdctl lock failed: {status}");
    let b_at = timeout(Duration::from_secs(30), waiter)
        .await
        .expect("waiter hung")
        .expect("join");
    let (s, e) = (read_ns(&start).expect("start"), read_ns(&end).expect("end"));
    assert!(
        s >= released_at,
        "etcdctl started before queuelock released"
    );
    assert!(
        b_at >= e,
        "queuelock granted while etcdctl held the lock (queued after it)"
    );
}
