//! A real PostgreSQL server on 127.0.0.1 that a test can kill -9 and restart: Debian's
//! binaries, a fresh cluster (initdb) in a temporary directory, fsync on. As root, the
//! server runs as the `postgres` system user (initdb and postgres refuse root).

use std::process::{Child, Command, Stdio};
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use super::{free_port, TempDir};

pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// One PostgreSQL server.
pub struct PgServer {
    dir: TempDir,
    port: u16,
    process: Option<Child>,
    /// Extra `-c name=value` settings.
    settings: Vec<String>,
    /// The schema of the last URL handed out (for the operator's faults).
    schema: StdMutex<String>,
    /// Extra environment of the server process (a [`super::faketime::FakeClock`]).
    env: Vec<(String, String)>,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `cmd` run as the cluster's owner: itself, or `postgres` when we are root (`setpriv`
/// execs, so the child's pid is the server's).
fn as_owner(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
            program,
        ]);
        c
    } else {
        Command::new(program)
    }
}

impl PgServer {
    /// initdb in a fresh temporary directory (trust on 127.0.0.1), start, wait until it
    /// accepts connections.
    pub fn start() -> Self {
        Self::start_with(&[], None, |_| {})
    }

    /// Like [`PgServer::start`], the server (and every backend it forks) under `clock`:
    /// its `clock_timestamp()` follows the clock's steps.
    pub fn start_faked(clock: &super::faketime::FakeClock) -> Self {
        Self::start_env(&[], None, |_| {}, clock.env())
    }

    /// Like [`PgServer::start`] with extra settings (`name=value`), another pg_hba.conf,
    /// and a hook that may place files in the data directory before the first start.
    pub fn start_with(
        settings: &[&str],
        hba: Option<&str>,
        prepare: impl FnOnce(&std::path::Path),
    ) -> Self {
        Self::start_env(settings, hba, prepare, Vec::new())
    }

    fn start_env(
        settings: &[&str],
        hba: Option<&str>,
        prepare: impl FnOnce(&std::path::Path),
        env: Vec<(String, String)>,
    ) -> Self {
        let initdb = format!("{BIN}/initdb");
        assert!(
            std::path::Path::new(&initdb).is_file(),
            "PostgreSQL is not installed: apt-get install postgresql (./scripts/test does it)"
        );
        let dir = TempDir::new("queuelock-pg");
        if is_root() {
            let st = Command::new("chown")
                .arg("postgres:")
                .arg(&dir.0)
                .status()
                .expect("chown");
            assert!(st.success(), "chown the data dir to postgres");
        }
        let out = as_owner(&initdb)
            .arg("-D")
            .arg(dir.0.join("data"))
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data = dir.0.join("data");
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba.conf");
        }
        prepare(&data);
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&data)
                .status()
                .expect("chown");
            assert!(st.success(), "chown the data dir to postgres");
        }
        let mut s = PgServer {
            dir,
            port: free_port(),
            process: None,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            schema: StdMutex::new(String::new()),
            env,
        };
        s.spawn();
        s.wait_ready();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("server.log"))
            .expect("log");
        let postgres = format!("{BIN}/postgres");
        // A preload (FakeClock) goes in through `env` run as the owner, not into setpriv:
        // libfaketime's shared state is then created by, and open to, the server's user.
        let mut cmd = if self.env.is_empty() {
            as_owner(&postgres)
        } else {
            let mut c = as_owner("env");
            c.args(self.env.iter().map(|(k, v)| format!("{k}={v}")))
                .arg(&postgres);
            c
        };
        let child = cmd
            .arg("-D")
            .arg(self.dir.0.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
            .args(["-c", "max_connections=300"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.0.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.process = Some(child);
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A queuelock URL for the server with queuelock's tables in schema `root` (`-`
    /// becomes `_`).
    pub fn url(&self, root: &str, query: &str) -> String {
        let schema = root.replace('-', "_");
        *self.schema.lock().expect("schema") = schema.clone();
        format!(
            "postgres://postgres@{}/postgres?schema={schema}&{query}",
            self.addr()
        )
    }

    /// The schema of the last URL handed out.
    pub fn schema(&self) -> String {
        self.schema.lock().expect("schema").clone()
    }

    /// Runs SQL through psql as the superuser; its output, or why it failed.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-qAt",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-c", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Waits until the server accepts connections (after a crash, recovery first).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL not ready in 60 s; log in {}",
                self.dir.0.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kill -9 the server (postmaster; its backends exit when they notice).
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Starts the server again on its data (crash recovery). Retries while the killed
    /// server's backends still hold its shared memory.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "server is running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.spawn();
            std::thread::sleep(Duration::from_millis(300));
            let exited = self
                .process
                .as_mut()
                .and_then(|p| p.try_wait().ok().flatten())
                .is_some();
            if !exited {
                return;
            }
            self.process = None;
            assert!(Instant::now() < deadline, "PostgreSQL would not restart");
        }
    }

    /// What an operator does to a holder: ends its session (deletes the row that owns
    /// node `key`) and terminates its client's connections (`pg_terminate_backend` of
    /// every backend with the application_name its label names). Returns the session id
    /// in hex.
    pub fn revoke_session_of(&self, key: &str) -> Result<String, String> {
        let s = self.schema();
        if key.contains('\'') {
            return Err(format!("unexpected key {key:?}"));
        }
        let sql = format!(
            "WITH victim AS (SELECT session_id, \
               convert_from(payload, 'UTF8')::json->>'label' AS label \
               FROM {s}.nodes WHERE key = '{key}'), \
             gone AS (DELETE FROM {s}.sessions WHERE id IN (SELECT session_id FROM victim) \
               RETURNING id), \
             killed AS (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
               WHERE application_name IN (SELECT label FROM victim)) \
             SELECT to_hex(id), (SELECT count(*) FROM killed) FROM gone"
        );
        let out = self.psql(&sql)?;
        let id = out.split('|').next().unwrap_or_default().to_owned();
        if id.is_empty() {
            Err(format!("no session owns {key} any more"))
        } else {
            Ok(id)
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill9();
        // Its backends exit once they notice the postmaster is gone.
        std::thread::sleep(Duration::from_millis(200));
    }
}
