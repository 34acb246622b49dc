//! A real etcd cluster (1 or 3 members) on 127.0.0.1, or with each member in a
//! network namespace of its own (see `netns.rs`) so that members can be partitioned.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::Net;
use super::{free_port, require_binary, TempDir};

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
}

/// The `etcd` command line for member `name` on loopback: data dir, client and peer
/// URLs, the initial cluster; the caller adds its own flags and stderr.
pub fn member_command(
    program: Command,
    name: &str,
    data: &std::path::Path,
    client: &str,
    peer: &str,
    initial_cluster: &str,
) -> Command {
    let mut c = program;
    c.args(["--name", name])
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args(["--initial-cluster", initial_cluster])
        .env(
            "ETCD_UNSUPPORTED_ARCH",
            std::env::consts::ARCH.replace("x86_64", "amd64"),
        )
        .stdout(Stdio::null());
    c
}

/// An etcd cluster whose members the test can kill and restart.
pub struct EtcdCluster {
    dir: TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    /// The members' namespaces, when they have their own.
    net: Option<Net>,
}

impl EtcdCluster {
    /// Starts `n` members on 127.0.0.1 and waits until every one is healthy.
    pub fn start(n: usize) -> Self {
        Self::start_on(n, None)
    }

    /// Starts `n` members, each in its own network namespace with its own address, so
    /// that [`EtcdCluster::net`] can partition them; waits until every one is healthy.
    pub fn start_partitionable(n: usize) -> Self {
        Self::start_on(n, Some(Net::new(n)))
    }

    fn start_on(n: usize, net: Option<Net>) -> Self {
        require_binary("etcd", "apt-get install etcd-server");
        require_binary("etcdctl", "apt-get install etcd-client");
        let dir = TempDir::new("queuelock-etcd");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
            })
            .collect();
        let host = |i: usize| super::netns::addr_or_loopback(net.as_ref(), i);
        let initial_cluster = members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{}=http://{}:{}", m.name, host(i), m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            dir,
            members,
            initial_cluster,
            net,
        };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_healthy(Duration::from_secs(60));
        c
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let data = self.dir.0.join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join(format!("{}.log", m.name)))
            .expect("log file");
        let client = format!("http://{}:{}", self.host(i), m.client_port);
        let peer = format!("http://{}:{}", self.host(i), m.peer_port);
        let program = match &self.net {
            Some(net) => net.command(i, "etcd"),
            None => Command::new("etcd"),
        };
        let child = member_command(
            program,
            &m.name,
            &data,
            &client,
            &peer,
            &self.initial_cluster,
        )
        .args([
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "queuelock-test",
        ])
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .stderr(log)
        .spawn()
        .expect("start etcd");
        self.members[i].process = Some(child);
    }

    /// Member `i`'s address.
    fn host(&self, i: usize) -> String {
        super::netns::addr_or_loopback(self.net.as_ref(), i)
    }

    /// The members' namespaces, if they were started with their own.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_ref()
    }

    /// `host:port` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{}:{}", self.host(i), m.client_port))
            .collect()
    }

    /// A queuelock URL for the whole cluster with a key prefix.
    pub fn url(&self, prefix: &str, query: &str) -> String {
        format!("etcd://{}/{prefix}?{query}", self.endpoints().join(","))
    }

    /// Runs `etcdctl` against `endpoints`; its stdout, or `None` if it failed.
    pub fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--command-timeout=2s", "--dial-timeout=1s"])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Revokes the lease that owns queue node `key` (`.../<lease hex>-<kind>-<slot>`), as
    /// `etcdctl lease revoke` would; returns the lease.
    pub fn revoke_lease_of(&self, key: &str) -> Result<String, String> {
        let last = key.rsplit('/').next().unwrap_or(key);
        let lease = last
            .split('-')
            .next()
            .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| format!("no lease in key {key}"))?;
        let eps: Vec<String> = self
            .alive()
            .into_iter()
            .map(|i| self.endpoints()[i].clone())
            .collect();
        self.etcdctl(&eps, &["lease", "revoke", lease])
            .map(|_| lease.to_owned())
            .ok_or_else(|| format!("etcdctl lease revoke {lease} failed"))
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].process.is_some())
            .collect()
    }

    /// Waits until every running member reports healthy and a leader exists.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let eps: Vec<String> = self
                .alive()
                .into_iter()
                .map(|i| self.endpoints()[i].clone())
                .collect();
            if self.etcdctl(&eps, &["endpoint", "health"]).is_some() && self.try_leader().is_some()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd cluster not healthy in {limit:?}; logs in {}",
                self.dir.0.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every running member that says it is the leader right now (a partitioned old
    /// leader may, until it steps down).
    pub fn leaders_claimed(&self) -> Vec<usize> {
        self.alive()
            .into_iter()
            .filter(|&i| self.claims_leader(i) == Some(true))
            .collect()
    }

    fn claims_leader(&self, i: usize) -> Option<bool> {
        let json = self.etcdctl(
            &[self.endpoints()[i].clone()],
            &["endpoint", "status", "-w", "json"],
        )?;
        let v: serde_json::Value = serde_json::from_str(&json).ok()?;
        let st = &v[0]["Status"];
        let (me, leader) = (st["header"]["member_id"].as_u64()?, st["leader"].as_u64()?);
        Some(leader != 0 && me == leader)
    }

    fn try_leader(&self) -> Option<usize> {
        self.alive()
            .into_iter()
            .find(|&i| self.claims_leader(i) == Some(true))
    }

    /// The index of the current leader (waits for an election).
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(i) = self.try_leader() {
                return i;
            }
            assert!(Instant::now() < deadline, "no etcd leader");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Starts member `i` again on its old data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].process.is_none(), "member {i} is running");
        self.spawn(i);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}
