//! Clock jumps (issue 20, item 3), on real servers (`scripts/test` / `scripts/with-servers`
//! start them and export `QUEUELOCK_TEST_ETCD`, `_ZK`, `_POSTGRES`, `_REDIS`).
//!
//! * **Client wall clock** (`*_client_wall_clock_steps_keep_the_lock`, every backend): a
//!   holder process whose `CLOCK_REALTIME` is stepped by hours, forward and back, while it
//!   holds a lock for more than 3 TTLs (libfaketime, [`support::faketime::FakeClock`]).
//!   Its session survives, a contender is not granted until it releases and then at once,
//!   and the fencing token grows: leases run on the monotonic clock only. The child
//!   reports its `SystemTime` and `Instant` at each step, so a faketime that failed to
//!   load fails the test.
//! * **Server wall clock** (PostgreSQL and Redis, whose session expiry is server-time
//!   based): a dedicated server under a `FakeClock`, its clock stepped forward past the
//!   TTL and back, with the characterised behaviour asserted (README, "Clock jumps").
//!
//! The child process is this test binary re-run with `QUEUELOCK_CLOCK_ROLE` set: it takes
//! the lock and then answers commands on stdin (`probe`, `write`, `release`) with lines
//! on stdout prefixed `clock: `.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use queuelock::{Client, ClientOptions, MemoryBackend};
use support::faketime::FakeClock;

const ROLE: &str = "QUEUELOCK_CLOCK_ROLE";
const URL: &str = "QUEUELOCK_CLOCK_URL";
const NAME: &str = "QUEUELOCK_CLOCK_NAME";
const TTL: Duration = Duration::from_secs(2);

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run ./scripts/test or scripts/with-servers, which start the servers")
    })
}

fn unique(prefix: &str) -> String {
    format!("{prefix}/{}", uuid::Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------------------
// The child: holds one lock and answers commands.

/// Runs the child's part when this process is one; `true` if it was.
fn child_role() -> bool {
    if std::env::var_os(ROLE).is_none() {
        return false;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(child_main());
    true
}

fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "clock: {line}").expect("stdout");
    out.flush().expect("stdout");
}

async fn child_main() {
    use tokio::io::AsyncBufReadExt;
    let url = env(URL);
    let name = env(NAME);
    let started = Instant::now();
    // memory://: holder and contender share one in-process store, both under the fake
    // clock; otherwise the contender is the parent, on the real clock.
    let (holder, contender) = if url == "memory://" {
        let store = MemoryBackend::new();
        let open = || {
            Client::new(
                Arc::new(store.clone()),
                ClientOptions::default().with_ttl(TTL),
            )
        };
        (open(), Some(open()))
    } else {
        (Client::connect(&url).await.expect("connect"), None)
    };
    let g = holder
        .mutex(&name)
        .expect("name")
        .lock()
        .await
        .expect("lock");
    let token = g.fencing_token();
    let granted = Arc::new(std::sync::Mutex::new(None::<(u64, Instant)>));
    if let Some(c) = contender {
        let (granted, n) = (granted.clone(), name.clone());
        tokio::spawn(async move {
            let g = c
                .mutex(&n)
                .expect("name")
                .lock()
                .await
                .expect("contender lock");
            *granted.lock().expect("granted") = Some((g.fencing_token(), Instant::now()));
            std::future::pending::<()>().await;
        });
        support::await_queue_len(&holder, &name, 2).await;
    }
    say(format_args!("held {token} {}", wall_ms()));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    {
        let lost = g.lost();
        tokio::pin!(lost);
        let mut lost_seen = false;
        loop {
            tokio::select! {
                r = &mut lost, if !lost_seen => {
                    lost_seen = true;
                    say(format_args!("lost {r:?}"));
                }
                line = lines.next_line() => {
                    let Some(cmd) = line.expect("stdin") else { return };
                    match cmd.as_str() {
                        "probe" => {
                            let contender = granted.lock().expect("granted").is_some();
                            say(format_args!(
                                "probe {} {} {} {}",
                                wall_ms(),
                                started.elapsed().as_millis(),
                                g.is_lost().is_some() || lost_seen,
                                contender
                            ));
                        }
                        "write" => {
                            let r = g.fenced_write([("clock-fenced", Some(b"old holder".to_vec()))]).await;
                            say(format_args!("write {}", match r {
                                Ok(()) => "ok".to_owned(),
                                Err(e) => format!("refused {e}"),
                            }));
                        }
                        "release" => break,
                        other => panic!("unknown command {other:?}"),
                    }
                }
            }
        }
    }
    let r = g.release().await;
    say(format_args!("released {}", r.is_ok()));
    if r.is_ok() {
        let deadline = Instant::now() + TTL;
        loop {
            if let Some((t, _)) = *granted.lock().expect("granted") {
                say(format_args!("contender {t}"));
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Wait for the parent to close stdin, so that it reads every line first.
    while let Ok(Some(_)) = lines.next_line().await {}
}

// ---------------------------------------------------------------------------------------
// The parent's handle on a child.

struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Each `clock: ` line with the (parent's) instant it arrived.
    lines: mpsc::Receiver<(Instant, String)>,
    /// Fencing token of the child's grant.
    token: u64,
}

impl Holder {
    /// Starts a child (test `test` of this binary) holding lock `name` through `url`,
    /// under `clock` if given, and
    /// waits for its grant.
    fn start(test: &str, url: &str, name: &str, clock: Option<&FakeClock>) -> Holder {
        let mut cmd = Command::new(std::env::current_exe().expect("exe"));
        // Only this test, in the child's role.
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, "holder")
            .env(URL, url)
            .env(NAME, name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(c) = clock {
            c.apply(&mut cmd);
        }
        let mut child = cmd.spawn().expect("start the holder process");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                // (libtest may print its "test NAME ... " before the first line.)
                if let Some(at) = line.find("clock: ") {
                    if tx
                        .send((Instant::now(), line[at + 7..].to_owned()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        let mut h = Holder {
            child,
            stdin,
            lines: rx,
            token: 0,
        };
        let held = h.expect("held", Duration::from_secs(30));
        h.token = held[1].parse().expect("token");
        let child_wall: i64 = held[2].parse().expect("wall");
        let offset = child_wall - wall_ms();
        assert!(
            offset.abs() < 2_000,
            "child's clock starts off by {offset} ms"
        );
        h
    }

    fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").expect("write to the holder");
        stdin.flush().expect("flush");
    }

    /// The next line, which must start with `what` (split on whitespace).
    fn expect(&mut self, what: &str, within: Duration) -> Vec<String> {
        let (_, line) = self.next(within).unwrap_or_else(|| {
            panic!("the holder said nothing for {within:?} or exited (waiting for {what:?})")
        });
        let f: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(f[0], what, "the holder said {line:?}");
        f
    }

    fn next(&mut self, within: Duration) -> Option<(Instant, String)> {
        self.lines.recv_timeout(within).ok()
    }

    /// `probe`: (child's wall clock ms, child's monotonic ms, lost, contender granted).
    fn probe(&mut self) -> (i64, u128, bool, bool) {
        self.send("probe");
        let f = self.expect("probe", Duration::from_secs(10));
        (
            f[1].parse().expect("wall"),
            f[2].parse().expect("mono"),
            f[3] == "true",
            f[4] == "true",
        )
    }

    /// Closes stdin and waits for a clean exit.
    fn finish(mut self) {
        self.stdin = None;
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "the holder process failed: {status}");
    }

    /// kill -9.
    fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Client wall clock: no effect.

/// The steps, seconds from real time: +2 h, -3 h, +1 day, back.
const STEPS: [i64; 4] = [2 * 3600, -3 * 3600, 86_400, 0];

async fn client_clock_steps(test: &str, url: String) {
    let (url, name) = (url.as_str(), unique("clock"));
    let name = name.as_str();
    let clock = FakeClock::new();
    let mut h = Holder::start(test, url, name, Some(&clock));
    let in_process = url == "memory://";
    // The contender on the real clock (memory: the child's own, under the fake one).
    let contender = if in_process {
        None
    } else {
        let c = Client::connect(url).await.expect("connect");
        let n = name.to_owned();
        let c2 = c.clone();
        let task = tokio::spawn(async move {
            let g = c2
                .mutex(&n)
                .expect("name")
                .lock()
                .await
                .expect("contender lock");
            (g.fencing_token(), Instant::now(), g)
        });
        support::await_queue_len(&c, name, 2).await;
        Some((c, task))
    };
    let hold_start = Instant::now();
    let (_, mut last_mono, _, _) = h.probe();
    let mut last_real = Instant::now();
    for off in STEPS {
        clock.set_offset(off);
        tokio::time::sleep(TTL * 4 / 5).await;
        let (wall, mono, lost, granted) = h.probe();
        let real = Instant::now();
        let seen = wall - wall_ms();
        assert!(
            (seen - off * 1000).abs() < 2_000,
            "the child's wall clock is off by {seen} ms, not {off} s: faketime not applied"
        );
        let (dm, dr) = (mono - last_mono, real.duration_since(last_real).as_millis());
        assert!(
            dm.abs_diff(dr) < 500,
            "the child's monotonic clock moved {dm} ms in {dr} ms of real time"
        );
        (last_mono, last_real) = (mono, real);
        assert!(
            !lost,
            "the holder lost its lock after a wall-clock step of {off} s"
        );
        assert!(
            !granted,
            "the in-process contender was granted during the hold"
        );
        if let Some((_, task)) = &contender {
            assert!(
                !task.is_finished(),
                "the contender was granted during the hold (step {off} s)"
            );
        }
    }
    assert!(hold_start.elapsed() >= TTL * 3, "held for less than 3 TTLs");
    assert!(h.next(Duration::ZERO).is_none(), "the holder said more");
    h.send("release");
    let released = Instant::now();
    assert_eq!(
        h.expect("released", Duration::from_secs(10))[1],
        "true",
        "release failed: the lock had been lost"
    );
    match contender {
        None => {
            let f = h.expect("contender", TTL * 2);
            let t: u64 = f[1].parse().expect("token");
            assert!(t > h.token, "fencing token went from {} to {t}", h.token);
        }
        Some((_, task)) => {
            let (t, at, g) = tokio::time::timeout(TTL * 2, task)
                .await
                .expect("the contender was not granted promptly after the release")
                .expect("contender panicked");
            assert!(
                at.duration_since(released) < TTL,
                "granted {:?} after the release: by expiry, not the release",
                at.duration_since(released)
            );
            assert!(t > h.token, "fencing token went from {} to {t}", h.token);
            g.release().await.expect("release");
        }
    }
    h.finish();
}

/// A test run in the parent's role (the child's when `QUEUELOCK_CLOCK_ROLE` is set): a
/// plain `#[test]`, since the child builds its own runtime.
macro_rules! clock_test {
    ($(#[$doc:meta])* $name:ident, |$test:ident| $body:expr) => {
        $(#[$doc])*
        #[test]
        fn $name() {
            if child_role() {
                return;
            }
            let $test = stringify!($name);
            runtime().block_on($body);
        }
    };
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

clock_test!(memory_client_wall_clock_steps_keep_the_lock, |test| {
    client_clock_steps(test, "memory://".to_owned())
});

clock_test!(etcd_client_wall_clock_steps_keep_the_lock, |test| {
    let url = format!("etcd://{}/clock?ttl=2s", env("QUEUELOCK_TEST_ETCD"));
    client_clock_steps(test, url)
});

clock_test!(zookeeper_client_wall_clock_steps_keep_the_lock, |test| {
    let url = format!("zk://{}/clock?session_timeout=2s", env("QUEUELOCK_TEST_ZK"));
    client_clock_steps(test, url)
});

clock_test!(postgres_client_wall_clock_steps_keep_the_lock, |test| {
    let url = format!("{}?schema=clock&ttl=2s", env("QUEUELOCK_TEST_POSTGRES"));
    client_clock_steps(test, url)
});

clock_test!(redis_client_wall_clock_steps_keep_the_lock, |test| {
    let url = format!(
        "redis://{}/0?prefix=clock&ttl=2s",
        env("QUEUELOCK_TEST_REDIS")
    );
    client_clock_steps(test, url)
});
