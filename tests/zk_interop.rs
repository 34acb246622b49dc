//! queuelock and a kazoo `Lock` (Python) contend on one path and exclude each other in
//! both directions, in queue order. Needs `QUEUELOCK_TEST_KAZOO_PYTHON`: a Python with
//! kazoo installed (`./scripts/test` makes the virtualenv).

mod support;

use support::zookeeper::ZkEnsemble;
use support::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_lock_and_queuelock_exclude_each_other_in_queue_order() {
    let python = std::env::var("QUEUELOCK_TEST_KAZOO_PYTHON")
        .expect("QUEUELOCK_TEST_KAZOO_PYTHON is not set: run ./scripts/test, which makes a virtualenv with kazoo");
    let zk = ZkEnsemble::start(1);
    let dir = TempDir::new("queuelock-kazoo");
    let name = format!("interop/{}", uuid::Uuid::new_v4().simple());
    let (hosts, path) = (zk.hosts(), format!("/{name}"));
    support::interop::exclude_each_other_in_queue_order(
        &zk.url("", "session_timeout=5s"),
        &name,
        "kazoo",
        &dir.0,
        move |start, end| {
            tokio::process::Command::new(&python)
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/interop/kazoo_lock.py"
                ))
                .arg(&hosts)
                .arg(&path)
                .arg(start)
                .arg(end)
                .spawn()
                .expect("run kazoo peer")
        },
    )
    .await;
}
