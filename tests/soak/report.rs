//! The leak check (last third of the run against the first third, and the store after the
//! clients exit), summary.md, samples.csv and a hand-written plot.svg.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::probe::Count;
use crate::Options;

/// One sample: seconds since the clients started, and every metric's value then.
pub struct Sample {
    pub t: f64,
    pub values: BTreeMap<&'static str, f64>,
}

/// What one backend's run produced.
pub struct Run<'a> {
    pub backend: &'static str,
    pub o: &'a Options,
    pub dir: &'a Path,
    pub samples: &'a [Sample],
    pub exits: &'a [Option<i32>],
    pub after: &'a [Count],
    pub after_took: Duration,
    pub after_limit: Duration,
    /// ops, cancellations, errors over the whole run.
    pub totals: (u64, u64, u64),
    pub kinds: &'a BTreeMap<String, u64>,
    pub took: Duration,
    pub pool: usize,
}

pub struct Outcome {
    pub passed: bool,
    pub text: String,
}

/// How a metric's last third is judged against its first third.
#[derive(Clone, Copy, Debug)]
enum Rule {
    /// Last-third median ≤ first-third median × (1 + rel) + abs.
    Growth { rel: f64, abs: f64 },
    /// Last-third median ≤ first-third max × (1 + rel) + abs.
    Ceiling { rel: f64, abs: f64 },
    /// Last-third median > 0 (the run still makes progress).
    Progress,
    /// Last-third median ≤ a fixed bound (records kept by design, one per name at most).
    AtMost(f64),
    /// Shown, not judged.
    Shown,
}

/// What the limits scale with: client processes, and names in the shared pool.
#[derive(Clone, Copy)]
struct Scale {
    clients: f64,
    pool: f64,
}

/// The rule for each metric, at `scale`.
fn rule(metric: &str, scale: Scale) -> Rule {
    let clients = scale.clients;
    match metric {
        // RSS: allocator noise is proportional (arena and heap high-water marks move
        // with the work in flight) plus a few MiB of fixed slop (thread stacks and glibc
        // arenas coming and going); a leak grows without bound, so over a long run it
        // crosses 10% + 4 MiB while noise does not.
        "rss_mean_mib" | "rss_max_mib" => Rule::Growth {
            rel: 0.10,
            abs: 4.0,
        },
        // Counts that move with the work in flight but have a ceiling: sockets, threads
        // (tokio's blocking pool comes and goes), tasks (one per waiter and watch).
        "fds_sum" | "threads_sum" => Rule::Ceiling {
            rel: 0.0,
            abs: 2.0 * clients,
        },
        "fds_max" | "threads_max" => Rule::Ceiling { rel: 0.0, abs: 2.0 },
        "tasks_sum" => Rule::Ceiling {
            rel: 0.10,
            abs: 2.0 * clients,
        },
        "tasks_max" => Rule::Ceiling {
            rel: 0.10,
            abs: 4.0,
        },
        "ops_per_s" => Rule::Progress,
        "clients_alive" | "cancels" | "errors" | "loadavg" => Rule::Shown,
        // Kept by design: a semaphore's stored permit count (one per name ever used as a
        // semaphore) and the token counter. They grow as the run reaches names it had
        // not used yet (slowly, when the load is high), never past one per name.
        "etcd_permit_records" | "pg_kv_rows" | "redis_kept_records" => {
            Rule::AtMost(scale.pool + 1.0)
        }
        // Server-side counts: sessions, leases, nodes, watches, keys, connections.
        _ => Rule::Ceiling {
            rel: 0.10,
            abs: 10.0,
        },
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f64::NAN, f64::max)
}

/// One judged metric.
struct Judged {
    metric: &'static str,
    first_median: f64,
    first_max: f64,
    last_median: f64,
    limit: Option<f64>,
    ok: bool,
}

/// Judges `values` (by sample) over the first and last thirds of the run, by time (`t`
/// of each sample, `span` the run's length): a slow probe skips ticks unevenly.
fn judge(metric: &'static str, t: &[f64], values: &[f64], span: f64, scale: Scale) -> Judged {
    let pick = |keep: &dyn Fn(f64) -> bool| -> Vec<f64> {
        t.iter()
            .zip(values)
            .filter(|(t, _)| keep(**t))
            .map(|(_, v)| *v)
            .collect()
    };
    let first = &pick(&|t| t <= span / 3.0)[..];
    let last = &pick(&|t| t >= span * 2.0 / 3.0)[..];
    let (fmed, fmax, lmed) = (median(first.to_vec()), max(first), median(last.to_vec()));
    let limit = match rule(metric, scale) {
        Rule::Growth { rel, abs } => Some(fmed * (1.0 + rel) + abs),
        Rule::Ceiling { rel, abs } => Some(fmax * (1.0 + rel) + abs),
        Rule::AtMost(bound) => Some(bound),
        Rule::Progress | Rule::Shown => None,
    };
    let ok = match rule(metric, scale) {
        Rule::Progress => lmed > 0.0,
        Rule::Shown => true,
        _ => limit.is_some_and(|l| lmed <= l),
    };
    Judged {
        metric,
        first_median: fmed,
        first_max: fmax,
        last_median: lmed,
        limit,
        ok,
    }
}

/// Samples per third below which the trend is shown but not judged.
const MIN_PER_THIRD: usize = 5;

/// The checker must catch what it is there for: a growing RSS, a task count that climbs,
/// a server count that climbs; flat noisy series must pass.
pub fn self_test() {
    let t: Vec<f64> = (1..=30).map(|i| i as f64).collect();
    let judge = |m: &'static str, v: &[f64], clients: f64| {
        let scale = Scale {
            clients,
            pool: 100.0,
        };
        judge(m, &t[..v.len()], v, v.len() as f64, scale)
    };
    let flat: Vec<f64> = (0..30).map(|i| 40.0 + (i % 3) as f64).collect();
    assert!(judge("rss_mean_mib", &flat, 4.0).ok, "flat RSS flagged");
    let growing: Vec<f64> = (0..30).map(|i| 40.0 + i as f64).collect();
    assert!(
        !judge("rss_mean_mib", &growing, 4.0).ok,
        "growing RSS passed"
    );
    let tasks: Vec<f64> = (0..30).map(|i| 100.0 + 2.0 * i as f64).collect();
    assert!(!judge("tasks_sum", &tasks, 4.0).ok, "climbing tasks passed");
    let leases: Vec<f64> = (0..30).map(|i| 4.0 + i as f64).collect();
    assert!(
        !judge("etcd_leases", &leases, 4.0).ok,
        "climbing leases passed"
    );
    let reached: Vec<f64> = (0..30).map(|i| 40.0 + 2.0 * i as f64).collect();
    assert!(
        judge("pg_kv_rows", &reached, 4.0).ok,
        "permit records of names reached later flagged (bounded by the pool)"
    );
    let past: Vec<f64> = (0..30).map(|i| 40.0 + 5.0 * i as f64).collect();
    assert!(
        !judge("pg_kv_rows", &past, 4.0).ok,
        "more permit records than names passed"
    );
    let noisy: Vec<f64> = (0..30).map(|i| 50.0 + ((i * 7) % 11) as f64).collect();
    assert!(
        judge("zk_watches", &noisy, 4.0).ok,
        "noisy flat watches flagged"
    );
    assert!(
        !judge(
            "ops_per_s",
            &[5.0; 3]
                .iter()
                .chain(&[0.0; 3])
                .copied()
                .collect::<Vec<_>>(),
            4.0
        )
        .ok
    );
}

fn f(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub fn analyse(r: Run<'_>) -> Outcome {
    let o = r.o;
    let scale = Scale {
        clients: o.clients as f64,
        pool: r.pool as f64,
    };
    let metrics: Vec<&'static str> = r
        .samples
        .first()
        .map(|s| s.values.keys().copied().collect())
        .unwrap_or_default();
    let span = o.duration.as_secs_f64();
    let times: Vec<f64> = r.samples.iter().map(|s| s.t).collect();
    let per_third = times
        .iter()
        .filter(|t| **t <= span / 3.0)
        .count()
        .min(times.iter().filter(|t| **t >= span * 2.0 / 3.0).count());
    let trend_judged = per_third >= MIN_PER_THIRD;
    let judged: Vec<Judged> = metrics
        .iter()
        .map(|&m| {
            let v: Vec<f64> = r
                .samples
                .iter()
                .map(|s| s.values.get(m).copied().unwrap_or(f64::NAN))
                .collect();
            judge(m, &times, &v, span, scale)
        })
        .collect();
    let mut failures: Vec<String> = Vec::new();
    if r.samples.len() < 3 {
        failures.push(format!("only {} samples", r.samples.len()));
    }
    for j in &judged {
        let no_data = j.last_median.is_nan() && !matches!(rule(j.metric, scale), Rule::Shown);
        if no_data {
            failures.push(format!(
                "{}: no data (its probe failed every time)",
                j.metric
            ));
        } else if !j.ok && (trend_judged || matches!(rule(j.metric, scale), Rule::Progress)) {
            failures.push(format!(
                "{}: last-third median {} above the limit {}",
                j.metric,
                f(j.last_median),
                j.limit.map_or("-".into(), f)
            ));
        }
    }
    for c in r.after {
        if c.zero_after && c.value != Some(0.0) {
            failures.push(format!(
                "{} is {} {:.1} s after the clients exited (must be 0 within {:?})",
                c.name,
                c.value.map_or("unknown".into(), f),
                r.after_took.as_secs_f64(),
                r.after_limit
            ));
        }
    }
    let bad_exits: Vec<String> = r
        .exits
        .iter()
        .enumerate()
        .filter(|(_, e)| **e != Some(0))
        .map(|(i, e)| {
            format!(
                "client {i} {}",
                e.map_or("hung (killed)".into(), |c| format!("exited {c}"))
            )
        })
        .collect();
    if !bad_exits.is_empty() {
        failures.push(format!(
            "{} (logs: {}/client<i>.log)",
            bad_exits.join(", "),
            r.dir.display()
        ));
    }
    let passed = failures.is_empty();

    write_csv(&r.dir.join("samples.csv"), &metrics, r.samples);
    std::fs::write(r.dir.join("plot.svg"), svg(&r, &metrics)).expect("write plot.svg");

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Soak: {} — {}\n",
        r.backend,
        if passed { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(
        md,
        "{}{} s ({} s wall with start-up and clean-up), {} client processes × {} lock names \
         × {} tasks, {} names in the shared pool (each used by up to 4 clients), session TTL \
         {:?}, sample every {:?} ({} samples), seed {}.\n",
        if o.smoke { "Smoke run: " } else { "" },
        o.duration.as_secs(),
        r.took.as_secs(),
        o.clients,
        o.locks,
        o.tasks,
        r.pool,
        o.ttl,
        o.sample,
        r.samples.len(),
        o.seed
    );
    let (ops, cancels, errors) = r.totals;
    let load = median(
        r.samples
            .iter()
            .filter_map(|s| s.values.get("loadavg").copied())
            .collect(),
    );
    let _ = writeln!(
        md,
        "Work: {ops} acquire→hold→release cycles ({:.0}/s), {cancels} attempts cancelled \
         mid-wait, {errors} errors; machine load average (1 min) median {}.\n",
        ops as f64 / o.duration.as_secs_f64(),
        f(load)
    );
    let _ = writeln!(
        md,
        "Rules: RSS (mean and max per client): last-third median ≤ first-third median × 1.10 \
         + 4 MiB. fds, threads: last-third median ≤ first-third max + 2 per client. Tokio \
         alive tasks (`RuntimeMetrics::num_alive_tasks`): ≤ first-third max × 1.10 + 2 per \
         client. Server counts: ≤ first-third max × 1.10 + 10; records kept by design (permit \
         counts, the token counter): ≤ one per name in the pool + 1. ops/s: last third > \
         0.{}\n",
        if trend_judged {
            String::new()
        } else {
            format!(
                " **Trend not judged** ({per_third} samples per third, fewer than \
                 {MIN_PER_THIRD}: too short to tell growth from warm-up); shown only."
            )
        }
    );
    let _ = writeln!(
        md,
        "| metric | first third median | first third max | last third median | limit | verdict |\n\
         |---|---:|---:|---:|---:|---|"
    );
    for j in &judged {
        let verdict = match (rule(j.metric, scale), j.ok) {
            (Rule::Shown, _) => "shown",
            (_, true) => "ok",
            (Rule::Progress, false) => "FAIL",
            (_, false) if trend_judged => "FAIL",
            (_, false) => "above (not judged)",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {verdict} |",
            j.metric,
            f(j.first_median),
            f(j.first_max),
            f(j.last_median),
            j.limit.map_or("-".into(), f)
        );
    }
    let _ = writeln!(
        md,
        "\nAfter the clients closed their Clients and exited ({:.1} s later; limit TTL + 20 s \
         = {:?}):\n\n| server count | value | must be 0 |\n|---|---:|---|",
        r.after_took.as_secs_f64(),
        r.after_limit
    );
    for c in r.after {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            c.name,
            c.value.map_or("unknown".into(), f),
            if c.zero_after {
                "yes"
            } else {
                kept_why(c.name)
            }
        );
    }
    let _ = writeln!(
        md,
        "\nClient processes: {} of {} exited 0 after closing their Client.",
        r.exits.iter().filter(|e| **e == Some(0)).count(),
        r.exits.len()
    );
    if !r.kinds.is_empty() {
        let mut k: Vec<(&String, &u64)> = r.kinds.iter().collect();
        k.sort_by(|a, b| b.1.cmp(a.1));
        let _ = writeln!(md, "\nErrors by kind (counted, not fatal):\n");
        for (text, n) in k.iter().take(12) {
            let _ = writeln!(md, "- {n} × `{}`", text.replace('`', "'"));
        }
    }
    if !passed {
        let _ = writeln!(md, "\nFailures:\n");
        for x in &failures {
            let _ = writeln!(md, "- {x}");
        }
    }
    let _ = writeln!(md, "\n![metrics over time](plot.svg)");
    std::fs::write(r.dir.join("summary.md"), &md).expect("write summary.md");

    let mut text = format!(
        "soak {}: {} — {ops} cycles, {cancels} cancelled, {errors} errors; results in {}",
        r.backend,
        if passed { "PASS" } else { "FAIL" },
        r.dir.display()
    );
    for x in &failures {
        let _ = write!(text, "\n  LEAK CHECK FAILED: {x}");
    }
    if !trend_judged {
        let _ = write!(
            text,
            "\n  (trend shown, not judged: {per_third} samples per third)"
        );
    }
    Outcome { passed, text }
}

/// Why a server count need not return to 0.
fn kept_why(name: &str) -> &'static str {
    match name {
        "zk_znodes" => "no: queue parent znodes and stored permit counts persist by design",
        "pg_sessions_expired" => {
            "no: rows of sessions that expired mid-run, deleted by the next client's sweep"
        }
        "redis_kept_records" => "no: the token counter and stored permit counts persist by design",
        _ => "no: a semaphore's stored permit count persists by design",
    }
}

fn write_csv(path: &Path, metrics: &[&'static str], samples: &[Sample]) {
    let mut s = String::from("t_s");
    for m in metrics {
        let _ = write!(s, ",{m}");
    }
    s.push('\n');
    for x in samples {
        let _ = write!(s, "{:.1}", x.t);
        for m in metrics {
            match x.values.get(m) {
                Some(v) if v.is_finite() => {
                    let _ = write!(s, ",{v:.2}");
                }
                _ => s.push(','),
            }
        }
        s.push('\n');
    }
    std::fs::write(path, s).expect("write samples.csv");
}

/// One small panel per metric: its series over time, the first and last thirds shaded.
fn svg(r: &Run<'_>, metrics: &[&'static str]) -> String {
    let (pw, ph, cols) = (300.0, 150.0, 3usize);
    let rows = metrics.len().div_ceil(cols);
    let (w, h) = (pw * cols as f64 + 20.0, ph * rows as f64 + 50.0);
    let tmax = r.samples.last().map_or(1.0, |s| s.t).max(1.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"15\">soak {}: {} clients × {} \
         locks, {} s (shaded: the first and last thirds the leak check compares)</text>\n",
        r.backend,
        r.o.clients,
        r.o.locks,
        r.o.duration.as_secs()
    );
    for (i, m) in metrics.iter().enumerate() {
        let (x0, y0) = (
            10.0 + pw * (i % cols) as f64 + 45.0,
            40.0 + ph * (i / cols) as f64 + 18.0,
        );
        let (iw, ih) = (pw - 60.0, ph - 45.0);
        let pts: Vec<(f64, f64)> = r
            .samples
            .iter()
            .filter_map(|x| x.values.get(m).filter(|v| v.is_finite()).map(|v| (x.t, *v)))
            .collect();
        let ymax = pts.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1.0) * 1.1;
        let px = |t: f64| x0 + iw * t / tmax;
        let py = |v: f64| y0 + ih - ih * v / ymax;
        let third = tmax / 3.0;
        let _ = writeln!(
            s,
            "<text x=\"{x0}\" y=\"{}\" font-weight=\"bold\">{m}</text>\n\
             <rect x=\"{x0}\" y=\"{y0}\" width=\"{:.1}\" height=\"{ih}\" fill=\"#eef\"/>\n\
             <rect x=\"{:.1}\" y=\"{y0}\" width=\"{:.1}\" height=\"{ih}\" fill=\"#fee\"/>\n\
             <rect x=\"{x0}\" y=\"{y0}\" width=\"{iw}\" height=\"{ih}\" fill=\"none\" stroke=\"#888\"/>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\n\
             <text x=\"{x0}\" y=\"{}\">0 s</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0} s</text>",
            y0 - 5.0,
            px(third) - x0,
            px(2.0 * third),
            px(tmax) - px(2.0 * third),
            x0 - 4.0,
            y0 + 9.0,
            f(ymax / 1.1),
            x0 - 4.0,
            y0 + ih,
            y0 + ih + 13.0,
            x0 + iw,
            y0 + ih + 13.0,
            tmax
        );
        if !pts.is_empty() {
            let line: Vec<String> = pts
                .iter()
                .map(|&(t, v)| format!("{:.1},{:.1}", px(t), py(v)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"1.5\" points=\"{}\"/>",
                line.join(" ")
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
