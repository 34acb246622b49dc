//! The queue layer on its own, on the in-process backend: no `Client`, no recipe, the
//! way tokio tests `batch_semaphore` apart from its `Mutex`. The rules themselves are
//! tested in `rules.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use queuelock_core::{Backend, Error, LossReason, NodeKind, Result, Session, SessionOptions};
use queuelock_memory::MemoryBackend;
use tokio::task::JoinHandle;

use super::*;

const TTL: Duration = Duration::from_secs(10);
const SOON: Duration = Duration::from_millis(200);
const EVENTUALLY: Duration = Duration::from_secs(5);

/// A context over its own session slot on `store`, as one client would have.
fn context(store: &MemoryBackend, policy: LossPolicy) -> Arc<Context> {
    let slot = Arc::new(SessionSlot::new(Arc::new(store.clone()), TTL));
    Arc::new(Context::new(
        slot,
        policy,
        Some("unit".into()),
        TTL,
        "memory",
        crate::NameLabel::None,
    ))
}

/// Always the same session, lost or not: to see what the queue does on a lost one.
struct Fixed(Arc<dyn Session>);

#[async_trait]
impl SessionSource for Fixed {
    async fn session(&self) -> Result<Arc<dyn Session>> {
        Ok(self.0.clone())
    }
}

fn lock(queue: &str) -> Request<'_> {
    Request::new(queue, NodeKind::Lock, Ahead::Predecessor)
}

fn grants(ctx: &Context) -> u64 {
    ctx.counters().grants.load(Ordering::Relaxed)
}

fn wakeups(ctx: &Context) -> u64 {
    ctx.counters().wakeups.load(Ordering::Relaxed)
}

/// An acquire waiting in its own task.
fn spawn_acquire(ctx: &Arc<Context>, req: Request<'static>) -> JoinHandle<Result<Arc<Lease>>> {
    let ctx = ctx.clone();
    tokio::spawn(async move { acquire(&ctx, req).await })
}

/// The lease a spawned acquire is granted.
async fn granted(task: JoinHandle<Result<Arc<Lease>>>) -> Arc<Lease> {
    tokio::time::timeout(EVENTUALLY, task)
        .await
        .expect("granted in time")
        .expect("task")
        .expect("acquire")
}

/// Two contexts on `store`: the first holds `q`, the second waits behind it (queued).
async fn holder_and_waiter(
    store: &MemoryBackend,
) -> (Arc<Context>, Arc<Lease>, JoinHandle<Result<Arc<Lease>>>) {
    let (a, b) = (
        context(store, LossPolicy::default()),
        context(store, LossPolicy::default()),
    );
    let held = acquire(&a, lock("q")).await.expect("acquire");
    let waiter = spawn_acquire(&b, lock("q"));
    eventually("the waiter queues", || store.keys_under("q").len() == 2).await;
    (b, held, waiter)
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENTUALLY;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "not within {EVENTUALLY:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_free_queue_grants_at_once_and_release_removes_the_node() {
    let store = MemoryBackend::new();
    let ctx = context(&store, LossPolicy::default());
    let lease = acquire(&ctx, lock("q")).await.expect("acquire");
    assert_eq!(store.keys_under("q"), [lease.node().key.clone()]);
    assert!(lease.loss().is_none());
    lease.release().await.expect("release");
    assert!(store.keys_under("q").is_empty());
    assert_eq!((grants(&ctx), wakeups(&ctx)), (1, 0));
}

#[tokio::test]
async fn try_acquire_behind_a_holder_answers_none_and_leaves_nothing() {
    let store = MemoryBackend::new();
    let (a, b) = (
        context(&store, LossPolicy::default()),
        context(&store, LossPolicy::default()),
    );
    let held = acquire(&a, lock("q")).await.expect("acquire");
    assert!(try_acquire(&b, lock("q")).await.expect("try").is_none());
    assert_eq!(store.keys_under("q"), [held.node().key.clone()]);
    held.release().await.expect("release");
    let now = try_acquire(&b, lock("q")).await.expect("try");
    assert!(now.is_some(), "free again");
}

#[tokio::test]
async fn a_waiter_is_granted_once_its_predecessor_goes_and_is_woken_once() {
    let store = MemoryBackend::new();
    let (b, held, waiter) = holder_and_waiter(&store).await;
    tokio::time::sleep(SOON).await;
    assert!(!waiter.is_finished(), "granted while the holder holds");
    let first = held.node().token;
    held.release().await.expect("release");
    let lease = granted(waiter).await;
    assert!(lease.node().token > first, "fencing tokens grow");
    assert_eq!(
        (grants(&b), wakeups(&b)),
        (1, 1),
        "one release, one wake-up"
    );
}

#[tokio::test]
async fn a_reader_shares_with_readers_and_waits_for_the_nearest_writer() {
    let store = MemoryBackend::new();
    let ctx = context(&store, LossPolicy::default());
    let read = |q| Request::new(q, NodeKind::Read, shared_or_exclusive(NodeKind::Read));
    let write = |q| Request::new(q, NodeKind::Write, shared_or_exclusive(NodeKind::Write));
    let r1 = acquire(&ctx, read("rw")).await.expect("read");
    let r2 = try_acquire(&ctx, read("rw")).await.expect("read");
    assert!(r2.is_some(), "readers share");
    assert!(try_acquire(&ctx, write("rw"))
        .await
        .expect("write")
        .is_none());
    let w = spawn_acquire(&ctx, write("rw"));
    eventually("the writer queues", || store.keys_under("rw").len() == 3).await;
    assert!(
        try_acquire(&ctx, read("rw")).await.expect("read").is_none(),
        "a reader behind a queued writer waits"
    );
    drop((r1, r2));
    granted(w).await.release().await.expect("release");
}

#[tokio::test]
async fn a_dropped_acquire_removes_its_node() {
    let store = MemoryBackend::new();
    let (_, held, waiter) = holder_and_waiter(&store).await;
    waiter.abort();
    let mine = held.node().key.clone();
    eventually("the cancelled node goes", || {
        store.keys_under("q") == [mine.clone()]
    })
    .await;
    drop(held);
    eventually("the dropped lease's node goes", || {
        store.keys_under("q").is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_waiter_whose_session_is_lost_joins_again_on_a_fresh_one() {
    let store = MemoryBackend::new();
    let (b, held, waiter) = holder_and_waiter(&store).await;
    let lost = b.session().await.expect("session").id();
    assert!(store.expire_session(lost));
    // Its node went with the session; the waiter queues again behind the holder.
    tokio::time::sleep(SOON).await;
    eventually("the waiter queues again", || {
        store.keys_under("q").len() == 2
    })
    .await;
    assert!(!waiter.is_finished());
    held.release().await.expect("release");
    let lease = granted(waiter).await;
    assert_ne!(lease.session().id(), lost, "granted on the fresh session");
}

#[tokio::test]
async fn nothing_is_granted_through_a_lost_session() {
    let store = MemoryBackend::new();
    let session = store
        .open_session(&SessionOptions::with_ttl(TTL))
        .await
        .expect("session");
    let ctx = Context::new(
        Arc::new(Fixed(session.clone())),
        LossPolicy::default(),
        None,
        TTL,
        "memory",
        crate::NameLabel::None,
    );
    assert!(store.expire_session(session.id()));
    let r = try_acquire(&ctx, lock("q")).await;
    assert!(matches!(r, Err(Error::SessionExpired(_))), "{r:?}");
    assert!(store.keys_under("q").is_empty());
    assert_eq!(grants(&ctx), 0);
}

#[tokio::test]
async fn a_lease_reports_why_it_is_lost() {
    let store = MemoryBackend::new();
    // Deleted by someone else.
    let (a, b) = (
        context(&store, LossPolicy::default()),
        context(&store, LossPolicy::default()),
    );
    let lease = acquire(&a, lock("q1")).await.expect("acquire");
    let other = b.session().await.expect("session");
    other.delete(lease.node()).await.expect("delete");
    let reason = tokio::time::timeout(EVENTUALLY, lease.lost())
        .await
        .expect("lost");
    assert_eq!(reason, LossReason::NodeDeleted);
    assert!(matches!(
        lease.release().await,
        Err(Error::LockLost(LossReason::NodeDeleted))
    ));
    // Its session expired.
    let lease = acquire(&a, lock("q2")).await.expect("acquire");
    assert!(store.expire_session(lease.session().id()));
    let reason = tokio::time::timeout(EVENTUALLY, lease.lost())
        .await
        .expect("lost");
    assert_eq!(reason, LossReason::SessionLost);
    // Suspended: lost only under OnSuspension.
    for (policy, expected) in [
        (LossPolicy::OnSessionLoss, None),
        (LossPolicy::OnSuspension, Some(LossReason::SessionSuspended)),
    ] {
        let ctx = context(&store, policy);
        let lease = acquire(&ctx, lock("q3")).await.expect("acquire");
        let id = lease.session().id();
        assert!(store.suspend_session(id));
        tokio::time::sleep(SOON).await;
        assert_eq!(lease.loss(), expected, "{policy:?}");
        assert!(store.resume_session(id));
        drop(lease);
        eventually("released", || store.keys_under("q3").is_empty()).await;
    }
}

#[tokio::test]
async fn admission_lets_the_head_in_while_permits_are_free() {
    let store = MemoryBackend::new();
    let ctx = context(&store, LossPolicy::default());
    let permit = || Request {
        admission: Some(Admission {
            holders: "s/holders",
            permits: 2,
        }),
        ..Request::new("s/waiters", NodeKind::Permit, Ahead::Predecessor)
    };
    let one = acquire(&ctx, permit()).await.expect("first");
    let two = try_acquire(&ctx, permit()).await.expect("second");
    assert!(two.is_some(), "two permits");
    assert!(
        one.node().key.starts_with("s/holders/"),
        "the hold is a holder node"
    );
    assert!(
        store.keys_under("s/waiters").is_empty(),
        "the turn is given back"
    );
    assert!(try_acquire(&ctx, permit()).await.expect("third").is_none());
    let third = spawn_acquire(&ctx, permit());
    eventually("the third waits in line", || {
        store.keys_under("s/waiters").len() == 1
    })
    .await;
    tokio::time::sleep(SOON).await;
    assert!(!third.is_finished(), "admitted with both permits taken");
    one.release().await.expect("release");
    let third = granted(third).await;
    assert_eq!(store.keys_under("s/holders").len(), 2);
    assert!(store.keys_under("s/waiters").is_empty());
    drop((two, third));
    eventually("released", || store.keys_under("s").is_empty()).await;
}

#[tokio::test]
async fn an_acquire_dropped_mid_create_deletes_its_node_without_abandon() {
    let store = MemoryBackend::new();
    let ctx = context(&store, LossPolicy::default());
    ctx.session().await.expect("session");
    // Every operation takes 300 ms to reach the store: drop the acquire inside its create.
    store.set_delay(Duration::from_millis(300));
    let task = spawn_acquire(&ctx, lock("q"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    // The create still lands; its answer names the node, which is deleted.
    eventually("the node appears", || store.keys_under("q").len() == 1).await;
    eventually("the node goes", || store.keys_under("q").is_empty()).await;
    store.set_delay(Duration::ZERO);
    assert_eq!(
        store.abandons(),
        0,
        "a create with an answer needs no abandon (a tombstone on etcd and PostgreSQL)"
    );
    let lease = acquire(&ctx, lock("q")).await.expect("the queue is free");
    lease.release().await.expect("release");
}

#[tokio::test]
async fn an_acquire_dropped_after_a_create_without_answer_abandons_the_attempt() {
    let store = MemoryBackend::new();
    let ctx = context(&store, LossPolicy::default());
    let id = ctx.session().await.expect("session").id();
    assert!(store.suspend_session(id));
    // The create fails with connection trouble: it may have landed, as far as the
    // queue knows. The acquire waits for the connection; drop it meanwhile.
    let task = spawn_acquire(&ctx, lock("q"));
    tokio::time::sleep(SOON).await;
    task.abort();
    assert!(store.resume_session(id));
    eventually("the attempt is abandoned", || store.abandons() == 1).await;
    assert!(store.keys_under("q").is_empty());
}
