//! queuelock and kazoo's locks (Python) contend on one path and exclude each other in
//! both directions, in queue order: kazoo's `Lock(extra_lock_patterns=["-lock-"])` with
//! queuelock's default (Curator) naming, and kazoo's `Lock()`, `WriteLock()` and
//! `ReadLock()` with default arguments with `naming=kazoo`. Needs
//! `QUEUELOCK_TEST_KAZOO_PYTHON`: a Python with kazoo installed (`./scripts/test` makes
//! the virtualenv).

mod support;

use std::path::Path;

use support::zookeeper::ZkEnsemble;
use support::TempDir;

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
