//! The scenarios, written once over [`Locker`] and run for every Rust implementation.
//! The Go, Java and Python harnesses under `bench/peers/` implement the same scenarios
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
    let started = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        op().await?;
        samples.push(ms(t.elapsed()));
    }
    let elapsed = started.elapsed().as_secs_f64();
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

/// Scenario 5 (and the memory half of 6): one holder, `waiters` sessions queued behind it;
/// the holder releases and every waiter releases as soon as it is granted. Reports the
/// drain time (holder's release to the last waiter's release) and the client memory per
/// waiting contender (RSS delta). Notifications are counted on the server by the driver.
pub async fn herd(factory: &dyn Factory, waiters: usize) -> BResult<Value> {
    let name = lock_name("herd");
    let holder = factory.connect_shared().await?;
    let held = holder.lock(&name).await?;
    let rss_before = rss_kib();
    let enqueue_started = Instant::now();
    let mut lockers = Vec::with_capacity(waiters);
    for _ in 0..waiters {
        lockers.push(factory.connect_shared().await?);
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
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        out.insert(
            "rss_kib_per_waiter".into(),
            json!(round3(b.saturating_sub(a) as f64 / waiters as f64)),
        );
    }
    if let (Some(a), Some(b)) = (wakeups_before, factory.client_wakeups()) {
        out.insert("client_wakeups".into(), json!(b - a));
    }
    for l in &lockers {
        l.close().await?;
    }
    holder.close().await?;
    Ok(Value::Object(out))
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
