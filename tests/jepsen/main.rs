//! A Jepsen-style safety test on real 3-member etcd and 3-server ZooKeeper clusters, a
//! PostgreSQL server and a single Redis server (append-only file fsynced on every write).
//!
//! K worker processes (this binary re-run, each with its own session) loop: acquire the
//! lock → fenced read of a register → fenced write of value+1 → release, logging every
//! step with times from the system-wide monotonic clock. A nemesis breaks things
//! meanwhile (kill -9 of the cluster leader, SIGSTOP of a worker past its TTL, a TCP
//! proxy per worker that drops, blackholes or delays its links, and on etcd an operator
//! revoking the holder's lease). Afterwards a checker reads the whole history (see
//! `checker.rs` for what it demands) and writes a summary; any violation fails the run
//! and prints the slice of history around it.
//!
//! `cargo test --test jepsen` runs every backend for 2 minutes each. For a long run:
//! `cargo test --release --test jepsen -- --duration 30m [--backend etcd|zookeeper|postgres|redis]
//! [--workers 5] [--ttl 4s] [--seed N] [--out DIR]` (or `scripts/jepsen`, which also
//! installs the servers).

#[path = "../support/mod.rs"]
mod support;

mod checker;
mod history;
mod nemesis;
mod register;
mod worker;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use queuelock::backend::testkit::proxy::Proxy;
use queuelock::Client;
use support::etcd::EtcdCluster;
use support::postgres::PgServer;
use support::redis::RedisServer;
use support::zookeeper::ZkEnsemble;
use support::Cluster;

use crate::checker::{check, Run, Verdict};
use crate::history::{now_us, read_lines, Event, Fault};
use crate::nemesis::{ClockHook, Nemesis};
use crate::register::Register;
use crate::worker::WorkerArgs;
use support::faketime::FakeClock;

const ROLE: &str = "QUEUELOCK_JEPSEN_ROLE";
/// The worker whose wall clock is stepped (libfaketime): its leases must not notice.
const CLOCK_WORKER: usize = 0;

struct Options {
    backends: Vec<&'static str>,
    duration: Duration,
    workers: usize,
    ttl: Duration,
    seed: u64,
    out: PathBuf,
    /// Check a saved history directory instead of running.
    recheck: Option<PathBuf>,
    /// Redis' `appendfsync` (`always`; `everysec` to see what a crash loses with it).
    redis_fsync: String,
    /// One fault at a time (no overlapping pairs).
    single_faults: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "jepsen: {msg}\nusage: jepsen [--backend etcd|zookeeper|postgres|redis|all] \
         [--duration 2m] [--workers 5] [--ttl 4s] [--seed N] [--out DIR] \
         [--redis-fsync always|everysec] [--single-faults] | --recheck DIR"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut o = Options {
        backends: vec!["etcd", "zookeeper", "postgres", "redis"],
        duration: Duration::from_secs(120),
        workers: 5,
        ttl: Duration::from_secs(4),
        seed: rand::random(),
        out: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("jepsen"),
        recheck: None,
        redis_fsync: "always".into(),
        single_faults: false,
    };
    if let Ok(d) = std::env::var("QUEUELOCK_JEPSEN_DURATION") {
        o.duration = humantime::parse_duration(&d)
            .unwrap_or_else(|e| usage(&format!("QUEUELOCK_JEPSEN_DURATION {d:?}: {e}")));
    }
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--backend" => {
                let v = value("--backend");
                o.backends = support::backends_arg(&v)
                    .unwrap_or_else(|| usage(&format!("unknown backend {v:?}")));
            }
            "--duration" | "--ttl" => {
                let v = value(&a);
                let d = humantime::parse_duration(&v)
                    .unwrap_or_else(|e| usage(&format!("{a} {v:?}: {e}")));
                if a == "--ttl" {
                    o.ttl = d;
                } else {
                    o.duration = d;
                }
            }
            "--workers" => {
                let v = value(&a);
                o.workers = v
                    .parse()
                    .ok()
                    .filter(|&n| (2..=64).contains(&n))
                    .unwrap_or_else(|| usage(&format!("--workers {v:?}: a number from 2 to 64")));
            }
            "--seed" => {
                let v = value(&a);
                o.seed = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--seed {v:?}: a number")));
            }
            "--out" => o.out = value(&a).into(),
            "--redis-fsync" => {
                o.redis_fsync = match value(&a).as_str() {
                    v @ ("always" | "everysec") => v.to_owned(),
                    other => usage(&format!("--redis-fsync {other:?}: always or everysec")),
                }
            }
            "--recheck" => o.recheck = Some(value(&a).into()),
            "--single-faults" => o.single_faults = true,
            // What `cargo test` may pass every test binary.
            s if support::is_cargo_test_arg(s) => {}
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    o
}

fn main() {
    let rt = support::harness_runtime("warn,zookeeper_client=error");
    if std::env::var(ROLE).as_deref() == Ok("worker") {
        rt.block_on(worker::run(WorkerArgs::from_env()));
        return;
    }
    let o = options();
    checker_self_test();
    println!("checker self-test ... ok (it flags planted violations)");
    if let Some(dir) = &o.recheck {
        let v = recheck(dir, &o);
        std::process::exit(if v.violations.is_empty() { 0 } else { 1 });
    }
    let mut failed = false;
    for backend in &o.backends {
        let verdict = rt.block_on(run_backend(backend, &o));
        failed |= !verdict.violations.is_empty();
    }
    if failed {
        std::process::exit(1);
    }
}

async fn run_backend(backend: &'static str, o: &Options) -> Verdict {
    let started = Instant::now();
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "");
    let dir = o.out.join(format!("{backend}-{stamp}"));
    std::fs::create_dir_all(&dir).expect("output dir");
    println!(
        "jepsen {backend}: {} workers, {:?}, ttl {:?}, seed {}; history in {}",
        o.workers,
        o.duration,
        o.ttl,
        o.seed,
        dir.display()
    );
    // etcd and ZooKeeper members each get a network namespace and an address of their
    // own, so that the nemesis can partition them from each other.
    let cluster: Box<dyn Cluster + Send + Sync> = tokio::task::block_in_place(|| match backend {
        "etcd" => Box::new(EtcdCluster::start_partitionable(3)) as Box<dyn Cluster + Send + Sync>,
        "redis" => Box::new(RedisServer::start(&o.redis_fsync)),
        "postgres" => Box::new(PgServer::start()),
        _ => Box::new(ZkEnsemble::start_partitionable(3)),
    });
    let register = Register::start().await;
    let root = format!("jepsen-{}", uuid::Uuid::new_v4().simple());
    let lock = "register".to_owned();
    let ttl_q = format!("{}={}ms", cluster.ttl_option(), o.ttl.as_millis());
    let direct = Client::connect(&cluster.url(&root, &ttl_q))
        .await
        .expect("connect the checker's own client");

    let stop_at = now_us() + o.duration.as_micros() as u64;
    let mut proxies = Vec::new();
    let mut children: Vec<Child> = Vec::new();
    // Worker CLOCK_WORKER runs under a wall clock the nemesis steps by hours.
    let clock = FakeClock::new();
    for w in 0..o.workers {
        let mut mine = Vec::new();
        for m in cluster.client_addrs() {
            mine.push(Proxy::start(m).await);
        }
        let hosts: Vec<String> = mine.iter().map(|p: &Proxy| p.addr.clone()).collect();
        let args = WorkerArgs {
            w,
            url: cluster.worker_url(&hosts, &root, &format!("{ttl_q}&label=jepsen-{w}")),
            lock: lock.clone(),
            register: register.addr.clone(),
            history: dir.join(format!("w{w}.jsonl")),
            stop_at,
            ttl: o.ttl,
        };
        let stderr = std::fs::File::create(dir.join(format!("w{w}.log"))).expect("log");
        let mut cmd = Command::new(std::env::current_exe().expect("exe"));
        cmd.env(ROLE, "worker")
            .envs(args.to_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if w == CLOCK_WORKER {
            clock.apply(&mut cmd);
        }
        children.push(cmd.spawn().expect("start worker"));
        proxies.push(mine);
    }
    let pids = children.iter().map(Child::id).collect();
    let mut nemesis = Nemesis::new(cluster, proxies, pids, o.ttl, o.seed);
    nemesis.single = o.single_faults;
    nemesis.clock = Some(ClockHook {
        worker: CLOCK_WORKER,
        set_offset: Box::new(move |secs| clock.set_offset(secs)),
    });
    let hint = || register.last_access();
    let head = || {
        let (direct, lock) = (direct.clone(), lock.clone());
        Box::pin(async move {
            let s = direct.session().await.ok()?;
            let listing = s.list(&lock).await.ok()?;
            listing.nodes.first().map(|n| n.key.clone())
        }) as futures::future::BoxFuture<'static, Option<String>>
    };
    let stop_thawing = Arc::new(AtomicBool::new(false));
    let thawer = tokio::spawn(nemesis::thaw_self_frozen(
        nemesis.pids.clone(),
        nemesis.frozen.clone(),
        o.ttl,
        o.seed,
        stop_thawing.clone(),
    ));
    let mut faults = nemesis.run(stop_at, &hint, &head).await;
    nemesis.heal();

    // Every worker stops by itself after its current attempt; one that does not is hung.
    let grace =
        worker::lock_timeout(o.ttl) + worker::release_give_up(o.ttl) + Duration::from_secs(60);
    let exits = tokio::task::block_in_place(|| support::wait_all(&mut children, grace));
    stop_thawing.store(true, Ordering::SeqCst);
    faults.extend(thawer.await.expect("thawer"));
    faults.sort_by_key(|f| f.t0);

    // Sessions closed (or, for a worker that could not close, expired): no node stays.
    let deadline = Instant::now() + o.ttl * 2 + checker::MARGIN;
    let leftover = loop {
        let nodes: Vec<String> = match direct.session().await {
            Ok(s) => s
                .list(&lock)
                .await
                .map(|l| l.nodes.into_iter().map(|n| n.key).collect())
                .unwrap_or_else(|e| vec![format!("(cannot list: {e})")]),
            Err(e) => vec![format!("(no session: {e})")],
        };
        if nodes.is_empty() || Instant::now() > deadline {
            break nodes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = direct.close().await;

    let (register_log, register_final) = register.log();
    let run = Run {
        workers: (0..o.workers)
            .map(|w| read_lines::<Event>(&dir.join(format!("w{w}.jsonl"))))
            .collect(),
        faults,
        register: register_log,
        register_final,
        exits,
        leftover,
        ttl: o.ttl,
    };
    write_json(&dir.join("faults.json"), &run.faults);
    write_json(&dir.join("register.json"), &run.register);
    let verdict = check(&run);
    report(
        backend,
        o,
        &dir,
        &verdict,
        &nemesis.unavailable.lock().expect("unavailable"),
        started.elapsed(),
    );
    drop(nemesis); // stops the cluster and the proxies
    verdict
}

/// Runs the checker again over a run's saved files (a worker's exit status and the
/// leftover-node check are not saved: taken as clean).
fn recheck(dir: &Path, o: &Options) -> Verdict {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).unwrap_or_else(|e| usage(&format!("{name}: {e}")))
    };
    let workers: Vec<Vec<Event>> = (0..)
        .map(|w| dir.join(format!("w{w}.jsonl")))
        .take_while(|p| p.exists())
        .map(|p| read_lines(&p))
        .collect();
    let register: Vec<crate::history::RegisterOp> =
        serde_json::from_slice(&read("register.json")).expect("register.json");
    let register_final = register
        .iter()
        .filter(|r| r.write && r.admitted)
        .map(|r| r.value)
        .next_back()
        .unwrap_or(0);
    let run = Run {
        exits: vec![Some(0); workers.len()],
        workers,
        faults: serde_json::from_slice(&read("faults.json")).expect("faults.json"),
        register,
        register_final,
        leftover: Vec::new(),
        ttl: o.ttl,
    };
    let v = check(&run);
    println!(
        "recheck of {}: {} violations",
        dir.display(),
        v.violations.len()
    );
    for viol in &v.violations {
        println!("VIOLATION {}: {}", viol.kind, viol.detail);
    }
    v
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) {
    std::fs::write(path, serde_json::to_vec_pretty(v).expect("json")).expect("write json");
}

fn report(
    backend: &str,
    o: &Options,
    dir: &Path,
    v: &Verdict,
    unavailable: &[(String, String)],
    took: Duration,
) {
    let summary = serde_json::json!({
        "backend": backend,
        "workers": o.workers,
        "duration_s": o.duration.as_secs(),
        "ttl_ms": o.ttl.as_millis() as u64,
        "seed": o.seed,
        "single_faults": o.single_faults,
        "took_s": took.as_secs(),
        "faults_unavailable": unavailable,
        "verdict": v,
    });
    write_json(&dir.join("summary.json"), &summary);
    let c = &v.counts;
    let mut text = format!(
        "jepsen {backend}: {} s, {} workers, ttl {} ms, seed {}\n\
         operations: {} attempts, {} grants (per worker {:?}), {} lock timeouts, {} lock errors\n\
         register: {} reads, {} writes acknowledged, final value {}, {} accesses fenced, {} unreachable\n\
         losses learned: {}; overlaps explained by a frozen or revoked holder (fenced): {}; unexplained losses: {}\n\
         faults: {:?} ({} of them overlapping another)\n\
         worst loss notice (ms after fault start, or thaw): {:?}\n",
        o.duration.as_secs(),
        o.workers,
        o.ttl.as_millis(),
        o.seed,
        c.attempts,
        c.grants,
        c.grants_per_worker,
        c.lock_timeouts,
        c.lock_errors,
        c.reads_admitted,
        c.writes_acknowledged,
        v.register_final,
        c.fenced_accesses,
        c.register_unreachable,
        c.losses_learned,
        v.paused_overlaps,
        v.unexplained_losses.len(),
        v.faults,
        v.overlapping_faults,
        v.loss_notice_ms,
    );
    for (k, why) in unavailable {
        text.push_str(&format!("fault not available: {k}: {why}\n"));
    }
    text.push_str(&format!("violations: {}\n", v.violations.len()));
    for viol in &v.violations {
        text.push_str(&format!("VIOLATION {}: {}\n", viol.kind, viol.detail));
        for e in &viol.slice {
            text.push_str(&format!("    {e}\n"));
        }
    }
    std::fs::write(dir.join("summary.txt"), &text).expect("write summary");
    print!("{text}");
}

/// The checker must catch what it is there to catch: plant each violation in a small
/// synthetic history and demand the verdict names it; a clean history must pass.
fn checker_self_test() {
    use crate::history::RegisterOp;
    let s = 1_000_000u64;
    let fault = |kind: &str, worker: Option<usize>, t0: u64, t1: u64| Fault {
        kind: kind.into(),
        worker,
        detail: "test".into(),
        session: None,
        t0,
        t1,
    };
    let grant = |w: usize, op: u64, token: u64, start: u64, end: u64, lost: bool| {
        let mut v = vec![
            Event::Invoke {
                w,
                op,
                t: start - 1,
            },
            Event::Granted {
                w,
                op,
                t: start,
                token,
                session: w as u64 + 100,
                key: format!("k{w}"),
            },
        ];
        if lost {
            v.push(Event::Lost {
                w,
                op,
                t: end,
                reason: "session lost".into(),
                via: "is_lost".into(),
            });
            v.push(Event::Released {
                w,
                op,
                t: end + 1,
                error: Some("lock lost".into()),
                timeout: false,
            });
        } else {
            v.push(Event::ReleaseStart { w, op, t: end });
            v.push(Event::Released {
                w,
                op,
                t: end + 1,
                error: None,
                timeout: false,
            });
        }
        v
    };
    let done = |w: usize, t: u64| Event::Done { w, t };
    let write = |t: u64, w: usize, token: u64, value: u64| RegisterOp {
        t,
        w,
        write: true,
        token,
        value,
        admitted: true,
    };
    let base = |workers: Vec<Vec<Event>>, register: Vec<RegisterOp>, faults: Vec<Fault>| Run {
        exits: vec![Some(0); workers.len()],
        register_final: register
            .iter()
            .filter(|r| r.write && r.admitted)
            .map(|r| r.value)
            .next_back()
            .unwrap_or(0),
        workers,
        faults,
        register,
        leftover: Vec::new(),
        ttl: Duration::from_secs(4),
    };
    let with_done = |mut a: Vec<Event>, w: usize| {
        a.push(done(w, 100 * s));
        a
    };
    let kinds =
        |r: &Run| -> Vec<&'static str> { check(r).violations.iter().map(|v| v.kind).collect() };

    let clean = base(
        vec![
            with_done(grant(0, 1, 10, s, 2 * s, false), 0),
            with_done(grant(1, 1, 11, 3 * s, 4 * s, false), 1),
        ],
        vec![write(s + 10, 0, 10, 1), write(3 * s + 10, 1, 11, 2)],
        vec![],
    );
    assert_eq!(kinds(&clean), Vec::<&str>::new(), "clean history flagged");

    let overlap = base(
        vec![
            with_done(grant(0, 1, 10, s, 3 * s, false), 0),
            with_done(grant(1, 1, 11, 2 * s, 4 * s, false), 1),
        ],
        vec![],
        vec![],
    );
    assert!(kinds(&overlap).contains(&"overlap"), "overlap not flagged");

    let freeze = fault("freeze", Some(0), s + s / 2, 8 * s);
    let frozen = base(
        vec![
            with_done(grant(0, 1, 10, s, 8 * s + 1000, true), 0),
            with_done(grant(1, 1, 11, 6 * s, 7 * s, false), 1),
        ],
        vec![],
        vec![freeze],
    );
    assert_eq!(
        kinds(&frozen),
        Vec::<&str>::new(),
        "a frozen holder's fenced overlap flagged"
    );

    // A self-freeze the driver noticed late: the worker's own event says when it began.
    let noticed_late = fault("self-freeze", Some(0), 7 * s, 8 * s);
    let mut late_w0 = grant(0, 1, 10, s, 8 * s + 1000, true);
    late_w0.insert(
        2,
        Event::SelfFreeze {
            w: 0,
            op: 1,
            t: s + s / 2,
        },
    );
    let self_frozen = base(
        vec![
            with_done(late_w0, 0),
            with_done(grant(1, 1, 11, 6 * s, 7 * s, false), 1),
        ],
        vec![],
        vec![noticed_late],
    );
    assert_eq!(
        kinds(&self_frozen),
        Vec::<&str>::new(),
        "a self-frozen holder's overlap flagged"
    );

    let backwards = base(
        vec![
            with_done(grant(0, 1, 11, s, 2 * s, false), 0),
            with_done(grant(1, 1, 10, 3 * s, 4 * s, false), 1),
        ],
        vec![],
        vec![],
    );
    assert!(
        kinds(&backwards).contains(&"token-order"),
        "token regression not flagged"
    );

    let lost_increment = base(
        vec![with_done(grant(0, 1, 10, s, 2 * s, false), 0)],
        vec![write(s, 0, 10, 1), write(s + 1, 1, 11, 1)],
        vec![],
    );
    assert!(
        kinds(&lost_increment).contains(&"lost-increment"),
        "lost increment not flagged"
    );

    let blackhole = fault("blackhole", Some(0), 2 * s, 9 * s);
    let late = base(
        vec![with_done(grant(0, 1, 10, s, 2 * s + 10 * s, true), 0)],
        vec![],
        vec![blackhole],
    );
    assert!(
        kinds(&late).contains(&"late-loss-notice"),
        "late loss notice not flagged"
    );

    // Member partitions, overlapping faults, clock steps.
    let partitioned_overlap = base(
        vec![
            with_done(grant(0, 1, 10, s, 3 * s, true), 0),
            with_done(grant(1, 1, 11, 2 * s, 4 * s, false), 1),
        ],
        vec![],
        vec![fault("partition-leader", None, s + s / 2, 5 * s)],
    );
    assert!(
        kinds(&partitioned_overlap).contains(&"overlap"),
        "an overlap during a member partition not flagged (partitions excuse nothing)"
    );
    let partition_late = base(
        vec![with_done(grant(0, 1, 10, s, 12 * s, true), 0)],
        vec![],
        vec![fault("partition-follower", None, 2 * s, 3 * s)],
    );
    assert!(
        kinds(&partition_late).contains(&"late-loss-notice"),
        "a loss learned TTL + margin after a partition began not flagged"
    );
    // A holder frozen for long, a partition starting during its freeze: the loss is
    // learned right after the thaw, which is in time, whatever the partition says.
    let long_freeze = fault("freeze", Some(0), s + s / 2, 12 * s);
    let freeze_and_partition = base(
        vec![
            with_done(grant(0, 1, 10, s, 13 * s, true), 0),
            with_done(grant(1, 1, 11, 7 * s, 8 * s, false), 1),
        ],
        vec![],
        vec![long_freeze, fault("partition-leader", None, 2 * s, 3 * s)],
    );
    assert_eq!(
        kinds(&freeze_and_partition),
        Vec::<&str>::new(),
        "overlapping freeze and partition: a loss learned on the thaw flagged"
    );
    assert_eq!(check(&freeze_and_partition).overlapping_faults, 2);
    let clock = fault("clock-step", Some(0), 2 * s, 2 * s);
    let clock_loss = base(
        vec![
            with_done(grant(0, 1, 10, s, 3 * s, true), 0),
            with_done(grant(1, 1, 11, 2 * s + 1, 4 * s, false), 1),
        ],
        vec![],
        vec![clock],
    );
    let verdict = check(&clock_loss);
    assert!(
        verdict.violations.iter().any(|v| v.kind == "overlap"),
        "an overlap after a wall-clock step not flagged"
    );
    assert_eq!(
        verdict.unexplained_losses.len(),
        1,
        "a wall-clock step explained a loss"
    );

    // An operator revokes the holder's session, the lock passes on, and the holder is
    // frozen right after (before it could hear): learning on the thaw is in time; with
    // no freeze, learning that late is not.
    let revoked = |frozen: bool| {
        let mut f = vec![Fault {
            session: Some(100),
            ..fault("admin-expire", None, 2 * s, 2 * s + s / 10)
        }];
        if frozen {
            f.push(fault("self-freeze", Some(0), 2 * s + s / 5, 10 * s));
        }
        base(
            vec![
                with_done(grant(0, 1, 10, s, 10 * s + s / 100, true), 0),
                with_done(grant(1, 1, 11, 2 * s + s / 8, 3 * s, false), 1),
            ],
            vec![],
            f,
        )
    };
    assert!(
        !kinds(&revoked(true)).contains(&"overlap"),
        "a revoked holder frozen before it could hear, learning on the thaw, flagged"
    );
    assert!(
        kinds(&revoked(false)).contains(&"overlap"),
        "a revoked holder learning 8 s later with no freeze not flagged"
    );
    // A release may take its budget (2 TTL + 10 s) plus the time faults that could hold
    // it up were active, not more.
    let slow_release = |took: u64, faults: Vec<Fault>| {
        let mut g = grant(0, 1, 10, s, 2 * s, false);
        if let Some(Event::Released { t, .. }) = g.last_mut() {
            *t = 2 * s + took;
        }
        base(vec![with_done(g, 0)], vec![], faults)
    };
    let partition = || fault("partition-leader", None, 3 * s, 13 * s);
    assert!(
        !kinds(&slow_release(25 * s, vec![partition()])).contains(&"release-slow"),
        "a release slowed by a 10 s partition within its budget flagged"
    );
    assert!(
        kinds(&slow_release(25 * s, vec![])).contains(&"release-slow"),
        "a release over its budget with no fault not flagged"
    );
    assert!(
        kinds(&slow_release(
            25 * s,
            vec![fault("freeze", Some(1), 3 * s, 13 * s)]
        ))
        .contains(&"release-slow"),
        "another worker's freeze excused a slow release"
    );
    assert!(
        kinds(&slow_release(
            31 * s,
            vec![partition(), fault("freeze", Some(0), 8 * s, 14 * s)]
        ))
        .contains(&"release-slow"),
        "overlapping faults counted twice for a slow release"
    );

    let mut hung = base(vec![grant(0, 1, 10, s, 2 * s, false)], vec![], vec![]);
    hung.exits = vec![None];
    assert!(kinds(&hung).contains(&"hung"), "hung worker not flagged");

    let stalled = base(
        vec![
            with_done(grant(0, 1, 10, s, 2 * s, false), 0),
            with_done(
                vec![Event::Invoke {
                    w: 1,
                    op: 1,
                    t: 90 * s,
                }],
                1,
            ),
        ],
        vec![],
        vec![],
    );
    assert!(
        kinds(&stalled).contains(&"stalled"),
        "stalled queue not flagged"
    );

    let mut left = base(
        vec![with_done(grant(0, 1, 10, s, 2 * s, false), 0)],
        vec![],
        vec![],
    );
    left.leftover = vec!["k".into()];
    assert!(
        kinds(&left).contains(&"leftover-nodes"),
        "leftover nodes not flagged"
    );
}
