//! A soak client process: ONE `queuelock::Client`, many tasks looping over random
//! recipes on its share of the lock names, a JSON report line on stdout every sample
//! period, a clean `close()` at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queuelock::Client;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The environment variable that makes this binary a client.
pub const ROLE: &str = "QUEUELOCK_SOAK_ROLE";

/// What the driver passes a client (through the environment).
pub struct ClientArgs {
    pub index: usize,
    pub url: String,
    /// Names `first .. first + locks` (mod `pool`) of the shared pool are this client's.
    pub first: usize,
    pub locks: usize,
    pub pool: usize,
    pub tasks: usize,
    pub duration: Duration,
    pub sample: Duration,
    pub seed: u64,
}

impl ClientArgs {
    pub fn to_env(&self) -> Vec<(String, String)> {
        [
            ("INDEX", self.index.to_string()),
            ("URL", self.url.clone()),
            ("FIRST", self.first.to_string()),
            ("LOCKS", self.locks.to_string()),
            ("POOL", self.pool.to_string()),
            ("TASKS", self.tasks.to_string()),
            ("DURATION_MS", self.duration.as_millis().to_string()),
            ("SAMPLE_MS", self.sample.as_millis().to_string()),
            ("SEED", self.seed.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("QUEUELOCK_SOAK_{k}"), v))
        .collect()
    }

    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var(format!("QUEUELOCK_SOAK_{k}"))
                .unwrap_or_else(|_| panic!("QUEUELOCK_SOAK_{k} not set"))
        };
        let num = |k: &str| -> u64 { var(k).parse().unwrap_or_else(|_| panic!("{k}")) };
        ClientArgs {
            index: num("INDEX") as usize,
            url: var("URL"),
            first: num("FIRST") as usize,
            locks: num("LOCKS") as usize,
            pool: num("POOL") as usize,
            tasks: num("TASKS") as usize,
            duration: Duration::from_millis(num("DURATION_MS")),
            sample: Duration::from_millis(num("SAMPLE_MS")),
            seed: num("SEED"),
        }
    }
}

/// The recipe a pool name is used with (fixed per name: a name is one kind of queue, and
/// a semaphore name keeps one permit count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    Mutex,
    RwLock,
    Semaphore(u32),
    Election,
}

pub fn recipe_of(name_index: usize) -> Recipe {
    match name_index % 4 {
        0 => Recipe::Mutex,
        1 => Recipe::RwLock,
        2 => Recipe::Semaphore(2 + (name_index / 4 % 3) as u32),
        _ => Recipe::Election,
    }
}

pub fn name_of(name_index: usize) -> String {
    format!("soak/n{name_index}")
}

/// How often an attempt is cancelled mid-wait (its future dropped after a random delay).
const CANCEL_ONE_IN: u32 = 5;
/// How long an uncancelled attempt may wait before it counts as an error.
const ACQUIRE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    cancels: AtomicU64,
    errors: AtomicU64,
    kinds: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut text = format!("{what}: {e}");
        text.truncate(120);
        *self.kinds.lock().expect("kinds").entry(text).or_default() += 1;
    }
}

/// One report line (the driver parses it).
fn report(c: &Counters, index: usize, last: bool) -> String {
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let mut v = serde_json::json!({
        "c": index,
        "ops": c.ops.load(Ordering::Relaxed),
        "cancels": c.cancels.load(Ordering::Relaxed),
        "errors": c.errors.load(Ordering::Relaxed),
        "tasks": tasks,
        "last": last,
    });
    if last {
        v["kinds"] = serde_json::json!(*c.kinds.lock().expect("kinds"));
    }
    v.to_string()
}

/// Runs the client; the exit status is the verdict on it (0: it ran and closed cleanly).
pub async fn run(a: ClientArgs) -> i32 {
    let client = match Client::connect(&a.url).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("soak client {}: connect: {e}", a.index);
            return 3;
        }
    };
    let counters = Arc::new(Counters::default());
    let stop = Instant::now() + a.duration;
    let reporter = {
        // Several reports per driver sample, so that each sample sees a fresh one.
        let period = (a.sample / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let (c, index) = (counters.clone(), a.index);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                println!("{}", report(&c, index, false));
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..a.tasks {
        let (client, c) = (client.clone(), counters.clone());
        let names: Vec<usize> = (0..a.locks).map(|j| (a.first + j) % a.pool).collect();
        let seed = a.seed ^ ((a.index as u64) << 32) ^ t as u64;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while Instant::now() < stop {
                let n = names[rng.random_range(0..names.len())];
                attempt(&client, &c, &mut rng, n, stop).await;
            }
        }));
    }
    let mut code = 0;
    for t in tasks {
        if let Err(e) = t.await {
            eprintln!("soak client {}: a task failed: {e}", a.index);
            code = 4;
        }
    }
    reporter.abort();
    let _ = reporter.await;
    if let Err(e) = client.close().await {
        eprintln!("soak client {}: close: {e}", a.index);
        code = 5;
    }
    drop(client);
    println!("{}", report(&counters, a.index, true));
    code
}

/// One attempt: acquire (maybe cancelled), hold 0–200 ms, release.
async fn attempt(
    client: &Client,
    c: &Counters,
    rng: &mut rand::rngs::StdRng,
    n: usize,
    stop: Instant,
) {
    let name = name_of(n);
    let recipe = recipe_of(n);
    let cancel_after = (rng.random_range(0..CANCEL_ONE_IN) == 0)
        .then(|| Duration::from_millis(rng.random_range(0..300)));
    let hold = Duration::from_millis(rng.random_range(0..=200));
    let read = rng.random_bool(0.7);
    // The wait ends at the cancel point, the stop time or the acquire limit.
    let limit = cancel_after.unwrap_or(ACQUIRE_LIMIT);
    let limit = limit.min(stop.saturating_duration_since(Instant::now()));
    let cancelled = |c: &Counters| {
        c.cancels.fetch_add(1, Ordering::Relaxed);
    };
    macro_rules! run_guard {
        ($what:expr, $acquire:expr, $release:ident) => {{
            match tokio::time::timeout(limit, $acquire).await {
                Ok(Ok(g)) => {
                    tokio::time::sleep(hold).await;
                    match g.$release().await {
                        Ok(()) => {
                            c.ops.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => c.error(concat!($what, " release"), e),
                    }
                }
                Ok(Err(e)) => {
                    c.error(concat!($what, " acquire"), e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) if cancel_after.is_some() || Instant::now() >= stop => cancelled(c),
                Err(_) => c.error($what, "no grant within the acquire limit"),
            }
        }};
    }
    match recipe {
        Recipe::Mutex => match client.mutex(&name) {
            Ok(m) => run_guard!("mutex", m.lock(), release),
            Err(e) => c.error("mutex handle", e),
        },
        Recipe::RwLock => match client.rwlock(&name) {
            Ok(l) if read => run_guard!("rwlock read", l.read(), release),
            Ok(l) => run_guard!("rwlock write", l.write(), release),
            Err(e) => c.error("rwlock handle", e),
        },
        Recipe::Semaphore(permits) => match client.semaphore(&name, permits) {
            Ok(s) => run_guard!("semaphore", s.acquire(), release),
            Err(e) => c.error("semaphore handle", e),
        },
        Recipe::Election => match client.election(&name) {
            Ok(e) => run_guard!("election", e.campaign(b"soak".to_vec()), resign),
            Err(e) => c.error("election handle", e),
        },
    }
}
