//! Backend contract tests: each function checks one promise of [`crate::Session`] against
//! a live store through a [`Harness`]. A backend crate runs them all with
//! [`crate::contract_tests!`]:
//!
//! ```text
//! queuelock_core::contract_tests!(MyHarness::start().await);
//! ```

use std::time::Duration;

use tokio::time::timeout;

use super::Harness;
use crate::{Error, LossReason, NodeKind, NodeSpec, Op, Session, SessionOptions, SessionState};

/// Generous bound for "this must happen" waits: a liveness failure, not a timing test.
const EVENTUALLY: Duration = Duration::from_secs(15);

async fn open(h: &dyn Harness) -> std::sync::Arc<dyn Session> {
    h.backend()
        .await
        .open_session(&SessionOptions::with_ttl(h.ttl()))
        .await
        .expect("open session")
}

fn spec(queue: &str, kind: NodeKind, payload: &[u8]) -> NodeSpec {
    NodeSpec::new(queue, kind, payload.to_vec())
}

async fn keys(s: &dyn Session, queue: &str) -> Vec<String> {
    let l = s.list(queue).await.expect("list");
    l.nodes.into_iter().map(|n| n.key).collect()
}

/// Create is idempotent per spec id; nodes are ordered by creation with increasing tokens;
/// the creation's answer names the node it waits for (its predecessor).
pub async fn create_is_idempotent_and_ordered(h: &dyn Harness) {
    let s = open(h).await;
    let q = h.unique_name("order");
    let mut created: Vec<crate::Node> = Vec::new();
    for i in 0..3u8 {
        let sp = spec(&q, NodeKind::Lock, &[i]);
        let c = s.create_sequential(&sp).await.expect("create");
        assert_eq!(
            c.turn.blocker.as_ref().map(|n| (&n.key, n.sequence)),
            created.last().map(|n| (&n.key, n.sequence)),
            "the create's answer does not name the predecessor"
        );
        if let Some(ahead) = c.ahead {
            assert_eq!(ahead, created.len(), "nodes ahead at create");
        }
        let again = s.create_sequential(&sp).await.expect("create again");
        assert_eq!(again.node, c.node, "create is not idempotent per spec id");
        assert_eq!(
            again.turn.blocker.map(|n| n.key),
            c.turn.blocker.map(|n| n.key),
            "a repeated create waits for a different node"
        );
        created.push(c.node);
    }
    let listing = s.list(&q).await.expect("list");
    let ids = |nodes: &[crate::Node]| -> Vec<(String, u64, NodeKind)> {
        nodes
            .iter()
            .map(|n| (n.key.clone(), n.sequence, n.kind))
            .collect()
    };
    assert_eq!(
        ids(&listing.nodes),
        ids(&created),
        "listing order differs from creation order"
    );
    for n in &created {
        let (payload, token) = s
            .read_node(&n.key)
            .await
            .expect("read")
            .expect("node exists");
        assert_eq!(token, n.token, "read_node token differs from the create's");
        assert_eq!(payload.len(), 1);
    }
    assert!(created.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert!(
        created.windows(2).all(|w| w[0].token < w[1].token),
        "tokens must grow"
    );
    assert!(created.iter().all(|n| n.kind == NodeKind::Lock));
    s.close().await.expect("close");
}

/// The waiter's read names the one node each rule waits for, and fails once the waiter's
/// own node is gone; a create's answer is the same read.
pub async fn turn_names_the_one_node_to_wait_for(h: &dyn Harness) {
    use crate::Ahead;
    let s = open(h).await;
    let q = h.unique_name("turn");
    let mut nodes = Vec::new();
    for kind in [
        NodeKind::Read,
        NodeKind::Write,
        NodeKind::Read,
        NodeKind::Read,
    ] {
        let c = s
            .create_sequential(&spec(&q, kind, b""))
            .await
            .expect("create");
        let want = Ahead::for_kind(kind)
            .find(&nodes, nodes.len())
            .map(|i| &nodes[i]);
        assert_eq!(
            c.turn.blocker.as_ref().map(|n: &crate::Node| &n.key),
            want.map(|n: &crate::Node| &n.key),
            "create's answer for a {kind:?} node"
        );
        nodes.push(c.node);
    }
    let turn = |me: usize, ahead: Ahead| {
        let (s, q, me) = (s.clone(), q.clone(), nodes[me].clone());
        async move { s.turn(&q, &me, ahead).await }
    };
    let key = |t: crate::Turn| t.blocker.map(|n| n.key);
    // `last` may be false where a backend cannot tell, but never wrongly true.
    assert_eq!(
        key(turn(3, Ahead::NearestNonReader).await.expect("turn")),
        Some(nodes[1].key.clone()),
        "a reader waits for the nearest earlier writer"
    );
    let behind_two = turn(3, Ahead::Predecessor).await.expect("turn");
    assert!(
        !behind_two.last,
        "the predecessor is not the last node ahead: {behind_two:?}"
    );
    assert_eq!(key(behind_two), Some(nodes[2].key.clone()));
    assert_eq!(key(turn(0, Ahead::Predecessor).await.expect("turn")), None);
    assert_eq!(key(turn(3, Ahead::Nothing).await.expect("turn")), None);
    // The writer leaves: the readers behind it are each other's turn.
    s.delete(&nodes[1]).await.expect("delete");
    assert_eq!(
        key(turn(3, Ahead::NearestNonReader).await.expect("turn")),
        None
    );
    assert_eq!(
        key(turn(2, Ahead::Predecessor).await.expect("turn")),
        Some(nodes[0].key.clone()),
        "the nearest earlier node, skipping the deleted one"
    );
    let t = turn(3, Ahead::Predecessor).await.expect("turn");
    assert!(t.revision > 0, "the read has a revision");
    match turn(1, Ahead::Predecessor).await {
        Err(Error::LockLost(LossReason::NodeDeleted)) => {}
        other => panic!("turn of a deleted node: {other:?}"),
    }
    s.close().await.expect("close");
}

/// Listing a queue shows its direct children only, not nested queues.
pub async fn list_only_direct_children(h: &dyn Harness) {
    let s = open(h).await;
    let q = h.unique_name("nest");
    let a = s
        .create_sequential(&spec(&q, NodeKind::Lock, b""))
        .await
        .expect("create");
    let inner = format!("{q}/inner");
    let b = s
        .create_sequential(&spec(&inner, NodeKind::Lock, b""))
        .await
        .expect("create nested");
    assert_eq!(keys(&*s, &q).await, vec![a.node.key]);
    assert_eq!(keys(&*s, &inner).await, vec![b.node.key]);
    assert!(keys(&*s, &h.unique_name("empty")).await.is_empty());
    s.close().await.expect("close");
}

/// Every node kind survives a round trip through the store.
pub async fn kinds_round_trip(h: &dyn Harness) {
    let s = open(h).await;
    let q = h.unique_name("kinds");
    let all = [
        NodeKind::Lock,
        NodeKind::Read,
        NodeKind::Write,
        NodeKind::Latch,
        NodeKind::Permit,
    ];
    for k in all {
        s.create_sequential(&spec(&q, k, b""))
            .await
            .expect("create");
    }
    let kinds: Vec<NodeKind> = s
        .list(&q)
        .await
        .expect("list")
        .nodes
        .iter()
        .map(|n| n.kind)
        .collect();
    assert_eq!(kinds, all);
    s.close().await.expect("close");
}

/// A deletion watch resolves when another session deletes the key, and at once for a key
/// that is already gone.
pub async fn deleted_fires(h: &dyn Harness) {
    let owner = open(h).await;
    let watcher = open(h).await;
    let q = h.unique_name("watch");
    let c = owner
        .create_sequential(&spec(&q, NodeKind::Lock, b""))
        .await
        .expect("create");
    let rev = watcher.list(&q).await.expect("list").revision;
    let key = c.node.key.clone();
    let w = watcher.clone();
    let waiting = tokio::spawn(async move { w.deleted(&key, rev).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "deleted() resolved while the key exists"
    );
    owner.delete(&c.node).await.expect("delete");
    timeout(EVENTUALLY, waiting)
        .await
        .expect("deleted() did not fire")
        .expect("join")
        .expect("deleted() failed");
    timeout(EVENTUALLY, watcher.deleted(&c.node.key, rev))
        .await
        .expect("deleted() on a missing key must resolve at once")
        .expect("deleted() failed");
    owner.close().await.expect("close");
    watcher.close().await.expect("close");
}

/// A deletion between a listing and the watch is not missed.
pub async fn deleted_not_missed_after_list(h: &dyn Harness) {
    let owner = open(h).await;
    let watcher = open(h).await;
    let q = h.unique_name("race");
    for _ in 0..5 {
        let c = owner
            .create_sequential(&spec(&q, NodeKind::Lock, b""))
            .await
            .expect("create");
        let rev = watcher.list(&q).await.expect("list").revision;
        owner.delete(&c.node).await.expect("delete");
        timeout(EVENTUALLY, watcher.deleted(&c.node.key, rev))
            .await
            .expect("a deletion right after the listing was missed")
            .expect("deleted() failed");
    }
    owner.close().await.expect("close");
    watcher.close().await.expect("close");
}

/// [`Session::blocker_deleted`] fires like `deleted`, again for each new node at a key a
/// session reuses (not on the earlier node's deletion), and reports a node as held only
/// if it was marked with [`Session::mark_held`] and is exclusive: never an unmarked node,
/// never a reader. A backend that records the mark (etcd) must report a marked exclusive
/// node as held; the mark leaves the node's payload as it was.
pub async fn blocker_deleted_reports_held_only_when_marked(h: &dyn Harness) {
    let owner = open(h).await;
    let watcher = open(h).await;
    let records = h.backend().await.name() == "etcd";
    let q = h.unique_name("held");
    let rounds = [
        (NodeKind::Lock, false),
        (NodeKind::Lock, true),
        (NodeKind::Read, true),
        (NodeKind::Write, true),
        (NodeKind::Lock, false),
    ];
    for (round, (kind, marked)) in rounds.into_iter().enumerate() {
        let c = owner
            .create_sequential(&spec(&q, kind, b"meta"))
            .await
            .expect("create");
        if marked {
            owner.mark_held(&c.node);
        }
        let rev = watcher.list(&q).await.expect("list").revision;
        let (w, node) = (watcher.clone(), c.node.clone());
        let waiting = tokio::spawn(async move { w.blocker_deleted(&node, rev).await });
        // Time for the mark to land (a local write): a generous bound, not a timing test.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiting.is_finished(),
            "round {round}: blocker_deleted() resolved while the node exists"
        );
        let (value, _) = watcher
            .read_node(&c.node.key)
            .await
            .expect("read_node")
            .expect("node exists");
        assert_eq!(
            value, b"meta",
            "round {round}: the mark changed the payload"
        );
        owner.delete(&c.node).await.expect("delete");
        let held = timeout(EVENTUALLY, waiting)
            .await
            .expect("blocker_deleted() did not fire")
            .expect("join")
            .expect("blocker_deleted() failed");
        let expected = records && marked && kind != NodeKind::Read;
        assert_eq!(
            held, expected,
            "round {round}: a {kind:?} node, marked: {marked}, reported held: {held}"
        );
    }
    owner.close().await.expect("close");
    watcher.close().await.expect("close");
}

/// Delete is guarded by identity: a late delete of an old node never removes a newer node,
/// even one created again for the same attempt.
pub async fn delete_is_identity_guarded(h: &dyn Harness) {
    let s = open(h).await;
    let q = h.unique_name("guarded-delete");
    let sp = spec(&q, NodeKind::Lock, b"");
    let old = s.create_sequential(&sp).await.expect("create").node;
    s.delete(&old).await.expect("delete");
    s.delete(&old).await.expect("deleting a gone node is Ok");
    let new = s.create_sequential(&sp).await.expect("re-create").node;
    assert!(new.token > old.token);
    s.delete(&old).await.expect("late delete");
    assert_eq!(
        keys(&*s, &q).await,
        vec![new.key.clone()],
        "late delete removed a newer node"
    );
    s.close().await.expect("close");
}

/// Abandon removes the attempt's node (and is Ok when there is none).
pub async fn abandon_removes_attempt(h: &dyn Harness) {
    let s = open(h).await;
    let q = h.unique_name("abandon");
    let keep = s
        .create_sequential(&spec(&q, NodeKind::Lock, b""))
        .await
        .expect("create");
    let sp = spec(&q, NodeKind::Lock, b"");
    s.create_sequential(&sp).await.expect("create");
    s.abandon(&sp).await.expect("abandon");
    s.abandon(&sp).await.expect("abandon twice");
    s.abandon(&spec(&q, NodeKind::Lock, b""))
        .await
        .expect("abandon of an attempt never made");
    assert_eq!(keys(&*s, &q).await, vec![keep.node.key]);
    s.close().await.expect("close");
}

/// Guarded writes apply while the guard exists, and are refused entirely after.
pub async fn guarded_writes(h: &dyn Harness) {
    let s = open(h).await;
    let other = open(h).await;
    let q = h.unique_name("guarded");
    let data = h.unique_name("data");
    let (k1, k2) = (format!("{data}/one"), format!("{data}/two"));
    let g = s
        .create_sequential(&spec(&q, NodeKind::Lock, b"p0"))
        .await
        .expect("create")
        .node;
    s.guarded(
        &g,
        &[
            Op::Put {
                key: k1.clone(),
                value: b"v1".to_vec(),
            },
            Op::Put {
                key: k2.clone(),
                value: b"v2".to_vec(),
            },
        ],
    )
    .await
    .expect("guarded put");
    assert_eq!(s.get(&k1).await.expect("get").as_deref(), Some(&b"v1"[..]));
    s.guarded(&g, &[Op::Delete { key: k2.clone() }])
        .await
        .expect("guarded delete");
    assert_eq!(s.get(&k2).await.expect("get"), None);
    // A put on the guard's own key replaces its payload and keeps it ephemeral.
    s.guarded(
        &g,
        &[Op::Put {
            key: g.key.clone(),
            value: b"p1".to_vec(),
        }],
    )
    .await
    .expect("put own key");
    assert_eq!(
        s.get(&g.key).await.expect("get").as_deref(),
        Some(&b"p1"[..])
    );
    assert_eq!(keys(&*s, &q).await, vec![g.key.clone()]);
    // Someone else removes the guard: the batch is refused, nothing is written.
    other.delete(&g).await.expect("delete by another session");
    let err = s
        .guarded(
            &g,
            &[
                Op::Put {
                    key: k1.clone(),
                    value: b"late".to_vec(),
                },
                Op::Put {
                    key: k2.clone(),
                    value: b"late".to_vec(),
                },
            ],
        )
        .await
        .expect_err("a guarded write after loss must fail");
    assert!(
        matches!(err, Error::LockLost(LossReason::NodeDeleted)),
        "{err:?}"
    );
    assert_eq!(s.get(&k1).await.expect("get").as_deref(), Some(&b"v1"[..]));
    assert_eq!(s.get(&k2).await.expect("get"), None);
    s.close().await.expect("close");
    // A guard owned by a closed session is gone too, and its key is not re-created.
    assert_eq!(other.get(&g.key).await.expect("get"), None);
    other.close().await.expect("close");
}

/// put_if_absent creates once and then reports the existing value.
pub async fn put_if_absent_once(h: &dyn Harness) {
    let s = open(h).await;
    let key = format!("{}/count", h.unique_name("kv"));
    assert_eq!(s.put_if_absent(&key, b"3").await.expect("put"), None);
    assert_eq!(
        s.put_if_absent(&key, b"4").await.expect("put").as_deref(),
        Some(&b"3"[..])
    );
    assert_eq!(s.get(&key).await.expect("get").as_deref(), Some(&b"3"[..]));
    s.close().await.expect("close");
    // Persistent: outlives the session.
    let s2 = open(h).await;
    assert_eq!(s2.get(&key).await.expect("get").as_deref(), Some(&b"3"[..]));
    s2.close().await.expect("close");
}

/// Closing a session makes it Lost and removes its nodes; watchers hear of it.
pub async fn close_removes_nodes(h: &dyn Harness) {
    let s = open(h).await;
    let watcher = open(h).await;
    let q = h.unique_name("close");
    let a = s
        .create_sequential(&spec(&q, NodeKind::Lock, b""))
        .await
        .expect("create");
    s.create_sequential(&spec(&q, NodeKind::Read, b""))
        .await
        .expect("create");
    let rev = watcher.list(&q).await.expect("list").revision;
    let key = a.node.key.clone();
    let w = watcher.clone();
    let waiting = tokio::spawn(async move { w.deleted(&key, rev).await });
    s.close().await.expect("close");
    assert_eq!(*s.state().borrow(), SessionState::Lost);
    s.close().await.expect("close is idempotent");
    timeout(EVENTUALLY, waiting)
        .await
        .expect("watch did not fire on close")
        .expect("join")
        .expect("deleted() failed");
    assert!(
        keys(&*watcher, &q).await.is_empty(),
        "closed session left nodes"
    );
    watcher.close().await.expect("close");
}

/// A session expired by the server becomes Lost, and its nodes disappear.
pub async fn expiry_makes_session_lost(h: &dyn Harness) {
    let s = open(h).await;
    let watcher = open(h).await;
    let q = h.unique_name("expire");
    s.create_sequential(&spec(&q, NodeKind::Lock, b""))
        .await
        .expect("create");
    h.expire(s.id()).await;
    let mut st = s.state();
    timeout(
        h.ttl() + EVENTUALLY,
        st.wait_for(|s| *s == SessionState::Lost),
    )
    .await
    .expect("expired session not reported Lost within TTL + margin")
    .expect("state channel closed");
    assert!(
        keys(&*watcher, &q).await.is_empty(),
        "expired session left nodes"
    );
    let err = s
        .create_sequential(&spec(&q, NodeKind::Lock, b""))
        .await
        .expect_err("a lost session must refuse work");
    assert!(
        matches!(err, Error::SessionExpired(_) | Error::Connection { .. }),
        "{err:?}"
    );
    watcher.close().await.expect("close");
}

/// Keep-alives keep a session and its nodes alive well past its TTL.
pub async fn keepalive_outlives_ttl(h: &dyn Harness) {
    let s = open(h).await;
    let q = h.unique_name("keepalive");
    let c = s
        .create_sequential(&spec(&q, NodeKind::Lock, b""))
        .await
        .expect("create");
    tokio::time::sleep(h.ttl() * 2 + Duration::from_millis(500)).await;
    assert_eq!(*s.state().borrow(), SessionState::Live);
    assert_eq!(keys(&*s, &q).await, vec![c.node.key]);
    s.close().await.expect("close");
}

/// queue_changed resolves on a join, a leave and a payload change of the head, and at
/// once for a change that happened after `since` but before the call.
pub async fn queue_changed_fires(h: &dyn Harness) {
    let s = open(h).await;
    let watcher = open(h).await;
    let q = h.unique_name("qchange");
    let rev = watcher.list(&q).await.expect("list").revision;
    let w = watcher.clone();
    let q2 = q.clone();
    let waiting = tokio::spawn(async move { w.queue_changed(&q2, rev).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "fired with no change");
    let a = s
        .create_sequential(&spec(&q, NodeKind::Latch, b"v1"))
        .await
        .expect("create")
        .node;
    timeout(EVENTUALLY, waiting)
        .await
        .expect("join not seen")
        .expect("join")
        .expect("watch");
    // A payload change of the head, made before the call: seen at once.
    let rev = watcher.list(&q).await.expect("list").revision;
    s.guarded(
        &a,
        &[Op::Put {
            key: a.key.clone(),
            value: b"v2".to_vec(),
        }],
    )
    .await
    .expect("proclaim");
    timeout(EVENTUALLY, watcher.queue_changed(&q, rev))
        .await
        .expect("payload change missed")
        .expect("watch");
    // A leave.
    let rev = watcher.list(&q).await.expect("list").revision;
    s.delete(&a).await.expect("delete");
    timeout(EVENTUALLY, watcher.queue_changed(&q, rev))
        .await
        .expect("leave missed")
        .expect("watch");
    s.close().await.expect("close");
    watcher.close().await.expect("close");
}

/// Runs every contract test as its own `#[tokio::test]`, each with a fresh harness from
/// the given expression (evaluated inside the test's async context).
#[macro_export]
macro_rules! contract_tests {
    ($harness:expr) => {
        $crate::__contract_tests!($harness;
            create_is_idempotent_and_ordered,
            turn_names_the_one_node_to_wait_for,
            list_only_direct_children,
            kinds_round_trip,
            deleted_fires,
            deleted_not_missed_after_list,
            blocker_deleted_reports_held_only_when_marked,
            delete_is_identity_guarded,
            abandon_removes_attempt,
            guarded_writes,
            put_if_absent_once,
            close_removes_nodes,
            expiry_makes_session_lost,
            keepalive_outlives_ttl,
            queue_changed_fires,
            revocation_is_seen_by_the_owner
        );
    };
}

/// A revocation request leaves a mark its node's owner sees (already there, or arriving
/// while it waits), deletes nothing, and reports a node that is gone as `false`.
pub async fn revocation_is_seen_by_the_owner(h: &dyn Harness) {
    let owner = open(h).await;
    let asker = open(h).await;
    let q = h.unique_name("revoke");
    let c = owner
        .create_sequential(&spec(&q, NodeKind::Lock, b"meta"))
        .await
        .expect("create");
    let o = owner.clone();
    let node = c.node.clone();
    let waiting = tokio::spawn(async move { o.revoke_requested(&node).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "revoke_requested() resolved before any request"
    );
    let (_, token) = asker
        .read_node(&c.node.key)
        .await
        .expect("read_node")
        .expect("node exists");
    let holder = crate::Node {
        token,
        ..c.node.clone()
    };
    assert!(asker.request_revoke(&holder).await.expect("request_revoke"));
    timeout(EVENTUALLY, waiting)
        .await
        .expect("revoke_requested() did not fire")
        .expect("join")
        .expect("revoke_requested() failed");
    // Seen again at once (the mark stays), and the node is still there.
    timeout(EVENTUALLY, owner.revoke_requested(&c.node))
        .await
        .expect("an earlier request must be seen at once")
        .expect("revoke_requested() failed");
    assert_eq!(keys(&*asker, &q).await, vec![c.node.key.clone()]);
    owner.delete(&c.node).await.expect("delete");
    assert!(!asker.request_revoke(&holder).await.expect("request_revoke"));
    assert!(matches!(
        owner.revoke_requested(&c.node).await,
        Err(Error::LockLost(_))
    ));
    owner.close().await.expect("close");
    asker.close().await.expect("close");
}

#[doc(hidden)]
#[macro_export]
macro_rules! __contract_tests {
    ($harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                $crate::testkit::contract::$name(&harness).await;
            }
        )*
    };
}
