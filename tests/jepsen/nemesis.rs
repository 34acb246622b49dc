//! The nemesis: faults in a shuffled rotation of kinds, random durations and quiet gaps,
//! until the stop time; every fault healed before it returns. Unless told to run single
//! faults only, about half the time a second fault of another category starts while
//! the first is on (a partition during a leader election, a holder frozen while the
//! leader is killed, a link cut during a release...).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::history::{now_us, Fault};
use crate::support::Cluster;
use queuelock::backend::testkit::proxy::{Mode, Proxy};

/// Every fault kind, and the category it belongs to: two faults that run at once are
/// always of different categories (two link faults on one worker would heal each other).
pub const KINDS: [(&str, &str); 10] = [
    ("leader-kill", "member"),
    ("partition-leader", "partition"),
    ("partition-follower", "partition"),
    ("partition-bridge", "partition"),
    ("freeze", "process"),
    ("blackhole", "link"),
    ("drop", "link"),
    ("delay", "link"),
    ("admin-expire", "operator"),
    ("clock-step", "clock"),
];

fn category(kind: &str) -> &'static str {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("?", |(_, c)| c)
}

/// Steps one worker's wall clock (it runs under a fake clock): the offset in seconds.
pub struct ClockHook {
    pub worker: usize,
    pub set_offset: Box<dyn Fn(i64) + Send + Sync>,
}

pub struct Nemesis {
    /// Kill and restart take it for writing (briefly); everything else reads, so that a
    /// partition can be made or healed while a restarted member is waited for.
    pub cluster: Arc<RwLock<Box<dyn Cluster + Send + Sync>>>,
    /// Per worker: its proxies, one per cluster member.
    pub proxies: Vec<Vec<Proxy>>,
    pub pids: Vec<u32>,
    pub ttl: Duration,
    rng: StdMutex<StdRng>,
    /// Run one fault at a time only.
    pub single: bool,
    pub clock: Option<ClockHook>,
    /// Faults the backend cannot have, with why.
    pub unavailable: StdMutex<Vec<(String, String)>>,
    /// Workers the nemesis itself has frozen right now.
    pub frozen: Arc<StdMutex<HashSet<usize>>>,
}

/// Who touched the register last, how long ago (µs), and whether it wrote: the driver's
/// view of who holds the lock and when it is about to release.
pub type HolderHint<'a> = &'a (dyn Fn() -> Option<(usize, u64, bool)> + Sync);

/// The queue's head node key right now (for an operator's expiry).
pub type HeadKey<'a> = &'a (dyn Fn() -> futures::future::BoxFuture<'static, Option<String>> + Sync);

impl Nemesis {
    pub fn new(
        cluster: Box<dyn Cluster + Send + Sync>,
        proxies: Vec<Vec<Proxy>>,
        pids: Vec<u32>,
        ttl: Duration,
        seed: u64,
    ) -> Self {
        Nemesis {
            cluster: Arc::new(RwLock::new(cluster)),
            proxies,
            pids,
            ttl,
            rng: StdMutex::new(StdRng::seed_from_u64(seed)),
            single: false,
            clock: None,
            unavailable: StdMutex::default(),
            frozen: Arc::default(),
        }
    }

    fn ms(&self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        Duration::from_millis(self.rng().random_range(lo..=hi.max(lo)))
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        self.rng.lock().expect("rng")
    }

    fn chance(&self, p: f64) -> bool {
        self.rng().random_bool(p)
    }

    /// Runs `f` on the cluster for writing (kill, restart), off the async threads.
    async fn write_cluster<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Cluster) -> R + Send + 'static,
    ) -> R {
        let c = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(&mut **c.write().expect("cluster")))
            .await
            .expect("cluster task")
    }

    /// Runs `f` on the cluster for reading, off the async threads.
    async fn read_cluster<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Cluster) -> R + Send + 'static,
    ) -> R {
        let c = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(&**c.read().expect("cluster")))
            .await
            .expect("cluster task")
    }

    /// Kinds this run can have, noting those it cannot and why (once).
    fn available(&self) -> Vec<&'static str> {
        let c = self.cluster.read().expect("cluster");
        let mut out = Vec::new();
        let mut why = self.unavailable.lock().expect("unavailable");
        for (kind, cat) in KINDS {
            let missing = match cat {
                "partition" if c.members() < 3 => Some(format!(
                    "{} member(s): partitions between members need 3",
                    c.members()
                )),
                "partition" => c.partition(&[]).err(),
                "clock" if self.clock.is_none() => Some("no worker runs under a fake clock".into()),
                "operator" => c.admin_expire_supported().err(),
                _ => None,
            };
            match missing {
                Some(m) => {
                    if !why.iter().any(|(k, _)| k == kind) {
                        why.push((kind.to_owned(), m));
                    }
                }
                None => out.push(kind),
            }
        }
        out
    }

    /// A worker: most often a holder caught in the middle of a long critical section
    /// (no register access for a while), where faults hurt most; else any.
    async fn target(&self, hint: HolderHint<'_>) -> usize {
        if self.chance(0.7) {
            let give_up = now_us() + 5_000_000;
            while now_us() < give_up {
                match hint() {
                    Some((w, age, _)) if age > 60_000 => return w,
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
        self.rng().random_range(0..self.pids.len())
    }

    /// Waits (up to 5 s) for a holder that has just written the register: it is
    /// releasing the lock right now. Its worker, or `None` if none came.
    async fn releasing(&self, hint: HolderHint<'_>) -> Option<usize> {
        let give_up = now_us() + 5_000_000;
        while now_us() < give_up {
            match hint() {
                Some((w, age, true)) if age < 2_000 => return Some(w),
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        None
    }

    fn set_links(&self, w: usize, m: Mode) {
        for p in &self.proxies[w] {
            p.set(m);
        }
    }

    pub async fn run(&self, stop_at: u64, hint: HolderHint<'_>, head: HeadKey<'_>) -> Vec<Fault> {
        let mut kinds = self.available();
        let mut faults = Vec::new();
        let mut rotation: Vec<&str> = Vec::new();
        loop {
            // A kind found impossible on the way (say, no operator expiry) drops out.
            {
                let gone = self.unavailable.lock().expect("unavailable");
                kinds.retain(|k| !gone.iter().any(|(g, _)| g == k));
                rotation.retain(|k| !gone.iter().any(|(g, _)| g == k));
            }
            let quiet = self.ms(Duration::from_millis(500), Duration::from_secs(4));
            tokio::time::sleep(quiet).await;
            if now_us() >= stop_at {
                break;
            }
            if rotation.is_empty() {
                rotation = kinds.clone();
                rotation.shuffle(&mut *self.rng());
            }
            let first = rotation.pop().expect("kind");
            let second = if self.single || !self.chance(0.5) {
                None
            } else {
                let others: Vec<&str> = kinds
                    .iter()
                    .copied()
                    .filter(|k| category(k) != category(first))
                    .collect();
                others.choose(&mut *self.rng()).copied()
            };
            match second {
                None => faults.extend(self.inject(first, None, hint, head).await),
                Some(second) => {
                    let offset = self.ms(Duration::ZERO, Duration::from_millis(1500));
                    let (a, b) =
                        tokio::join!(self.inject(first, Some(second), hint, head), async {
                            tokio::time::sleep(offset).await;
                            self.inject(second, Some(first), hint, head).await
                        });
                    faults.extend(a);
                    faults.extend(b);
                }
            }
        }
        faults
    }

    /// Injects one fault of `kind` and heals it; `None` if it could not be made.
    async fn inject(
        &self,
        kind: &str,
        with: Option<&str>,
        hint: HolderHint<'_>,
        head: HeadKey<'_>,
    ) -> Option<Fault> {
        let ttl = self.ttl;
        let t0 = now_us();
        let also = with.map_or(String::new(), |k| format!(" (with a {k} fault)"));
        let fault = |worker: Option<usize>, detail: String, session: Option<u64>| Fault {
            kind: kind.to_owned(),
            worker,
            detail: format!("{detail}{also}"),
            session,
            t0,
            t1: now_us(),
        };
        let f = match kind {
            "leader-kill" => {
                // Sometimes the moment a holder releases: the delete in flight.
                let during_release = self.chance(0.4) && self.releasing(hint).await.is_some();
                let down = self.ms(Duration::from_millis(500), Duration::from_secs(5));
                let leader = self
                    .write_cluster(|c| {
                        let l = c.leader();
                        c.kill9(l);
                        l
                    })
                    .await;
                let t_kill = now_us();
                tokio::time::sleep(down).await;
                self.write_cluster(move |c| c.restart(leader)).await;
                self.read_cluster(|c| c.wait_ready()).await;
                let mut f = fault(
                    None,
                    format!(
                        "member {leader} down {down:?}{}",
                        if during_release {
                            ", killed during a release"
                        } else {
                            ""
                        }
                    ),
                    None,
                );
                f.t0 = f.t0.max(t_kill.saturating_sub(1_000));
                f
            }
            "partition-leader" | "partition-follower" | "partition-bridge" => {
                let d = self.ms(ttl / 2, ttl * 3);
                let (n, leader) = self.read_cluster(|c| (c.members(), c.leader())).await;
                let others: Vec<usize> = (0..n).filter(|&m| m != leader).collect();
                let (pairs, what) = match kind {
                    "partition-leader" => (
                        others.iter().map(|&m| (leader, m)).collect::<Vec<_>>(),
                        format!("leader {leader} cut off from {others:?}"),
                    ),
                    "partition-follower" => {
                        let f = *others.choose(&mut *self.rng()).expect("a follower");
                        let rest: Vec<usize> = (0..n).filter(|&m| m != f).collect();
                        (
                            rest.iter().map(|&m| (f, m)).collect(),
                            format!("follower {f} cut off from {rest:?} (leader {leader})"),
                        )
                    }
                    _ => {
                        // One member sees both sides; the other two cannot see each
                        // other. The bridge is the leader half the time.
                        let bridge = if self.chance(0.5) {
                            leader
                        } else {
                            *others.choose(&mut *self.rng()).expect("a follower")
                        };
                        let ends: Vec<usize> = (0..n).filter(|&m| m != bridge).collect();
                        (
                            vec![(ends[0], ends[1])],
                            format!(
                                "{} and {} cut apart, {bridge} sees both (leader {leader})",
                                ends[0], ends[1]
                            ),
                        )
                    }
                };
                let cut = pairs.clone();
                if let Err(why) = self.read_cluster(move |c| c.partition(&cut)).await {
                    let mut u = self.unavailable.lock().expect("unavailable");
                    if !u.iter().any(|(k, _)| k == kind) {
                        u.push((kind.to_owned(), why));
                    }
                    return None;
                }
                let t_cut = now_us();
                tokio::time::sleep(d).await;
                let claimed = self.read_cluster(|c| c.leaders_claimed()).await;
                self.read_cluster(|c| c.heal_partition()).await;
                let mut f = fault(
                    None,
                    format!("{what} for {d:?}; leaders claimed before the heal: {claimed:?}"),
                    None,
                );
                f.t0 = f.t0.max(t_cut.saturating_sub(1_000));
                f
            }
            "freeze" => {
                let w = self.target(hint).await;
                // Mostly past the TTL (the lock must pass on), sometimes well within.
                let d = if self.chance(0.7) {
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
                let t_stop = now_us();
                tokio::time::sleep(d).await;
                let _ = kill(pid, Signal::SIGCONT);
                self.frozen.lock().expect("frozen").remove(&w);
                let mut f = fault(Some(w), format!("SIGSTOP {d:?}"), None);
                f.t0 = f.t0.max(t_stop.saturating_sub(1_000));
                f
            }
            "blackhole" | "drop" | "delay" => {
                // Sometimes the holder that is releasing right now: the release's
                // request or its answer is what gets lost.
                let releasing = if self.chance(0.3) {
                    self.releasing(hint).await
                } else {
                    None
                };
                let w = match releasing {
                    Some(w) => w,
                    None => self.target(hint).await,
                };
                let (mode, d) = match kind {
                    "blackhole" => (Mode::Blackhole, self.ms(ttl / 2, ttl * 5 / 2)),
                    "drop" => (
                        Mode::Drop,
                        self.ms(Duration::from_millis(200), Duration::from_secs(3)),
                    ),
                    _ => (
                        Mode::Delay(self.ms(Duration::from_millis(20), Duration::from_millis(300))),
                        self.ms(Duration::from_secs(2), Duration::from_secs(8)),
                    ),
                };
                self.set_links(w, mode);
                let t_set = now_us();
                tokio::time::sleep(d).await;
                self.set_links(w, Mode::Pass);
                let mut f = fault(
                    Some(w),
                    format!(
                        "{mode:?} for {d:?}{}",
                        if releasing.is_some() {
                            ", from a release on"
                        } else {
                            ""
                        }
                    ),
                    None,
                );
                f.t0 = f.t0.max(t_set.saturating_sub(1_000));
                f
            }
            "admin-expire" => {
                let key = head().await?;
                match self.read_cluster(move |c| c.admin_expire(&key)).await {
                    Ok(lease) => {
                        let id = u64::from_str_radix(&lease, 16).ok();
                        fault(None, format!("revoked lease {lease}"), id)
                    }
                    // This time only (the holder's session or node gone already): the
                    // kind stays in rotation.
                    Err(why) => {
                        tracing::info!(%why, "admin-expire skipped");
                        return None;
                    }
                }
            }
            "clock-step" => {
                let hook = self.clock.as_ref()?;
                // Hours either way, now and then back to true time: only a monotonic
                // clock may decide a lease, so none of this may matter.
                // One guard for both draws (a second `rng()` inside a `match` on the
                // first would wait for the first's guard forever).
                let secs: i64 = {
                    let mut rng = self.rng();
                    match rng.random_range(0..4) {
                        0 => 0,
                        1 => rng.random_range(3_600..=172_800),
                        2 => -rng.random_range(3_600..=172_800),
                        _ => rng.random_range(-600..=600),
                    }
                };
                (hook.set_offset)(secs);
                fault(
                    Some(hook.worker),
                    format!("wall clock set to true time {secs:+} s"),
                    None,
                )
            }
            _ => unreachable!("unknown fault kind {kind}"),
        };
        tracing::info!(kind = %f.kind, worker = ?f.worker, detail = %f.detail, "fault healed");
        Some(f)
    }

    /// Heals the links and partitions (the run is over). Frozen workers are thawed by
    /// whoever froze them, so that every freeze is on record.
    pub fn heal(&self) {
        for w in 0..self.proxies.len() {
            self.set_links(w, Mode::Pass);
        }
        self.cluster.read().expect("cluster").heal_partition();
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
