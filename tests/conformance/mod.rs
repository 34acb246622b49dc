//! The recipe conformance suite: written once over a [`Harness`], run against every
//! backend by one `conformance_tests!(harness)` line in that backend's test file.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use queuelock::backend::testkit::Harness;
use queuelock::{Client, ClientOptions, Error, LossReason, NameError};
use tokio::time::{sleep, timeout, Instant};

pub mod recorder;

/// Generous bound for "this must eventually happen": a liveness failure, not a timing test.
pub const EVENTUALLY: Duration = Duration::from_secs(20);

/// A client with its own session on the store under test.
pub async fn client(h: &dyn Harness) -> Client {
    Client::new(
        h.backend().await,
        ClientOptions::default().with_ttl(h.ttl()),
    )
}

/// The nodes in a lock's queue, seen from an independent client.
pub async fn queue_len(observer: &Client, name: &str) -> usize {
    let s = observer.session().await.expect("observer session");
    s.list(name).await.expect("list").nodes.len()
}

/// Waits until the queue has exactly `n` nodes (background cleanups are asynchronous).
pub async fn await_queue_len(observer: &Client, name: &str, n: usize) {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let len = queue_len(observer, name).await;
        if len == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue {name} has {len} nodes, expected {n}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Locks `name` through a new handle of `c`.
pub async fn hold(c: &Client, name: &str) -> queuelock::Guard {
    c.mutex(name).expect("name").lock().await.expect("lock")
}

/// Locks and releases `name` through a new handle of `c`.
pub async fn cycle(c: &Client, name: &str) {
    hold(c, name).await.release().await.expect("release");
}

/// Waits for every task, failing on a hang (liveness, not timing) or a panic.
pub async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>, limit: Duration) {
    for t in tasks {
        timeout(limit, t)
            .await
            .expect("a task hung")
            .expect("a task panicked");
    }
}

/// ≥ 8 clients × 8 tasks hammer one lock; an unsynchronised read-modify-write with a
/// yield in the middle would lose updates without mutual exclusion.
pub async fn mutual_exclusion(h: &dyn Harness) {
    const CLIENTS: usize = 8;
    const TASKS: usize = 8;
    const ROUNDS: usize = 5;
    let name = h.unique_name("mutex");
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..CLIENTS {
        let c = client(h).await;
        for _ in 0..TASKS {
            let (c, name, counter, inside) =
                (c.clone(), name.clone(), counter.clone(), inside.clone());
            handles.push(tokio::spawn(async move {
                let m = c.mutex(&name).expect("name");
                for _ in 0..ROUNDS {
                    let g = m.lock().await.expect("lock");
                    assert_eq!(
                        inside.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two holders at once"
                    );
                    let v = counter.load(Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    sleep(Duration::from_micros(200)).await;
                    counter.store(v + 1, Ordering::SeqCst);
                    inside.fetch_sub(1, Ordering::SeqCst);
                    g.release().await.expect("release");
                }
            }));
        }
    }
    join_all(handles, Duration::from_secs(240)).await;
    assert_eq!(
        counter.load(Ordering::SeqCst),
        (CLIENTS * TASKS * ROUNDS) as u64,
        "lost updates"
    );
    await_queue_len(&client(h).await, &name, 0).await;
}

/// Staggered waiters are granted strictly in the order they queued.
pub async fn fifo_order(h: &dyn Harness) {
    let name = h.unique_name("fifo");
    let observer = client(h).await;
    let holder = client(h).await;
    let first = hold(&holder, &name).await;
    let order = Arc::new(StdMutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..6usize {
        let c = client(h).await;
        let (n, order) = (name.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let g = hold(&c, &n).await;
            order.lock().expect("order").push(i);
            sleep(Duration::from_millis(5)).await;
            g.release().await.expect("release");
        }));
        // Stagger: the next waiter starts only once this one is queued.
        await_queue_len(&observer, &name, i + 2).await;
    }
    first.release().await.expect("release");
    join_all(waiters, EVENTUALLY).await;
    assert_eq!(*order.lock().expect("order"), (0..6).collect::<Vec<_>>());
}

/// try_lock on a held lock returns at once with `None` and leaves no node.
pub async fn try_lock_leaves_nothing(h: &dyn Harness) {
    let name = h.unique_name("try");
    let observer = client(h).await;
    let g = hold(&client(h).await, &name).await;
    let other = client(h).await;
    let m = other.mutex(&name).expect("name");
    for _ in 0..5 {
        let r = timeout(EVENTUALLY, m.try_lock())
            .await
            .expect("try_lock waited");
        assert!(r.expect("try_lock").is_none(), "try_lock took a held lock");
        // No background cleanup to wait for: try_lock removed its node before returning.
        assert_eq!(queue_len(&observer, &name).await, 1, "try_lock left a node");
    }
    g.release().await.expect("release");
    let mine = m
        .try_lock()
        .await
        .expect("try_lock")
        .expect("free lock not taken");
    mine.release().await.expect("release");
    await_queue_len(&observer, &name, 0).await;
}

/// 100 acquires cancelled at assorted points (drop, timeout) leave zero nodes.
pub async fn cancelled_acquires_leave_nothing(h: &dyn Harness) {
    let name = h.unique_name("cancel");
    let observer = client(h).await;
    let holder = hold(&client(h).await, &name).await;
    let clients = [
        client(h).await,
        client(h).await,
        client(h).await,
        client(h).await,
    ];
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let c = clients[i as usize % clients.len()].clone();
        let name = name.clone();
        let task = tokio::spawn(async move {
            let m = c.mutex(&name).expect("name");
            // Spread the cancellation points from "before the create" to "long queued".
            let r = timeout(Duration::from_millis(i % 40), m.lock()).await;
            assert!(r.is_err(), "acquired a held lock");
        });
        if i % 5 == 0 {
            task.abort(); // dropped without ever being polled, or mid-way
        }
        tasks.push(task);
    }
    for t in tasks {
        let _ = t.await;
    }
    await_queue_len(&observer, &name, 1).await;
    holder.release().await.expect("release");
    await_queue_len(&observer, &name, 0).await;
    // The lock is free for the next comer at once.
    let g = timeout(EVENTUALLY, clients[0].mutex(&name).expect("name").lock())
        .await
        .expect("lock after cancellations")
        .expect("lock");
    g.release().await.expect("release");
}

/// lock_timeout fails with Error::Timeout on a held lock and leaves nothing behind.
pub async fn lock_timeout(h: &dyn Harness) {
    let name = h.unique_name("timeout");
    let observer = client(h).await;
    let g = hold(&client(h).await, &name).await;
    let m = client(h).await.mutex(&name).expect("name");
    let err = m
        .lock_timeout(Duration::from_millis(300))
        .await
        .expect_err("took a held lock");
    assert!(
        matches!(err, Error::Timeout(d) if d == Duration::from_millis(300)),
        "{err:?}"
    );
    await_queue_len(&observer, &name, 1).await;
    g.release().await.expect("release");
    m.lock_timeout(EVENTUALLY)
        .await
        .expect("free lock")
        .release()
        .await
        .expect("release");
}

/// The state of the session `c` holds its locks through (without opening a new one).
async fn ga_session_state(c: &Client) -> tokio::sync::watch::Receiver<queuelock::SessionState> {
    let (tx, rx) = tokio::sync::watch::channel(queuelock::SessionState::Lost);
    match c.current_session() {
        Some(s) => s.state(),
        None => {
            drop(tx);
            rx
        }
    }
}

/// The holder's session expires: its `lost()` resolves within TTL + margin and the next
/// waiter proceeds with a larger fencing token.
pub async fn session_expiry_passes_lock_on(h: &dyn Harness) {
    let name = h.unique_name("expiry");
    let a = client(h).await;
    let ga = hold(&a, &name).await;
    let b = client(h).await;
    let name_b = name.clone();
    let waiter = tokio::spawn(async move { b.mutex(&name_b).expect("name").lock().await });
    await_queue_len(&client(h).await, &name, 2).await;
    assert!(ga.is_lost().is_none());
    h.expire(ga.session_id()).await;
    let reason = timeout(h.ttl() + EVENTUALLY, ga.lost())
        .await
        .expect("loss not reported");
    // The session's end removes the node; on ZooKeeper the holder may see the node go
    // before its own connection learns why, so either reason is truthful here.
    assert!(
        matches!(reason, LossReason::SessionLost | LossReason::NodeDeleted),
        "{reason:?}"
    );
    let mut state = ga_session_state(&a).await;
    timeout(
        h.ttl() + EVENTUALLY,
        state.wait_for(|s| *s == queuelock::SessionState::Lost),
    )
    .await
    .expect("the expired session never became Lost")
    .expect("state");
    let gb = timeout(EVENTUALLY, waiter)
        .await
        .expect("waiter hung")
        .expect("join")
        .expect("lock");
    assert!(gb.fencing_token() > ga.fencing_token());
    assert!(matches!(ga.release().await, Err(Error::LockLost(r)) if r == reason));
    gb.release().await.expect("release");
    // The client opens a fresh session for new work.
    cycle(&a, &name).await;
}

/// Someone else deletes the holder's node: `lost()` resolves with NodeDeleted.
pub async fn node_deleted_by_other(h: &dyn Harness) {
    let name = h.unique_name("deleted");
    let a = client(h).await;
    let g = hold(&a, &name).await;
    let other = client(h).await.session().await.expect("session");
    let node = other.list(&name).await.expect("list").nodes.remove(0);
    assert_eq!(node.key, g.key());
    other.delete(&node).await.expect("delete");
    let reason = timeout(EVENTUALLY, g.lost())
        .await
        .expect("loss not reported");
    assert_eq!(reason, LossReason::NodeDeleted);
    assert_eq!(g.is_lost(), Some(LossReason::NodeDeleted));
    assert!(matches!(
        g.release().await,
        Err(Error::LockLost(LossReason::NodeDeleted))
    ));
}

/// Fencing tokens strictly increase across successive holders (several clients).
pub async fn fencing_tokens_increase(h: &dyn Harness) {
    let name = h.unique_name("fencing");
    let clients = [client(h).await, client(h).await, client(h).await];
    let mut last = 0;
    for i in 0..20 {
        let g = clients[i % 3]
            .mutex(&name)
            .expect("name")
            .lock()
            .await
            .expect("lock");
        assert!(
            g.fencing_token() > last,
            "token {} after {}",
            g.fencing_token(),
            last
        );
        last = g.fencing_token();
        g.release().await.expect("release");
    }
}

/// Re-acquiring through the same handle is counted, not queued; other handles stay out
/// until the last hold is released.
pub async fn reentrancy(h: &dyn Harness) {
    let name = h.unique_name("reentrant");
    let c = client(h).await;
    let m = c.mutex(&name).expect("name");
    let g1 = m.lock().await.expect("lock");
    let g2 = timeout(EVENTUALLY, m.lock())
        .await
        .expect("re-entry queued")
        .expect("lock");
    let g3 = m
        .try_lock()
        .await
        .expect("try")
        .expect("re-entry by try_lock");
    assert_eq!(m.hold_count(), 3);
    assert_eq!(g1.fencing_token(), g2.fencing_token());
    let other = c.mutex(&name).expect("name"); // same client, other handle: excluded
    assert!(other.try_lock().await.expect("try").is_none());
    drop(g1);
    g3.release().await.expect("release");
    assert_eq!(m.hold_count(), 1);
    assert!(
        other.try_lock().await.expect("try").is_none(),
        "freed while still held"
    );
    g2.release().await.expect("release");
    assert_eq!(m.hold_count(), 0);
    let g = timeout(EVENTUALLY, other.lock())
        .await
        .expect("not freed")
        .expect("lock");
    g.release().await.expect("release");
}

/// Dropping a guard releases the lock in the background.
pub async fn drop_releases(h: &dyn Harness) {
    let name = h.unique_name("drop");
    let g = hold(&client(h).await, &name).await;
    let m = client(h).await.mutex(&name).expect("name");
    drop(g);
    let g = timeout(EVENTUALLY, m.lock())
        .await
        .expect("drop did not release")
        .expect("lock");
    g.release().await.expect("release");
}

/// Every invalid-name class is refused with InvalidName before any network call.
pub async fn invalid_names(h: &dyn Harness) {
    let c = client(h).await;
    type Expect = fn(&NameError) -> bool;
    let cases: Vec<(String, Expect)> = vec![
        (String::new(), |r| matches!(r, NameError::Empty)),
        ("/abs".into(), |r| {
            matches!(r, NameError::EmptySegment { .. })
        }),
        ("a//b".into(), |r| {
            matches!(r, NameError::EmptySegment { .. })
        }),
        ("a/".into(), |r| matches!(r, NameError::EmptySegment { .. })),
        ("a/../b".into(), |r| {
            matches!(r, NameError::DotSegment { .. })
        }),
        ("..".into(), |r| matches!(r, NameError::DotSegment { .. })),
        ("sp ace".into(), |r| {
            matches!(r, NameError::BadChar { ch: ' ', .. })
        }),
        ("ünï".into(), |r| matches!(r, NameError::BadChar { .. })),
        ("ctl\u{7}".into(), |r| {
            matches!(r, NameError::BadChar { .. })
        }),
        ("x".repeat(257), |r| matches!(r, NameError::TooLong { .. })),
        ("x".repeat(129), |r| {
            matches!(r, NameError::SegmentTooLong { .. })
        }),
        ("zookeeper/x".into(), |r| matches!(r, NameError::Reserved)),
    ];
    for (name, ok) in cases {
        match c.mutex(&name) {
            Err(Error::InvalidName { name: n, reason }) => {
                assert_eq!(n, name);
                assert!(ok(&reason), "{name:?}: wrong reason {reason:?}");
            }
            other => panic!("{name:?} accepted: {other:?}"),
        }
    }
    assert!(
        c.session_id().is_none(),
        "an invalid name touched the server"
    );
}

/// Expands to one `#[tokio::test]` per conformance test, each with a fresh harness.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            mutual_exclusion, fifo_order, try_lock_leaves_nothing,
            cancelled_acquires_leave_nothing, lock_timeout, session_expiry_passes_lock_on,
            node_deleted_by_other, fencing_tokens_increase, reentrancy, drop_releases,
            invalid_names, rwlock_shared_reads_exclusive_writes, rwlock_writer_not_starved,
            semaphore_bound, semaphore_fifo_and_holder_death, semaphore_permit_mismatch,
            who_holds_what, fenced_writes_rejected_after_loss, multilock_no_deadlock,
            election_one_leader_and_failover, election_observe_in_order,
            one_release_wakes_one_waiter, semaphore_release_wakes_few,
            release_over_a_stalled_link, lock_rides_out_a_short_outage,
            metrics_of_a_contended_run, metrics_of_timeouts_and_cancels,
            metrics_of_a_lost_session, barrier_releases_all_once_removed,
            double_barrier_five, double_barrier_killed_participant, double_barrier_clears_raced_marks,
            count_down_latch_opens_at_zero, count_down_latch_concurrent,
            revocation_reaches_the_holder, revocation_ignored_keeps_the_lock,
            revocation_is_for_one_hold, lock_delay_after_loss_not_after_release, loss_reported_by_the_deadline
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                conformance::$name(&harness).await;
            }
        )*
    };
}

/// Readers share, writers are exclusive: a checker records who is inside and fails on
/// any overlap of a writer with anyone; it also insists readers did overlap.
pub async fn rwlock_shared_reads_exclusive_writes(h: &dyn Harness) {
    let name = h.unique_name("rw");
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let max_readers = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let c = client(h).await;
        let (name, readers, writers, max_readers) = (
            name.clone(),
            readers.clone(),
            writers.clone(),
            max_readers.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let l = c.rwlock(&name).expect("name");
            for round in 0..6usize {
                if (i + round) % 4 == 0 {
                    let g = l.write().await.expect("write");
                    assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                    assert_eq!(readers.load(Ordering::SeqCst), 0, "writer with readers");
                    sleep(Duration::from_millis(2)).await;
                    assert_eq!(
                        readers.load(Ordering::SeqCst),
                        0,
                        "reader entered under writer"
                    );
                    writers.fetch_sub(1, Ordering::SeqCst);
                    g.release().await.expect("release");
                } else {
                    let g = l.read().await.expect("read");
                    let now = readers.fetch_add(1, Ordering::SeqCst) + 1;
                    max_readers.fetch_max(now, Ordering::SeqCst);
                    assert_eq!(writers.load(Ordering::SeqCst), 0, "reader with a writer");
                    sleep(Duration::from_millis(20)).await;
                    readers.fetch_sub(1, Ordering::SeqCst);
                    g.release().await.expect("release");
                }
            }
        }));
    }
    join_all(tasks, Duration::from_secs(240)).await;
    assert!(
        max_readers.load(Ordering::SeqCst) >= 2,
        "readers never shared the lock"
    );
}

/// A queued writer is not overtaken by readers arriving after it.
pub async fn rwlock_writer_not_starved(h: &dyn Harness) {
    let name = h.unique_name("starve");
    let observer = client(h).await;
    let r1 = client(h)
        .await
        .rwlock(&name)
        .expect("name")
        .read()
        .await
        .expect("read");
    let wc = client(h).await;
    let n = name.clone();
    let writer = tokio::spawn(async move {
        let g = wc.rwlock(&n).expect("name").write().await.expect("write");
        let t = g.fencing_token();
        g.release().await.expect("release");
        t
    });
    await_queue_len(&observer, &name, 2).await;
    let late = client(h).await.rwlock(&name).expect("name");
    assert!(
        late.try_read().await.expect("try").is_none(),
        "reader overtook a queued writer"
    );
    let rc = client(h).await;
    let n = name.clone();
    let reader = tokio::spawn(async move {
        let g = rc.rwlock(&n).expect("name").read().await.expect("read");
        let t = g.fencing_token();
        g.release().await.expect("release");
        t
    });
    await_queue_len(&observer, &name, 3).await;
    r1.release().await.expect("release");
    let wt = timeout(EVENTUALLY, writer)
        .await
        .expect("writer starved")
        .expect("join");
    let rt = timeout(EVENTUALLY, reader)
        .await
        .expect("reader hung")
        .expect("join");
    assert!(wt < rt, "the later reader was granted before the writer");
}

/// Never more than N holders of a semaphore among ≥ 32 contenders, and all N permits can
/// be held at once.
pub async fn semaphore_bound(h: &dyn Harness) {
    const PERMITS: usize = 3;
    let name = h.unique_name("sem");
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let c = client(h).await;
        let (name, inside, most) = (name.clone(), inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let s = c.semaphore(&name, PERMITS as u32).expect("name");
            for _ in 0..2 {
                let g = s.acquire().await.expect("acquire");
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(now <= PERMITS, "{now} holders of {PERMITS} permits");
                most.fetch_max(now, Ordering::SeqCst);
                sleep(Duration::from_millis(15)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.expect("release");
            }
            c.close().await.expect("close");
        }));
    }
    join_all(tasks, Duration::from_secs(240)).await;
    assert!(most.load(Ordering::SeqCst) <= PERMITS);
    // All N permits can be held at once: N holders wait for each other inside (whether
    // the 32 above ever overlapped fully depends on scheduling, so it is not asserted).
    let all_in = Arc::new(tokio::sync::Barrier::new(PERMITS));
    let mut tasks = Vec::new();
    for _ in 0..PERMITS {
        let c = client(h).await;
        let (name, all_in) = (name.clone(), all_in.clone());
        tasks.push(tokio::spawn(async move {
            let s = c.semaphore(&name, PERMITS as u32).expect("name");
            let g = s.acquire().await.expect("acquire");
            all_in.wait().await;
            g.release().await.expect("release");
            c.close().await.expect("close");
        }));
    }
    join_all(tasks, EVENTUALLY).await;
}

/// Semaphore admission is FIFO, and a holder whose session dies frees its permit.
pub async fn semaphore_fifo_and_holder_death(h: &dyn Harness) {
    let name = h.unique_name("semfifo");
    let a = client(h)
        .await
        .semaphore(&name, 2)
        .expect("name")
        .acquire()
        .await
        .expect("a");
    let dying = client(h).await;
    let b = dying
        .semaphore(&name, 2)
        .expect("name")
        .acquire()
        .await
        .expect("b");
    let order = Arc::new(StdMutex::new(Vec::new()));
    let observer = client(h).await;
    let waiters_queue = format!("{name}/waiters");
    let mut tasks = Vec::new();
    for i in 0..4usize {
        let c = client(h).await;
        let (n, order) = (name.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = c
                .semaphore(&n, 2)
                .expect("name")
                .acquire()
                .await
                .expect("acquire");
            order.lock().expect("order").push(i);
            sleep(Duration::from_millis(10)).await;
            g.release().await.expect("release");
        }));
        await_queue_len(&observer, &waiters_queue, i + 1).await;
    }
    // The holder's process "dies": its session expires and its permit frees.
    h.expire(b.session_id()).await;
    timeout(h.ttl() + EVENTUALLY, b.lost())
        .await
        .expect("loss not reported");
    sleep(Duration::from_millis(50)).await;
    a.release().await.expect("release");
    join_all(tasks, EVENTUALLY).await;
    assert_eq!(*order.lock().expect("order"), vec![0, 1, 2, 3]);
    await_queue_len(&observer, &waiters_queue, 0).await;
    await_queue_len(&observer, &format!("{name}/holders"), 0).await;
}

/// A caller that disagrees with the stored permit count gets a clear Conflict.
pub async fn semaphore_permit_mismatch(h: &dyn Harness) {
    let name = h.unique_name("semcount");
    let c = client(h).await;
    let g = c
        .semaphore(&name, 2)
        .expect("name")
        .acquire()
        .await
        .expect("acquire");
    let err = c
        .semaphore(&name, 5)
        .expect("name")
        .acquire()
        .await
        .expect_err("mismatch");
    assert!(
        matches!(&err, Error::Conflict { message, .. } if message.contains("2 permits") && message.contains("asks for 5")),
        "{err}"
    );
    assert!(matches!(c.semaphore(&name, 0), Err(Error::Config(_))));
    g.release().await.expect("release");
}

/// holders() and waiters() show who holds and who waits, in queue order, with metadata.
pub async fn who_holds_what(h: &dyn Harness) {
    let name = h.unique_name("who");
    let holder = Client::new(
        h.backend().await,
        ClientOptions::default()
            .with_ttl(h.ttl())
            .with_label("holder-a"),
    );
    let g = hold(&holder, &name).await;
    let observer = client(h).await;
    let mut tasks = Vec::new();
    for i in 0..2 {
        let c = Client::new(
            h.backend().await,
            ClientOptions::default()
                .with_ttl(h.ttl())
                .with_label(format!("waiter-{i}")),
        );
        let n = name.clone();
        tasks.push(tokio::spawn(async move {
            cycle(&c, &n).await;
        }));
        await_queue_len(&observer, &name, i + 2).await;
    }
    let m = observer.mutex(&name).expect("name");
    let holders = m.holders().await.expect("holders");
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].key, g.key());
    assert_eq!(holders[0].fencing_token, g.fencing_token());
    let info = holders[0].holder.clone().expect("metadata");
    assert_eq!(info.label.as_deref(), Some("holder-a"));
    assert_eq!(info.pid, std::process::id());
    let waiters = m.waiters().await.expect("waiters");
    let labels: Vec<_> = waiters
        .iter()
        .map(|w| w.holder.as_ref().and_then(|i| i.label.clone()))
        .collect();
    assert_eq!(
        labels,
        vec![Some("waiter-0".to_owned()), Some("waiter-1".to_owned())]
    );
    g.release().await.expect("release");
    join_all(tasks, EVENTUALLY).await;
    // Read-write lock: two readers hold, a writer waits.
    let rw = observer.rwlock(&name).expect("name");
    let r1 = rw.read().await.expect("read");
    let r2 = client(h)
        .await
        .rwlock(&name)
        .expect("name")
        .read()
        .await
        .expect("read");
    let wc = client(h).await;
    let n = name.clone();
    let w = tokio::spawn(async move {
        wc.rwlock(&n)
            .expect("name")
            .write()
            .await
            .expect("write")
            .release()
            .await
    });
    await_queue_len(&observer, &name, 3).await;
    assert_eq!(rw.holders().await.expect("holders").len(), 2);
    assert_eq!(rw.waiters().await.expect("waiters").len(), 1);
    r1.release().await.expect("release");
    r2.release().await.expect("release");
    timeout(EVENTUALLY, w)
        .await
        .expect("hung")
        .expect("join")
        .expect("release");
}

/// Fenced writes apply while the lock is held and are refused, writing nothing, once it
/// is lost.
pub async fn fenced_writes_rejected_after_loss(h: &dyn Harness) {
    let name = h.unique_name("fenced");
    let key = format!("{}/value", h.unique_name("data"));
    let a = client(h).await;
    let g = hold(&a, &name).await;
    g.fenced_write([(key.as_str(), Some("1"))])
        .await
        .expect("fenced write");
    assert_eq!(
        g.read(&key).await.expect("read").as_deref(),
        Some(&b"1"[..])
    );
    assert!(matches!(
        g.fenced_write([("../escape", Some("x"))]).await,
        Err(Error::InvalidName { .. })
    ));
    h.expire(g.session_id()).await;
    timeout(h.ttl() + EVENTUALLY, g.lost())
        .await
        .expect("loss not reported");
    let err = g
        .fenced_write([(key.as_str(), Some("2")), (key.as_str(), None::<&str>)])
        .await
        .expect_err("write after loss");
    assert!(matches!(err, Error::LockLost(_)), "{err:?}");
    // Another holder sees the value the lost holder could not overwrite.
    let b = client(h).await;
    let gb = hold(&b, &name).await;
    assert_eq!(
        gb.read(&key).await.expect("read").as_deref(),
        Some(&b"1"[..])
    );
    gb.fenced_write([(key.as_str(), None::<&str>)])
        .await
        .expect("delete");
    assert_eq!(gb.read(&key).await.expect("read"), None);
    gb.release().await.expect("release");
}

/// Two groups take overlapping lock sets listed in opposite orders: no deadlock, and
/// each lock stays exclusive.
pub async fn multilock_no_deadlock(h: &dyn Harness) {
    let base = h.unique_name("multi");
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("{base}/{n}"))
        .collect();
    let inside: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::new();
    for i in 0..6usize {
        let c = client(h).await;
        let (names, inside) = (names.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            // Group 0 lists a,b,c; group 1 lists c,b,a (and only b,a for some).
            let order: Vec<usize> = if i % 2 == 0 {
                vec![0, 1, 2]
            } else if i % 3 == 0 {
                vec![1, 0]
            } else {
                vec![2, 1, 0]
            };
            let mut ml = c.multilock();
            for &k in &order {
                ml = ml.mutex(&names[k]).expect("name");
            }
            for _ in 0..4 {
                let g = ml.lock().await.expect("multilock");
                for &k in &order {
                    assert_eq!(
                        inside[k].fetch_add(1, Ordering::SeqCst),
                        0,
                        "lock {k} shared"
                    );
                }
                sleep(Duration::from_millis(3)).await;
                for &k in &order {
                    inside[k].fetch_sub(1, Ordering::SeqCst);
                }
                g.release().await.expect("release");
            }
        }));
    }
    join_all(tasks, Duration::from_secs(120)).await;
    let c = client(h).await;
    assert!(matches!(
        c.multilock().mutex("x").expect("x").mutex("x"),
        Err(Error::Config(_))
    ));
}

/// One leader at a time; FIFO succession on resignation and on the leader's session
/// loss; proclamations only while leading; leader() agrees.
pub async fn election_one_leader_and_failover(h: &dyn Harness) {
    let name = h.unique_name("elect");
    let observer = client(h).await;
    let e = observer.election(&name).expect("name");
    assert_eq!(e.leader().await.expect("leader"), None);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for i in 0..4usize {
        let c = client(h).await;
        clients.push(c.clone());
        let (n, tx) = (name.clone(), tx.clone());
        tokio::spawn(async move {
            let l = c
                .election(&n)
                .expect("name")
                .campaign(format!("c{i}"))
                .await
                .expect("campaign");
            let _ = tx.send((i, l));
        });
        await_queue_len(&observer, &name, i + 1).await;
    }
    let mut last_token = 0;
    let mut previous: Option<queuelock::Leadership> = None;
    for step in 0..4usize {
        let (i, l) = timeout(h.ttl() + EVENTUALLY, rx.recv())
            .await
            .expect("no new leader")
            .expect("chan");
        assert_eq!(i, step, "leaders out of FIFO order");
        if let Some(p) = &previous {
            assert!(p.is_lost().is_some(), "two leaders at once");
        }
        assert!(l.fencing_token() > last_token);
        last_token = l.fencing_token();
        let seen = e.leader().await.expect("leader").expect("a leader");
        assert_eq!(seen.value, format!("c{i}").into_bytes());
        assert_eq!(seen.fencing_token, l.fencing_token());
        l.proclaim(format!("c{i}-proclaimed"))
            .await
            .expect("proclaim");
        assert_eq!(
            e.leader().await.expect("leader").expect("leader").value,
            format!("c{i}-proclaimed").into_bytes()
        );
        if step % 2 == 0 {
            l.resign().await.expect("resign");
            previous = None;
        } else {
            // The leader's session is lost: it is told, and the next candidate leads.
            h.expire(l.guard().session_id()).await;
            timeout(h.ttl() + EVENTUALLY, l.lost())
                .await
                .expect("loss not reported");
            assert!(
                matches!(l.proclaim("late").await, Err(Error::LockLost(_))),
                "proclaimed after loss"
            );
            previous = Some(l);
        }
    }
    await_queue_len(&observer, &name, 0).await;
    assert_eq!(e.leader().await.expect("leader"), None);
}

async fn next_leader<S>(stream: &mut S) -> Option<String>
where
    S: futures::Stream<Item = queuelock::Result<Option<queuelock::Leader>>> + Unpin,
{
    use futures::StreamExt;
    timeout(EVENTUALLY, stream.next())
        .await
        .expect("observe stalled")
        .expect("stream ended")
        .expect("observe failed")
        .map(|l| String::from_utf8(l.value).expect("utf8"))
}

/// observe() reports the leader, proclamations, succession and vacancy, in order.
pub async fn election_observe_in_order(h: &dyn Harness) {
    let name = h.unique_name("observe");
    let watcher = client(h).await;
    let mut stream = Box::pin(watcher.election(&name).expect("name").observe());
    assert_eq!(next_leader(&mut stream).await, None);
    let a = client(h).await;
    let la = a
        .election(&name)
        .expect("name")
        .campaign("a")
        .await
        .expect("campaign");
    assert_eq!(next_leader(&mut stream).await.as_deref(), Some("a"));
    la.proclaim("a2").await.expect("proclaim");
    assert_eq!(next_leader(&mut stream).await.as_deref(), Some("a2"));
    let b = client(h).await;
    let n = name.clone();
    let candidate = tokio::spawn(async move { b.election(&n).expect("name").campaign("b").await });
    await_queue_len(&watcher, &name, 2).await;
    la.resign().await.expect("resign");
    assert_eq!(next_leader(&mut stream).await.as_deref(), Some("b"));
    let lb = timeout(EVENTUALLY, candidate)
        .await
        .expect("hung")
        .expect("join")
        .expect("campaign");
    lb.resign().await.expect("resign");
    assert_eq!(next_leader(&mut stream).await, None);
}

/// No herd: with 100 waiters queued, each is woken exactly once — when the node just ahead
/// of it goes — however many releases happen before its turn.
pub async fn one_release_wakes_one_waiter(h: &dyn Harness) {
    const WAITERS: usize = 100;
    let name = h.unique_name("herd");
    let observer = client(h).await;
    let holder = client(h).await;
    let first = hold(&holder, &name).await;
    let mut waiters = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..WAITERS {
        let c = client(h).await;
        waiters.push(c.clone());
        let n = name.clone();
        tasks.push(tokio::spawn(async move {
            let g = hold(&c, &n).await;
            g.release().await.expect("release");
        }));
    }
    await_queue_len(&observer, &name, WAITERS + 1).await;
    first.release().await.expect("release");
    join_all(tasks, Duration::from_secs(120)).await;
    let wakeups: u64 = waiters.iter().map(|c| c.stats().wakeups).sum();
    let grants: u64 = waiters.iter().map(|c| c.stats().grants).sum();
    assert_eq!(grants, WAITERS as u64);
    // A herd would wake every remaining waiter on each release: ~WAITERS²/2 = 5,000.
    assert_eq!(
        wakeups, WAITERS as u64,
        "{WAITERS} releases woke {wakeups} waiters"
    );
}

/// No herd on a semaphore either: with 30 waiters behind 3 permits, a waiter is woken at
/// most twice — once when its predecessor in the line enters, once (as head) when a
/// holder leaves — so wake-ups stay O(1) per release (a herd would be ~450).
pub async fn semaphore_release_wakes_few(h: &dyn Harness) {
    const WAITERS: usize = 30;
    let name = h.unique_name("semherd");
    let observer = client(h).await;
    let mut holders = Vec::new();
    for _ in 0..3 {
        let c = client(h).await;
        holders.push(
            c.semaphore(&name, 3)
                .expect("name")
                .acquire()
                .await
                .expect("acquire"),
        );
    }
    let mut waiters = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..WAITERS {
        let c = client(h).await;
        waiters.push(c.clone());
        let n = name.clone();
        tasks.push(tokio::spawn(async move {
            let g = c
                .semaphore(&n, 3)
                .expect("name")
                .acquire()
                .await
                .expect("acquire");
            sleep(Duration::from_millis(2)).await;
            g.release().await.expect("release");
        }));
    }
    await_queue_len(&observer, &format!("{name}/waiters"), WAITERS).await;
    for g in holders {
        g.release().await.expect("release");
    }
    join_all(tasks, Duration::from_secs(120)).await;
    let wakeups: u64 = waiters.iter().map(|c| c.stats().wakeups).sum();
    let grants: u64 = waiters.iter().map(|c| c.stats().grants).sum();
    // One grant per acquire: the head of the line (entering the holders is not queued).
    assert_eq!(grants, WAITERS as u64);
    println!("semaphore: {WAITERS} waiters, {wakeups} wake-ups");
    // Every waiter but the first few (a free permit at once) waits at least once.
    assert!(
        wakeups >= WAITERS as u64 - 3,
        "granted without waking: {wakeups}"
    );
    assert!(
        wakeups <= 2 * WAITERS as u64,
        "{WAITERS} waiters were woken {wakeups} times"
    );
}

/// A release issued while the holder's link to the store is stalled — long enough for
/// the client library to give up on its request, not long enough to end the session —
/// and lost with the broken connection still removes the node once the link heals: the queue moves on and nothing is left.
/// (Regression: on ZooKeeper the give-up error ended `release()` early, the node stayed
/// while the session lived on, and every waiter hung behind it — found by the Jepsen
/// test's blackhole fault.)
pub async fn release_over_a_stalled_link(h: &dyn Harness) {
    let name = h.unique_name("stalled-release");
    let (backend, link) = h.backend_with_link().await;
    let holder = Client::new(backend, ClientOptions::default().with_ttl(h.ttl()));
    let g = hold(&holder, &name).await;
    let waiter = client(h).await;
    let next = {
        let (waiter, name) = (waiter.clone(), name.clone());
        tokio::spawn(async move { hold(&waiter, &name).await.release().await })
    };
    let observer = client(h).await;
    await_queue_len(&observer, &name, 2).await;
    link.stall();
    let release = tokio::spawn(async move { g.release().await });
    // ZooKeeper's client gives up on a silent connection after 2/5 of the session
    // timeout; the session itself survives the whole TTL. The old connection then
    // breaks with the request undelivered, and the client reconnects.
    sleep(h.ttl() * 3 / 5).await;
    link.cut();
    sleep(Duration::from_millis(100)).await;
    link.heal();
    // Released (or, if the session did not survive, lost): either way, not stuck.
    let _ = timeout(EVENTUALLY, release)
        .await
        .expect("release() hung")
        .expect("release task");
    timeout(EVENTUALLY, next)
        .await
        .expect("the waiter never got the lock after the holder's release")
        .expect("waiter task")
        .expect("waiter release");
    await_queue_len(&observer, &name, 0).await;
    holder.close().await.ok();
}

/// A waiting `lock()` rides out a short outage of its link (here while it opens its
/// session) instead of failing at the first connection error. (Regression: the Jepsen
/// test saw `lock()` return a connection error right after a partition had cost the
/// client its session.)
pub async fn lock_rides_out_a_short_outage(h: &dyn Harness) {
    let name = h.unique_name("outage");
    let (backend, link) = h.backend_with_link().await;
    let c = Client::new(backend, ClientOptions::default().with_ttl(h.ttl()));
    link.cut();
    let waiting = {
        let (c, name) = (c.clone(), name.clone());
        tokio::spawn(async move { c.mutex(&name).expect("name").lock().await })
    };
    sleep(Duration::from_secs(1)).await;
    link.heal();
    let g = timeout(EVENTUALLY, waiting)
        .await
        .expect("lock() hung after the link healed")
        .expect("task")
        .expect("lock() gave up during a one-second outage");
    g.release().await.expect("release");
    c.close().await.ok();
}

/// A client whose metrics carry the full lock name (the tests filter on it), with the
/// recording recorder installed.
async fn metered_client(h: &dyn Harness) -> Client {
    recorder::install();
    Client::new(
        h.backend().await,
        ClientOptions::default()
            .with_ttl(h.ttl())
            .with_name_label(queuelock::NameLabel::Full),
    )
}

/// How long each holder holds in the metric tests: long against scheduling noise, so
/// the ordering properties below cannot flake.
const HOLD: Duration = Duration::from_millis(300);

/// A contended run: A holds, B then C queue behind it, each holds for `HOLD`. One wait
/// sample per grant; queue depths at enqueue 0, 1, 2; the gauge counts the two waiters;
/// C waited longer than B held (it waited through all of B's hold); ClientStats agrees
/// with the counters.
pub async fn metrics_of_a_contended_run(h: &dyn Harness) {
    use recorder::{samples, total};
    let name = h.unique_name("metrics-contended");
    let observer = client(h).await;
    let a = metered_client(h).await;
    let ga = hold(&a, &name).await;
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for i in 0..2 {
        let c = metered_client(h).await;
        clients.push(c.clone());
        let n = name.clone();
        tasks.push(tokio::spawn(async move {
            let g = hold(&c, &n).await;
            sleep(HOLD).await;
            g.release().await.expect("release");
        }));
        await_queue_len(&observer, &name, i + 2).await;
    }
    assert_eq!(
        total(&name, "queuelock_waiting", &[]),
        2.0,
        "the gauge counts the two waiters"
    );
    sleep(HOLD).await;
    ga.release().await.expect("release");
    join_all(tasks, EVENTUALLY).await;
    let granted = samples(
        &name,
        "queuelock_acquire_wait_seconds",
        &[("outcome", "granted")],
    );
    assert_eq!(granted.len(), 3, "one wait sample per grant: {granted:?}");
    assert_eq!(total(&name, "queuelock_grants_total", &[]), 3.0);
    assert_eq!(total(&name, "queuelock_waiting", &[]), 0.0);
    let mut depths = samples(&name, "queuelock_queue_depth", &[]);
    depths.sort_by(f64::total_cmp);
    assert_eq!(depths, vec![0.0, 1.0, 2.0], "nodes ahead at enqueue");
    // Recorded in grant/release order: A, B, C.
    let holds = samples(&name, "queuelock_hold_seconds", &[]);
    assert_eq!(holds.len(), 3, "{holds:?}");
    assert!(holds.iter().all(|&s| s >= HOLD.as_secs_f64()), "{holds:?}");
    assert!(
        granted[2] > holds[1] && granted[1] > granted[0],
        "later waiters waited longer than the holder ahead held: waits {granted:?}, holds {holds:?}"
    );
    assert_eq!(samples(&name, "queuelock_release_seconds", &[]).len(), 3);
    let labelled = recorder::events(&name, "queuelock_grants_total");
    assert!(labelled
        .iter()
        .all(|e| e.label("backend") == Some(a.backend().name())
            && e.label("recipe") == Some("mutex")));
    // ClientStats is a view of the same counts.
    assert_eq!(a.stats().grants, 1);
    for c in &clients {
        assert_eq!(c.stats().grants, 1);
    }
    let wakeups: u64 = clients.iter().map(|c| c.stats().wakeups).sum();
    assert_eq!(total(&name, "queuelock_wakeups_total", &[]), wakeups as f64);
}

/// A timed-out acquire is recorded as a timeout (sample and counter, and in
/// ClientStats); a dropped one as cancelled.
pub async fn metrics_of_timeouts_and_cancels(h: &dyn Harness) {
    use recorder::{samples, total};
    let name = h.unique_name("metrics-timeout");
    let g = hold(&metered_client(h).await, &name).await;
    let c = metered_client(h).await;
    let m = c.mutex(&name).expect("name");
    let err = m
        .lock_timeout(Duration::from_millis(300))
        .await
        .expect_err("took a held lock");
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    let timed_out = samples(
        &name,
        "queuelock_acquire_wait_seconds",
        &[("outcome", "timeout")],
    );
    assert_eq!(timed_out.len(), 1, "{timed_out:?}");
    assert!(timed_out[0] >= 0.3, "{timed_out:?}");
    assert_eq!(total(&name, "queuelock_acquire_timeouts_total", &[]), 1.0);
    assert_eq!(c.stats().timeouts, 1);
    let dropped = timeout(Duration::from_millis(200), m.lock()).await;
    assert!(dropped.is_err(), "took a held lock");
    let cancelled = samples(
        &name,
        "queuelock_acquire_wait_seconds",
        &[("outcome", "cancelled")],
    );
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(total(&name, "queuelock_acquire_cancelled_total", &[]), 1.0);
    assert_eq!(total(&name, "queuelock_waiting", &[]), 0.0);
    g.release().await.expect("release");
}

/// A forced session loss increments `queuelock_losses_total{reason}` once and ends the
/// hold's record.
pub async fn metrics_of_a_lost_session(h: &dyn Harness) {
    use recorder::{events, samples, total};
    let name = h.unique_name("metrics-loss");
    let a = metered_client(h).await;
    let g = hold(&a, &name).await;
    h.expire(g.session_id()).await;
    let reason = timeout(h.ttl() + EVENTUALLY, g.lost())
        .await
        .expect("loss not reported");
    let label = match reason {
        LossReason::SessionLost => "session_lost",
        LossReason::NodeDeleted => "node_deleted",
        other => panic!("unexpected loss reason {other:?}"),
    };
    assert_eq!(
        total(&name, "queuelock_losses_total", &[("reason", label)]),
        1.0,
        "{:?}",
        events(&name, "queuelock_losses_total")
    );
    assert_eq!(a.stats().losses, 1);
    assert_eq!(samples(&name, "queuelock_hold_seconds", &[]).len(), 1);
    assert!(g.release().await.is_err());
    // Released after the loss: still one loss, one hold sample.
    assert_eq!(total(&name, "queuelock_losses_total", &[]), 1.0);
    assert_eq!(samples(&name, "queuelock_hold_seconds", &[]).len(), 1);
}

/// Whether `task` is still running after a pause that would let a wrongly released
/// waiter finish (a safety check: it must not have finished; not a timing test).
async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) -> bool {
    sleep(Duration::from_millis(300)).await;
    !task.is_finished()
}

/// A barrier holds every waiter while it is up and releases all of them once it is
/// removed (by another client); a barrier whose setter's session is lost falls.
pub async fn barrier_releases_all_once_removed(h: &dyn Harness) {
    let name = h.unique_name("barrier");
    let setter = client(h).await;
    let gate = setter.barrier(&name).expect("name");
    assert!(!gate.is_set().await.expect("is_set"));
    gate.wait()
        .await
        .expect("a barrier that is not up lets through");
    assert!(gate.set().await.expect("set"));
    assert!(!gate.set().await.expect("set again"), "set twice");
    let mut waiters = Vec::new();
    for _ in 0..4 {
        let b = client(h).await.barrier(&name).expect("name");
        waiters.push(tokio::spawn(async move { b.wait().await.expect("wait") }));
    }
    for w in &waiters {
        assert!(still_waiting(w).await, "released while the barrier is up");
    }
    // A timed-out wait leaves nothing behind and does not disturb the others.
    let b = client(h).await.barrier(&name).expect("name");
    assert!(matches!(
        b.wait_timeout(Duration::from_millis(50)).await,
        Err(Error::Timeout(_))
    ));
    client(h)
        .await
        .barrier(&name)
        .expect("name")
        .remove()
        .await
        .expect("remove");
    join_all(waiters, EVENTUALLY).await;
    assert!(!gate.is_set().await.expect("is_set"));

    // The setter's process dies: its barrier falls with its session.
    let dying = client(h).await;
    assert!(dying
        .barrier(&name)
        .expect("name")
        .set()
        .await
        .expect("set"));
    let b = client(h).await.barrier(&name).expect("name");
    let waiter = tokio::spawn(async move { b.wait().await.expect("wait") });
    assert!(
        still_waiting(&waiter).await,
        "released while the barrier is up"
    );
    h.expire(dying.session_id().expect("session")).await;
    join_all(vec![waiter], h.ttl() + EVENTUALLY).await;
    await_queue_len(&client(h).await, &format!("{name}/gate"), 0).await;
}

/// A double barrier for 5: nobody gets through `enter` before the fifth arrives, nobody
/// out of `leave` before all have left; a cancelled enter leaves nothing behind; the
/// barrier is used for a second round.
pub async fn double_barrier_five(h: &dyn Harness) {
    const N: u32 = 5;
    let name = h.unique_name("dbarrier");
    let observer = client(h).await;
    let members = format!("{name}/members");
    // A cancelled enter leaves nothing behind.
    let b = client(h).await.double_barrier(&name, N).expect("name");
    assert!(matches!(
        b.enter_timeout(Duration::from_millis(100)).await,
        Err(Error::Timeout(_))
    ));
    await_queue_len(&observer, &members, 0).await;
    for round in 0..2 {
        let inside = Arc::new(AtomicUsize::new(0));
        let left = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..N as usize {
            let b = client(h).await.double_barrier(&name, N).expect("name");
            let (inside_, left, tx) = (inside.clone(), left.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let e = b.enter().await.expect("enter");
                inside_.fetch_add(1, Ordering::SeqCst);
                // The last to arrive stays until the test lets it leave.
                let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
                tx.send((i, go_tx)).expect("send");
                let _ = go_rx.await;
                e.leave().await.expect("leave");
                left.fetch_add(1, Ordering::SeqCst);
            }));
            if i + 1 < N as usize {
                await_queue_len(&observer, &members, i + 1).await;
                sleep(Duration::from_millis(50)).await;
                assert_eq!(
                    inside.load(Ordering::SeqCst),
                    0,
                    "round {round}: through enter with {} of {N}",
                    i + 1
                );
            }
        }
        let mut gates = Vec::new();
        for _ in 0..N {
            gates.push(
                timeout(EVENTUALLY, rx.recv())
                    .await
                    .expect("enter hung")
                    .expect("recv"),
            );
        }
        assert_eq!(inside.load(Ordering::SeqCst), N as usize);
        // All but one leave; none gets out while the last is inside.
        let (_, last) = gates.pop().expect("one");
        for (_, go) in gates {
            go.send(()).expect("go");
        }
        sleep(Duration::from_millis(300)).await;
        assert_eq!(
            left.load(Ordering::SeqCst),
            0,
            "round {round}: out of leave while one is inside"
        );
        last.send(()).expect("go");
        join_all(tasks, EVENTUALLY).await;
        assert_eq!(left.load(Ordering::SeqCst), N as usize);
        await_queue_len(&observer, &members, 0).await;
        await_queue_len(&observer, &format!("{name}/ready"), 0).await;
    }
    let err = client(h)
        .await
        .double_barrier(&name, 3)
        .expect("name")
        .enter()
        .await
        .expect_err("count mismatch");
    assert!(
        matches!(&err, Error::Conflict { message, .. } if message.contains("5 participants") && message.contains("asks for 3")),
        "{err}"
    );
    assert!(matches!(
        observer.double_barrier(&name, 0),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        observer.double_barrier("../x", 2),
        Err(Error::InvalidName { .. })
    ));
}

/// The participants of spawned `enter` calls, failing on a hang (liveness) or a panic.
async fn all_entered(
    tasks: Vec<tokio::task::JoinHandle<queuelock::Entered>>,
) -> Vec<queuelock::Entered> {
    let mut inside = Vec::new();
    for t in tasks {
        inside.push(
            timeout(EVENTUALLY, t)
                .await
                .expect("enter hung")
                .expect("join"),
        );
    }
    inside
}

/// A finished round leaves nothing: no participant node, no ready mark, and a lone
/// `enter` of barrier `b` waits for a new round (it times out, leaving nothing either).
async fn assert_round_over(observer: &Client, b: &queuelock::DoubleBarrier, case: &str) {
    let members = format!("{}/members", b.name());
    await_queue_len(observer, &members, 0).await;
    await_queue_len(observer, &format!("{}/ready", b.name()), 0).await;
    assert!(
        matches!(
            b.enter_timeout(Duration::from_millis(300)).await,
            Err(Error::Timeout(_))
        ),
        "{case}: entered on a finished round's ready mark"
    );
    await_queue_len(observer, &members, 0).await;
}

/// Rule: a participant whose session is lost has left. One killed while waiting in
/// `enter` does not count towards `n`; one killed inside does not keep the others in
/// `leave`.
pub async fn double_barrier_killed_participant(h: &dyn Harness) {
    const N: u32 = 3;
    let name = h.unique_name("dbkill");
    let observer = client(h).await;
    let members = format!("{name}/members");
    // Killed while waiting to enter: it stops counting.
    let doomed = client(h).await;
    let b = doomed.double_barrier(&name, N).expect("name");
    let early = tokio::spawn(async move { b.enter().await });
    await_queue_len(&observer, &members, 1).await;
    let mut tasks = Vec::new();
    let b = client(h).await.double_barrier(&name, N).expect("name");
    tasks.push(tokio::spawn(async move { b.enter().await.expect("enter") }));
    await_queue_len(&observer, &members, 2).await;
    h.expire(doomed.session_id().expect("session")).await;
    let r = timeout(h.ttl() + EVENTUALLY, early)
        .await
        .expect("hung")
        .expect("join");
    assert!(matches!(r, Err(Error::SessionExpired(_))), "{r:?}");
    await_queue_len(&observer, &members, 1).await;
    assert!(
        still_waiting(&tasks[0]).await,
        "entered with a dead participant counted"
    );
    let mut victim = None;
    for _ in 0..2 {
        let c = client(h).await;
        let b = c.double_barrier(&name, N).expect("name");
        if victim.is_none() {
            victim = Some(c);
        }
        tasks.push(tokio::spawn(async move { b.enter().await.expect("enter") }));
    }
    let inside = all_entered(tasks).await;
    // Killed inside: the others still get out.
    let victim = victim.expect("victim");
    let victim_id = victim.session_id().expect("session");
    let (dead, alive): (Vec<_>, Vec<_>) = inside
        .into_iter()
        .partition(|e| e.session_id() == victim_id);
    assert_eq!(dead.len(), 1);
    let leaving: Vec<_> = alive
        .into_iter()
        .map(|e| tokio::spawn(async move { e.leave().await.expect("leave") }))
        .collect();
    for t in &leaving {
        assert!(still_waiting(t).await, "out of leave while one is inside");
    }
    h.expire(victim_id).await;
    join_all(leaving, h.ttl() + EVENTUALLY).await;
    drop(dead);
    await_queue_len(&observer, &members, 0).await;
    await_queue_len(&observer, &format!("{name}/ready"), 0).await;

    // A round whose participants all leave by dropping their handles (no leave()) still
    // ends: the next participant waits for a full round of its own.
    // Their clients (whose sessions own the ready mark) stay alive.
    let mut tasks = Vec::new();
    let mut alive = Vec::new();
    for _ in 0..N {
        let c = client(h).await;
        let b = c.double_barrier(&name, N).expect("name");
        alive.push(c);
        tasks.push(tokio::spawn(async move { b.enter().await.expect("enter") }));
    }
    drop(all_entered(tasks).await);
    let b = client(h).await.double_barrier(&name, N).expect("name");
    assert_round_over(&observer, &b, "after a killed participant").await;
    drop(alive);
}

/// Two participants that see the `n`-th arrive at once may both put up a ready mark, the
/// first without seeing the second's. The last one out clears every mark, not only the
/// ones it saw: a mark left behind (its owner's session lives on) would let the next
/// round in without its `n`. The race is forced here: after the round has started, one
/// participant's session puts up a second mark nobody else has seen. Both ways out are
/// covered: `leave()`, and dropping the handles.
pub async fn double_barrier_clears_raced_marks(h: &dyn Harness) {
    use queuelock::backend::{NodeKind, NodeSpec};
    const N: u32 = 2;
    let name = h.unique_name("dbmarks");
    let observer = client(h).await;
    let ready = format!("{name}/ready");
    let clients = [client(h).await, client(h).await];
    for by_drop in [false, true] {
        let mut tasks = Vec::new();
        for c in &clients {
            let b = c.double_barrier(&name, N).expect("name");
            tasks.push(tokio::spawn(async move { b.enter().await.expect("enter") }));
        }
        let inside = all_entered(tasks).await;
        let late = NodeSpec::new(ready.clone(), NodeKind::Lock, Vec::new());
        let s = clients[1].session().await.expect("session");
        s.create_sequential(&late).await.expect("second mark");
        assert!(queue_len(&observer, &ready).await >= 2, "by_drop {by_drop}");
        if by_drop {
            drop(inside);
        } else {
            let leaving: Vec<_> = inside
                .into_iter()
                .map(|e| tokio::spawn(async move { e.leave().await.expect("leave") }))
                .collect();
            join_all(leaving, EVENTUALLY).await;
        }
        // The participants' sessions are alive: nothing but the barrier removed the marks.
        let b = clients[0].double_barrier(&name, N).expect("name");
        assert_round_over(&observer, &b, &format!("by_drop {by_drop}")).await;
    }
}

/// A latch opens after exactly `n` count-downs (from several clients, one of which dies
/// after counting: it stays counted), releasing every waiter; a cancelled wait leaves
/// nothing behind; bad input is refused by name.
pub async fn count_down_latch_opens_at_zero(h: &dyn Harness) {
    const N: u32 = 3;
    let name = h.unique_name("latch");
    let observer = client(h).await;
    let latch = observer.count_down_latch(&name, N).expect("name");
    assert_eq!(latch.count().await.expect("count"), N);
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let l = client(h).await.count_down_latch(&name, N).expect("name");
        waiters.push(tokio::spawn(async move { l.wait().await.expect("wait") }));
    }
    let waiting = format!("{name}/waiters");
    await_queue_len(&observer, &waiting, 3).await;
    let l = client(h).await.count_down_latch(&name, N).expect("name");
    assert!(matches!(
        l.wait_timeout(Duration::from_millis(50)).await,
        Err(Error::Timeout(_))
    ));
    await_queue_len(&observer, &waiting, 3).await;
    // A count-down survives its maker's death.
    let dying = client(h).await;
    let l = dying.count_down_latch(&name, N).expect("name");
    assert_eq!(l.count_down().await.expect("count_down"), 2);
    h.expire(dying.session_id().expect("session")).await;
    assert_eq!(latch.count().await.expect("count"), 2);
    assert_eq!(latch.count_down().await.expect("count_down"), 1);
    for w in &waiters {
        assert!(still_waiting(w).await, "latch opened early");
    }
    let other = client(h).await.count_down_latch(&name, N).expect("name");
    assert_eq!(other.count_down().await.expect("count_down"), 0);
    join_all(waiters, EVENTUALLY).await;
    assert_eq!(latch.count().await.expect("count"), 0);
    assert_eq!(latch.count_down().await.expect("at zero"), 0);
    timeout(EVENTUALLY, latch.wait())
        .await
        .expect("open latch waits")
        .expect("wait");
    await_queue_len(&observer, &waiting, 0).await;
    let err = observer
        .count_down_latch(&name, 4)
        .expect("name")
        .count()
        .await
        .expect_err("count mismatch");
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(matches!(
        observer.count_down_latch(&name, 0),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        observer.barrier("a//b"),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        observer.count_down_latch("", 1),
        Err(Error::InvalidName { .. })
    ));
}

/// Concurrent count-downs from many clients: each takes one step, the latch ends at zero
/// exactly when the last one returns 0.
pub async fn count_down_latch_concurrent(h: &dyn Harness) {
    const N: u32 = 12;
    let name = h.unique_name("latchrace");
    let mut tasks = Vec::new();
    let left = Arc::new(StdMutex::new(Vec::new()));
    for _ in 0..4 {
        let c = client(h).await;
        for _ in 0..3 {
            let (l, left) = (c.count_down_latch(&name, N).expect("name"), left.clone());
            tasks.push(tokio::spawn(async move {
                let r = l.count_down().await.expect("count_down");
                left.lock().expect("left").push(r);
            }));
        }
    }
    join_all(tasks, EVENTUALLY).await;
    let mut left = left.lock().expect("left").clone();
    left.sort_unstable();
    assert_eq!(left, (0..N).collect::<Vec<_>>(), "each count_down one step");
    let c = client(h).await;
    let l = c.count_down_latch(&name, N).expect("name");
    assert_eq!(l.count().await.expect("count"), 0);
    timeout(EVENTUALLY, l.wait())
        .await
        .expect("hung")
        .expect("wait");
}

/// Cooperative revocation: a revocable holder sees a waiter's request (within a generous
/// liveness bound: one round trip in practice), its metadata shows it, and once it lets
/// go the requester gets the lock.
pub async fn revocation_reaches_the_holder(h: &dyn Harness) {
    use queuelock::Revocation;
    let name = h.unique_name("revoke");
    let (a, b) = (client(h).await, client(h).await);
    let m = a.mutex(&name).expect("name").revocable();
    assert!(m.is_revocable());
    let guard = m.lock().await.expect("lock");
    assert!(!guard.is_revoke_requested());
    sleep(Duration::from_millis(100)).await;
    assert!(
        !guard.is_revoke_requested(),
        "a revocation seen before any request"
    );
    let asker = b.mutex(&name).expect("name");
    match asker.request_revoke().await.expect("request_revoke") {
        Revocation::Requested { holder } => {
            assert_eq!(holder.fencing_token, guard.fencing_token());
            assert!(holder.holder.expect("queuelock metadata").revocable);
        }
        other => panic!("expected Requested, got {other:?}"),
    }
    timeout(EVENTUALLY, guard.revoke_requested())
        .await
        .expect("the holder never saw the revocation request");
    assert!(guard.is_revoke_requested());
    // Seen again at once (cancel safe, latched).
    timeout(Duration::from_secs(1), guard.revoke_requested())
        .await
        .expect("a seen request must resolve at once");
    // The holder writes its metadata back with the time it saw the request. Until it
    // has, a ZooKeeper node holds Curator's `__REVOKE__` instead of metadata (`None`).
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let holders = asker.holders().await.expect("holders");
        assert_eq!(holders.len(), 1, "the holder keeps the lock: {holders:?}");
        if let Some(info) = holders[0]
            .holder
            .clone()
            .filter(|info| info.revoke_requested_at_ms.is_some())
        {
            assert!(info.revocable);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metadata never showed the request"
        );
        sleep(Duration::from_millis(20)).await;
    }
    guard.release().await.expect("release");
    let next = timeout(EVENTUALLY, asker.lock())
        .await
        .expect("the requester never got the lock")
        .expect("lock");
    assert!(matches!(
        m.request_revoke().await.expect("request_revoke"),
        Revocation::NotRevocable { .. }
    ));
    next.release().await.expect("release");
    assert_eq!(
        asker.request_revoke().await.expect("request_revoke"),
        Revocation::NotHeld
    );
}

/// A revocation is a request, not a loss: a holder that ignores it keeps the lock, its
/// fenced writes still apply, waiters keep waiting; asking again is harmless.
pub async fn revocation_ignored_keeps_the_lock(h: &dyn Harness) {
    use queuelock::Revocation;
    let name = h.unique_name("revoke-ignored");
    let (a, b) = (client(h).await, client(h).await);
    let guard = a
        .mutex(&name)
        .expect("name")
        .revocable()
        .lock()
        .await
        .expect("lock");
    let asker = b.mutex(&name).expect("name");
    for _ in 0..2 {
        assert!(matches!(
            asker.request_revoke().await.expect("request_revoke"),
            Revocation::Requested { .. }
        ));
    }
    timeout(EVENTUALLY, guard.revoke_requested())
        .await
        .expect("the holder never saw the revocation request");
    assert!(matches!(
        asker.lock_timeout(Duration::from_millis(500)).await,
        Err(Error::Timeout(_))
    ));
    assert!(asker.try_lock().await.expect("try_lock").is_none());
    assert_eq!(guard.is_lost(), None);
    let data = format!("{name}-data");
    guard
        .fenced_write([(data.as_str(), Some(b"still mine".to_vec()))])
        .await
        .expect("a fenced write of an asked holder still applies");
    let c = client(h).await;
    await_queue_len(&c, &name, 1).await;
    guard
        .release()
        .await
        .expect("the asked holder released a lock it kept");
}

/// A revocation request is for the hold it was made for: the same session's next hold
/// of the lock (on etcd the same key, reused) is not asked, and a new request reaches it.
pub async fn revocation_is_for_one_hold(h: &dyn Harness) {
    use queuelock::Revocation;
    let name = h.unique_name("revoke-once");
    let (a, b) = (client(h).await, client(h).await);
    let m = a.mutex(&name).expect("name").revocable();
    let asker = b.mutex(&name).expect("name");
    let first = m.lock().await.expect("lock");
    assert!(matches!(
        asker.request_revoke().await.expect("request_revoke"),
        Revocation::Requested { .. }
    ));
    timeout(EVENTUALLY, first.revoke_requested())
        .await
        .expect("the holder never saw the revocation request");
    let token = first.fencing_token();
    first.release().await.expect("release");
    let second = m.lock().await.expect("lock again");
    assert!(second.fencing_token() > token);
    assert!(
        timeout(Duration::from_millis(500), second.revoke_requested())
            .await
            .is_err(),
        "the next hold saw the earlier hold's revocation request"
    );
    assert!(!second.is_revoke_requested());
    assert!(matches!(
        asker.request_revoke().await.expect("request_revoke"),
        Revocation::Requested { .. }
    ));
    timeout(EVENTUALLY, second.revoke_requested())
        .await
        .expect("the next hold never saw its own revocation request");
    second.release().await.expect("release");
}

/// The lock-delay the loss cases use: short, so the suite stays fast.
const LOCK_DELAY: Duration = Duration::from_secs(2);

/// The lock-delay the release case uses: long, so that "granted well before it" is a
/// bound with a generous margin (a release costs no delay at all).
const LONG_LOCK_DELAY: Duration = Duration::from_secs(30);

/// A client with its own session and a lock-delay of `delay`.
async fn delayed_client(h: &dyn Harness, delay: Duration) -> Client {
    Client::new(
        h.backend().await,
        ClientOptions::default()
            .with_ttl(h.ttl())
            .with_lock_delay(delay),
    )
}

/// Spawns `acquire` and waits until the queue `name` has `n` nodes (it is queued).
async fn queued<T: Send + 'static>(
    observer: &Client,
    name: &str,
    n: usize,
    acquire: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<(T, Instant)> {
    let task = tokio::spawn(async move {
        let r = acquire.await;
        (r, Instant::now())
    });
    await_queue_len(observer, name, n).await;
    task
}

/// A writer (`write`) or reader of read-write lock `name`, on a new client with a
/// lock-delay of [`LOCK_DELAY`], queued as the `n`th node (see [`queued`]).
async fn queued_rwlock(
    h: &dyn Harness,
    observer: &Client,
    name: &str,
    n: usize,
    write: bool,
) -> tokio::task::JoinHandle<(queuelock::Guard, Instant)> {
    let c = delayed_client(h, LOCK_DELAY).await;
    let name_c = name.to_owned();
    queued(observer, name, n, async move {
        let lock = c.rwlock(&name_c).expect("name");
        if write {
            lock.write().await
        } else {
            lock.read().await
        }
        .expect("rwlock")
    })
    .await
}

/// Expires `holder`'s session and returns the grant `waiter` (queued behind it, with a
/// lock-delay of [`LOCK_DELAY`]) gets, asserting it came no earlier than the delay after
/// the expiry was asked for (before the store removed the node) with a larger token.
///
/// With `then_release`, that guard (another holder ahead of the waiter, the one it
/// waits for) is released once the expired holder's node is gone from `queue`.
async fn granted_after_loss(
    h: &dyn Harness,
    holder: &queuelock::Guard,
    waiter: tokio::task::JoinHandle<(queuelock::Guard, Instant)>,
    who: &str,
    then_release: Option<(queuelock::Guard, &Client, &str, usize)>,
) -> queuelock::Guard {
    let expiring = Instant::now();
    h.expire(holder.session_id()).await;
    if let Some((other, observer, queue, left)) = then_release {
        await_queue_len(observer, queue, left).await;
        other.release().await.expect("release");
    }
    let (granted, at) = timeout(h.ttl() + LOCK_DELAY + EVENTUALLY, waiter)
        .await
        .unwrap_or_else(|_| panic!("{who} behind a lost holder hung"))
        .expect("join");
    assert!(
        at - expiring >= LOCK_DELAY,
        "{who} was granted {:?} after the holder's session was expired (the delay is \
         {LOCK_DELAY:?})",
        at - expiring
    );
    assert!(granted.fencing_token() > holder.fencing_token());
    granted
}

/// Lock-delay: after a release the next waiter is granted at once; after the holder's
/// session is expired, no earlier than the delay (counted from before the expiry was
/// asked for, which is before the store removed the node); the fencing token still
/// increases. For a mutex, a read-write lock's reader behind a lost writer, and a writer
/// behind a lost reader and a released one.
/// Without a lock-delay, nothing extra is written.
pub async fn lock_delay_after_loss_not_after_release(h: &dyn Harness) {
    let name = h.unique_name("lockdelay");
    let observer = client(h).await;
    let (a, b) = (
        delayed_client(h, LONG_LOCK_DELAY).await,
        delayed_client(h, LOCK_DELAY).await,
    );

    // A release hands off at once (well before the releaser's and the waiter's delay).
    let ga = hold(&a, &name).await;
    let waiter_client = delayed_client(h, LONG_LOCK_DELAY).await;
    let n = name.clone();
    let waiter = queued(&observer, &name, 2, async move {
        hold(&waiter_client, &n).await
    })
    .await;
    let (released, token_a) = (Instant::now(), ga.fencing_token());
    ga.release().await.expect("release");
    let (gw, granted) = timeout(LONG_LOCK_DELAY, waiter)
        .await
        .expect("a released lock was handed off no sooner than the lock-delay")
        .expect("join");
    assert!(
        granted - released < LONG_LOCK_DELAY,
        "a released lock waited {:?}",
        granted - released
    );
    assert!(gw.fencing_token() > token_a);
    gw.release().await.expect("release");

    // A lost holder: the next grant waits out the delay.
    let gb = hold(&b, &name).await;
    let c = delayed_client(h, LOCK_DELAY).await;
    let n = name.clone();
    let waiter = queued(&observer, &name, 2, async move { hold(&c, &n).await }).await;
    let gc = granted_after_loss(h, &gb, waiter, "a mutex waiter", None).await;
    assert!(gb.is_lost().is_some());
    gc.release().await.expect("release");

    // A reader behind a lost writer waits out the delay too.
    let rw = h.unique_name("lockdelay-rw");
    let d = delayed_client(h, LOCK_DELAY).await;
    let gw = d.rwlock(&rw).expect("name").write().await.expect("write");
    let reader = queued_rwlock(h, &observer, &rw, 2, false).await;
    let gr = granted_after_loss(h, &gw, reader, "a reader", None).await;
    gr.release().await.expect("release");

    // A writer behind two readers: one is lost, then the one it waits for is released.
    // Its grant must not skip the delay owed to the lost one, which it never watched.
    let rw2 = h.unique_name("lockdelay-rw2");
    let (r1c, r2c) = (
        delayed_client(h, LOCK_DELAY).await,
        delayed_client(h, LOCK_DELAY).await,
    );
    let r1 = r1c.rwlock(&rw2).expect("name").read().await.expect("read");
    let r2 = r2c.rwlock(&rw2).expect("name").read().await.expect("read");
    let writer = queued_rwlock(h, &observer, &rw2, 3, true).await;
    let gw2 = granted_after_loss(
        h,
        &r1,
        writer,
        "a writer behind a lost and a released reader",
        Some((r2, &observer, &rw2, 2)),
    )
    .await;
    gw2.release().await.expect("release");

    // Without a lock-delay, a release writes nothing beside the lock.
    let plain = h.unique_name("lockdelay-off");
    cycle(&client(h).await, &plain).await;
    let s = observer.session().await.expect("session");
    assert_eq!(
        s.get(&format!("~queuelock/released/{plain}"))
            .await
            .expect("get"),
        None,
        "a client without lock-delay wrote a release marker"
    );
    assert!(
        s.get(&format!("~queuelock/released/{name}"))
            .await
            .expect("get")
            .is_some(),
        "a client with lock-delay wrote no release marker"
    );
}

/// A holder cut off from its store learns from `lost()` that it lost the lock once its
/// session's client-side deadline (`valid_until`: send time of the last acknowledged renewal + TTL)
/// has passed — not later, whatever its backend's keep-alive loop is doing: from then on
/// the store may expire the session and grant the lock to the next waiter. (The Jepsen
/// run on Redis found a holder that still believed 0.7 ms after the next grant.) The
/// slack is for scheduling only; a keep-alive loop that notices a third of the TTL late
/// fails it.
pub async fn loss_reported_by_the_deadline(h: &dyn Harness) {
    const SLACK: Duration = Duration::from_millis(250);
    for mode in ["cut", "stall"] {
        let name = h.unique_name("deadline");
        let (backend, link) = h.backend_with_link().await;
        let c = Client::new(backend, ClientOptions::default().with_ttl(h.ttl()));
        let g = hold(&c, &name).await;
        let session = c.session().await.expect("session");
        if mode == "cut" {
            link.cut();
        } else {
            link.stall();
        }
        let give_up = Instant::now() + h.ttl() + EVENTUALLY;
        // `lost()`, the one future a holder selects on beside its work (`is_lost()` and
        // a fresh call read the deadline themselves): it must have resolved by the
        // deadline + slack.
        {
            let lost = g.lost();
            tokio::pin!(lost);
            while timeout(Duration::from_millis(10), &mut lost).await.is_err() {
                let now = std::time::Instant::now();
                if let Some(until) = session.valid_until() {
                    assert!(
                        now < until + SLACK,
                        "link {mode}: lost() still pending {:?} past the session's deadline",
                        now - until
                    );
                }
                assert!(
                    Instant::now() < give_up,
                    "link {mode}: the hold was never lost"
                );
            }
        }
        link.heal();
        drop(g);
        c.close().await.ok();
    }
}
