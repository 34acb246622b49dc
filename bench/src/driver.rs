//! The driver: runs every scenario of every implementation as its own process against the
//! same server, adds what the server itself counts, and writes the results.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::scenario::{BResult, PerEntity};
use crate::server;

/// Arguments of `queuelock-bench run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// `etcd`, `zookeeper`, `postgres` or `redis`.
    #[arg(long)]
    backend: String,
    /// The server, `host:port`.
    #[arg(long)]
    endpoint: String,
    /// Short runs (a smoke test: checks the program works, says nothing about speed).
    #[arg(long)]
    quick: bool,
    /// Where to write `<date>-<backend>.{json,md,svg}`.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Date for the file names (`YYYY-MM-DD`).
    #[arg(long)]
    date: String,
    /// A peer harness: `NAME=COMMAND ARGS` (whitespace-separated); the driver appends
    /// `BACKEND ENDPOINT SCENARIO ARGS`.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// A peer that cannot run here: `NAME=REASON`.
    #[arg(long = "unavailable")]
    unavailable: Vec<String>,
    /// The machine, for the report.
    #[arg(long, default_value = "")]
    machine: String,
    /// Server settings, for the report.
    #[arg(long, default_value = "")]
    settings: String,
    /// Anything else the report must say (e.g. other load on the machine).
    #[arg(long, default_value = "")]
    note: String,
    /// Members in the server cluster behind `--endpoint` (comma-separated when > 1).
    /// Above 1 only the floor and the contended (and so handoff) rows run, and the files
    /// are `<date>-<backend>-cluster<N>.*`.
    #[arg(long, default_value_t = 1)]
    cluster: usize,
}

/// How much each scenario does.
struct Plan {
    iterations: usize,
    contenders: Vec<usize>,
    seconds: f64,
    herd: usize,
    footprint: usize,
    /// Per-entity locks: names, tasks, clients, seconds.
    entity: PerEntity,
    /// Only the floor and the contended rows (cluster runs).
    contended_only: bool,
    /// How often each timed row runs, interleaved (see `run`).
    rounds: usize,
}

impl Plan {
    fn new(quick: bool, cluster: usize) -> Self {
        let mut plan = if quick {
            // Every scenario and implementation once, as small as still exercises it.
            Plan {
                iterations: 20,
                contenders: vec![8],
                seconds: 0.5,
                herd: 20,
                footprint: 50,
                entity: PerEntity {
                    names: 10_000,
                    tasks: 16,
                    clients: 4,
                    seconds: 0.5,
                },
                contended_only: false,
                rounds: 1,
            }
        } else {
            Plan {
                iterations: 300,
                contenders: vec![1, 8, 32, 128],
                seconds: 3.0,
                herd: 1000,
                footprint: 10_000,
                entity: PerEntity {
                    names: 10_000,
                    tasks: 64,
                    clients: 8,
                    seconds: 4.0,
                },
                contended_only: false,
                rounds: 3,
            }
        };
        plan.contended_only = cluster > 1;
        plan
    }

    fn entity_args(&self) -> Vec<String> {
        let e = &self.entity;
        [e.names, e.tasks, e.clients]
            .iter()
            .map(ToString::to_string)
            .chain([e.seconds.to_string()])
            .collect()
    }
}

struct Impl {
    name: String,
    command: Vec<String>,
    /// An in-process Rust implementation whose herd can also run with a connection per
    /// waiter (`herd N own`), for the like-for-like memory comparison.
    herd_own: bool,
}

fn split_eq(s: &str) -> BResult<(String, String)> {
    let (a, b) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    Ok((a.trim().to_owned(), b.trim().to_owned()))
}

/// Runs everything and writes the results.
pub async fn run(args: RunArgs) -> BResult<()> {
    let started = Instant::now();
    let plan = Plan::new(args.quick, args.cluster);
    let exe = std::env::current_exe()?.display().to_string();
    let rust = |imp: &str| vec![exe.clone(), "harness".into(), imp.into()];
    let mut impls = vec![Impl {
        name: "queuelock".into(),
        command: rust("queuelock"),
        // On PostgreSQL a Client::connect per waiter is 3 server processes per waiter
        // (3,000 for the herd): beyond what a shared 2-core machine can start.
        herd_own: args.backend != "postgres",
    }];
    match args.backend.as_str() {
        "etcd" => impls.push(Impl {
            name: "etcd-client lock() (Rust)".into(),
            command: rust("etcd-client"),
            herd_own: true,
        }),
        // Every zookeeper-client session is its own connection: one herd says it all.
        "zookeeper" => {
            impls.push(Impl {
                name: "zookeeper-client LockClient (Rust)".into(),
                command: rust("zookeeper-client"),
                herd_own: false,
            });
            // LockClient releases by drop (the delete is sent, never awaited): the same
            // for queuelock, like for like.
            impls.push(Impl {
                name: "queuelock, released by drop (as LockClient)".into(),
                command: rust("queuelock-drop"),
                herd_own: false,
            });
        }
        // A session-level advisory lock is a connection's: one herd says it all.
        "postgres" => impls.push(Impl {
            name: "pg_advisory_lock (tokio-postgres)".into(),
            command: rust("pg-advisory"),
            herd_own: false,
        }),
        _ => {}
    }
    for p in &args.peers {
        let (name, cmd) = split_eq(p)?;
        impls.push(Impl {
            name,
            command: cmd.split_whitespace().map(str::to_owned).collect(),
            herd_own: false,
        });
    }
    let mut unavailable = Vec::new();
    for u in &args.unavailable {
        let (name, reason) = split_eq(u)?;
        unavailable.push(json!({"impl": name, "reason": reason}));
    }
    let (b, ep) = (args.backend.as_str(), args.endpoint.as_str());
    let version = server::version(b, ep)
        .await
        .unwrap_or_else(|e| format!("{b} (version unknown: {e})"));
    eprintln!("==> bench {b} at {ep} ({version})");

    let mut results = Vec::new();
    let floor = rust("floor");
    // A fresh server is cold (ZooKeeper's JVM has not compiled its hot paths yet): warm it
    // up with raw writes, not counted, so that the first implementation measured does not
    // pay for it.
    let warm_up = [(plan.iterations * 5).to_string()];
    one(
        &floor,
        "server warm-up (not counted)",
        b,
        ep,
        "floor",
        &warm_up,
    )
    .await;
    let floor_impl = Impl {
        name: "floor".into(),
        command: floor.clone(),
        herd_own: false,
    };
    let entity_args = plan.entity_args();
    // The timed rows, scenario by scenario. Each runs `plan.rounds` times, every
    // implementation once per round, in an order rotated each round: a disk whose fsync
    // slows down (or speeds up) during the run then moves every implementation alike,
    // where running one implementation's rows after another's made the drift look like a
    // difference between them. The report shows the median round and lists every round.
    let mut rows: Vec<(&str, Vec<String>, Vec<&Impl>)> = Vec::new();
    // queuelock's own requests, raw (etcd and ZooKeeper): beside the floor in the
    // uncontended row, what the store charges for them apart from the client.
    let own_requests = Impl {
        name: "floor: queuelock's requests, raw".into(),
        command: rust("floorq"),
        herd_own: false,
    };
    let with_floor: Vec<&Impl> = std::iter::once(&floor_impl).chain(impls.iter()).collect();
    let mut uncontended = with_floor.clone();
    if matches!(b, "etcd" | "zookeeper") {
        uncontended.insert(1, &own_requests);
    }
    if !plan.contended_only {
        rows.push((
            "uncontended",
            vec![plan.iterations.to_string()],
            uncontended,
        ));
    } else {
        rows.push((
            "uncontended",
            vec![plan.iterations.to_string()],
            vec![&floor_impl],
        ));
    }
    for n in &plan.contenders {
        rows.push((
            "contended",
            vec![n.to_string(), plan.seconds.to_string()],
            impls.iter().collect(),
        ));
    }
    if !plan.contended_only {
        let mut per_entity = with_floor.clone();
        if matches!(b, "etcd" | "zookeeper") {
            per_entity.insert(1, &own_requests);
        }
        rows.push(("per-entity", entity_args.clone(), per_entity));
        rows.push(("herd", vec![plan.herd.to_string()], impls.iter().collect()));
    }
    for (scenario, a, imps) in &rows {
        let mut rounds: Vec<Vec<Value>> = vec![Vec::new(); imps.len()];
        for round in 0..plan.rounds {
            for k in 0..imps.len() {
                let i = (k + round) % imps.len();
                let imp = imps[i];
                // The floor's own scenario is its write pair, in the uncontended row.
                let sc = if std::ptr::eq(imp, &floor_impl) && *scenario == "uncontended" {
                    "floor"
                } else {
                    scenario
                };
                let mut r = one(&imp.command, &imp.name, b, ep, sc, a).await;
                r["impl"] = json!(imp.name);
                r["round"] = json!(round + 1);
                r["position_in_round"] = json!(k + 1);
                rounds[i].push(r);
            }
        }
        for runs in rounds {
            results.push(median_round(runs));
        }
    }
    // Memory rows: counted, not timed; once each.
    if !plan.contended_only {
        for imp in &impls {
            let mut runs: Vec<(&str, Vec<String>)> = Vec::new();
            if imp.herd_own {
                runs.push(("herd", vec![plan.herd.to_string(), "own".into()]));
            }
            runs.push(("footprint", vec![plan.footprint.to_string()]));
            for (scenario, a) in runs {
                let mut r = one(&imp.command, &imp.name, b, ep, scenario, &a).await;
                r["impl"] = json!(imp.name);
                results.push(r);
            }
        }
    }
    let topology = if args.cluster > 1 {
        format!("{}-member cluster", args.cluster)
    } else {
        "single member".to_owned()
    };
    let doc = json!({
        "backend": b,
        "cluster": args.cluster,
        "topology": topology,
        "file_suffix": if args.cluster > 1 { format!("-cluster{}", args.cluster) } else { String::new() },
        "date": args.date,
        "mode": if args.quick { "quick" } else { "full" },
        "server": version,
        "settings": args.settings,
        "machine": args.machine,
        "note": args.note,
        "plan": {
            "iterations": plan.iterations, "contenders": plan.contenders,
            "seconds_per_contended_run": plan.seconds, "herd_waiters": plan.herd,
            "footprint_locks": plan.footprint,
            "per_entity": {
                "names": plan.entity.names, "tasks": plan.entity.tasks,
                "clients": plan.entity.clients, "seconds": plan.entity.seconds,
            },
            "contended_only": plan.contended_only,
            "rounds": plan.rounds,
        },
        "cpu_method": "user+sys CPU time of the harness process (all threads) from \
            /proc/<pid>/stat, read by the driver at the harness's {\"window\": \"start\"} and \
            {\"window\": \"end\"} lines around the measured loop, divided by the grants in it",
        "bench_seconds": crate::scenario::round3(started.elapsed().as_secs_f64()),
        "results": results,
        "unavailable": unavailable,
    });
    crate::report::write(&args.out_dir, &doc)?;
    Ok(())
}

/// The round whose key figure is the median of `runs` (one implementation's rounds of a
/// row), with every round's figure listed: `p50_ms` for latency rows, `grants_per_s`
/// for throughput rows, `drain_s` for the herd. A failed round counts as the worst.
fn median_round(mut runs: Vec<Value>) -> Value {
    let scenario = runs
        .first()
        .and_then(|r| r["scenario"].as_str())
        .unwrap_or("")
        .to_owned();
    let (field, higher_is_better) = match scenario.as_str() {
        "floor" | "uncontended" => ("p50_ms", false),
        "herd" => ("drain_s", false),
        _ => ("grants_per_s", true),
    };
    let key = |r: &Value| {
        let v = r[field].as_f64();
        match (v, higher_is_better) {
            (Some(v), true) => -v,
            (Some(v), false) => v,
            (None, _) => f64::INFINITY,
        }
    };
    let figures: Vec<Value> = runs.iter().map(|r| r[field].clone()).collect();
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let n = runs.len();
    let mut median = runs.swap_remove((n.saturating_sub(1)) / 2);
    if n > 1 {
        median["rounds"] = json!({ "field": field, "values": figures, "shown": "median" });
        if median["impl"] == "floor" {
            median["when"] = json!(format!("in each of {n} rounds, median shown"));
        }
    }
    median
}

/// Runs one scenario in its own process; on failure, a result carrying the error.
async fn one(
    command: &[String],
    name: &str,
    backend: &str,
    endpoint: &str,
    scenario: &str,
    args: &[String],
) -> Value {
    eprintln!("--> {name}: {scenario} {}", args.join(" "));
    let limit = Duration::from_secs(match scenario {
        "footprint" | "herd" => 300,
        _ => 120,
    });
    let t = Instant::now();
    let outcome = tokio::time::timeout(
        limit,
        run_process(command, backend, endpoint, scenario, args),
    )
    .await;
    let mut v = match outcome {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => json!({"scenario": scenario, "error": e.to_string()}),
        Err(_) => json!({"scenario": scenario, "error": format!("timed out after {limit:?}")}),
    };
    if scenario == "contended" && v.get("contenders").is_none() {
        v["contenders"] = json!(args.first().and_then(|a| a.parse::<u64>().ok()));
    }
    if scenario == "herd" && v.get("connections").is_none() {
        v["connections"] = json!(args.get(1).map_or("shared", String::as_str));
    }
    if let Some(e) = v.get("error") {
        eprintln!("    failed: {e}");
    } else {
        eprintln!("    {v}");
    }
    v["wall_s"] = json!(crate::scenario::round3(t.elapsed().as_secs_f64()));
    v
}

async fn run_process(
    command: &[String],
    backend: &str,
    endpoint: &str,
    scenario: &str,
    args: &[String],
) -> BResult<Value> {
    let (prog, rest) = command.split_first().ok_or("empty command")?;
    let notif_before = if scenario == "herd" {
        server::notifications(backend, endpoint).ok()
    } else {
        None
    };
    // PostgreSQL and Redis: the server's own work during the herd (transactions,
    // commands), and on Redis every pub/sub message published (a monitoring subscriber).
    let work_before = if scenario == "herd" && matches!(backend, "postgres" | "redis") {
        server::work(backend, endpoint).await.ok()
    } else {
        None
    };
    let monitor = if scenario == "herd" && backend == "redis" {
        Some(server::PubSubMonitor::start(endpoint).await?)
    } else {
        None
    };
    let sessions_before = if scenario == "footprint" {
        Some(server::sessions(backend, endpoint).await?)
    } else {
        None
    };
    let mut child = tokio::process::Command::new(prog)
        .args(rest)
        .args([backend, endpoint, scenario])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {prog}: {e}"))?;
    let mut stdin = child.stdin.take();
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let pid = child.id();
    let mut result = None;
    let mut sessions_held = None;
    let (mut cpu_start, mut cpu_end) = (None, None);
    while let Some(line) = stdout.next_line().await? {
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            continue;
        };
        if let Some(mark) = v.get("window") {
            let ticks = pid.and_then(cpu_ticks);
            if mark == "start" {
                cpu_start = ticks;
            } else {
                cpu_end = ticks;
            }
        } else if let Some(n) = v.get("holding") {
            let now = server::sessions(backend, endpoint).await?;
            let before = sessions_before.clone().unwrap_or_default();
            sessions_held = Some((now.difference(&before).count(), n.clone()));
            if let Some(mut s) = stdin.take() {
                s.write_all(b"go\n").await?;
                s.flush().await?;
            }
        } else if v.get("scenario").is_some() {
            result = Some(v);
        }
    }
    drop(stdin);
    let status = child.wait().await?;
    let err = err_task.await.unwrap_or_default();
    let mut v = match result {
        Some(v) if status.success() => v,
        _ => {
            let tail: Vec<&str> = err.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!("exit {status}: {}", tail.join(" | ")).into());
        }
    };
    if let Some(before) = notif_before {
        if let Ok(after) = server::notifications(backend, endpoint) {
            let releases = v["releases"].as_f64().unwrap_or(1.0).max(1.0);
            v["server_notifications"] = json!(after - before);
            v["notifications_per_release"] =
                json!(crate::scenario::round3((after - before) / releases));
        }
    }
    if let Some(before) = work_before {
        if let Ok((after, what)) = server::work_after(backend, endpoint).await {
            let waiters = v["waiters"].as_f64().unwrap_or(1.0).max(1.0);
            v["server_work"] = json!(after - before.0);
            v["server_work_per_waiter"] =
                json!(crate::scenario::round3((after - before.0) / waiters));
            v["server_work_counted"] = json!(what);
        }
    }
    if let Some(m) = monitor {
        let published = m.stop().await;
        let releases = v["releases"].as_f64().unwrap_or(1.0).max(1.0);
        v["server_notifications"] = json!(published);
        v["notifications_per_release"] =
            json!(crate::scenario::round3(published as f64 / releases));
        v["notifications_counted"] =
            json!("pub/sub messages published (a PSUBSCRIBE * subscriber in the driver)");
    }
    if let Some((held, _)) = sessions_held {
        v["sessions_on_server"] = json!(held);
    }
    if let (Some(a), Some(b)) = (cpu_start, cpu_end) {
        let cpu_s = b.saturating_sub(a) as f64 / clock_ticks_per_s();
        v["client_cpu_s"] = json!(crate::scenario::round3(cpu_s));
        let grants = v["grants"].as_f64().or_else(|| v["count"].as_f64());
        if let Some(g) = grants.filter(|g| *g > 0.0) {
            v["cpu_us_per_grant"] = json!(crate::scenario::round3(cpu_s * 1e6 / g));
        }
    }
    Ok(v)
}

/// utime + stime of process `pid` in clock ticks (all its threads), from /proc.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The kernel's clock ticks per second for /proc times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks_per_s() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}
