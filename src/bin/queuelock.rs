//! `queuelock`: run a command under a distributed lock, like `flock(1)` across machines.
//!
//! ```text
//! queuelock run  [--url U] [--timeout D] [--permits N] [--metrics-addr A]
//!                [--revocable [--revoke-signal SIG]] NAME -- CMD [ARGS...]
//! queuelock revoke [--url U] NAME
//! queuelock status [--url U] [--kind auto|mutex|rwlock|semaphore|election] [--json]
//!                  [--watch [--interval D]] NAME
//! queuelock elect [--url U] [--metrics-addr A] NAME VALUE -- CMD [ARGS...]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use queuelock::metadata::QueueEntry;
use queuelock::{Client, Config, Error, Guard, LockName, LossReason, Revocation};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};

/// Exit status when the lock could not be taken before `--timeout` (as `timeout(1)`).
const EXIT_TIMEOUT: u8 = 124;
/// Exit status when queuelock itself failed (configuration, connection, bad name).
const EXIT_FAILURE: u8 = 125;
/// Exit status when the command could not be started (as shells do).
const EXIT_CANNOT_RUN: u8 = 126;
/// Exit status when the command was not found (as shells do).
const EXIT_NOT_FOUND: u8 = 127;
/// Exit status when the lock was lost while the command ran (EX_TEMPFAIL).
const EXIT_LOST: u8 = 75;
/// `revoke`: nobody holds the lock.
const EXIT_NOT_HELD: u8 = 3;
/// `revoke`: the holder does not watch for revocation requests.
const EXIT_NOT_REVOCABLE: u8 = 4;

const AFTER_HELP: &str = "\
EXIT STATUS (run, elect):
  the command's own status   it ran to the end (128+N if killed by signal N)
  75                         the lock was lost while the command ran; it was sent
                             SIGTERM, then SIGKILL after --grace
  124                        --timeout passed before the lock was ours
  125                        queuelock failed: bad URL or option, connection, name
  126 / 127                  the command could not be run / was not found

EXIT STATUS (revoke):
  0                          the holder was asked to let go (it decides when)
  3                          nobody holds the lock
  4                          the holder does not watch for revocation requests
                             (not started with --revocable / Mutex::revocable)
  125                        queuelock failed

With run --revocable, a revocation request (queuelock revoke NAME, Mutex::request_revoke,
Curator's Revoker.attemptRevoke on ZooKeeper) is forwarded to the command as a signal
(--revoke-signal, default SIGTERM); the lock is held until the command exits.

The store comes from --url or QUEUELOCK_URL (etcd://h:2379/prefix, zk://h:2181/chroot,
memory://). The command gets QUEUELOCK_NAME, QUEUELOCK_KEY and QUEUELOCK_FENCING_TOKEN.";

#[derive(Parser, Debug)]
#[command(name = "queuelock", version, about = "Fair distributed locks on etcd or ZooKeeper", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Debug)]
struct Target {
    /// Store URL (default: $QUEUELOCK_URL, else the in-process store).
    #[arg(long, env = "QUEUELOCK_URL", hide_env_values = true)]
    url: Option<String>,
    /// Label stored with our queue node (shown by `status`).
    #[arg(long)]
    label: Option<String>,
}

#[derive(clap::Args, Debug)]
struct Metrics {
    /// Serve Prometheus metrics (text format, any path) on this address while waiting
    /// and while the command runs, e.g. 127.0.0.1:9464.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Wait for the lock (or one of N permits), run CMD while holding it, release.
    Run {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        metrics: Metrics,
        /// Give up waiting after this long (e.g. 30s, 5m); exit 124.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Use a semaphore with N permits instead of a mutex.
        #[arg(long)]
        permits: Option<u32>,
        /// After a lost lock, how long CMD gets between SIGTERM and SIGKILL.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Hold the lock revocably: a revocation request (`queuelock revoke NAME`) is
        /// forwarded to CMD as --revoke-signal; the lock is held until CMD exits.
        #[arg(long, conflicts_with = "permits")]
        revocable: bool,
        /// The signal a revocation request sends CMD (TERM, SIGINT, HUP, USR1, 15, ...).
        #[arg(long, requires = "revocable", default_value = "TERM", value_parser = parse_signal)]
        revoke_signal: Signal,
        /// Lock name (`/`-separated segments of A-Z a-z 0-9 . _ -).
        name: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show who holds a lock and who waits, and for how long (any recipe's name).
    Status {
        #[command(flatten)]
        target: Target,
        /// Which recipe's layout to read (auto: find out from what is stored).
        #[arg(long, value_enum, default_value = "auto")]
        kind: Kind,
        /// Permit count, with --kind semaphore (default: the stored count).
        #[arg(long)]
        permits: Option<u32>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Redraw every --interval until interrupted.
        #[arg(long)]
        watch: bool,
        /// How often --watch redraws.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Lock name.
        name: String,
    },
    /// Ask the holder of a lock to let go (cooperative revocation); the holder decides.
    Revoke {
        #[command(flatten)]
        target: Target,
        /// Lock name.
        name: String,
    },
    /// Campaign in an election; run CMD while leader.
    Elect {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        metrics: Metrics,
        /// After lost leadership, how long CMD gets between SIGTERM and SIGKILL.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Election name.
        name: String,
        /// The value others see as the leader's.
        value: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kind {
    Auto,
    Mutex,
    Rwlock,
    Semaphore,
    Election,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Auto => "auto",
            Kind::Mutex => "mutex",
            Kind::Rwlock => "rwlock",
            Kind::Semaphore => "semaphore",
            Kind::Election => "election",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUEUELOCK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("queuelock: cannot start runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("queuelock: {e}");
            ExitCode::from(match e {
                Error::Timeout(_) => EXIT_TIMEOUT,
                _ => EXIT_FAILURE,
            })
        }
    }
}

async fn connect(t: &Target) -> queuelock::Result<Client> {
    let mut config = match &t.url {
        Some(u) if !u.trim().is_empty() => Config::from_url(u)?,
        _ => Config::from_env()?,
    };
    if t.label.is_some() {
        config.label = t.label.clone();
    }
    Client::with_config(&config).await
}

/// Installs a Prometheus recorder serving `addr`, before anything is recorded. Wait and
/// hold times get buckets from 1 ms to 5 min, queue depth from 0 to 1024.
fn serve_metrics(m: &Metrics) -> queuelock::Result<()> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let Some(addr) = m.metrics_addr else {
        return Ok(());
    };
    let fail = |e: metrics_exporter_prometheus::BuildError| {
        Error::Config(format!("--metrics-addr {addr}: {e}"))
    };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ],
        )
        .map_err(fail)?
        .set_buckets_for_metric(
            Matcher::Full("queuelock_queue_depth".into()),
            &[
                0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
            ],
        )
        .map_err(fail)?
        .install()
        .map_err(fail)?;
    queuelock::describe_metrics();
    Ok(())
}

async fn run(cli: Cli) -> queuelock::Result<u8> {
    match cli.command {
        Cmd::Run {
            target,
            metrics,
            timeout,
            permits,
            grace,
            revocable,
            revoke_signal,
            name,
            command,
        } => {
            // A bad name fails before any connection is made.
            LockName::new(&name)?;
            serve_metrics(&metrics)?;
            let client = connect(&target).await?;
            let acquire = acquire(&client, &name, permits, revocable);
            let guard = match timeout {
                Some(d) => tokio::time::timeout(d, acquire)
                    .await
                    .map_err(|_| Error::Timeout(d))??,
                None => acquire.await?,
            };
            let forward = revocable.then_some(revoke_signal);
            let code = supervise(&guard, &command, grace, forward).await;
            let released = guard.release().await;
            client.close().await.ok();
            match (code, released) {
                (Ok(code), Ok(())) => Ok(code),
                (Ok(_), Err(Error::LockLost(reason))) => {
                    eprintln!(
                        "queuelock: the lock was lost ({reason}) by the time the command ended"
                    );
                    Ok(EXIT_LOST)
                }
                (Ok(code), Err(e)) => {
                    eprintln!("queuelock: release failed: {e}");
                    Ok(code)
                }
                (Err(code), _) => Ok(code),
            }
        }
        Cmd::Status {
            target,
            kind,
            permits,
            json,
            watch,
            interval,
            name,
        } => {
            // A bad name fails before any connection is made.
            LockName::new(&name)?;
            let client = connect(&target).await?;
            let mut seen = HoldSeen::default();
            if !watch {
                let view = read_status(&client, &name, kind, permits).await?;
                print!("{}", render(&name, &view, json, &mut seen));
                client.close().await.ok();
                return Ok(0);
            }
            loop {
                let frame = match read_status(&client, &name, kind, permits).await {
                    Ok(view) => render(&name, &view, json, &mut seen),
                    Err(e) => format!("{name}: cannot read the queue: {e}\n"),
                };
                if json {
                    print!("{frame}");
                } else {
                    // Clear the screen and home the cursor, then the frame.
                    print!(
                        "\x1b[2J\x1b[H{frame}\n(every {}; Ctrl-C to stop)\n",
                        humantime::format_duration(interval)
                    );
                }
                use std::io::Write;
                std::io::stdout().flush().ok();
                tokio::time::sleep(interval).await;
            }
        }
        Cmd::Revoke { target, name } => {
            // A bad name fails before any connection is made.
            LockName::new(&name)?;
            let client = connect(&target).await?;
            let outcome = client.mutex(&name)?.request_revoke().await;
            client.close().await.ok();
            Ok(match outcome? {
                Revocation::Requested { holder } => {
                    println!(
                        "{name}: asked the holder to let go: {}",
                        describe(std::slice::from_ref(&holder))
                    );
                    0
                }
                Revocation::NotRevocable { holder } => {
                    eprintln!(
                        "{name}: the holder does not watch for revocation requests: {}",
                        describe(std::slice::from_ref(&holder))
                    );
                    EXIT_NOT_REVOCABLE
                }
                _ => {
                    eprintln!("{name}: nobody holds the lock");
                    EXIT_NOT_HELD
                }
            })
        }
        Cmd::Elect {
            target,
            metrics,
            grace,
            name,
            value,
            command,
        } => {
            // A bad name fails before any connection is made.
            LockName::new(&name)?;
            serve_metrics(&metrics)?;
            let client = connect(&target).await?;
            let leadership = client.election(&name)?.campaign(value).await?;
            let code = supervise(leadership.guard(), &command, grace, None).await;
            let resigned = leadership.resign().await;
            client.close().await.ok();
            match (code, resigned) {
                (Ok(_), Err(Error::LockLost(_))) => Ok(EXIT_LOST),
                (Ok(code), _) => Ok(code),
                (Err(code), _) => Ok(code),
            }
        }
    }
}

/// Waits in the queue, telling the user who holds the lock once waiting takes a moment.
async fn acquire(
    client: &Client,
    name: &str,
    permits: Option<u32>,
    revocable: bool,
) -> queuelock::Result<Guard> {
    let take = async {
        match permits {
            Some(n) => client.semaphore(name, n)?.acquire().await,
            None if revocable => client.mutex(name)?.revocable().lock().await,
            None => client.mutex(name)?.lock().await,
        }
    };
    tokio::pin!(take);
    tokio::select! {
        r = &mut take => return r,
        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    let (holders, waiters) = match permits {
        Some(n) => {
            let s = client.semaphore(name, n)?;
            (s.holders().await, s.waiters().await)
        }
        None => {
            let m = client.mutex(name)?;
            (m.holders().await, m.waiters().await)
        }
    };
    if let (Ok(holders), Ok(waiters)) = (holders, waiters) {
        let me = std::process::id();
        let position = waiters
            .iter()
            .position(|w| w.holder.as_ref().is_some_and(|h| h.pid == me))
            .map_or_else(|| "?".to_owned(), |p| (p + 1).to_string());
        eprintln!(
            "queuelock: waiting for {name}: held by {}; we are {position} of {} waiting",
            describe(&holders),
            waiters.len()
        );
    }
    take.await
}

fn describe(entries: &[QueueEntry]) -> String {
    if entries.is_empty() {
        return "nobody".to_owned();
    }
    entries
        .iter()
        .map(|e| match &e.holder {
            Some(h) => format!(
                "{}:{}{}",
                h.host,
                h.pid,
                h.label
                    .as_ref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            ),
            None => e.key.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `status` read: the recipe found (or asked for), its holders and waiters.
struct StatusView {
    kind: Kind,
    permits: Option<u32>,
    holders: Vec<QueueEntry>,
    waiters: Vec<QueueEntry>,
}

/// Which recipe stored what is under `name`: a semaphore's stored permit count, else the
/// kinds of the queue's nodes (read/write: rwlock, latch: election, lock: mutex).
/// `Kind::Auto`: nothing is stored under the name.
async fn detect(client: &Client, name: &str) -> queuelock::Result<(Kind, Option<u32>)> {
    use queuelock::backend::NodeKind;
    let session = client.session().await?;
    if let Some(v) = session.get(&format!("{name}/meta/permits")).await? {
        let permits = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok());
        return Ok((Kind::Semaphore, permits));
    }
    let listing = session.list(name).await?;
    let kind = listing
        .nodes
        .iter()
        .map(|n| n.kind)
        .find(|k| *k != NodeKind::Unknown);
    Ok((
        match kind {
            Some(NodeKind::Read | NodeKind::Write) => Kind::Rwlock,
            Some(NodeKind::Latch) => Kind::Election,
            Some(NodeKind::Permit) => Kind::Semaphore,
            Some(_) => Kind::Mutex,
            // Only other tools' nodes: they queue like a mutex's.
            None if !listing.nodes.is_empty() => Kind::Mutex,
            None => Kind::Auto,
        },
        None,
    ))
}

async fn read_status(
    client: &Client,
    name: &str,
    kind: Kind,
    permits: Option<u32>,
) -> queuelock::Result<StatusView> {
    let (kind, stored) = match kind {
        Kind::Auto => detect(client, name).await?,
        k => (k, None),
    };
    let permits = permits.or(stored);
    let (holders, waiters) = match kind {
        Kind::Auto => (Vec::new(), Vec::new()),
        // An election's candidates queue like a mutex's waiters: the first leads.
        Kind::Mutex | Kind::Election => {
            let m = client.mutex(name)?;
            (m.holders().await?, m.waiters().await?)
        }
        Kind::Rwlock => {
            let l = client.rwlock(name)?;
            (l.holders().await?, l.waiters().await?)
        }
        Kind::Semaphore => {
            // Reading needs no agreement on the count: any handle reads the layout.
            let s = client.semaphore(name, permits.unwrap_or(1))?;
            (s.holders().await?, s.waiters().await?)
        }
    };
    Ok(StatusView {
        kind,
        permits,
        holders,
        waiters,
    })
}

/// Since when each holder holds (ms since the epoch), and whether that is only an
/// upper bound of its hold. Nothing on the lock path records a grant time (that would
/// be one more write per grant), so a hold is timed from the frame that first showed it
/// (late by at most one --interval); holders already there in the first frame are timed
/// from when they queued, an upper bound.
#[derive(Default)]
struct HoldSeen {
    since: HashMap<String, (u64, bool)>,
    frames: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// One frame of `status`: text or a JSON line.
fn render(name: &str, view: &StatusView, json: bool, seen: &mut HoldSeen) -> String {
    let now = now_ms();
    let queued = |e: &QueueEntry| e.holder.as_ref().map(|h| h.queued_at_ms);
    // (held for, is an upper bound) per holder.
    let held: Vec<Option<(u64, bool)>> = view
        .holders
        .iter()
        .map(|e| {
            let since = match seen.since.get(&e.key) {
                Some(&s) => Some(s),
                None if seen.frames == 0 => queued(e).map(|q| (q, true)),
                None => Some((now, false)),
            };
            if let Some(s) = since {
                seen.since.insert(e.key.clone(), s);
            }
            since.map(|(t, bound)| (now.saturating_sub(t), bound))
        })
        .collect();
    seen.since
        .retain(|k, _| view.holders.iter().any(|e| &e.key == k));
    seen.frames += 1;
    let waiting = |e: &QueueEntry| queued(e).map(|q| now.saturating_sub(q));
    if json {
        let row = |e: &QueueEntry| {
            serde_json::json!({
                "key": e.key,
                "fencing_token": e.fencing_token,
                "kind": format!("{:?}", e.kind).to_lowercase(),
                "host": e.holder.as_ref().map(|h| h.host.clone()),
                "pid": e.holder.as_ref().map(|h| h.pid),
                "queued_at_ms": queued(e),
                "label": e.holder.as_ref().and_then(|h| h.label.clone()),
                "revocable": e.holder.as_ref().map(|h| h.revocable),
                "revoke_requested_at_ms": e.holder.as_ref().and_then(|h| h.revoke_requested_at_ms),
            })
        };
        let holders: Vec<_> = view
            .holders
            .iter()
            .zip(&held)
            .map(|(e, h)| {
                let mut r = row(e);
                r["held_ms"] = serde_json::json!(h.map(|h| h.0));
                r["held_ms_upper_bound"] = serde_json::json!(h.map(|h| h.1));
                r
            })
            .collect();
        let waiters: Vec<_> = view
            .waiters
            .iter()
            .map(|e| {
                let mut r = row(e);
                r["waiting_ms"] = serde_json::json!(waiting(e));
                r
            })
            .collect();
        let v = serde_json::json!({
            "name": name,
            "recipe": (view.kind != Kind::Auto).then(|| view.kind.as_str()),
            "permits": view.permits,
            "holders": holders,
            "waiters": waiters,
        });
        return format!("{v}\n");
    }
    if view.kind == Kind::Auto {
        return format!("{name}: nothing held or queued under this name\n");
    }
    let recipe = match (view.kind, view.permits) {
        (Kind::Semaphore, Some(n)) => format!("semaphore, {n} permits"),
        (k, _) => k.as_str().to_owned(),
    };
    let mut out = format!(
        "{name} ({recipe}): {} holding, {} waiting\n",
        view.holders.len(),
        view.waiters.len()
    );
    let rows = view
        .holders
        .iter()
        .zip(held.iter().map(|h| match h {
            Some((ms, true)) => format!("held <={}", secs(*ms)),
            Some((ms, false)) => format!("held {}", secs(*ms)),
            None => "held ?".to_owned(),
        }))
        .map(|(e, t)| ("holder", e, t))
        .chain(view.waiters.iter().map(|e| {
            let t = waiting(e).map_or_else(
                || "waiting ?".to_owned(),
                |ms| format!("waiting {}", secs(ms)),
            );
            ("waiter", e, t)
        }));
    let mut n = HashMap::new();
    for (title, e, time) in rows {
        let i = n.entry(title).or_insert(0);
        *i += 1;
        let mut who = describe(std::slice::from_ref(e));
        match &e.holder {
            Some(h) if h.revoke_requested_at_ms.is_some() => who.push_str("  (asked to let go)"),
            Some(h) if h.revocable => who.push_str("  (revocable)"),
            _ => {}
        }
        out.push_str(&format!(
            "  {title} {i:>2}  token {:>8}  {time:<14}  {who}  [{}]\n",
            e.fencing_token, e.key
        ));
    }
    out
}

/// Runs the command while `guard` holds; returns its exit status (`Err` for statuses
/// queuelock decides: lost lock, command not runnable).
/// Runs the command while `guard` holds, forwarding our signals to it; stops it when the
/// lock is lost; with `revoke_signal`, sends it that signal once a revocation of the
/// hold is requested (and keeps holding until it exits).
async fn supervise(
    guard: &Guard,
    command: &[String],
    grace: Duration,
    revoke_signal: Option<Signal>,
) -> Result<u8, u8> {
    let Some((program, args)) = command.split_first() else {
        return Err(EXIT_CANNOT_RUN);
    };
    let mut child = match Command::new(program)
        .args(args)
        .env("QUEUELOCK_NAME", guard.name())
        .env("QUEUELOCK_KEY", guard.key())
        .env("QUEUELOCK_FENCING_TOKEN", guard.fencing_token().to_string())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("queuelock: cannot run {program:?}: {e}");
            return Err(if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_RUN
            });
        }
    };
    let pid = child.id().map(|p| Pid::from_raw(p as i32));
    let signals = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    let mut streams = Vec::new();
    for kind in signals {
        match signal(kind) {
            Ok(s) => streams.push((kind, s)),
            Err(e) => eprintln!("queuelock: cannot forward signal {kind:?}: {e}"),
        }
    }
    let can_forward = !streams.is_empty();
    let mut lost: Option<LossReason> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut revoke_pending = revoke_signal.is_some();
    loop {
        let forwarded = async {
            let waits = streams.iter_mut().map(|(k, s)| {
                let k = *k;
                Box::pin(async move {
                    s.recv().await;
                    k
                })
            });
            if can_forward {
                futures::future::select_all(waits).await.0
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            status = child.wait() => {
                let status = match status {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("queuelock: lost track of the command: {e}");
                        return Err(EXIT_FAILURE);
                    }
                };
                if lost.is_some() {
                    return Err(EXIT_LOST);
                }
                use std::os::unix::process::ExitStatusExt;
                return Ok(match (status.code(), status.signal()) {
                    (Some(c), _) => c as u8,
                    (None, Some(sig)) => 128u8.saturating_add(sig as u8),
                    _ => EXIT_FAILURE,
                });
            }
            reason = guard.lost(), if lost.is_none() => {
                eprintln!("queuelock: lock {} lost ({reason}); stopping the command", guard.name());
                lost = Some(reason);
                if let Some(pid) = pid {
                    let _ = kill(pid, Signal::SIGTERM);
                }
                kill_at = Some(tokio::time::Instant::now() + grace);
            }
            _ = guard.revoke_requested(), if revoke_pending => {
                revoke_pending = false;
                if let (Some(pid), Some(sig)) = (pid, revoke_signal) {
                    eprintln!(
                        "queuelock: revocation of {} requested; sending {sig} to the command",
                        guard.name()
                    );
                    let _ = kill(pid, sig);
                }
            }
            _ = async { tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)).await }, if kill_at.is_some() => {
                eprintln!("queuelock: the command outlived its grace period; killing it");
                let _ = child.start_kill();
                kill_at = None;
            }
            kind = forwarded => {
                if let (Some(pid), Some(sig)) = (pid, to_nix(kind)) {
                    let _ = kill(pid, sig);
                }
            }
        }
    }
}

/// A signal by name (`TERM`, `SIGTERM`, case-insensitive) or number (`15`).
fn parse_signal(s: &str) -> Result<Signal, String> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("{s:?} is not a signal name (TERM, INT, HUP, USR1, ...)"))
}

fn to_nix(kind: SignalKind) -> Option<Signal> {
    Signal::try_from(kind.as_raw_value()).ok()
}
