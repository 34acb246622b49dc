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

/// A child's answer to `probe`, with the parent's clocks around it.
struct Probe {
    /// The child's wall clock, ms since the epoch.
    wall: i64,
    /// The child's monotonic clock, ms since it started.
    mono: u128,
    /// Whether the child's hold is lost.
    lost: bool,
    /// Whether the child's in-process contender was granted.
    granted: bool,
    sent: Instant,
    received: Instant,
    wall_sent: i64,
    wall_received: i64,
}

impl Holder {
    /// Starts a child (test `test` of this binary) holding lock `name` through `url`,
    /// under `clock` if given, and
    /// waits for its grant.
    async fn start(test: &str, url: &str, name: &str, clock: Option<&FakeClock>) -> Holder {
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
        let held = h.expect("held", Duration::from_secs(30)).await;
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
    async fn expect(&mut self, what: &str, within: Duration) -> Vec<String> {
        let (_, line) = self.next(within).await.unwrap_or_else(|| {
            panic!("the holder said nothing for {within:?} or exited (waiting for {what:?})")
        });
        let f: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(f[0], what, "the holder said {line:?}");
        f
    }

    /// The next line within `within`, polled so that the runtime's workers stay free
    /// (the scenarios run side by side on one runtime).
    async fn next(&mut self, within: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + within;
        loop {
            match self.lines.try_recv() {
                Ok(line) => return Some(line),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) if Instant::now() >= deadline => return None,
                Err(mpsc::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
            }
        }
    }

    /// `probe`: the child's clocks, read between `sent` and `received`.
    async fn probe(&mut self) -> Probe {
        let (sent, wall_sent) = (Instant::now(), wall_ms());
        self.send("probe");
        let f = self.expect("probe", Duration::from_secs(10)).await;
        Probe {
            wall: f[1].parse().expect("wall"),
            mono: f[2].parse().expect("mono"),
            lost: f[3] == "true",
            granted: f[4] == "true",
            sent,
            received: Instant::now(),
            wall_sent,
            wall_received: wall_ms(),
        }
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
    let mut h = Holder::start(test, url, name, Some(&clock)).await;
    let in_process = url == "memory://";
    // The contender on the real clock (memory: the child's own, under the fake one).
    let contender = if in_process {
        None
    } else {
        Some(contend(url, name).await)
    };
    let hold_start = Instant::now();
    let mut last = h.probe().await;
    for off in STEPS {
        clock.set_offset(off);
        tokio::time::sleep(TTL * 4 / 5).await;
        let p = h.probe().await;
        // The child read its clocks between `sent` and `received` (ms rounding aside).
        let shifted = p.wall - off * 1000;
        assert!(
            (p.wall_sent - 5..=p.wall_received + 5).contains(&shifted),
            "the child's wall clock reads {} ms, not real time {}..{} ms + {off} s: faketime not applied",
            p.wall,
            p.wall_sent,
            p.wall_received
        );
        let dm = p.mono as i128 - last.mono as i128;
        let lo = p.sent.duration_since(last.received).as_millis() as i128 - 5;
        let hi = p.received.duration_since(last.sent).as_millis() as i128 + 5;
        assert!(
            (lo..=hi).contains(&dm),
            "the child's monotonic clock moved {dm} ms while {lo}..{hi} ms passed"
        );
        let (lost, granted) = (p.lost, p.granted);
        last = p;
        assert!(
            !lost,
            "the holder lost its lock after a wall-clock step of {off} s"
        );
        assert!(
            !granted,
            "the in-process contender was granted during the hold"
        );
        if let Some(task) = &contender {
            assert!(
                !task.is_finished(),
                "the contender was granted during the hold (step {off} s)"
            );
        }
    }
    assert!(hold_start.elapsed() >= TTL * 3, "held for less than 3 TTLs");
    assert!(
        h.next(Duration::ZERO).await.is_none(),
        "the holder said more"
    );
    h.send("release");
    let released = Instant::now();
    assert_eq!(
        h.expect("released", Duration::from_secs(10)).await[1],
        "true",
        "release failed: the lock had been lost"
    );
    match contender {
        None => {
            let f = h.expect("contender", TTL * 2).await;
            let t: u64 = f[1].parse().expect("token");
            assert!(t > h.token, "fencing token went from {} to {t}", h.token);
        }
        Some(task) => {
            let (at, t) = tokio::time::timeout(TTL * 2, task)
                .await
                .expect("the contender was not granted promptly after the release")
                .expect("contender panicked");
            assert!(
                at.duration_since(released) < TTL,
                "granted {:?} after the release: by expiry, not the release",
                at.duration_since(released)
            );
            assert!(t > h.token, "fencing token went from {} to {t}", h.token);
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

// ---------------------------------------------------------------------------------------
// Server wall clock: PostgreSQL and Redis.

/// What happened after the server's clock was stepped forward past the TTL.
#[derive(Debug)]
struct ForwardStep {
    /// When the holder's `lost()` resolved, after the step.
    holder_lost: Option<Duration>,
    /// When the contender's `lock()` returned, after the step, and with what.
    contender: Option<(Duration, Result<u64, String>)>,
    /// The old holder's fenced write afterwards.
    fenced_write: String,
    /// Whether the contender's own hold was lost within a TTL of its grant.
    contender_lost: Option<bool>,
}

async fn server_clock_forward(test: &str, url: String, clock: &FakeClock) -> ForwardStep {
    let name = unique("clock-fwd");
    let mut h = Holder::start(test, &url, &name, None).await;
    let c = Client::connect(&url).await.expect("connect");
    let (n, c2) = (name.clone(), c.clone());
    let contender = tokio::spawn(async move {
        let r = c2.mutex(&n).expect("name").lock().await;
        let at = Instant::now();
        (at, r)
    });
    support::await_queue_len(&c, &name, 2).await;
    tokio::time::sleep(TTL / 2).await;
    let step = Instant::now();
    clock.set_offset(3600);
    let deadline = step + TTL * 4;
    let mut holder_lost = None;
    let mut grant = None;
    let mut contender_guard = None;
    let mut contender = Some(contender);
    while Instant::now() < deadline && (holder_lost.is_none() || contender.is_some()) {
        if let Some((at, line)) = h.next(Duration::from_millis(5)).await {
            assert!(line.starts_with("lost"), "the holder said {line:?}");
            holder_lost = Some(at.duration_since(step));
        }
        if contender.as_ref().is_some_and(|t| t.is_finished()) {
            let (at, r) = contender
                .take()
                .expect("task")
                .await
                .expect("contender panicked");
            let r = r.map(|g| {
                let t = g.fencing_token();
                contender_guard = Some(g);
                t
            });
            grant = Some((at.duration_since(step), r.map_err(|e| e.to_string())));
        }
    }
    h.send("write");
    let write = h.expect("write", Duration::from_secs(10)).await.join(" ");
    let mut contender_lost = None;
    if let Some(g) = contender_guard {
        let lost = tokio::time::timeout(TTL, g.lost()).await.is_ok();
        contender_lost = Some(lost);
        let _ = g.release().await;
    }
    let out = ForwardStep {
        holder_lost,
        contender: grant,
        fenced_write: write,
        contender_lost,
    };
    eprintln!(
        "{test}: {out:?} (holder token {}; the contender's own hold lost within a TTL: {:?})",
        h.token, out.contender_lost
    );
    // Every session ended at the step: the holder learns at its next keep-alive (one
    // interval, TTL/3).
    let lost = out
        .holder_lost
        .expect("the holder never learned its session had ended");
    assert!(
        lost < KEEPALIVE + SLACK,
        "the holder learned {lost:?} after the step"
    );
    let (granted, token) = match &out.contender {
        Some((at, Ok(t))) => (*at, *t),
        other => panic!("the contender was not granted after the step: {other:?}"),
    };
    assert!(
        granted < TTL,
        "the contender was granted {granted:?} after the step"
    );
    assert!(
        token > h.token,
        "fencing token went from {} to {token}",
        h.token
    );
    // The contender may be granted before the old holder learns: never by more than one
    // keep-alive interval.
    if granted < lost {
        assert!(
            lost - granted < KEEPALIVE,
            "overlap of {:?}",
            lost - granted
        );
    }
    // And the old holder's guarded writes are refused from then on.
    assert!(
        out.fenced_write.starts_with("write refused"),
        "the old holder's fenced write after the step: {}",
        out.fenced_write
    );
    out
}

/// The PostgreSQL and Redis backends' keep-alive interval (TTL/3).
const KEEPALIVE: Duration = Duration::from_millis(667);
/// Scheduling and round-trip allowance on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(500);

/// What happened while the server's clock was stepped back.
#[derive(Debug)]
struct BackwardStep {
    /// The contender's grant after the live holder released (stepped back by an hour).
    grant_after_release: Duration,
    /// The contender's grant after a holder was killed and the clock stepped back by
    /// [`BACK`] at once.
    grant_after_crash: Duration,
}

/// The extra step back at the crash.
const BACK: Duration = Duration::from_secs(3);

/// A contender for `name` on `url`; resolves to its grant's instant and token.
async fn contend(url: &str, name: &str) -> tokio::task::JoinHandle<(Instant, u64)> {
    let c = Client::connect(url).await.expect("connect");
    let (n, c2) = (name.to_owned(), c.clone());
    let task = tokio::spawn(async move {
        let g = c2
            .mutex(&n)
            .expect("name")
            .lock()
            .await
            .expect("contender lock");
        let at = Instant::now();
        let t = g.fencing_token();
        g.release().await.expect("contender release");
        (at, t)
    });
    support::await_queue_len(&c, name, 2).await;
    task
}

async fn server_clock_backward(test: &str, url: String, clock: &FakeClock) -> BackwardStep {
    // A live holder: its keep-alives rewrite its expiry on the new clock.
    let name = unique("clock-back");
    let mut h = Holder::start(test, &url, &name, None).await;
    let contender = contend(&url, &name).await;
    clock.set_offset(-3600);
    for _ in 0..2 {
        tokio::time::sleep(TTL).await;
        let lost = h.probe().await.lost;
        assert!(
            !lost,
            "the holder lost its lock after the server's clock went back"
        );
        assert!(
            !contender.is_finished(),
            "the contender was granted during the hold"
        );
    }
    h.send("release");
    let released = Instant::now();
    assert_eq!(
        h.expect("released", Duration::from_secs(10)).await[1],
        "true"
    );
    let (at, token) = tokio::time::timeout(TTL * 2, contender)
        .await
        .expect("the contender was not granted after the release")
        .expect("contender panicked");
    assert!(
        token > h.token,
        "fencing token went from {} to {token}",
        h.token
    );
    let grant_after_release = at.duration_since(released);
    h.finish();
    // A holder killed, and the server's clock stepped back by BACK at that moment: its
    // session row / key was written on the clock before the step.
    let name = unique("clock-crash");
    let h = Holder::start(test, &url, &name, None).await;
    let contender = contend(&url, &name).await;
    tokio::time::sleep(KEEPALIVE).await;
    let crashed = Instant::now();
    h.crash();
    clock.set_offset(-3600 - BACK.as_secs() as i64);
    let (at, _) = tokio::time::timeout(BACK + TTL * 4, contender)
        .await
        .expect("the crashed holder's lock never passed on")
        .expect("contender panicked");
    let out = BackwardStep {
        grant_after_release,
        grant_after_crash: at.duration_since(crashed),
    };
    eprintln!("{test}: {out:?}");
    assert!(
        out.grant_after_release < TTL,
        "the contender was granted {:?} after the release",
        out.grant_after_release
    );
    // The dead holder's session outlives it by the step back: until the server's clock
    // reaches the expiry written before the step (a TTL after its last keep-alive).
    let crash = out.grant_after_crash;
    assert!(
        crash >= BACK + TTL - KEEPALIVE && crash < BACK + TTL + SLACK * 2,
        "the crashed holder's lock passed on after {crash:?} (step back {BACK:?}, TTL {TTL:?})"
    );
    out
}

/// Runs `scenarios` at once (they mostly wait, so the test takes as long as the longest
/// of them), then fails naming every one that failed.
async fn all(scenarios: Vec<(&'static str, tokio::task::JoinHandle<()>)>) {
    let mut failed = Vec::new();
    for (what, task) in scenarios {
        match task.await {
            Ok(()) => eprintln!("{what}: ok"),
            Err(e) => {
                eprintln!("{what}: FAILED");
                failed.push(what);
                let _ = e;
            }
        }
    }
    assert!(
        failed.is_empty(),
        "failed: {failed:?} (their panics are printed above)"
    );
}

clock_test!(
    /// Client wall clock on memory, etcd, ZooKeeper, PostgreSQL and Redis: see the
    /// module's documentation.
    client_wall_clock_steps_keep_the_lock_on_every_backend,
    |test| async move {
        let urls = [
            ("memory", "memory://".to_owned()),
            ("etcd", format!("etcd://{}/clock?ttl=2s", env("QUEUELOCK_TEST_ETCD"))),
            ("zookeeper", format!("zk://{}/clock?session_timeout=2s", env("QUEUELOCK_TEST_ZK"))),
            ("postgres", format!("{}?schema=clock&ttl=2s", env("QUEUELOCK_TEST_POSTGRES"))),
            ("redis", format!("redis://{}/0?prefix=clock&ttl=2s", env("QUEUELOCK_TEST_REDIS"))),
        ];
        let tasks = urls
            .into_iter()
            .map(|(what, url)| (what, tokio::spawn(client_clock_steps(test, url))))
            .collect();
        all(tasks).await;
    }
);

clock_test!(
    /// Server wall clock on PostgreSQL and Redis, stepped forward past the TTL and back:
    /// see the module's documentation and the README's "Clock jumps".
    server_clock_steps_on_postgres_and_redis,
    |test| async move {
        // Started one after another (free ports are taken as each server listens), off
        // the runtime's workers (initdb blocks).
        let scenarios = [
            ("postgres forward", true),
            ("postgres backward", false),
            ("redis forward", true),
            ("redis backward", false),
        ];
        let servers = tokio::task::spawn_blocking(move || {
            scenarios.map(|(what, forward)| {
                let clock = FakeClock::new();
                let (url, server): (String, Box<dyn Send>) = if what.starts_with("postgres") {
                    let pg = support::postgres::PgServer::start_faked(&clock);
                    (pg.url("clock", "ttl=2s"), Box::new(pg))
                } else {
                    let redis = support::redis::RedisServer::start_faked("always", &clock);
                    let url = format!("redis://{}/0?prefix=clock&ttl=2s", redis.addr());
                    (url, Box::new(redis))
                };
                (what, forward, clock, url, server)
            })
        })
        .await
        .expect("start the servers");
        let tasks = servers
            .into_iter()
            .map(|(what, forward, clock, url, server)| {
                let task = tokio::spawn(async move {
                    let _server = server;
                    if forward {
                        server_clock_forward(test, url, &clock).await;
                    } else {
                        server_clock_backward(test, url, &clock).await;
                    }
                });
                (what, task)
            })
            .collect();
        all(tasks)
        .await;
    }
);
