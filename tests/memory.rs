//! The conformance suite on the in-process backend, plus memory-only tests that need its
//! fault injection: herd-freedom and a randomized fault schedule.

mod conformance;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use queuelock::{Client, ClientOptions, MemoryBackend, MutexGuard};
use queuelock_memory::testkit::MemoryHarness;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

conformance_tests!(MemoryHarness::default());

fn memory_client(store: &MemoryBackend, ttl: Duration) -> Client {
    Client::new(
        Arc::new(store.clone()),
        ClientOptions::default().with_ttl(ttl),
    )
}

/// One release wakes exactly one waiter, however many are queued (no herd effect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_release_notifies_one_session() {
    const WAITERS: usize = 50;
    let store = MemoryBackend::new();
    let observer = memory_client(&store, Duration::from_secs(10));
    let holder = memory_client(&store, Duration::from_secs(10));
    let mut guard = holder
        .mutex("herd")
        .expect("name")
        .lock()
        .await
        .expect("lock");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<MutexGuard>();
    for _ in 0..WAITERS {
        let c = memory_client(&store, Duration::from_secs(10));
        let tx = tx.clone();
        tokio::spawn(async move {
            let g = c.mutex("herd").expect("name").lock().await.expect("lock");
            let _ = tx.send(g);
            std::future::pending::<()>().await; // keep the client alive
        });
    }
    conformance::await_queue_len(&observer, "herd", WAITERS + 1).await;
    for _ in 0..WAITERS {
        // Let every waiter settle on its watch before measuring one release.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = store.notifications();
        guard.release().await.expect("release");
        guard = tokio::time::timeout(conformance::EVENTUALLY, rx.recv())
            .await
            .expect("next waiter not granted")
            .expect("channel");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            store.notifications() - before,
            1,
            "one release woke several watchers"
        );
    }
    guard.release().await.expect("release");
}

/// A suspension shorter than the TTL keeps the lock (Suspended, then Live); one longer
/// than the TTL loses it, and the holder is told before the next waiter is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_shorter_and_longer_than_ttl() {
    let ttl = Duration::from_millis(600);
    let store = MemoryBackend::new();
    let a = memory_client(&store, ttl);
    let g = a.mutex("blip").expect("name").lock().await.expect("lock");
    let id = g.session_id();
    let mut state = a.session().await.expect("session").state();
    store.suspend_session(id);
    assert_eq!(
        *state.borrow_and_update(),
        queuelock::SessionState::Suspended
    );
    tokio::time::sleep(ttl / 3).await;
    store.resume_session(id);
    assert_eq!(*state.borrow_and_update(), queuelock::SessionState::Live);
    tokio::time::sleep(ttl * 2).await;
    assert!(g.is_lost().is_none(), "a short blip lost the lock");

    let b = memory_client(&store, ttl);
    let waiter = tokio::spawn(async move { b.mutex("blip").expect("name").lock().await });
    store.suspend_session(id);
    let reason = tokio::time::timeout(ttl + conformance::EVENTUALLY, g.lost())
        .await
        .expect("loss");
    assert_eq!(reason, queuelock::LossReason::SessionLost);
    let gb = tokio::time::timeout(conformance::EVENTUALLY, waiter)
        .await
        .expect("waiter hung")
        .expect("join")
        .expect("lock");
    assert!(gb.fencing_token() > g.fencing_token());
}

/// With LossPolicy::OnSuspension a suspension alone counts as loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_policy_on_suspension() {
    let store = MemoryBackend::new();
    let opts = ClientOptions::default()
        .with_ttl(Duration::from_secs(5))
        .with_loss_policy(queuelock::LossPolicy::OnSuspension);
    let a = Client::new(Arc::new(store.clone()), opts);
    let g = a.mutex("strict").expect("name").lock().await.expect("lock");
    store.suspend_session(g.session_id());
    let reason = tokio::time::timeout(conformance::EVENTUALLY, g.lost())
        .await
        .expect("loss");
    assert_eq!(reason, queuelock::LossReason::SessionSuspended);
    store.resume_session(g.session_id());
    assert_eq!(
        g.is_lost(),
        Some(queuelock::LossReason::SessionSuspended),
        "loss must latch"
    );
}

/// Randomized schedules with injected faults (expiry, suspensions shorter and longer than
/// the TTL, delays): no two holders ever overlap unless the earlier one had already been
/// told its lock was lost, tokens grow, and a register updated only by holders that were
/// still safe never loses an increment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_never_overlap() {
    for seed in [1u64, 2, 3, 4, 5, 6] {
        run_schedule(seed).await;
    }
}

struct Active {
    id: usize,
    guard: Arc<MutexGuard>,
}

async fn run_schedule(seed: u64) {
    let ttl = Duration::from_millis(300);
    let store = MemoryBackend::new();
    let clients: Vec<Client> = (0..4).map(|_| memory_client(&store, ttl)).collect();
    let active: Arc<StdMutex<Vec<Active>>> = Arc::default();
    let register = Arc::new(AtomicU64::new(0));
    let committed = Arc::new(AtomicU64::new(0));
    let last_token = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        for j in 0..2 {
            let id = i * 2 + j;
            let (c, active, register, committed, last_token) = (
                c.clone(),
                active.clone(),
                register.clone(),
                committed.clone(),
                last_token.clone(),
            );
            let mut rng = StdRng::seed_from_u64(seed * 100 + id as u64);
            tasks.push(tokio::spawn(async move {
                let m = c.mutex("jepsen").expect("name");
                while tokio::time::Instant::now() < deadline {
                    let g = match m.lock_timeout(Duration::from_secs(2)).await {
                        Ok(g) => Arc::new(g),
                        Err(_) => continue, // session trouble while queued: try again
                    };
                    {
                        let mut act = active.lock().expect("active");
                        // Two holders overlap unsafely only if both are safe at once. Ours
                        // is checked first: a fault can expire our session between the
                        // grant and this check and pass the lock on, and the successor may
                        // register first — it is then the safe one, and we are lost.
                        // Loss is final, so "we are safe now" means safe ever since our grant;
                        // a registered holder safe now has been safe since its own grant, and
                        // both grants came before this check: they held safely together.
                        if g.is_lost().is_none() {
                            for other in act.iter() {
                                assert!(
                                    other.guard.is_lost().is_some(),
                                    "seed {seed}: task {id} granted while task {} still safely holds",
                                    other.id
                                );
                            }
                        }
                        let t = g.fencing_token();
                        assert!(
                            t > last_token.swap(t, Ordering::SeqCst),
                            "seed {seed}: token went back"
                        );
                        act.push(Active {
                            id,
                            guard: g.clone(),
                        });
                    }
                    let v = register.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_micros(rng.random_range(0..3000))).await;
                    // Write only if still safely held, as a fenced resource would insist.
                    if g.is_lost().is_none() {
                        register.store(v + 1, Ordering::SeqCst);
                        committed.fetch_add(1, Ordering::SeqCst);
                    }
                    active.lock().expect("active").retain(|a| a.id != id);
                    if let Ok(g) = Arc::try_unwrap(g) {
                        let _ = g.release().await;
                    }
                }
            }));
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = 0;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
        let Some(victim) = clients[rng.random_range(0..clients.len())].session_id() else {
            continue;
        };
        faults += 1;
        match rng.random_range(0..4) {
            0 => {
                store.expire_session(victim);
            }
            1 => {
                // Shorter or longer than the TTL.
                store.suspend_session(victim);
                let pause = Duration::from_millis(rng.random_range(50..600));
                let s = store.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(pause).await;
                    s.resume_session(victim);
                });
            }
            2 => store.set_delay(Duration::from_micros(rng.random_range(0..2000))),
            _ => store.set_delay(Duration::ZERO),
        }
    }
    store.set_delay(Duration::ZERO);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("worker hung")
            .expect("worker panicked");
    }
    let (reg, com) = (
        register.load(Ordering::SeqCst),
        committed.load(Ordering::SeqCst),
    );
    assert!(com > 0 && faults > 0, "seed {seed}: schedule did nothing");
    // An unsafe overlap would let two holders read the same value and lose an increment.
    assert_eq!(reg, com, "seed {seed}: lost increments");
    for c in &clients {
        c.close().await.expect("close");
    }
    assert!(
        store.keys_under("jepsen").is_empty(),
        "seed {seed}: nodes left behind"
    );
    println!("seed {seed}: {com} grants, {faults} faults, no overlap");
}
