//! queuelock and real peers on one ZooKeeper path:
//! * kazoo's locks (Python) and queuelock exclude each other in both directions, in queue
//!   order: kazoo's `Lock(extra_lock_patterns=["-lock-"])` with queuelock's default
//!   (Curator) naming, and kazoo's `Lock()`, `WriteLock()` and `ReadLock()` with default
//!   arguments with `naming=kazoo`;
//! * Apache Curator's revocation (Java: `InterProcessMutex.makeRevocable`,
//!   `Revoker.attemptRevoke`) and queuelock's understand each other in both directions.
//!
//! Needs `QUEUELOCK_TEST_KAZOO_PYTHON` (a Python with kazoo) and
//! `QUEUELOCK_TEST_CURATOR_CLASSPATH` (the compiled tests/interop/CuratorRevoke.java and
//! Curator's jars): `./scripts/test` and `scripts/with-servers` make both.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use queuelock::{Client, Revocation};
use support::zookeeper::ZkEnsemble;
use support::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::time::timeout;

/// Generous bound for each step (a JVM starts in about a second): liveness, not timing.
const STEP: Duration = Duration::from_secs(30);

/// Runs the three-party scenario (`support::interop`) against the kazoo peer `recipe`
/// (an argument of tests/interop/kazoo_lock.py), queuelock connecting with `query`.
async fn against_kazoo(zk: &ZkEnsemble, query: &str, recipe: &'static str) {
    let python = std::env::var("QUEUELOCK_TEST_KAZOO_PYTHON")
        .expect("QUEUELOCK_TEST_KAZOO_PYTHON is not set: run ./scripts/test, which makes a virtualenv with kazoo");
    let dir = TempDir::new("queuelock-kazoo");
    let name = format!("interop/{}", uuid::Uuid::new_v4().simple());
    let (hosts, path) = (zk.hosts(), format!("/{name}"));
    support::interop::exclude_each_other_in_queue_order(
        &zk.url("", query),
        &name,
        &format!("kazoo {recipe}"),
        &dir.0,
        move |start: &Path, end: &Path| {
            tokio::process::Command::new(&python)
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/interop/kazoo_lock.py"
                ))
                .arg(&hosts)
                .arg(&path)
                .arg(start)
                .arg(end)
                .arg(recipe)
                .spawn()
                .expect("run kazoo peer")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_lock_and_queuelock_exclude_each_other_in_queue_order() {
    let zk = ZkEnsemble::start(1);
    against_kazoo(&zk, "session_timeout=5s", "lock-extra").await;
}

/// With `naming=kazoo`, kazoo's recipes with no arguments see queuelock's nodes: its
/// `Lock()` and `WriteLock()` (which queue `__lock__` nodes) and its `ReadLock()` (which
/// waits for `__lock__` nodes; queuelock's mutex waits for any node ahead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_default_locks_and_queuelock_naming_kazoo_exclude_each_other() {
    let zk = ZkEnsemble::start(1);
    for recipe in ["lock", "write", "read"] {
        against_kazoo(&zk, "session_timeout=5s&naming=kazoo", recipe).await;
    }
}

/// Starts the Curator peer in `mode` (`hold` or `revoke`) on `path`, its stdout piped.
fn curator(mode: &str, hosts: &str, path: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    let cp = std::env::var("QUEUELOCK_TEST_CURATOR_CLASSPATH").expect(
        "QUEUELOCK_TEST_CURATOR_CLASSPATH is not set: run ./scripts/test or scripts/with-servers, which compile the Curator peer",
    );
    let mut child = tokio::process::Command::new("java")
        .args([
            "-Xss512k",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            &cp,
            "CuratorRevoke",
        ])
        .args([mode, hosts, path])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the Curator peer (java)");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

/// The peer's next line of output.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    timeout(STEP, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("the Curator peer hung before {what}"))
        .expect("read the Curator peer")
        .unwrap_or_else(|| panic!("the Curator peer ended before {what}"))
}

async fn exits_ok(mut child: Child, what: &str) {
    let status = timeout(STEP, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the Curator peer hung: {what}"))
        .expect("wait");
    assert!(
        status.success(),
        "the Curator peer failed ({status}): {what}"
    );
}

/// A Curator holder made revocable is asked to let go by `queuelock revoke` (Curator's
/// protocol: its node's data set to `__REVOKE__`) and by `Mutex::request_revoke`; a
/// queuelock revocable holder sees Curator's `Revoker.attemptRevoke`, and its metadata is
/// readable again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_and_queuelock_revoke_each_other() {
    let zk = ZkEnsemble::start(1);
    let url = zk.url("", "session_timeout=5s");
    let name = format!("interop/revoke-{}", uuid::Uuid::new_v4().simple());
    let (hosts, path) = (zk.hosts(), format!("/{name}"));
    let ql = Client::connect(&url).await.expect("connect");

    // 1. Curator holds, revocable; `queuelock revoke NAME` asks it; it lets go.
    let (child, mut out) = curator("hold", &hosts, &path);
    let held = next_line(&mut out, "holding").await;
    assert!(held.starts_with("held "), "{held}");
    let waiter = ql.mutex(&name).expect("name");
    assert!(
        waiter.try_lock().await.expect("try_lock").is_none(),
        "Curator holds"
    );
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_queuelock"))
        .args(["revoke", "--url", &url, &name])
        .output()
        .await
        .expect("run queuelock revoke");
    assert!(
        cli.status.success(),
        "queuelock revoke: {} {}",
        String::from_utf8_lossy(&cli.stdout),
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(next_line(&mut out, "the revocation").await, "revoked");
    assert_eq!(next_line(&mut out, "releasing").await, "released");
    exits_ok(child, "hold").await;
    let g = timeout(STEP, waiter.lock())
        .await
        .expect("Curator's released lock never came")
        .expect("lock");
    g.release().await.expect("release");

    // 2. The same through the library: a Curator holder has no queuelock metadata, so it
    //    is asked (its answer is Curator's own).
    let (child, mut out) = curator("hold", &hosts, &path);
    next_line(&mut out, "holding").await;
    match waiter.request_revoke().await.expect("request_revoke") {
        Revocation::Requested { holder } => assert!(holder.holder.is_none(), "{holder:?}"),
        other => panic!("expected Requested, got {other:?}"),
    }
    assert_eq!(next_line(&mut out, "the revocation").await, "revoked");
    exits_ok(child, "hold").await;

    // 3. queuelock holds, revocable; Curator's Revoker.attemptRevoke asks it.
    let m = ql.mutex(&name).expect("name").revocable();
    let guard = timeout(STEP, m.lock())
        .await
        .expect("lock hung")
        .expect("lock");
    let (child, mut out) = curator("revoke", &hosts, &path);
    let asked = next_line(&mut out, "asking").await;
    assert_eq!(asked, format!("asked /{}", guard.key()));
    exits_ok(child, "revoke").await;
    timeout(STEP, guard.revoke_requested())
        .await
        .expect("queuelock never saw Curator's revocation request");
    // The holder keeps the lock, and writes its metadata back over `__REVOKE__`.
    let observer = Client::connect(&url).await.expect("connect");
    let seen = observer.mutex(&name).expect("name");
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let holders = seen.holders().await.expect("holders");
        assert_eq!(holders.len(), 1);
        if let Some(info) = &holders[0].holder {
            assert!(info.revocable && info.revoke_requested_at_ms.is_some());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the holder's metadata never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(guard.is_lost(), None);
    guard.release().await.expect("release");
}
