//! The three-party interop scenario, the same for every foreign lock implementation:
//! queuelock holds; the peer queues behind it; a second queuelock client queues behind
//! the peer. Each must get the lock only after the one ahead released it.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use queuelock::Client;
use tokio::time::timeout;

/// Wall-clock nanoseconds (what the peers write with `time.time_ns()`).
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

/// The nanoseconds a peer wrote to `path`, once it has.
pub fn read_ns(path: &Path) -> Option<u128> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Runs the scenario on lock `name` at `url`. `spawn_peer(start, end)` starts the peer
/// process, which must take the lock, write `date +%s%N` to `start`, hold it a moment,
/// write the time to `end`, and release it.
pub async fn exclude_each_other_in_queue_order(
    url: &str,
    name: &str,
    peer: &str,
    dir: &Path,
    spawn_peer: impl FnOnce(&Path, &Path) -> tokio::process::Child,
) {
    let a = Client::connect(url).await.expect("connect");
    let b = Client::connect(url).await.expect("connect");
    let observer = Client::connect(url).await.expect("connect");

    // 1. queuelock holds; the peer queues behind it.
    let ga = a.mutex(name).expect("name").lock().await.expect("lock");
    let (start, end) = (dir.join("start"), dir.join("end"));
    let mut child = spawn_peer(&start, &end);
    super::await_queue_len(&observer, name, 2).await;
    // 2. a second queuelock client queues behind the peer.
    let name_b = name.to_owned();
    let waiter = tokio::spawn(async move {
        let g = b.mutex(&name_b).expect("name").lock().await.expect("lock");
        let at = now_ns();
        g.release().await.expect("release");
        at
    });
    super::await_queue_len(&observer, name, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        read_ns(&start).is_none(),
        "{peer} took the lock while queuelock held it"
    );
    let released_at = now_ns();
    ga.release().await.expect("release");
    let status = timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{peer} hung"))
        .expect("peer process");
    assert!(status.success(), "{peer} failed: {status}");
    let b_at = timeout(Duration::from_secs(30), waiter)
        .await
        .expect("waiter hung")
        .expect("join");
    let (s, e) = (read_ns(&start).expect("start"), read_ns(&end).expect("end"));
    assert!(s >= released_at, "{peer} started before queuelock released");
    assert!(
        b_at >= e,
        "queuelock granted while {peer} held the lock (queued after it)"
    );
}
