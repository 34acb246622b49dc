//! The scenarios, written once over [`Locker`] and run for every Rust implementation.
//! The Go, Java, Python and node harnesses under `bench/peers/` implement the same scenarios
//! with the same command line and print the same JSON shape (see `bench/peers/README.md`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

/// Errors of the harness (any implementation's error, as text).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The harness result type.
pub type BResult<T> = std::result::Result<T, BoxError>;

/// One contender: a session (etcd lease, ZooKeeper session) that takes locks.
#[async_trait]
pub trait Locker: Send + Sync {
    /// Waits for the lock `name` and returns the held lock.
    async fn lock(&self, name: &str) -> BResult<Box<dyn Held>>;
    /// Ends the session.
    async fn close(&self) -> BResult<()>;
}

/// A held lock.
#[async_trait]
pub trait Held: Send {
    /// Releases it.
    async fn release(self: Box<Self>) -> BResult<()>;
}

/// Opens sessions for one implementation.
#[async_trait]
pub trait Factory: Send + Sync {
    /// A new session (its own connection where the implementation has one per session).
    async fn connect(&self) -> BResult<Arc<dyn Locker>>;
    /// A new session that may share the process's connection (for 1,000 waiters).
    async fn connect_shared(&self) -> BResult<Arc<dyn Locker>> {
        self.connect().await
    }
    /// Notifications this process's clients counted, when the implementation counts them.
    fn client_wakeups(&self) -> Option<u64> {
        None
    }
    /// Notifications this process's listeners received, where the server counts none
    /// itself (PostgreSQL's NOTIFY).
    fn notifications_received(&self) -> Option<u64> {
        None
    }
    /// How the herd's waiting contenders share connections (for the memory row), with
    /// `own` the connection-per-contender mode of [`herd`].
    fn sharing(&self, own: bool) -> &'static str;
}

/// Marks the start or the end of the measured window on stdout (`{"window": "start"}`):
/// the driver reads the process's CPU time (`/proc/<pid>/stat`) at each mark, so that the
/// client CPU per grant leaves out start-up and clean-up. Every harness prints the same.
pub fn window(mark: &str) {
    println!("{}", json!({ "window": mark }));
}

/// p50, p99 and max of `samples` (milliseconds), as JSON fields with `prefix`.
pub fn percentiles(prefix: &str, samples: &mut [f64]) -> serde_json::Map<String, Value> {
    samples.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| -> Value {
        if samples.is_empty() {
            return Value::Null;
        }
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        json!(round3(samples[i]))
    };
    let mut m = serde_json::Map::new();
    m.insert(format!("{prefix}p50_ms"), pick(0.50));
    m.insert(format!("{prefix}p99_ms"), pick(0.99));
    m.insert(format!("{prefix}max_ms"), pick(1.0));
    m
}

/// `x` rounded to three decimals (for readable JSON).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A unique lock name for one scenario run.
pub fn lock_name(scenario: &str) -> String {
    format!("bench/{scenario}-{}", std::process::id())
}

/// Times `op` `iterations` times after a few warm-up rounds.
pub async fn time_loop<F, Fut>(iterations: usize, mut op: F) -> BResult<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BResult<()>>,
{
    for _ in 0..iterations.min(5) {
        op().await?;
    }
    let mut samples = Vec::with_capacity(iterations);
    window("start");
    let started = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        op().await?;
        samples.push(ms(t.elapsed()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    window("end");
    let mut out = percentiles("", &mut samples);
    out.insert("count".into(), json!(iterations));
    out.insert(
        "ops_per_s".into(),
        json!(round3(iterations as f64 / elapsed)),
    );
    Ok(Value::Object(out))
}

/// Scenario 2: `lock()` + `release()` in a loop, one client.
pub async fn uncontended(factory: &dyn Factory, iterations: usize) -> BResult<Value> {
    let locker = factory.connect().await?;
    let name = lock_name("uncontended");
    let mut out = time_loop(iterations, || {
        let (locker, name) = (locker.clone(), name.clone());
        async move { locker.lock(&name).await?.release().await }
    })
    .await?;
    locker.close().await?;
    out["scenario"] = json!("uncontended");
    Ok(out)
}

/// Who released last and when (for handoff latency).
#[derive(Clone, Copy)]
struct LastRelease {
    at: Instant,
    by: usize,
}

/// Scenarios 3 and 4: `contenders` sessions on one lock for `seconds`; grants per second,
/// fairness (max/min grants per contender), wait latency per grant, and handoff latency
/// (a holder's release call to the next grant of a contender that was already waiting).
pub async fn contended(factory: &dyn Factory, contenders: usize, seconds: f64) -> BResult<Value> {
    let name = lock_name(&format!("contended{contenders}"));
    let mut lockers = Vec::with_capacity(contenders);
    for _ in 0..contenders {
        lockers.push(factory.connect().await?);
    }
    // Every session open and the lock path created before the clock starts.
    for l in &lockers {
        l.lock(&name).await?.release().await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let last: Arc<StdMutex<Option<LastRelease>>> = Arc::new(StdMutex::new(None));
    window("start");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (id, l) in lockers.iter().enumerate() {
        let (l, name, stop, last) = (l.clone(), name.clone(), stop.clone(), last.clone());
        tasks.push(tokio::spawn(async move {
            let (mut grants, mut waits, mut handoffs) = (0u64, Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let held = l.lock(&name).await?;
                let granted = Instant::now();
                grants += 1;
                waits.push(ms(granted - asked));
                let prev = *last.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(prev) = prev {
                    if prev.by != id && prev.at >= asked {
                        handoffs.push(ms(granted - prev.at));
                    }
                }
                // The tiny critical section is the bookkeeping above.
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastRelease {
                    at: Instant::now(),
                    by: id,
                });
                held.release().await?;
            }
            Ok::<_, BoxError>((grants, waits, handoffs))
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut per, mut waits, mut handoffs) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        let (g, w, h) = t.await??;
        per.push(g);
        waits.extend(w);
        handoffs.extend(h);
    }
    let elapsed = started.elapsed().as_secs_f64();
    window("end");
    for l in &lockers {
        l.close().await?;
    }
    let total: u64 = per.iter().sum();
    let (max, min) = (
        per.iter().max().copied().unwrap_or(0),
        per.iter().min().copied().unwrap_or(0),
    );
    let mut out = serde_json::Map::new();
    out.insert("scenario".into(), json!("contended"));
    out.insert("contenders".into(), json!(contenders));
    out.insert("seconds".into(), json!(round3(elapsed)));
    out.insert("grants".into(), json!(total));
    out.insert("grants_per_s".into(), json!(round3(total as f64 / elapsed)));
    out.insert(
        "fairness".into(),
        if min == 0 {
            Value::Null
        } else {
            json!(round3(max as f64 / min as f64))
        },
    );
    out.insert("per_contender".into(), json!(per));
    out.extend(percentiles("wait_", &mut waits));
    out.insert("handoffs".into(), json!(handoffs.len()));
    out.extend(percentiles("handoff_", &mut handoffs));
    Ok(Value::Object(out))
}

/// This process's resident set size in KiB (Linux).
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Bytes currently allocated on the heap, when the harness runs under dhat (feature
/// `dhat-heap`); `None` otherwise.
pub fn heap_bytes() -> Option<u64> {
    #[cfg(feature = "dhat-heap")]
    {
        Some(dhat::HeapStats::get().curr_bytes as u64)
    }
    #[cfg(not(feature = "dhat-heap"))]
    {
        None
    }
}

/// Scenario 5 (and the memory half of 6): one holder, `waiters` sessions queued behind it;
/// the holder releases and every waiter releases as soon as it is granted. Reports the
/// drain time (holder's release to the last waiter's release) and the client memory per
/// waiting contender (RSS delta). Notifications are counted on the server by the driver.
/// `own`: every waiter opens its own connection ([`Factory::connect`]) instead of a
/// session on the process's shared one ([`Factory::connect_shared`]).
pub async fn herd(factory: &dyn Factory, waiters: usize, own: bool) -> BResult<Value> {
    let name = lock_name(if own { "herd-own" } else { "herd" });
    let notified_before = factory.notifications_received();
    let holder = factory.connect_shared().await?;
    let held = holder.lock(&name).await?;
    let rss_before = rss_kib();
    let heap_before = heap_bytes();
    let enqueue_started = Instant::now();
    let mut lockers = Vec::with_capacity(waiters);
    for _ in 0..waiters {
        lockers.push(if own {
            factory.connect().await?
        } else {
            factory.connect_shared().await?
        });
    }
    let (called_tx, mut called_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for l in &lockers {
        let (l, name, called_tx) = (l.clone(), name.clone(), called_tx.clone());
        tasks.push(tokio::spawn(async move {
            let fut = l.lock(&name);
            let _ = called_tx.send(());
            fut.await?.release().await?;
            Ok::<_, BoxError>(Instant::now())
        }));
    }
    for _ in 0..waiters {
        called_rx.recv().await;
    }
    // The lock calls are in flight; give every waiter time to reach the queue.
    tokio::time::sleep(Duration::from_millis(500 + waiters as u64 * 2)).await;
    let enqueue_s = enqueue_started.elapsed().as_secs_f64();
    let rss_after = rss_kib();
    let heap_after = heap_bytes();
    let wakeups_before = factory.client_wakeups();
    let released_at = Instant::now();
    held.release().await?;
    let mut last = released_at;
    for t in tasks {
        last = last.max(t.await??);
    }
    let drain_s = (last - released_at).as_secs_f64();
    let mut out = serde_json::Map::new();
    out.insert("scenario".into(), json!("herd"));
    out.insert("waiters".into(), json!(waiters));
    out.insert("releases".into(), json!(waiters + 1));
    out.insert("drain_s".into(), json!(round3(drain_s)));
    out.insert("enqueue_s".into(), json!(round3(enqueue_s)));
    out.insert(
        "connections".into(),
        json!(if own { "own" } else { "shared" }),
    );
    out.insert("sharing".into(), json!(factory.sharing(own)));
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        out.insert(
            "rss_kib_per_waiter".into(),
            json!(round3(b.saturating_sub(a) as f64 / waiters as f64)),
        );
    }
    if let (Some(a), Some(b)) = (heap_before, heap_after) {
        out.insert(
            "heap_kib_per_waiter".into(),
            json!(round3(b.saturating_sub(a) as f64 / 1024.0 / waiters as f64)),
        );
    }
    if let (Some(a), Some(b)) = (wakeups_before, factory.client_wakeups()) {
        out.insert("client_wakeups".into(), json!(b - a));
    }
    if let (Some(a), Some(b)) = (notified_before, factory.notifications_received()) {
        // The whole herd (queueing, releases), counted where it arrives: every LISTEN
        // connection involved is this process's shared one.
        out.insert("listener_notifications".into(), json!(b - a));
        out.insert(
            "notifications_per_release".into(),
            json!(round3((b - a) as f64 / (waiters + 1) as f64)),
        );
        out.insert(
            "notifications_counted".into(),
            json!("NOTIFYs received by the harness's LISTEN connection"),
        );
    }
    for l in &lockers {
        l.close().await?;
    }
    holder.close().await?;
    Ok(Value::Object(out))
}

/// A small, fast pseudo-random generator (xorshift64*) for picking names: uniform enough
/// for a benchmark, no dependency, and a different stream per task.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `0..n` (`n` > 0; the modulo bias is below 1e-15 for the sizes used).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

/// The shape of a per-entity run: `tasks` concurrent tasks over `clients` clients, each
/// looping on a uniformly random one of `names` names for `seconds`.
#[derive(Clone, Copy)]
pub struct PerEntity {
    /// Distinct lock names.
    pub names: usize,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Clients (sessions/connections); task `i` uses client `i % clients`.
    pub clients: usize,
    /// Measured duration.
    pub seconds: f64,
}

impl PerEntity {
    /// Parses `NAMES TASKS CLIENTS SECONDS` (the harness command line).
    pub fn parse(args: &[String]) -> BResult<Self> {
        let get = |i: usize, what: &str| -> BResult<&String> {
            args.get(i).ok_or_else(|| {
                format!("per-entity: missing {what} (NAMES TASKS CLIENTS SECONDS)").into()
            })
        };
        let count = |i: usize, what: &str| -> BResult<usize> {
            let n: usize = get(i, what)?
                .parse()
                .map_err(|e| format!("per-entity: bad {what}: {e}"))?;
            if n == 0 {
                return Err(format!("per-entity: {what} must be at least 1").into());
            }
            Ok(n)
        };
        let seconds: f64 = get(3, "SECONDS")?
            .parse()
            .map_err(|e| format!("per-entity: bad SECONDS: {e}"))?;
        if !(seconds > 0.0 && seconds.is_finite()) {
            return Err("per-entity: SECONDS must be positive".into());
        }
        Ok(PerEntity {
            names: count(0, "NAMES")?,
            tasks: count(1, "TASKS")?,
            clients: count(2, "CLIENTS")?,
            seconds,
        })
    }

    /// The result document of a run (shared by the locks and the floor).
    pub fn result(&self, elapsed: f64, ops: u64, mut latencies: Vec<f64>) -> Value {
        let mut out = serde_json::Map::new();
        out.insert("scenario".into(), json!("per-entity"));
        out.insert("names".into(), json!(self.names));
        out.insert("tasks".into(), json!(self.tasks));
        out.insert("clients".into(), json!(self.clients));
        out.insert("seconds".into(), json!(round3(elapsed)));
        out.insert("grants".into(), json!(ops));
        out.insert("grants_per_s".into(), json!(round3(ops as f64 / elapsed)));
        out.extend(percentiles("acquire_", &mut latencies));
        Value::Object(out)
    }
}

/// Runs `tasks` copies of `op(task, rng)` concurrently for `seconds`, timing each call:
/// the loop of the per-entity scenario and of its floor. Returns the elapsed seconds, the
/// calls made and every call's latency (ms).
pub async fn timed_tasks<F, Fut>(tasks: usize, seconds: f64, op: F) -> BResult<(f64, u64, Vec<f64>)>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = BResult<()>> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    window("start");
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let (op, stop) = (op.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let mut rng = Rng::new(std::process::id() as u64 * 1_000_003 + task as u64);
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let pick = rng.below(usize::MAX);
                let t = Instant::now();
                op(task, pick).await?;
                samples.push(ms(t.elapsed()));
            }
            Ok::<_, BoxError>(samples)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    window("end");
    let n = all.len() as u64;
    Ok((elapsed, n, all))
}

/// Per-entity locks: `shape.tasks` tasks over `shape.clients` sessions, each looping
/// acquire -> release on a uniformly random one of `shape.names` names. Grants per second
/// and acquire latency (the lock call; the release is not in it).
pub async fn per_entity(factory: &dyn Factory, shape: PerEntity) -> BResult<Value> {
    let prefix = lock_name("entity");
    let mut lockers = Vec::with_capacity(shape.clients);
    for _ in 0..shape.clients {
        lockers.push(factory.connect().await?);
    }
    let lockers = Arc::new(lockers);
    let acquire_ms = Arc::new(StdMutex::new(Vec::new()));
    let (l, a, p) = (lockers.clone(), acquire_ms.clone(), prefix.clone());
    let (elapsed, grants, _) = timed_tasks(shape.tasks, shape.seconds, move |task, pick| {
        let (l, a) = (l[task % l.len()].clone(), a.clone());
        let name = format!("{p}/e{}", pick % shape.names);
        async move {
            let t = Instant::now();
            let held = l.lock(&name).await?;
            let waited = ms(t.elapsed());
            a.lock().unwrap_or_else(|p| p.into_inner()).push(waited);
            held.release().await
        }
    })
    .await?;
    for l in lockers.iter() {
        l.close().await?;
    }
    let samples = std::mem::take(&mut *acquire_ms.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(shape.result(elapsed, grants, samples))
}

/// Scenario 6 (sessions half): one client takes `locks` different locks and holds them;
/// prints `{"holding": N}` and waits for a line on stdin (the driver counts the sessions
/// on the server meanwhile), then releases them.
pub async fn footprint(factory: &dyn Factory, locks: usize) -> BResult<Value> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let locker = factory.connect_shared().await?;
    let prefix = lock_name("footprint");
    let started = Instant::now();
    let held: Vec<Box<dyn Held>> = stream::iter(0..locks)
        .map(|i| {
            let (locker, name) = (locker.clone(), format!("{prefix}/{i}"));
            async move { locker.lock(&name).await }
        })
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let acquire_s = started.elapsed().as_secs_f64();
    println!("{}", json!({ "holding": held.len() }));
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    tokio::io::AsyncBufReadExt::read_line(&mut stdin, &mut line).await?;
    stream::iter(held)
        .map(|h| h.release())
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    locker.close().await?;
    Ok(json!({"scenario": "footprint", "locks": locks, "acquire_s": round3(acquire_s)}))
}
