//! queuelock's Election and `etcdctl elect` (Go `concurrency.Election`) on one name see
//! one leader: each waits for the other, and each sees the other's proclamation.

mod support;

use std::process::Stdio;
use std::time::Duration;

use queuelock::Client;
use support::etcd::EtcdCluster;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_queuelock_election_share_one_leader() {
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("", "ttl=5s");
    let name = format!("elect-interop/{}", uuid::Uuid::new_v4().simple());
    let ours = Client::connect(&url).await.expect("connect");
    let election = ours.election(&name).expect("name");

    // 1. queuelock leads; etcdctl campaigns behind it.
    let lead = election.campaign("queuelock-a").await.expect("campaign");
    let mut go = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cluster.endpoints()[0]))
        .args(["elect", &name, "go-b"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("etcdctl elect");
    let mut lines = BufReader::new(go.stdout.take().expect("stdout")).lines();
    let observer = Client::connect(&url).await.expect("connect");
    support::await_queue_len(&observer, &name, 2).await;
    // etcdctl prints the key and the value once it wins: it must not win yet.
    let early = timeout(Duration::from_millis(500), lines.next_line()).await;
    assert!(early.is_err(), "etcdctl won while queuelock led: {early:?}");
    assert_eq!(
        election
            .leader()
            .await
            .expect("leader")
            .expect("leader")
            .value,
        b"queuelock-a"
    );

    // 2. queuelock resigns: etcdctl wins, and queuelock sees Go's proclamation.
    lead.resign().await.expect("resign");
    let won = timeout(Duration::from_secs(20), async {
        let mut out = Vec::new();
        while let Some(l) = lines.next_line().await.expect("read") {
            out.push(l.clone());
            if l == "go-b" {
                return out;
            }
        }
        out
    })
    .await
    .expect("etcdctl never won");
    assert!(won.iter().any(|l| l == "go-b"), "etcdctl output: {won:?}");
    assert_eq!(
        election
            .leader()
            .await
            .expect("leader")
            .expect("leader")
            .value,
        b"go-b"
    );

    // 3. queuelock campaigns behind etcdctl, and leads once etcdctl resigns (SIGINT).
    let e2 = ours.election(&name).expect("name");
    let waiting = tokio::spawn(async move { e2.campaign("queuelock-c").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "queuelock led while etcdctl led");
    let pid = nix::unistd::Pid::from_raw(go.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let l = timeout(Duration::from_secs(30), waiting)
        .await
        .expect("queuelock never led after etcdctl left")
        .expect("join")
        .expect("campaign");
    assert_eq!(
        election
            .leader()
            .await
            .expect("leader")
            .expect("leader")
            .value,
        b"queuelock-c"
    );
    l.resign().await.expect("resign");
    let _ = go.wait().await;
}
