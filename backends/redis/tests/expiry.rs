//! Store hygiene on a real Redis (`QUEUELOCK_TEST_REDIS`, set by `scripts/test`; the
//! test fails when it is not set): what a crashed client leaves goes by itself.

use std::time::{Duration, Instant};

use queuelock_core::testkit::Harness;
use queuelock_core::{NodeKind, NodeSpec, SessionOptions};
use queuelock_redis::testkit::{RedisHarness, PREFIX};

/// The keys of queue `q` (and its plain-lock key) on the server.
async fn queue_keys(h: &RedisHarness, q: &str) -> Vec<String> {
    let mut c = h.raw().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}:{{{q}}}:*"))
        .query_async(&mut c)
        .await
        .expect("KEYS");
    let plain: Option<String> = redis::cmd("GET")
        .arg(format!("{PREFIX}:{q}"))
        .query_async(&mut c)
        .await
        .expect("GET");
    if plain.is_some() {
        keys.push(format!("{PREFIX}:{q}"));
    }
    keys
}

/// A session whose client vanishes (its link cut: no close, no more renewals) while it
/// holds and waits in a queue nobody reads again: the session expires by the server's
/// clock, and the queue's keys must go with it, not wait for a reader to purge the dead
/// nodes (the soak found such queues left behind once every client had exited).
#[tokio::test]
async fn a_crashed_clients_queue_expires_without_a_reader() {
    let h = RedisHarness::from_env();
    let ttl = Duration::from_secs(1);
    let (backend, link) = h.backend_with_link().await;
    let session = backend
        .open_session(&SessionOptions::with_ttl(ttl))
        .await
        .expect("session");
    let q = h.unique_name("crashed");
    for kind in [NodeKind::Lock, NodeKind::Read] {
        session
            .create_sequential(&NodeSpec::new(&q, kind, b"holder".to_vec()))
            .await
            .expect("create");
    }
    // Renewals extend the queue's life with the session's: still there after 3 TTLs.
    tokio::time::sleep(ttl * 3).await;
    assert!(
        !queue_keys(&h, &q).await.is_empty(),
        "the queue of a live session expired"
    );
    link.cut();
    let cut = Instant::now();
    // The session key expires within the TTL of its last renewal; the queue 1 s later.
    let limit = ttl + Duration::from_secs(1) + Duration::from_secs(3);
    loop {
        let left = queue_keys(&h, &q).await;
        if left.is_empty() {
            break;
        }
        assert!(
            cut.elapsed() < limit,
            "{left:?} still in the store {:?} after the client vanished (TTL {ttl:?})",
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(session);
}
