//! A real Redis server on 127.0.0.1 (Debian's `redis-server`), with its append-only file
//! fsynced on every write, that a test can kill -9 and restart on the same data.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use super::{free_port, require_binary, TempDir};

/// One Redis server the fault tests can break.
pub struct RedisServer {
    dir: TempDir,
    port: u16,
    process: Option<Child>,
    /// The key prefix last handed out in a URL (an operator's expiry needs it).
    prefix: StdMutex<String>,
    /// `redis-cli` options for a TLS-only server (empty: plain text).
    cli_tls: Vec<String>,
    /// Extra environment of the server process (a [`super::faketime::FakeClock`]).
    env: Vec<(String, String)>,
}

impl RedisServer {
    /// Starts a server with `appendfsync` = `fsync` (`always` or `everysec`).
    pub fn start(fsync: &str) -> Self {
        let port = free_port();
        Self::start_conf(
            port,
            &format!("port {port}\nappendfsync {fsync}\n"),
            Vec::new(),
        )
    }

    /// Like [`RedisServer::start`], the server under `clock`: its key expiry (`PX`) and
    /// `TIME` follow the clock's steps.
    pub fn start_faked(fsync: &str, clock: &super::faketime::FakeClock) -> Self {
        let port = free_port();
        Self::start_env(
            port,
            &format!("port {port}\nappendfsync {fsync}\n"),
            Vec::new(),
            clock.env_for_jemalloc(),
        )
    }

    /// Starts a server that speaks TLS only (no plain port), with the test PKI's server
    /// certificate, and requires a client certificate signed by the test CA.
    pub fn start_tls(pki: &super::secure::Pki) -> Self {
        let port = free_port();
        let (cert, key, ca) = (
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display(),
        );
        let conf = format!(
            "port 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\n\
             tls-ca-cert-file {ca}\ntls-auth-clients yes\nappendfsync always\n"
        );
        let cli = [
            "--tls".to_owned(),
            "--cacert".to_owned(),
            ca.to_string(),
            "--cert".to_owned(),
            pki.client_cert.display().to_string(),
            "--key".to_owned(),
            pki.client_key.display().to_string(),
        ]
        .to_vec();
        Self::start_conf(port, &conf, cli)
    }

    fn start_conf(port: u16, conf: &str, cli_tls: Vec<String>) -> Self {
        Self::start_env(port, conf, cli_tls, Vec::new())
    }

    fn start_env(port: u16, conf: &str, cli_tls: Vec<String>, env: Vec<(String, String)>) -> Self {
        require_binary("redis-server", "apt-get install redis-server");
        let dir = TempDir::new("queuelock-redis");
        let conf = format!(
            "bind 127.0.0.1\n{conf}dir {}\ndaemonize no\nsave \"\"\nappendonly yes\n\
             maxclients 10000\nlogfile {}/redis.log\n",
            dir.0.display(),
            dir.0.display()
        );
        std::fs::write(dir.0.join("redis.conf"), conf).expect("redis.conf");
        let mut s = RedisServer {
            dir,
            port,
            process: None,
            prefix: StdMutex::new(String::new()),
            cli_tls,
            env,
        };
        s.spawn();
        s.wait_answering(Duration::from_secs(30));
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg(self.dir.0.join("redis.conf"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.process = Some(child);
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against the server; its output, or `None` if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.cli_tls)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn wait_answering(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.cli(&["ping"]).as_deref() != Some("PONG") {
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.dir.0.join("redis.log")).unwrap_or_default();
                let cli = Command::new("redis-cli")
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .args(&self.cli_tls)
                    .arg("ping")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
                panic!("redis-server did not answer (redis-cli: {cli:?}); its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.process.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Finds the session that owns node `id` of queue `q`, deletes its key (the server's
/// view of an expiry) and returns its id; `ARGV` = prefix, queue, node id.
const EXPIRE_OWNER: &str =
    "local rec = redis.call('HGET', ARGV[1] .. ':{' .. ARGV[2] .. '}:n', ARGV[3]) \
     if not rec then return '' end \
     local sid = string.match(rec, '^%d+ (%S+) ') \
     redis.call('DEL', ARGV[1] .. ':s:' .. sid) return sid";

impl super::Cluster for RedisServer {
    fn url(&self, root: &str, query: &str) -> String {
        *self.prefix.lock().expect("prefix") = root.to_owned();
        format!("redis://{}/0?prefix={root}&{query}", self.addr())
    }
    fn worker_url(&self, hosts: &[String], root: &str, query: &str) -> String {
        format!("redis://{}/0?prefix={root}&{query}", hosts.join(","))
    }
    fn leader(&self) -> usize {
        0
    }
    fn kill9(&mut self, _i: usize) {
        if let Some(mut c) = self.process.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
    fn restart(&mut self, _i: usize) {
        if self.process.is_none() {
            self.spawn();
        }
    }
    fn wait_ready(&self) {
        self.wait_answering(Duration::from_secs(60));
    }
    fn ttl_option(&self) -> &'static str {
        "ttl"
    }
    fn scheme(&self) -> &'static str {
        "redis"
    }
    fn client_addrs(&self) -> Vec<String> {
        vec![self.addr()]
    }
    /// An operator ends the holder's session (deletes its key) and kills every client
    /// connection (`CLIENT KILL TYPE normal` and `pubsub`): the holder among them has to
    /// reconnect, re-check and find out.
    fn admin_expire(&self, key: &str) -> Result<String, String> {
        let prefix = self.prefix.lock().expect("prefix").clone();
        let (queue, last) = key
            .rsplit_once('/')
            .ok_or_else(|| format!("not a node key: {key}"))?;
        let id = last
            .split_once('-')
            .map(|(_, id)| id)
            .ok_or_else(|| format!("not a node key: {key}"))?;
        let sid = self
            .cli(&["EVAL", EXPIRE_OWNER, "0", &prefix, queue, id])
            .ok_or("redis-cli EVAL failed")?;
        if sid.is_empty() {
            return Err(format!("node {key} is gone already"));
        }
        for kind in ["normal", "pubsub"] {
            self.cli(&["CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes"]);
        }
        Ok(sid)
    }
}
