//! ZooKeeper-specific behaviour of the backend on a real server (`QUEUELOCK_TEST_ZK`, set
//! by `scripts/test`; every test fails when it is not set): Curator's node names, foreign
//! names in the order, adoption by uuid, container parents and their reaping, identity
//! guards, and session states under connection faults (through a TCP proxy the test
//! controls).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use queuelock_core::{
    Backend, Error, LossReason, NodeKind, NodeSpec, Op, Session, SessionOptions, SessionState,
};
use queuelock_zookeeper::{ZkBackend, ZkOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use zookeeper_client::{Acls, Client, CreateMode};

/// Every path of these tests lives under this chroot.
const CHROOT: &str = "/queuelock-zk-tests";
const EVENTUALLY: Duration = Duration::from_secs(15);

fn hosts() -> String {
    std::env::var("QUEUELOCK_TEST_ZK").unwrap_or_else(|_| {
        panic!(
            "QUEUELOCK_TEST_ZK is not set: run ./scripts/test, which starts ZooKeeper \
             (or source scripts/lib/zookeeper.sh and run zk_start)"
        )
    })
}

async fn backend_at(hosts: &str) -> ZkBackend {
    ZkBackend::connect(
        hosts,
        CHROOT,
        ZkOptions::default().with_connect_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("connect to ZooKeeper")
}

async fn session_at(hosts: &str, ttl: Duration) -> Arc<dyn Session> {
    backend_at(hosts)
        .await
        .open_session(&SessionOptions::with_ttl(ttl))
        .await
        .expect("open session")
}

async fn session() -> Arc<dyn Session> {
    session_at(&hosts(), Duration::from_secs(4)).await
}

/// A plain client (its own session) that sees the store as other tools do.
async fn raw() -> Client {
    Client::connect(&hosts()).await.expect("raw client")
}

fn abs(key: &str) -> String {
    format!("{CHROOT}/{key}")
}

fn queue(base: &str) -> String {
    format!("zk/{base}-{}", uuid::Uuid::new_v4().simple())
}

fn last_segment(key: &str) -> &str {
    key.rsplit('/').next().expect("segment")
}

/// Curator names, ephemeral nodes owned by the session, container parents, exact tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_protected_names_and_container_parents() {
    let s = session().await;
    let raw = raw().await;
    let q = queue("names");
    let expect = [
        (NodeKind::Lock, "-lock-"),
        (NodeKind::Read, "-__READ__"),
        (NodeKind::Write, "-__WRIT__"),
        (NodeKind::Latch, "-latch-"),
        (NodeKind::Permit, "-permit-"),
    ];
    for (i, (kind, infix)) in expect.into_iter().enumerate() {
        let spec = NodeSpec::new(q.clone(), kind, b"meta".to_vec());
        let c = s.create_sequential(&spec).await.expect("create");
        let name = last_segment(&c.node.key);
        let want = format!("_c_{}{infix}{:010}", spec.id.hyphenated(), i);
        assert_eq!(name, want, "not Curator's protected name");
        assert_eq!(c.node.kind, kind);
        assert_eq!(c.node.sequence, i as u64);
        let stat = raw
            .check_stat(&abs(&c.node.key))
            .await
            .expect("stat")
            .expect("node exists");
        assert_eq!(stat.ephemeral_owner, s.id().0 as i64, "not ephemeral/ours");
        assert_eq!(c.node.token, stat.czxid as u64, "token is not the czxid");
        assert!(c.turn.revision > 0);
    }
    let parent = raw
        .check_stat(&abs(&q))
        .await
        .expect("stat")
        .expect("parent exists");
    // Not ephemeral (ZooKeeper's stat does not tell a container from a persistent node:
    // `reaped_parent_and_reused_name` shows it is reaped when empty).
    assert_eq!(parent.ephemeral_owner, 0);
    s.close().await.expect("close");
}

/// kazoo's and plain sequential names are ordered with ours; other children are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_names_are_ordered_by_sequence() {
    let s = session().await;
    let raw = raw().await;
    let q = queue("foreign");
    // Make the queue (a container) through the backend, then add other tools' nodes.
    let first = s
        .create_sequential(&NodeSpec::new(q.clone(), NodeKind::Lock, vec![]))
        .await
        .expect("create");
    let eph = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let kazoo_id = uuid::Uuid::new_v4().simple().to_string();
    for prefix in [
        format!("{kazoo_id}__lock__"),
        "lock-".to_owned(),
        format!("{kazoo_id}__rlock__"),
    ] {
        raw.create(&format!("{}/{prefix}", abs(&q)), b"", &eph)
            .await
            .expect("foreign create");
    }
    raw.create(
        &format!("{}/not-a-queue-node", abs(&q)),
        b"",
        &CreateMode::Ephemeral.with_acls(Acls::anyone_all()),
    )
    .await
    .expect("create odd child");
    let last = s
        .create_sequential(&NodeSpec::new(q.clone(), NodeKind::Write, vec![]))
        .await
        .expect("create");
    let listing = s.list(&q).await.expect("list");
    let got: Vec<(u64, NodeKind)> = listing.nodes.iter().map(|n| (n.sequence, n.kind)).collect();
    assert_eq!(
        got,
        vec![
            (0, NodeKind::Lock),
            (1, NodeKind::Lock),
            (2, NodeKind::Lock),
            (3, NodeKind::Read),
            (5, NodeKind::Write),
        ],
        "{listing:#?}"
    );
    assert_eq!(listing.nodes[0].key, first.node.key);
    assert_eq!(
        listing.nodes[1].key,
        format!("{q}/{kazoo_id}__lock__0000000001")
    );
    assert_eq!(listing.nodes[2].key, format!("{q}/lock-0000000002"));
    assert_eq!(listing.nodes[4].key, last.node.key);
    // The create's answer was read at the same revision and waits for the node before
    // ours (whoever wrote it), counting every node ahead.
    assert_eq!(last.turn.revision, listing.revision);
    assert_eq!(last.turn.blocker.as_ref(), Some(&listing.nodes[3]));
    assert_eq!(last.ahead, Some(4));
    s.close().await.expect("close");
}

/// A retry of an attempt looks for its node by uuid, and never adopts one that another
/// session owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_adopts_only_our_own_node() {
    let s = session().await;
    let raw = raw().await;
    let q = queue("adopt");
    let spec = NodeSpec::new(q.clone(), NodeKind::Lock, b"x".to_vec());
    let first = s.create_sequential(&spec).await.expect("create");
    // The retry finds and returns the same node.
    let again = s.create_sequential(&spec).await.expect("retry");
    assert_eq!(again.node, first.node);
    assert_eq!(again.turn.blocker, None);
    // Our node goes; another session creates one with our attempt's uuid.
    s.delete(&first.node).await.expect("delete");
    let eph = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let (_, seq) = raw
        .create(
            &format!("{}/_c_{}-lock-", abs(&q), spec.id.hyphenated()),
            b"",
            &eph,
        )
        .await
        .expect("foreign create");
    let foreign = format!("{q}/_c_{}-lock-{seq}", spec.id.hyphenated());
    let third = s.create_sequential(&spec).await.expect("retry again");
    assert_ne!(third.node.key, foreign, "adopted another session's node");
    let stat = raw
        .check_stat(&abs(&third.node.key))
        .await
        .expect("stat")
        .expect("exists");
    assert_eq!(stat.ephemeral_owner, s.id().0 as i64);
    assert_eq!(
        third.turn.blocker.map(|n| n.key),
        Some(foreign.clone()),
        "our new node waits for the foreign one"
    );
    // abandon removes ours, not the foreign one.
    s.abandon(&spec).await.expect("abandon");
    let keys: Vec<String> = s
        .list(&q)
        .await
        .expect("list")
        .nodes
        .into_iter()
        .map(|n| n.key)
        .collect();
    assert_eq!(keys, vec![foreign]);
    s.close().await.expect("close");
}

/// Empty queues are reaped (containers); creating again re-creates the parent; when the
/// re-created parent's counter hands a retried attempt its old node's exact name, a late
/// delete or guarded write through the old node still does not touch the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaped_parent_and_reused_name() {
    let s = session().await;
    let raw = raw().await;
    let q = queue("reap");
    let spec = NodeSpec::new(q.clone(), NodeKind::Lock, vec![]);
    let old = s.create_sequential(&spec).await.expect("create").node;
    s.delete(&old).await.expect("delete");
    let t0 = Instant::now();
    while raw.check_stat(&abs(&q)).await.expect("stat").is_some() {
        assert!(
            t0.elapsed() < EVENTUALLY,
            "empty container {q} not reaped: start ZooKeeper with \
             -Dznode.container.checkIntervalMs=1000 (scripts/lib/zookeeper.sh does)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new = s.create_sequential(&spec).await.expect("create again").node;
    assert_eq!(
        new.key, old.key,
        "the re-created parent restarts its sequence"
    );
    assert!(new.token > old.token);
    s.delete(&old).await.expect("late delete");
    let err = s
        .guarded(
            &old,
            &[Op::Put {
                key: format!("{q}-data"),
                value: b"late".to_vec(),
            }],
        )
        .await
        .expect_err("guarded write through a replaced node");
    assert!(
        matches!(err, Error::LockLost(LossReason::NodeDeleted)),
        "{err:?}"
    );
    assert_eq!(s.get(&format!("{q}-data")).await.expect("get"), None);
    let stat = raw
        .check_stat(&abs(&new.key))
        .await
        .expect("stat")
        .expect("a late delete removed the newer node");
    assert_eq!(stat.czxid as u64, new.token);
    // Another session's delete of the old identity is guarded by czxid too.
    let other = session().await;
    other.delete(&old).await.expect("foreign late delete");
    assert!(raw
        .check_stat(&abs(&new.key))
        .await
        .expect("stat")
        .is_some());
    other.delete(&new).await.expect("foreign delete");
    assert!(raw
        .check_stat(&abs(&new.key))
        .await
        .expect("stat")
        .is_none());
    other.close().await.expect("close");
    s.close().await.expect("close");
}

/// A payload change does not fire `deleted`; the deletion does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_ignores_data_changes() {
    let owner = session().await;
    let watcher = session().await;
    let q = queue("data-watch");
    let n = owner
        .create_sequential(&NodeSpec::new(q.clone(), NodeKind::Latch, b"a".to_vec()))
        .await
        .expect("create")
        .node;
    let w = watcher.clone();
    let key = n.key.clone();
    let waiting = tokio::spawn(async move { w.deleted(&key, 0).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    owner
        .guarded(
            &n,
            &[Op::Put {
                key: n.key.clone(),
                value: b"b".to_vec(),
            }],
        )
        .await
        .expect("proclaim");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "deleted() fired on a data change");
    assert_eq!(
        owner.get(&n.key).await.expect("get").as_deref(),
        Some(&b"b"[..])
    );
    // The payload changed (version 1): a delete of our node still works.
    owner.delete(&n).await.expect("delete");
    timeout(EVENTUALLY, waiting)
        .await
        .expect("deleted() did not fire")
        .expect("join")
        .expect("deleted() failed");
    owner.close().await.expect("close");
    watcher.close().await.expect("close");
}

/// Closing a session with watches pending on it ends them at once and closes the ZooKeeper
/// session right away (its nodes go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_pending_watches() {
    let s = session().await;
    let other = session().await;
    let raw = raw().await;
    let q = queue("close");
    let theirs = other
        .create_sequential(&NodeSpec::new(q.clone(), NodeKind::Lock, vec![]))
        .await
        .expect("create")
        .node;
    let ours = s
        .create_sequential(&NodeSpec::new(q.clone(), NodeKind::Lock, vec![]))
        .await
        .expect("create")
        .node;
    let w = s.clone();
    let key = theirs.key.clone();
    let waiting = tokio::spawn(async move { w.deleted(&key, 0).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    s.close().await.expect("close");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "close took {:?}",
        t0.elapsed()
    );
    assert!(raw
        .check_stat(&abs(&ours.key))
        .await
        .expect("stat")
        .is_none());
    let res = timeout(EVENTUALLY, waiting)
        .await
        .expect("pending deleted() not ended by close")
        .expect("join");
    assert!(matches!(res, Err(Error::SessionExpired(_))), "{res:?}");
    let err = s
        .list(&q)
        .await
        .expect_err("closed session must refuse work");
    assert!(matches!(err, Error::SessionExpired(_)), "{err:?}");
    other.close().await.expect("close");
}

/// Dropping the last handle closes the session in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_closes_session() {
    let raw = raw().await;
    let q = queue("drop");
    let key = {
        let s = session().await;
        s.create_sequential(&NodeSpec::new(q.clone(), NodeKind::Lock, vec![]))
            .await
            .expect("create")
            .node
            .key
    };
    let t0 = Instant::now();
    while raw.check_stat(&abs(&key)).await.expect("stat").is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "dropped session's node still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- connection faults, through a proxy the test controls ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forward both ways.
    Pass,
    /// Forward requests, swallow every answer (the server works, we hear nothing).
    Deaf,
    /// Cut every connection and refuse new ones.
    Down,
}

struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (mode, rx) = watch::channel(Mode::Pass);
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                if *rx.borrow() == Mode::Down {
                    continue; // dropped: refused
                }
                tokio::spawn(pipe(sock, upstream.clone(), rx.clone()));
            }
        });
        Proxy { addr, mode }
    }

    fn set(&self, m: Mode) {
        self.mode.send_replace(m);
    }
}

async fn pipe(client: TcpStream, upstream: String, mut mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let answers = mode.clone();
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if *answers.borrow() == Mode::Pass && cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = mode.wait_for(|m| *m == Mode::Down) => {}
    }
}

/// Waits until the state is `want`; returns how long it took.
async fn wait_state(s: &dyn Session, want: SessionState, within: Duration) -> Duration {
    let t0 = Instant::now();
    let mut st = s.state();
    let reached = timeout(within, st.wait_for(|x| *x == want)).await.is_ok();
    assert!(
        reached,
        "state not {want:?} within {within:?}: {:?}",
        *s.state().borrow()
    );
    t0.elapsed()
}

/// A disconnection shorter than the session timeout: `Suspended`, then `Live`, nodes kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brief_disconnection_suspends_then_recovers() {
    let proxy = Proxy::start(hosts()).await;
    let s = session_at(&proxy.addr.to_string(), Duration::from_secs(4)).await;
    let raw = raw().await;
    let q = queue("suspend");
    let n = s
        .create_sequential(&NodeSpec::new(q.clone(), NodeKind::Lock, vec![]))
        .await
        .expect("create")
        .node;
    proxy.set(Mode::Down);
    wait_state(&*s, SessionState::Suspended, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.set(Mode::Pass);
    wait_state(&*s, SessionState::Live, Duration::from_secs(3)).await;
    assert!(raw.check_stat(&abs(&n.key)).await.expect("stat").is_some());
    let listing = s.list(&q).await.expect("list after reconnecting");
    assert_eq!(listing.position(&n.key), Some(0));
    s.close().await.expect("close");
}

/// Like Curator: `Lost` once the session timeout has passed without the server, even
/// though no server has said the session expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_after_timeout_without_server() {
    let proxy = Proxy::start(hosts()).await;
    let ttl = Duration::from_secs(3);
    let s = session_at(&proxy.addr.to_string(), ttl).await;
    let q = queue("lost");
    s.create_sequential(&NodeSpec::new(q.clone(), NodeKind::Lock, vec![]))
        .await
        .expect("create");
    let cut = Instant::now();
    proxy.set(Mode::Deaf);
    wait_state(&*s, SessionState::Lost, ttl + Duration::from_secs(2)).await;
    let after = cut.elapsed();
    assert!(
        after <= ttl + Duration::from_millis(500),
        "Lost only after {after:?}"
    );
    let valid = s.valid_until().expect("valid_until");
    assert!(valid <= Instant::now(), "Lost while valid_until is ahead");
    let err = s
        .create_sequential(&NodeSpec::new(q.clone(), NodeKind::Lock, vec![]))
        .await
        .expect_err("lost session must refuse work");
    assert!(matches!(err, Error::SessionExpired(_)), "{err:?}");
    proxy.set(Mode::Down);
    s.close().await.expect("close");
}

/// A create whose answer is lost with the connection is found again by its uuid and
/// adopted: exactly one node for the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_adopts_after_connection_loss() {
    let proxy = Proxy::start(hosts()).await;
    let s = session_at(&proxy.addr.to_string(), Duration::from_secs(6)).await;
    let raw = raw().await;
    let q = queue("loss");
    // The queue exists already, so the create lands in one request.
    let first = s
        .create_sequential(&NodeSpec::new(q.clone(), NodeKind::Lock, vec![]))
        .await
        .expect("create");
    let spec = NodeSpec::new(q.clone(), NodeKind::Lock, b"p".to_vec());
    proxy.set(Mode::Deaf);
    let s2 = s.clone();
    let spec2 = spec.clone();
    let creating = tokio::spawn(async move { s2.create_sequential(&spec2).await });
    // The server executes the create; its answer is swallowed.
    let marker = format!("_c_{}-lock-", spec.id.hyphenated());
    let t0 = Instant::now();
    loop {
        let children = raw.list_children(&abs(&q)).await.expect("children");
        if children.iter().any(|c| c.starts_with(&marker)) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "create never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set(Mode::Down);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set(Mode::Pass);
    let created = match timeout(EVENTUALLY, creating)
        .await
        .expect("create hung")
        .expect("join")
    {
        Ok(c) => c,
        // The lookup could not run before the connection came back: the caller retries.
        Err(e) if e.is_retryable() => s.create_sequential(&spec).await.expect("retry"),
        Err(e) => panic!("create failed: {e:?}"),
    };
    let ours: Vec<String> = raw
        .list_children(&abs(&q))
        .await
        .expect("children")
        .into_iter()
        .filter(|c| c.starts_with(&marker))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(created.node.key, format!("{q}/{}", ours[0]));
    let stat = raw
        .check_stat(&abs(&created.node.key))
        .await
        .expect("stat")
        .expect("exists");
    assert_eq!(created.node.token, stat.czxid as u64);
    assert_eq!(stat.ephemeral_owner, s.id().0 as i64);
    assert_eq!(
        created.turn.blocker.as_ref().map(|n| n.key.as_str()),
        Some(first.node.key.as_str())
    );
    assert_eq!(*s.state().borrow(), SessionState::Live);
    s.close().await.expect("close");
}
