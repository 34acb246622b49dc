//! queuelock and a kazoo `Lock` (Python) contend on one path and exclude each other in
//! both directions, in queue order. Needs `QUEUELOCK_TEST_KAZOO_PYTHON`: a Python with
//! kazoo installed (`./scripts/test` makes the virtualenv).

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use queuelock::Client;
use support::zookeeper::ZkEnsemble;
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
async fn kazoo_lock_and_queuelock_exclude_each_other_in_queue_order() {
    let python = std::env::var("QUEUELOCK_TEST_KAZOO_PYTHON")
        .expect("QUEUELOCK_TEST_KAZOO_PYTHON is not set: run ./scripts/test, which makes a virtualenv with kazoo");
    let zk = ZkEnsemble::start(1);
    let dir = TempDir::new("queuelock-kazoo");
    let url = zk.url("", "session_timeout=5s");
    let a = Client::connect(&url).await.expect("connect");
    let b = Client::connect(&url).await.expect("connect");
    let observer = Client::connect(&url).await.expect("connect");
    let name = format!("interop/{}", uuid::Uuid::new_v4().simple());

    // 1. queuelock holds; kazoo queues behind it.
    let ga = a.mutex(&name).expect("name").lock().await.expect("lock");
    let (start, end) = (dir.0.join("start"), dir.0.join("end"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/kazoo_lock.py");
    let mut kazoo = tokio::process::Command::new(&python)
        .arg(script)
        .arg(zk.hosts())
        .arg(format!("/{name}"))
        .arg(&start)
        .arg(&end)
        .spawn()
        .expect("run kazoo peer");
    support::await_queue_len(&observer, &name, 2).await;
    // 2. a second queuelock client queues behind kazoo.
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
        "kazoo took the lock while queuelock held it"
    );
    let released_at = now_ns();
    ga.release().await.expect("release");
    let status = timeout(Duration::from_secs(60), kazoo.wait())
        .await
        .expect("kazoo hung")
        .expect("kazoo");
    assert!(status.success(), "kazoo peer failed: {status}");
    let b_at = timeout(Duration::from_secs(30), waiter)
        .await
        .expect("waiter hung")
        .expect("join");
    let (s, e) = (read_ns(&start).expect("start"), read_ns(&end).expect("end"));
    assert!(s >= released_at, "kazoo started before queuelock released");
    assert!(
        b_at >= e,
        "queuelock granted while kazoo held the lock (queued after it)"
    );
}
