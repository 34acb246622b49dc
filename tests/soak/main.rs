//! A leak soak on real servers: many client processes (this binary re-run, each holding
//! ONE `queuelock::Client`) loop over random mutex / rwlock / semaphore / election
//! attempts on shared lock names, with random holds and about one attempt in five
//! cancelled mid-wait. Every sample period the driver records each client's RSS, open
//! fds, threads and tokio tasks, and the store's own counts of the soak's sessions,
//! leases, nodes, watches and keys. The leak check compares the last third of the run
//! with the first third, and after the clients close demands that every session, lease,
//! node, watch and connection of theirs is gone from the store.
//!
//! With no arguments (what `cargo test` runs) it is a smoke run: every backend at once, 4
//! clients × 20 locks for 30 s. The long run: `scripts/soak --duration 30m` (50 clients
//! × 200 locks per backend, every backend at once). Options: `--duration 30m --backend
//! etcd|zookeeper|postgres|redis|all --clients 50 --locks 200 --tasks 24 --sample 10s
//! --ttl 10s --seed N --out DIR`. Results in `<out>/<backend>-<stamp>/`: samples.csv,
//! summary.md, plot.svg.

#[path = "../support/mod.rs"]
mod support;

mod client;
mod probe;
mod report;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{ClientArgs, ROLE};
use crate::probe::Server;
use crate::report::{Outcome, Sample};

/// The soak's command line.
pub(crate) struct Options {
    pub(crate) backends: Vec<&'static str>,
    pub(crate) duration: Duration,
    pub(crate) clients: usize,
    pub(crate) locks: usize,
    pub(crate) tasks: usize,
    pub(crate) sample: Duration,
    pub(crate) ttl: Duration,
    pub(crate) seed: u64,
    pub(crate) out: PathBuf,
    /// No argument given: the short run `cargo test` does.
    pub(crate) smoke: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "soak: {msg}\nusage: soak [--duration 30s] [--backend etcd|zookeeper|postgres|redis|all] \
         [--clients 4] [--locks 20] [--tasks 24] [--sample 5s] [--ttl 10s] [--seed N] [--out DIR]\n\
         (no arguments: the smoke run; any argument: the defaults are 30m, 50 clients, 200 locks, 10s)"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let args: Vec<String> = std::env::args()
        .skip(1)
        // What `cargo test` may pass every test binary.
        .filter(|a| !support::is_cargo_test_arg(a))
        .collect();
    let smoke = args.is_empty();
    let mut o = Options {
        backends: vec!["etcd", "zookeeper", "postgres", "redis"],
        duration: Duration::from_secs(if smoke { 30 } else { 30 * 60 }),
        clients: if smoke { 4 } else { 50 },
        locks: if smoke { 20 } else { 200 },
        tasks: 24,
        sample: Duration::from_secs(if smoke { 5 } else { 10 }),
        ttl: Duration::from_secs(10),
        seed: rand::random(),
        out: PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .map(|p| p.join("soak"))
            .unwrap_or_else(|| PathBuf::from("target/soak")),
        smoke,
    };
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        let mut number = |name: &str, range: std::ops::RangeInclusive<usize>| -> usize {
            let v = value(name);
            v.parse()
                .ok()
                .filter(|n| range.contains(n))
                .unwrap_or_else(|| usage(&format!("{name} {v:?}: a number in {range:?}")))
        };
        match a.as_str() {
            "--backend" => {
                let v = value("--backend");
                o.backends = support::backends_arg(&v)
                    .unwrap_or_else(|| usage(&format!("unknown backend {v:?}")));
            }
            "--duration" | "--sample" | "--ttl" => {
                let v = value(&a);
                let d = humantime::parse_duration(&v)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .unwrap_or_else(|| usage(&format!("{a} {v:?}: a duration such as 30m")));
                match a.as_str() {
                    "--duration" => o.duration = d,
                    "--sample" => o.sample = d,
                    _ => o.ttl = d,
                }
            }
            "--clients" => o.clients = number(&a, 1..=500),
            "--locks" => o.locks = number(&a, 1..=100_000),
            "--tasks" => o.tasks = number(&a, 1..=1000),
            "--seed" => {
                let v = value(&a);
                o.seed = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--seed {v:?}: a number")));
            }
            "--out" => o.out = value(&a).into(),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if o.sample * 3 > o.duration {
        usage("--sample must fit at least 3 times into --duration");
    }
    o
}

fn main() {
    // A client runs on it; the driver needs none (its work is processes, files, probes).
    let rt = support::harness_runtime("error");
    if std::env::var(ROLE).as_deref() == Ok("client") {
        let code = rt.block_on(client::run(ClientArgs::from_env()));
        drop(rt);
        std::process::exit(code);
    }
    drop(rt);
    let o = Arc::new(options());
    report::self_test();
    println!(
        "soak{}: {:?} on {}, {} clients × {} locks × {} tasks per backend, sample {:?}, seed {}",
        if o.smoke { " (smoke run)" } else { "" },
        o.duration,
        o.backends.join(", "),
        o.clients,
        o.locks,
        o.tasks,
        o.sample,
        o.seed
    );
    let runs: Vec<_> = o
        .backends
        .iter()
        .map(|&b| {
            let o = o.clone();
            std::thread::spawn(move || run_backend(b, &o))
        })
        .collect();
    let mut failed = Vec::new();
    for (b, r) in o.backends.iter().zip(runs) {
        match r.join() {
            Ok(out) => {
                println!("{}", out.text);
                if !out.passed {
                    failed.push(*b);
                }
            }
            Err(_) => failed.push(*b),
        }
    }
    if failed.is_empty() {
        println!("soak: PASS ({})", o.backends.join(", "));
    } else {
        println!("soak: FAIL on {}", failed.join(", "));
        std::process::exit(1);
    }
}

/// The latest report line of one client.
#[derive(Clone, Default)]
struct Reported {
    ops: u64,
    cancels: u64,
    errors: u64,
    tasks: Option<u64>,
    last: Option<serde_json::Value>,
}

fn run_backend(backend: &'static str, o: &Options) -> Outcome {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "");
    let dir = o.out.join(format!("{backend}-{stamp}"));
    std::fs::create_dir_all(&dir).expect("output dir");
    let server = Server::start(backend);
    let root = format!("soak_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let url = server.url(&root, o.ttl.as_millis());

    // The pool: every name used by `share` clients (client c takes `locks` names from
    // c × locks / share on), so that the clients contend.
    let share = o.clients.min(4);
    let stride = (o.locks / share).max(1);
    let pool = (stride * o.clients).max(o.locks);
    let reported: Arc<Mutex<Vec<Reported>>> =
        Arc::new(Mutex::new(vec![Reported::default(); o.clients]));
    let mut children: Vec<Child> = Vec::new();
    let mut readers = Vec::new();
    let started = Instant::now();
    for c in 0..o.clients {
        let args = ClientArgs {
            index: c,
            url: url.clone(),
            first: c * stride,
            locks: o.locks,
            pool,
            tasks: o.tasks,
            duration: o.duration,
            sample: o.sample,
            seed: o.seed,
        };
        let stderr = std::fs::File::create(dir.join(format!("client{c}.log"))).expect("log");
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .env(ROLE, "client")
            .envs(args.to_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start a soak client");
        let stdout = child.stdout.take().expect("stdout");
        let rep = reported.clone();
        readers.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let mut all = rep.lock().expect("reports");
                let r = &mut all[c];
                r.ops = v["ops"].as_u64().unwrap_or(r.ops);
                r.cancels = v["cancels"].as_u64().unwrap_or(r.cancels);
                r.errors = v["errors"].as_u64().unwrap_or(r.errors);
                r.tasks = v["tasks"].as_u64().or(r.tasks);
                if v["last"].as_bool() == Some(true) {
                    r.last = Some(v);
                }
            }
        }));
        children.push(child);
    }
    let pids: Vec<u32> = children.iter().map(Child::id).collect();

    // Sampling while the clients run.
    let mut samples: Vec<Sample> = Vec::new();
    let mut prev = (0u64, 0u64, 0u64);
    let mut next = started + o.sample;
    while next <= started + o.duration + Duration::from_millis(500) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let t = started.elapsed().as_secs_f64();
        let mut v: BTreeMap<&'static str, f64> = BTreeMap::new();
        let stats: Vec<(u64, u64, u64)> =
            pids.iter().filter_map(|&p| probe::proc_stats(p)).collect();
        let n = stats.len().max(1) as f64;
        let sum = |f: fn(&(u64, u64, u64)) -> u64| stats.iter().map(f).sum::<u64>() as f64;
        let max = |f: fn(&(u64, u64, u64)) -> u64| stats.iter().map(f).max().unwrap_or(0) as f64;
        v.insert("clients_alive", stats.len() as f64);
        v.insert("rss_mean_mib", sum(|s| s.0) / n / 1024.0);
        v.insert("rss_max_mib", max(|s| s.0) / 1024.0);
        v.insert("fds_sum", sum(|s| s.1));
        v.insert("fds_max", max(|s| s.1));
        v.insert("threads_sum", sum(|s| s.2));
        v.insert("threads_max", max(|s| s.2));
        let reps = reported.lock().expect("reports").clone();
        let tasks: Vec<u64> = reps.iter().filter_map(|r| r.tasks).collect();
        // No report yet (a client still connecting): unknown, not 0.
        let (tsum, tmax) = if tasks.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            let max = tasks.iter().copied().max().unwrap_or(0);
            (tasks.iter().sum::<u64>() as f64, max as f64)
        };
        v.insert("tasks_sum", tsum);
        v.insert("tasks_max", tmax);
        let tot = reps.iter().fold((0, 0, 0), |a, r| {
            (a.0 + r.ops, a.1 + r.cancels, a.2 + r.errors)
        });
        let secs = samples.last().map_or(t, |s: &Sample| t - s.t).max(0.001);
        v.insert("ops_per_s", (tot.0 - prev.0) as f64 / secs);
        v.insert("cancels", (tot.1 - prev.1) as f64);
        v.insert("errors", (tot.2 - prev.2) as f64);
        prev = tot;
        for c in server.counts(&root) {
            v.insert(c.name, c.value.unwrap_or(f64::NAN));
        }
        v.insert("loadavg", probe::loadavg());
        // A progress line about once a minute, for long runs watched by hand.
        let every = (60.0 / o.sample.as_secs_f64()).ceil().max(1.0) as usize;
        if (samples.len() + 1) % every == 0 {
            let shown: Vec<String> = v
                .iter()
                .filter(|(k, _)| !k.ends_with("_max"))
                .map(|(k, x)| format!("{k}={x:.0}"))
                .collect();
            println!("soak {backend} {t:.0}s: {}", shown.join(" "));
        }
        samples.push(Sample { t, values: v });
        // A probe slower than the period (a loaded machine) skips ticks, never bunches them.
        while next <= Instant::now() {
            next += o.sample;
        }
        if stats.is_empty() {
            break; // every client has exited
        }
    }

    // Every client stops by itself after its current attempt and closes its Client.
    let grace = Duration::from_secs(60) + o.ttl * 2;
    let exits = support::wait_all(&mut children, grace);
    for r in readers {
        let _ = r.join();
    }
    let exited_at = Instant::now();
    // Everything of theirs must leave the store: at once after clean closes, at the
    // latest when the sessions' TTL has run out.
    let limit = o.ttl + Duration::from_secs(20);
    let after = loop {
        let counts = server.counts(&root);
        let clear = counts.iter().all(|c| !c.zero_after || c.value == Some(0.0));
        if clear || exited_at.elapsed() > limit {
            break (counts, exited_at.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let reps = reported.lock().expect("reports").clone();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reps {
        if let Some(k) = r.last.as_ref().and_then(|l| l["kinds"].as_object()) {
            for (text, n) in k {
                *kinds.entry(text.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    let totals = reps.iter().fold((0, 0, 0), |a, r| {
        (a.0 + r.ops, a.1 + r.cancels, a.2 + r.errors)
    });
    let outcome = report::analyse(report::Run {
        backend,
        o,
        dir: &dir,
        samples: &samples,
        exits: &exits,
        after: &after.0,
        after_took: after.1,
        after_limit: limit,
        totals,
        kinds: &kinds,
        took: started.elapsed(),
        pool,
    });
    drop(server);
    outcome
}
