//! Cluster faults on real etcd (3 members) and ZooKeeper (3 servers) on loopback, the
//! same scenarios on both. A plain `main` (harness = false): the binary re-runs itself
//! as the holder process the SIGSTOP test freezes.
//!
//! * kill -9 the leader while a lock is held and waiters queue: the lock stays
//!   exclusive, the queue proceeds after re-election, fencing tokens keep increasing;
//! * a holder process frozen (SIGSTOP) past its TTL loses the lock to the next waiter,
//!   and once thawed (SIGCONT) it knows before doing anything under the old token;
//! * (ZooKeeper) a disconnection shorter than the session timeout keeps the lock: the
//!   session goes Suspended, then Live;
//! * a holder that can reach only the leader, when the leader is partitioned from the
//!   other members (each member in a network namespace of its own): it learns of its
//!   loss before a contender on the majority side is granted the lock.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use queuelock::Client;
use support::etcd::EtcdCluster;
use support::zookeeper::ZkEnsemble;
use support::Cluster;
use support::TempDir;
use tokio::time::timeout;

const ROLE: &str = "QUEUELOCK_TEST_ROLE";

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var(ROLE).as_deref() == Ok("holder") {
        rt.block_on(holder_process());
        return;
    }
    type Test = fn(&tokio::runtime::Runtime);
    let tests: [(&str, Test); 7] = [
        ("etcd_partitioned_leader_holder_loses_first", |rt| {
            rt.block_on(partitioned_leader_holder_loses_first(
                EtcdCluster::start_partitionable(3),
            ))
        }),
        ("zookeeper_partitioned_leader_holder_loses_first", |rt| {
            rt.block_on(partitioned_leader_holder_loses_first(
                ZkEnsemble::start_partitionable(3),
            ))
        }),
        ("etcd_leader_killed_while_held", |rt| {
            rt.block_on(leader_killed_while_held(EtcdCluster::start(3)))
        }),
        ("zookeeper_leader_killed_while_held", |rt| {
            rt.block_on(leader_killed_while_held(ZkEnsemble::start(3)))
        }),
        ("etcd_frozen_holder_loses_lock", |rt| {
            rt.block_on(frozen_holder_loses_lock(EtcdCluster::start(1)))
        }),
        ("zookeeper_frozen_holder_loses_lock", |rt| {
            rt.block_on(frozen_holder_loses_lock(ZkEnsemble::start(1)))
        }),
        ("zookeeper_brief_disconnection_keeps_lock", |rt| {
            rt.block_on(zookeeper_brief_disconnection_keeps_lock())
        }),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&rt)));
        match r {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

async fn partitioned_leader_holder_loses_first(cluster: impl Cluster) {
    let leader = cluster.leader();
    let addrs = cluster.client_addrs();
    let majority: Vec<String> = (0..addrs.len())
        .filter(|&i| i != leader)
        .map(|i| addrs[i].clone())
        .collect();
    let root = format!("faults-{}", uuid::Uuid::new_v4().simple());
    let query = format!("{}=3s", cluster.ttl_option());
    // The holder reaches the leader only; the contender the two other members only.
    let holder = Client::connect(&cluster.worker_url(&[addrs[leader].clone()], &root, &query))
        .await
        .expect("connect the holder");
    let contender = Client::connect(&cluster.worker_url(&majority, &root, &query))
        .await
        .expect("connect the contender");
    let g = holder
        .mutex("partitioned")
        .expect("name")
        .lock()
        .await
        .expect("lock");
    let held_token = g.fencing_token();
    let peers: Vec<(usize, usize)> = (0..addrs.len())
        .filter(|&i| i != leader)
        .map(|i| (leader, i))
        .collect();
    cluster.partition(&peers).expect("partition the leader");
    println!("member {leader} (leader) cut off from the others");
    let (lost_at, (granted_at, next)) = tokio::join!(
        async {
            timeout(Duration::from_secs(30), g.lost())
                .await
                .expect("the cut-off holder never learned of its loss");
            tokio::time::Instant::now()
        },
        async {
            let m = contender.mutex("partitioned").expect("name");
            let next = timeout(Duration::from_secs(60), m.lock())
                .await
                .expect("the majority side never granted the lock")
                .expect("lock on the majority side");
            (tokio::time::Instant::now(), next)
        }
    );
    let leaders = cluster.leaders_claimed();
    cluster.heal_partition();
    assert!(
        leaders.iter().any(|&l| l != leader),
        "no new leader on the majority side (claimed: {leaders:?}): the partition did not take"
    );
    assert!(
        lost_at < granted_at,
        "the old holder learned of its loss {:?} after the next grant",
        lost_at - granted_at
    );
    println!(
        "holder's loss noticed {:?} before the majority's grant",
        granted_at - lost_at
    );
    assert!(next.fencing_token() > held_token, "token went back");
    next.release().await.expect("release on the majority side");
    let _ = g.release().await;
    let _ = holder.close().await;
    let _ = contender.close().await;
}

async fn leader_killed_while_held(mut cluster: impl Cluster) {
    let url = cluster.url("faults", &format!("{}=5s", cluster.ttl_option()));
    let name = format!("leader-kill/{}", uuid::Uuid::new_v4().simple());
    let holder = Client::connect(&url).await.expect("connect");
    let g = holder
        .mutex(&name)
        .expect("name")
        .lock()
        .await
        .expect("lock");
    let first_token = g.fencing_token();
    let inside = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(StdMutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for _ in 0..4 {
        let c = Client::connect(&url).await.expect("connect");
        let (name, inside, tokens) = (name.clone(), inside.clone(), tokens.clone());
        waiters.push(tokio::spawn(async move {
            let g = c.mutex(&name).expect("name").lock().await.expect("lock");
            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
            tokens.lock().expect("tokens").push(g.fencing_token());
            tokio::time::sleep(Duration::from_millis(20)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            g.release().await.expect("release");
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = cluster.leader();
    cluster.kill9(leader);
    println!("killed leader m{leader}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        g.is_lost().is_none(),
        "a leader change must not lose a held lock"
    );
    assert_eq!(
        inside.load(Ordering::SeqCst),
        0,
        "a waiter got in while the lock was held"
    );
    g.release().await.expect("release after re-election");
    for w in waiters {
        timeout(Duration::from_secs(60), w)
            .await
            .expect("queue stuck")
            .expect("waiter panicked");
    }
    let tokens = tokens.lock().expect("tokens").clone();
    assert_eq!(tokens.len(), 4);
    assert!(
        tokens.iter().all(|&t| t > first_token),
        "token went back: {tokens:?}"
    );
    cluster.restart(leader);
    cluster.wait_ready();
}

/// The frozen process: holds the lock and, every few milliseconds, checks that it still
/// holds it before writing a line tagged with its token — as a careful user would.
async fn holder_process() {
    let url = std::env::var("QUEUELOCK_URL").expect("url");
    let name = std::env::var("QUEUELOCK_TEST_NAME").expect("name");
    let log = std::env::var("QUEUELOCK_TEST_LOG").expect("log");
    let client = Client::connect(&url).await.expect("connect");
    let g = client
        .mutex(&name)
        .expect("name")
        .lock()
        .await
        .expect("lock");
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log");
    loop {
        // The time is read before the check: a freeze between the two then shows as a
        // loss, never as work stamped after the thaw under a token checked before it.
        let at = now_ms();
        if let Some(reason) = g.is_lost() {
            writeln!(out, "lost {at} {reason}").expect("write");
            return;
        }
        writeln!(out, "work {} {at}", g.fencing_token()).expect("write");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn frozen_holder_loses_lock(cluster: impl Cluster) {
    let dir = TempDir::new("queuelock-freeze");
    let log = dir.0.join("holder.log");
    let ttl = Duration::from_secs(2);
    let url = cluster.url("freeze", &format!("{}=2s", cluster.ttl_option()));
    let name = format!("freeze/{}", uuid::Uuid::new_v4().simple());
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env(ROLE, "holder")
        .env("QUEUELOCK_URL", &url)
        .env("QUEUELOCK_TEST_NAME", &name)
        .env("QUEUELOCK_TEST_LOG", &log)
        .spawn()
        .expect("holder process");
    let pid = Pid::from_raw(child.id() as i32);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("work")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "holder never got the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let frozen_at = now_ms();
    let waiter = Client::connect(&url).await.expect("connect");
    let g = timeout(
        ttl * 4 + Duration::from_secs(20),
        waiter.mutex(&name).expect("name").lock(),
    )
    .await
    .expect("the frozen holder's lock never passed on")
    .expect("lock");
    let granted_at = now_ms();
    let new_token = g.fencing_token();
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "holder process failed: {status}");
    let text = std::fs::read_to_string(&log).expect("log");
    let mut old_token = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[0] == "work" {
            let (token, at): (u64, u128) =
                (f[1].parse().expect("token"), f[2].parse().expect("time"));
            old_token = Some(token);
            assert!(token < new_token, "the new holder's token is not larger");
            assert!(
                at <= frozen_at + 50,
                "the thawed holder worked under its old token at {at} (frozen {frozen_at}, lock passed on {granted_at})"
            );
        }
    }
    assert!(old_token.is_some(), "holder never worked");
    assert!(
        text.lines().last().is_some_and(|l| l.starts_with("lost")),
        "holder never learned it lost the lock:\n{text}"
    );
    g.release().await.expect("release");
}

/// A ZooKeeper server paused for less than the session timeout: the holder's session is
/// Suspended, then Live again, and the lock is still held.
async fn zookeeper_brief_disconnection_keeps_lock() {
    let zk = ZkEnsemble::start(1);
    let url = zk.url("blip", "session_timeout=6s");
    let client = Client::connect(&url).await.expect("connect");
    let g = client
        .mutex("blip")
        .expect("name")
        .lock()
        .await
        .expect("lock");
    let mut state = client.session().await.expect("session").state();
    let server = Pid::from_raw(zk.pid(0) as i32);
    kill(server, Signal::SIGSTOP).expect("SIGSTOP server");
    let suspended = timeout(
        Duration::from_secs(5),
        state.wait_for(|s| *s == queuelock::SessionState::Suspended),
    )
    .await;
    kill(server, Signal::SIGCONT).expect("SIGCONT server");
    suspended
        .expect("no Suspended while the server was paused")
        .expect("state");
    timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == queuelock::SessionState::Live),
    )
    .await
    .expect("never Live again")
    .expect("state");
    assert!(
        g.is_lost().is_none(),
        "a blip shorter than the session timeout lost the lock"
    );
    let other = Client::connect(&url).await.expect("connect");
    assert!(other
        .mutex("blip")
        .expect("name")
        .try_lock()
        .await
        .expect("try")
        .is_none());
    g.release().await.expect("release");
}
