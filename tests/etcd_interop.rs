//! queuelock and etcd's own `etcdctl lock` (Go `concurrency.Mutex`) contend for one name
//! and exclude each other in both directions, in queue order.

mod support;

use std::process::Stdio;

use support::etcd::EtcdCluster;
use support::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_queuelock_exclude_each_other_in_queue_order() {
    let cluster = EtcdCluster::start(1);
    let dir = TempDir::new("queuelock-interop");
    let name = format!("interop/{}", uuid::Uuid::new_v4().simple());
    let endpoint = cluster.endpoints()[0].clone();
    let lock = name.clone();
    support::interop::exclude_each_other_in_queue_order(
        &cluster.url("", "ttl=5s"),
        &name,
        "etcdctl lock",
        &dir.0,
        move |start, end| {
            let script = format!(
                "date +%s%N > {}; sleep 0.5; date +%s%N > {}",
                start.display(),
                end.display()
            );
            tokio::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={endpoint}"))
                .args(["lock", &lock, "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .spawn()
                .expect("etcdctl")
        },
    )
    .await;
}
