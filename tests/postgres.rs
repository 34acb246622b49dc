//! The conformance suite on a real PostgreSQL (`QUEUELOCK_TEST_POSTGRES`, set by
//! `scripts/test`).

mod conformance;

conformance_tests!(queuelock_postgres::testkit::PgHarness::from_env());

/// 100 waiters on one lock, each on its own backend (its own LISTEN connection): each is
/// woken once, and its LISTEN connection receives at most two notifications in the whole
/// run — its predecessor's deletion and (while it holds) its own — where a herd (one
/// channel for every waiter) would deliver ~100 per release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_waiters_one_notify_each() {
    use std::sync::Arc;
    use std::time::Duration;

    use queuelock::{Client, ClientOptions};
    use queuelock_postgres::testkit::PgHarness;

    const WAITERS: usize = 100;
    let h = PgHarness::from_env();
    let ttl = Duration::from_secs(5);
    let name = format!("t/pg-herd-{}", uuid::Uuid::new_v4().simple());
    let open = || async {
        let b = h.pg_backend().await;
        let c = Client::new(Arc::new(b.clone()), ClientOptions::default().with_ttl(ttl));
        (b, c)
    };
    let (_hb, holder) = open().await;
    let first = holder
        .mutex(&name)
        .expect("name")
        .lock()
        .await
        .expect("lock");
    let mut backends = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..WAITERS {
        let (b, c) = open().await;
        backends.push((b, c.clone()));
        let n = name.clone();
        tasks.push(tokio::spawn(async move {
            let g = c.mutex(&n).expect("name").lock().await.expect("lock");
            g.release().await.expect("release");
        }));
    }
    let (_ob, observer) = open().await;
    let s = observer.session().await.expect("session");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while s.list(&name).await.expect("list").nodes.len() != WAITERS + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiters never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before: Vec<u64> = backends
        .iter()
        .map(|(b, _)| b.notifications_received())
        .collect();
    assert!(
        before.iter().all(|&n| n == 0),
        "notified before any release: {before:?}"
    );
    first.release().await.expect("release");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("a waiter hung")
            .expect("a waiter panicked");
    }
    let mut total = 0;
    for (i, (b, c)) in backends.iter().enumerate() {
        let n = b.notifications_received();
        total += n;
        assert_eq!(c.stats().grants, 1, "waiter {i}");
        assert_eq!(
            c.stats().wakeups,
            1,
            "waiter {i} woken {} times",
            c.stats().wakeups
        );
        assert!(
            (1..=2).contains(&n),
            "waiter {i}'s LISTEN connection received {n} notifications"
        );
    }
    assert!(
        total <= 2 * WAITERS as u64,
        "{total} notifications for {WAITERS} releases"
    );
    assert_eq!(s.list(&name).await.expect("list").nodes.len(), 0);
}
