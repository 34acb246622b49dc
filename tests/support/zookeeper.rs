//! A real ZooKeeper ensemble (1 or 3 servers) on 127.0.0.1, or with each server in a
//! network namespace of its own (see `netns.rs`) so that servers can be partitioned;
//! run with Debian's jars.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::Net;
use super::{free_port, require_binary, TempDir};

pub const CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar";

struct Server {
    id: usize,
    client_port: u16,
    process: Option<Child>,
}

/// A ZooKeeper ensemble whose servers the test can kill and restart.
pub struct ZkEnsemble {
    dir: TempDir,
    servers: Vec<Server>,
    /// The servers' namespaces, when they have their own.
    net: Option<Net>,
}

/// Sends a four-letter word to 127.0.0.1:`port`; `None` if the server does not answer.
pub fn four_letter(port: u16, word: &str) -> Option<String> {
    four_letter_at("127.0.0.1", port, word)
}

/// Sends a four-letter word to `host:port`; `None` if the server does not answer.
pub fn four_letter_at(host: &str, port: u16, word: &str) -> Option<String> {
    let addr = format!("{host}:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(word.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

impl ZkEnsemble {
    /// Starts `n` servers (standalone when 1) on 127.0.0.1 and waits until all serve.
    pub fn start(n: usize) -> Self {
        Self::start_on(n, None)
    }

    /// Starts `n` servers, each in its own network namespace with its own address, so
    /// that [`ZkEnsemble::net`] can partition them; waits until all serve.
    pub fn start_partitionable(n: usize) -> Self {
        Self::start_on(n, Some(Net::new(n)))
    }

    fn start_on(n: usize, net: Option<Net>) -> Self {
        require_binary("java", "apt-get install default-jre-headless");
        assert!(
            std::path::Path::new("/usr/share/java/zookeeper.jar").is_file(),
            "ZooKeeper is not installed: apt-get install zookeeper (./scripts/test does it)"
        );
        let dir = TempDir::new("queuelock-zk");
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let servers: Vec<Server> = (0..n)
            .map(|i| Server {
                id: i + 1,
                client_port: ports[i].0,
                process: None,
            })
            .collect();
        let host = |i: usize| super::netns::addr_or_loopback(net.as_ref(), i);
        for (si, s) in servers.iter().enumerate() {
            let sdir = dir.0.join(format!("s{}", s.id));
            std::fs::create_dir_all(sdir.join("data")).expect("data dir");
            std::fs::write(sdir.join("data/myid"), s.id.to_string()).expect("myid");
            let mut cfg = format!(
                "tickTime=200\ninitLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={}\n\
                 clientPortAddress={}\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=ruok,srvr,stat,mntr\nminSessionTimeout=400\n\
                 maxSessionTimeout=60000\nmaxClientCnxns=0\n",
                sdir.join("data").display(),
                s.client_port,
                host(si)
            );
            if n > 1 {
                for (i, (_, peer, election)) in ports.iter().enumerate() {
                    cfg.push_str(&format!("server.{}={}:{peer}:{election}\n", i + 1, host(i)));
                }
            }
            std::fs::write(sdir.join("zoo.cfg"), cfg).expect("zoo.cfg");
        }
        let mut e = ZkEnsemble { dir, servers, net };
        for i in 0..n {
            e.spawn(i);
        }
        e.wait_serving(Duration::from_secs(60));
        e
    }

    fn spawn(&mut self, i: usize) {
        let sdir = self.dir.0.join(format!("s{}", self.servers[i].id));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(sdir.join("server.log"))
            .expect("log");
        let mut java = match &self.net {
            Some(net) => net.command(i, "java"),
            None => Command::new("java"),
        };
        let child = java
            .args(["-Xmx256m", "-cp", CLASSPATH])
            .arg(format!("-Dzookeeper.log.dir={}", sdir.display()))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(sdir.join("zoo.cfg"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ZooKeeper");
        self.servers[i].process = Some(child);
    }

    /// Server `i`'s address.
    fn host(&self, i: usize) -> String {
        super::netns::addr_or_loopback(self.net.as_ref(), i)
    }

    /// The servers' namespaces, if they were started with their own.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_ref()
    }

    /// `host:port` of every server, comma-separated.
    pub fn hosts(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{}:{}", self.host(i), s.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A queuelock URL for the ensemble with a chroot.
    pub fn url(&self, chroot: &str, query: &str) -> String {
        format!("zk://{}/{chroot}?{query}", self.hosts())
    }

    fn mode(&self, i: usize) -> Option<String> {
        let out = four_letter_at(&self.host(i), self.servers[i].client_port, "srvr")?;
        out.lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(str::to_owned)
    }

    /// Waits until every running server serves clients.
    pub fn wait_serving(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let running: Vec<usize> = (0..self.servers.len())
                .filter(|&i| self.servers[i].process.is_some())
                .collect();
            if running.iter().all(|&i| self.mode(i).is_some()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ZooKeeper not serving in {limit:?}; logs in {}",
                self.dir.0.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every running server that says it leads right now (a partitioned old leader may,
    /// until it gives up).
    pub fn leaders_claimed(&self) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|&i| self.servers[i].process.is_some())
            .filter(|&i| self.mode(i).as_deref() == Some("leader"))
            .collect()
    }

    /// The index of the current leader (waits for an election).
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(i) =
                (0..self.servers.len()).find(|&i| self.mode(i).as_deref() == Some("leader"))
            {
                return i;
            }
            assert!(Instant::now() < deadline, "no ZooKeeper leader");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of server `i` (0 if stopped).
    pub fn pid(&self, i: usize) -> u32 {
        self.servers[i].process.as_ref().map_or(0, Child::id)
    }

    /// kill -9 server `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.servers[i].process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Starts server `i` again on its old data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.servers[i].process.is_none(), "server {i} is running");
        self.spawn(i);
    }
}

impl Drop for ZkEnsemble {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill9(i);
        }
    }
}
