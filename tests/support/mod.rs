//! Real servers for tests that need more than the one server `scripts/test` starts:
//! clusters on loopback, with members to kill and restart. Data lives in a temporary
//! directory removed on drop; every process is killed on drop.

#![allow(dead_code)] // each test binary uses part of it

pub mod etcd;
pub mod faketime;
pub mod interop;
pub mod netns;
pub mod postgres;
pub mod redis;
pub mod secure;
pub mod zookeeper;

use std::net::TcpListener;
use std::path::PathBuf;

/// A real cluster the fault tests can break.
pub trait Cluster {
    /// A queuelock URL for the cluster under `root` (prefix or chroot) with options.
    fn url(&self, root: &str, query: &str) -> String;
    /// The index of the current leader (waits for one).
    fn leader(&self) -> usize;
    /// kill -9 member `i`.
    fn kill9(&mut self, i: usize);
    /// Starts member `i` again on its old data.
    fn restart(&mut self, i: usize);
    /// Waits until every running member serves.
    fn wait_ready(&self);
    /// The option name for the session TTL in URLs.
    fn ttl_option(&self) -> &'static str;
    /// The URL scheme (`etcd` or `zk`).
    fn scheme(&self) -> &'static str;
    /// `host:port` of every member's client port.
    fn client_addrs(&self) -> Vec<String>;
    /// Ends, from the server side, the session that owns the queue node `key` (as an
    /// operator would); `Err` says why it could not (this time, or ever: see
    /// [`Cluster::admin_expire_supported`]).
    fn admin_expire(&self, key: &str) -> Result<String, String>;
    /// Whether the store has an operator command to end a session at all.
    fn admin_expire_supported(&self) -> Result<(), String> {
        Ok(())
    }
    /// How many members (servers) it has.
    fn members(&self) -> usize {
        1
    }
    /// Cuts each pair of members in `pairs` off from each other, both ways, on top of
    /// what is cut already; `Err` says why the cluster cannot.
    fn partition(&self, _pairs: &[(usize, usize)]) -> Result<(), String> {
        Err("a single server: no members to partition".into())
    }
    /// Heals every partition between members.
    fn heal_partition(&self) {}
    /// Every member that claims to lead right now.
    fn leaders_claimed(&self) -> Vec<usize> {
        Vec::new()
    }
    /// A worker's URL: through `hosts` (its proxies), under `root`, with `query`.
    fn worker_url(&self, hosts: &[String], root: &str, query: &str) -> String {
        format!("{}://{}/{root}?{query}", self.scheme(), hosts.join(","))
    }
}

impl Cluster for postgres::PgServer {
    fn url(&self, root: &str, query: &str) -> String {
        postgres::PgServer::url(self, root, query)
    }
    fn leader(&self) -> usize {
        0
    }
    fn kill9(&mut self, _i: usize) {
        postgres::PgServer::kill9(self)
    }
    fn restart(&mut self, _i: usize) {
        postgres::PgServer::restart(self)
    }
    fn wait_ready(&self) {
        postgres::PgServer::wait_ready(self)
    }
    fn ttl_option(&self) -> &'static str {
        "ttl"
    }
    fn scheme(&self) -> &'static str {
        "postgres"
    }
    fn client_addrs(&self) -> Vec<String> {
        vec![self.addr()]
    }
    fn admin_expire(&self, key: &str) -> Result<String, String> {
        self.revoke_session_of(key)
    }
    /// The worker's label doubles as its application_name, so that the operator's fault
    /// can find (and terminate) its connections.
    fn worker_url(&self, hosts: &[String], root: &str, query: &str) -> String {
        let label = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("label="))
            .unwrap_or("queuelock");
        format!(
            "postgres://postgres@{}/postgres?schema={}&{query}&application_name={label}",
            hosts.join(","),
            root.replace('-', "_")
        )
    }
}

/// The partition methods of a cluster whose members may have namespaces of their own
/// (`net()`), the same for etcd and ZooKeeper.
macro_rules! member_partitions {
    ($t:path) => {
        fn members(&self) -> usize {
            self.client_addrs().len()
        }
        fn partition(&self, pairs: &[(usize, usize)]) -> Result<(), String> {
            let net = self
                .net()
                .ok_or("members share 127.0.0.1: start the cluster with start_partitionable")?;
            net.cut(pairs);
            Ok(())
        }
        fn heal_partition(&self) {
            if let Some(net) = self.net() {
                net.heal();
            }
        }
        fn leaders_claimed(&self) -> Vec<usize> {
            <$t>::leaders_claimed(self)
        }
    };
}

impl Cluster for etcd::EtcdCluster {
    fn url(&self, root: &str, query: &str) -> String {
        etcd::EtcdCluster::url(self, root, query)
    }
    fn leader(&self) -> usize {
        etcd::EtcdCluster::leader(self)
    }
    fn kill9(&mut self, i: usize) {
        etcd::EtcdCluster::kill9(self, i)
    }
    fn restart(&mut self, i: usize) {
        etcd::EtcdCluster::restart(self, i)
    }
    fn wait_ready(&self) {
        self.wait_healthy(std::time::Duration::from_secs(60))
    }
    fn ttl_option(&self) -> &'static str {
        "ttl"
    }
    fn scheme(&self) -> &'static str {
        "etcd"
    }
    fn client_addrs(&self) -> Vec<String> {
        self.endpoints()
    }
    fn admin_expire(&self, key: &str) -> Result<String, String> {
        etcd::EtcdCluster::revoke_lease_of(self, key)
    }
    member_partitions!(etcd::EtcdCluster);
}

/// closeSession needs the session's password, which only its owner holds: there is no
/// operator command for it in ZooKeeper 3.8.
const ZK_NO_ADMIN_EXPIRE: &str = "ZooKeeper has no administrative session expiry";

impl Cluster for zookeeper::ZkEnsemble {
    fn url(&self, root: &str, query: &str) -> String {
        zookeeper::ZkEnsemble::url(self, root, query)
    }
    fn leader(&self) -> usize {
        zookeeper::ZkEnsemble::leader(self)
    }
    fn kill9(&mut self, i: usize) {
        zookeeper::ZkEnsemble::kill9(self, i)
    }
    fn restart(&mut self, i: usize) {
        zookeeper::ZkEnsemble::restart(self, i)
    }
    fn wait_ready(&self) {
        self.wait_serving(std::time::Duration::from_secs(60))
    }
    fn ttl_option(&self) -> &'static str {
        "session_timeout"
    }
    fn scheme(&self) -> &'static str {
        "zk"
    }
    fn client_addrs(&self) -> Vec<String> {
        self.hosts().split(',').map(str::to_owned).collect()
    }
    fn admin_expire(&self, _key: &str) -> Result<String, String> {
        Err(ZK_NO_ADMIN_EXPIRE.into())
    }
    fn admin_expire_supported(&self) -> Result<(), String> {
        Err(ZK_NO_ADMIN_EXPIRE.into())
    }
    member_partitions!(zookeeper::ZkEnsemble);
}

/// Waits until the queue of lock `name` holds exactly `n` nodes, seen through `observer`.
pub async fn await_queue_len(observer: &queuelock::Client, name: &str, n: usize) {
    let s = observer.session().await.expect("session");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while s.list(name).await.expect("list").nodes.len() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {name} never reached {n} nodes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fails the test with a clear message when a server binary is missing: such tests
/// never skip.
pub fn require_binary(name: &str, install_hint: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: {install_hint} (./scripts/test does it)")
        })
}

/// Waits until every child has exited (its exit code; -1 when killed by a signal); kills
/// the ones still running after `grace` (`None`: hung).
pub fn wait_all(
    children: &mut [std::process::Child],
    grace: std::time::Duration,
) -> Vec<Option<i32>> {
    use std::time::Instant;
    let deadline = Instant::now() + grace;
    let mut exits = vec![None; children.len()];
    loop {
        let mut running = false;
        for (i, c) in children.iter_mut().enumerate() {
            if exits[i].is_none() {
                match c.try_wait() {
                    Ok(Some(st)) => exits[i] = Some(st.code().unwrap_or(-1)),
                    _ => running = true,
                }
            }
        }
        if !running {
            return exits;
        }
        if Instant::now() > deadline {
            for (i, c) in children.iter_mut().enumerate() {
                if exits[i].is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            return exits;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The backends a `--backend` value names (`all`: every one), for the long-run harnesses.
pub fn backends_arg(v: &str) -> Option<Vec<&'static str>> {
    Some(match v {
        "etcd" => vec!["etcd"],
        "zookeeper" | "zk" => vec!["zookeeper"],
        "redis" => vec!["redis"],
        "postgres" | "pg" => vec!["postgres"],
        "all" => vec!["etcd", "zookeeper", "postgres", "redis"],
        _ => return None,
    })
}

/// An argument `cargo test` may pass any test binary (a harness=false one ignores it).
pub fn is_cargo_test_arg(a: &str) -> bool {
    matches!(
        a,
        "--nocapture" | "--quiet" | "-q" | "--show-output" | "--include-ignored"
    ) || a.starts_with("--test-threads")
        || a.starts_with("--color")
}

/// Logs to stderr, filtered by `RUST_LOG` or else by `default`; and the two-worker runtime
/// the long-run harnesses and their child processes run on.
pub fn harness_runtime(default: &str) -> tokio::runtime::Runtime {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
