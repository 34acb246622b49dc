//! The nemesis: one fault at a time, kinds in a shuffled rotation, random durations and
//! quiet gaps, until the stop time; every fault healed before it returns.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::history::{now_us, Fault};
use crate::support::Cluster;
use queuelock::backend::testkit::proxy::{Mode, Proxy};

pub const KINDS: [&str; 6] = [
    "leader-kill",
    "freeze",
    "blackhole",
    "drop",
    "delay",
    "admin-expire",
];

pub struct Nemesis {
    pub cluster: Box<dyn Cluster + Send>,
    /// Per worker: its proxies, one per cluster member.
    pub proxies: Vec<Vec<Proxy>>,
    pub pids: Vec<u32>,
    pub ttl: Duration,
    pub rng: StdRng,
    /// Faults the backend cannot have, with why.
    pub unavailable: Vec<(String, String)>,
    /// Workers the nemesis itself has frozen right now.
    pub frozen: Arc<StdMutex<HashSet<usize>>>,
}

/// Who touched the register last and how long ago (µs): the driver's view of it.
pub type HolderHint<'a> = &'a (dyn Fn() -> Option<(usize, u64)> + Sync);

/// The queue's head node key right now (for an operator's expiry).
pub type HeadKey<'a> = &'a (dyn Fn() -> futures::future::BoxFuture<'static, Option<String>> + Sync);

impl Nemesis {
    pub fn new(
        cluster: Box<dyn Cluster + Send>,
        proxies: Vec<Vec<Proxy>>,
        pids: Vec<u32>,
        ttl: Duration,
        seed: u64,
    ) -> Self {
        Nemesis {
            cluster,
            proxies,
            pids,
            ttl,
            rng: StdRng::seed_from_u64(seed),
            unavailable: Vec::new(),
            frozen: Arc::default(),
        }
    }

    fn ms(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        Duration::from_millis(self.rng.random_range(lo..=hi.max(lo)))
    }

    /// A worker: most often a holder caught in the middle of a long critical section
    /// (no register access for a while), where faults hurt most; else any.
    async fn target(&mut self, hint: HolderHint<'_>) -> usize {
        if self.rng.random_bool(0.7) {
            let give_up = now_us() + 5_000_000;
            while now_us() < give_up {
                match hint() {
                    Some((w, age)) if age > 60_000 => return w,
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
        self.rng.random_range(0..self.pids.len())
    }

    fn set_links(&self, w: usize, m: Mode) {
        for p in &self.proxies[w] {
            p.set(m);
        }
    }

    pub async fn run(
        &mut self,
        stop_at: u64,
        hint: HolderHint<'_>,
        head: HeadKey<'_>,
    ) -> Vec<Fault> {
        let mut faults = Vec::new();
        let mut rotation: Vec<&str> = Vec::new();
        let ttl = self.ttl;
        loop {
            let quiet = self.ms(Duration::from_millis(500), Duration::from_secs(4));
            tokio::time::sleep(quiet).await;
            if now_us() >= stop_at {
                break;
            }
            if rotation.is_empty() {
                rotation = KINDS.to_vec();
                rotation.shuffle(&mut self.rng);
            }
            let kind = rotation.pop().expect("kind");
            let t0 = now_us();
            let fault = |worker: Option<usize>, detail: String, session: Option<u64>| Fault {
                kind: kind.to_owned(),
                worker,
                detail,
                session,
                t0,
                t1: now_us(),
            };
            let f = match kind {
                "leader-kill" => {
                    let down = self.ms(Duration::from_millis(500), Duration::from_secs(5));
                    let leader = tokio::task::block_in_place(|| {
                        let l = self.cluster.leader();
                        self.cluster.kill9(l);
                        l
                    });
                    tokio::time::sleep(down).await;
                    tokio::task::block_in_place(|| {
                        self.cluster.restart(leader);
                        self.cluster.wait_ready();
                    });
                    fault(None, format!("member {leader} down {down:?}"), None)
                }
                "freeze" => {
                    let w = self.target(hint).await;
                    // Mostly past the TTL (the lock must pass on), sometimes well within.
                    let d = if self.rng.random_bool(0.7) {
                        self.ms(
                            ttl + Duration::from_millis(500),
                            ttl + Duration::from_secs(3),
                        )
                    } else {
                        self.ms(Duration::from_millis(100), ttl / 3)
                    };
                    let pid = Pid::from_raw(self.pids[w] as i32);
                    self.frozen.lock().expect("frozen").insert(w);
                    let _ = kill(pid, Signal::SIGSTOP);
                    tokio::time::sleep(d).await;
                    let _ = kill(pid, Signal::SIGCONT);
                    self.frozen.lock().expect("frozen").remove(&w);
                    fault(Some(w), format!("SIGSTOP {d:?}"), None)
                }
                "blackhole" | "drop" | "delay" => {
                    let w = self.target(hint).await;
                    let (mode, d) = match kind {
                        "blackhole" => (Mode::Blackhole, self.ms(ttl / 2, ttl * 5 / 2)),
                        "drop" => (
                            Mode::Drop,
                            self.ms(Duration::from_millis(200), Duration::from_secs(3)),
                        ),
                        _ => (
                            Mode::Delay(
                                self.ms(Duration::from_millis(20), Duration::from_millis(300)),
                            ),
                            self.ms(Duration::from_secs(2), Duration::from_secs(8)),
                        ),
                    };
                    self.set_links(w, mode);
                    tokio::time::sleep(d).await;
                    self.set_links(w, Mode::Pass);
                    fault(Some(w), format!("{mode:?} for {d:?}"), None)
                }
                "admin-expire" => {
                    let Some(key) = head().await else { continue };
                    match tokio::task::block_in_place(|| self.cluster.admin_expire(&key)) {
                        Ok(lease) => {
                            let id = u64::from_str_radix(&lease, 16).ok();
                            fault(None, format!("revoked lease {lease}"), id)
                        }
                        Err(why) => {
                            if !self.unavailable.iter().any(|(k, _)| k == kind) {
                                self.unavailable.push((kind.to_owned(), why));
                            }
                            continue;
                        }
                    }
                }
                _ => unreachable!("unknown fault kind"),
            };
            tracing::info!(kind = %f.kind, worker = ?f.worker, detail = %f.detail, "fault healed");
            faults.push(f);
        }
        faults
    }

    /// Heals the links (the run is over). Frozen workers are thawed by whoever froze
    /// them, so that every freeze is on record.
    pub fn heal(&self) {
        for w in 0..self.proxies.len() {
            self.set_links(w, Mode::Pass);
        }
    }
}

/// Thaws workers that stopped themselves (see `Event::SelfFreeze`) once the TTL and a
/// bit more has passed, recording each as a fault, until `stop` is set. Each stopped
/// worker gets its own timer: several may be stopped at once.
pub async fn thaw_self_frozen(
    pids: Vec<u32>,
    frozen: Arc<StdMutex<HashSet<usize>>>,
    ttl: Duration,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5e1f);
    let mut thawing: HashMap<usize, tokio::task::JoinHandle<Fault>> = HashMap::new();
    let mut faults = Vec::new();
    while !stop.load(Ordering::SeqCst) || !thawing.is_empty() {
        let done: Vec<usize> = thawing
            .iter()
            .filter(|(_, t)| t.is_finished())
            .map(|(&w, _)| w)
            .collect();
        for w in done {
            if let Some(t) = thawing.remove(&w) {
                faults.push(t.await.expect("thaw task"));
            }
        }
        for (w, &pid) in pids.iter().enumerate() {
            if thawing.contains_key(&w)
                || frozen.lock().expect("frozen").contains(&w)
                || !stopped(pid)
            {
                continue;
            }
            let t0 = now_us();
            let d = ttl + Duration::from_millis(rng.random_range(1000..2500));
            thawing.insert(
                w,
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
                    Fault {
                        kind: "self-freeze".into(),
                        worker: Some(w),
                        detail: format!("stopped itself before a write; thawed after {d:?}"),
                        session: None,
                        t0,
                        t1: now_us(),
                    }
                }),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    faults
}

/// Whether process `pid` is stopped (state `T` in /proc).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        == Some('T')
}
