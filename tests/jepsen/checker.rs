//! The checker: reads the history after the run and lists every violation of what a
//! fenced, fair lock promises. Pure: the same history always gives the same verdict.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::history::{Event, Fault, RegisterOp};

/// Everything the run produced.
pub struct Run {
    /// Each worker's events, in the order it logged them.
    pub workers: Vec<Vec<Event>>,
    pub faults: Vec<Fault>,
    pub register: Vec<RegisterOp>,
    pub register_final: u64,
    /// How each worker process ended (None: it had to be killed: hung).
    pub exits: Vec<Option<i32>>,
    /// Queue nodes still there after every client closed (and TTL + margin passed).
    pub leftover: Vec<String>,
    pub ttl: Duration,
}

/// How late a holder may learn of its loss after the fault began (TTL + this), or after
/// it was thawed (this alone).
pub const MARGIN: Duration = Duration::from_secs(5);

/// One grant as the holder saw it: from `lock()` returning to `release()` being called
/// or the loss being learned, whichever came first.
#[derive(Clone, Debug, Serialize)]
pub struct Grant {
    pub w: usize,
    pub op: u64,
    pub token: u64,
    pub session: u64,
    pub start: u64,
    pub end: u64,
    /// The holder learned it lost the lock (not a plain release).
    pub lost: bool,
    /// The grant never ended in the history (the process died or hung holding it).
    pub open: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub kind: &'static str,
    pub detail: String,
    /// The history around it: every event, fault and register access in the window.
    pub slice: Vec<serde_json::Value>,
    #[serde(skip)]
    window: (u64, u64),
}

#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub attempts: u64,
    pub grants: u64,
    pub lock_timeouts: u64,
    pub lock_errors: u64,
    pub reads_admitted: u64,
    pub writes_acknowledged: u64,
    pub fenced_accesses: u64,
    pub register_unreachable: u64,
    pub losses_learned: u64,
    pub releases_ok: u64,
    pub grants_per_worker: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub counts: Counts,
    pub faults: BTreeMap<String, u64>,
    /// Faults that were on at the same time as another one.
    pub overlapping_faults: u64,
    pub register_final: u64,
    /// Grants that overlapped later ones because their holder was frozen, or an
    /// operator revoked its session — nothing it could hear of in advance; the
    /// register's fencing covered them.
    pub paused_overlaps: u64,
    /// Worst time from a fault's start (a thaw, for a freeze) to the holder learning of
    /// its loss, per fault kind, in ms.
    pub loss_notice_ms: BTreeMap<String, u64>,
    /// Losses with no fault to explain them (not a safety violation; listed).
    pub unexplained_losses: Vec<Grant>,
    pub violations: Vec<Violation>,
}

fn grants(run: &Run) -> Vec<Grant> {
    let mut out = Vec::new();
    for events in &run.workers {
        let mut cur: Option<Grant> = None;
        let last_t = events.iter().map(event_time).max().unwrap_or(0);
        for e in events {
            match e {
                Event::Granted {
                    w,
                    op,
                    t,
                    token,
                    session,
                    ..
                } => {
                    if let Some(g) = cur.take() {
                        out.push(g);
                    }
                    cur = Some(Grant {
                        w: *w,
                        op: *op,
                        token: *token,
                        session: *session,
                        start: *t,
                        end: u64::MAX,
                        lost: false,
                        open: true,
                    });
                }
                Event::Lost { op, t, .. } => {
                    if let Some(g) = cur.as_mut().filter(|g| g.op == *op) {
                        if g.open {
                            g.end = g.end.min(*t);
                            g.lost = true;
                            g.open = false;
                        }
                    }
                }
                Event::ReleaseStart { op, t, .. } => {
                    if let Some(g) = cur.as_mut().filter(|g| g.op == *op) {
                        if g.open {
                            g.end = *t;
                            g.open = false;
                        }
                    }
                }
                Event::Released { op, error, .. } => {
                    if let Some(g) = cur.as_mut().filter(|g| g.op == *op) {
                        // release() reporting the loss: learned at the release call.
                        if error.as_deref().is_some_and(|e| e.contains("lost")) {
                            g.lost = true;
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(mut g) = cur.take() {
            if g.open {
                g.end = last_t.max(g.start);
            }
            out.push(g);
        }
    }
    out.sort_by_key(|g| (g.start, g.w));
    out
}

fn event_time(e: &Event) -> u64 {
    match e {
        Event::Start { t, .. }
        | Event::Invoke { t, .. }
        | Event::Granted { t, .. }
        | Event::LockFailed { t, .. }
        | Event::Lost { t, .. }
        | Event::ReleaseStart { t, .. }
        | Event::Released { t, .. }
        | Event::SelfFreeze { t, .. }
        | Event::Done { t, .. } => *t,
        Event::Read { t1, .. } | Event::Write { t1, .. } => *t1,
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Faults that can explain worker `g.w` losing grant `g`.
fn touches(f: &Fault, g: &Grant) -> bool {
    match f.worker {
        Some(w) => w == g.w,
        None => f.session.map_or(true, |s| s == g.session),
    }
}

/// How long, within `[a, b]`, at least one of `faults` was active (the union of their
/// intervals, so overlapping faults count once).
fn active_time<'a>(faults: impl Iterator<Item = &'a Fault>, a: u64, b: u64) -> u64 {
    let mut spans: Vec<(u64, u64)> = faults
        .map(|f| (f.t0.max(a), f.t1.min(b)))
        .filter(|(s, e)| s < e)
        .collect();
    spans.sort_unstable();
    let (mut total, mut reach) = (0, a);
    for (s, e) in spans {
        let s = s.max(reach);
        if e > s {
            total += e - s;
            reach = e;
        }
    }
    total
}

/// A step of a worker's wall clock: it must not matter, so it explains nothing (a loss
/// it caused stays unexplained, a stall it caused is not allowed for).
fn is_clock(f: &Fault) -> bool {
    f.kind == "clock-step"
}

/// A process pause: the nemesis's SIGSTOP, or a worker's own before an access.
fn is_freeze(f: &Fault) -> bool {
    f.kind == "freeze" || f.kind == "self-freeze"
}

/// The faults, with each self-freeze starting when its worker logged that it stops
/// itself (the driver only notices a moment later).
fn faults_as_lived(run: &Run) -> Vec<Fault> {
    run.faults
        .iter()
        .map(|f| {
            let mut f = f.clone();
            if f.kind == "self-freeze" {
                let w = f.worker;
                let stopped_at = run
                    .workers
                    .iter()
                    .flatten()
                    .filter_map(|e| match e {
                        Event::SelfFreeze { w: ew, t, .. } if Some(*ew) == w && *t <= f.t0 => {
                            Some(*t)
                        }
                        _ => None,
                    })
                    .max();
                f.t0 = stopped_at.unwrap_or(f.t0);
            }
            f
        })
        .collect()
}

pub fn check(run: &Run) -> Verdict {
    let gs = grants(run);
    // Every rule below reads the faults as lived, never `run.faults`.
    let faults = faults_as_lived(run);
    let mut v: Vec<Violation> = Vec::new();
    let mut bad = |kind: &'static str, detail: String, window: (u64, u64)| {
        v.push(Violation {
            kind,
            detail,
            slice: Vec::new(),
            window,
        })
    };
    let ttl = us(run.ttl);
    let margin = us(MARGIN);

    // 1. Mutual exclusion: no two grants overlap unless the older one's holder was
    //    frozen when the newer was granted and learned of its loss right after thawing.
    let mut excused_holders = HashSet::new();
    let mut active: Vec<&Grant> = Vec::new();
    for b in &gs {
        active.retain(|a| a.end > b.start);
        for a in &active {
            let (l, h) = if a.token < b.token { (*a, b) } else { (b, *a) };
            let from = b.start;
            // Nobody can hear of an operator's revoke before the server acts on it,
            // nor can a frozen process hear anything: there the register's fencing is
            // the guarantee, and the holder must learn of the loss right after.
            // A holder frozen after the fault cannot learn while stopped: its deadline
            // moves by the time it spent frozen since the fault began.
            let frozen_since = |t0: u64| {
                active_time(
                    faults
                        .iter()
                        .filter(|f| is_freeze(f) && f.worker == Some(l.w)),
                    t0,
                    l.end,
                )
            };
            let excused = l.lost
                && faults.iter().any(|f| {
                    (is_freeze(f) || f.kind == "admin-expire")
                        && touches(f, l)
                        && f.t0 <= from
                        && l.end <= f.t1 + margin + frozen_since(f.t1)
                });
            if excused {
                excused_holders.insert((l.w, l.op));
            } else {
                bad(
                    "overlap",
                    format!(
                        "worker {} (token {}, {}..{}) and worker {} (token {}, {}..{}) both believed they held the lock",
                        l.w, l.token, l.start, l.end, h.w, h.token, h.start, h.end
                    ),
                    (a.start.min(b.start), a.end.max(b.end).min(b.start + 10_000_000)),
                );
            }
        }
        active.push(b);
    }

    // 2. Fencing tokens: unique, and larger than every grant that ended before.
    let mut seen = HashSet::new();
    let mut ended: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut max_ended = 0u64;
    for g in &gs {
        if !seen.insert(g.token) {
            bad(
                "token-reused",
                format!(
                    "token {} granted twice (worker {} op {})",
                    g.token, g.w, g.op
                ),
                (g.start, g.end),
            );
        }
        while let Some(Reverse((end, token))) = ended.peek().copied() {
            if end > g.start {
                break;
            }
            ended.pop();
            max_ended = max_ended.max(token);
        }
        if g.token <= max_ended {
            bad(
                "token-order",
                format!(
                    "worker {} op {} got token {} at {}, not above the {} of a grant that had ended",
                    g.w, g.op, g.token, g.start, max_ended
                ),
                (g.start.saturating_sub(2_000_000), g.start),
            );
        }
        ended.push(Reverse((g.end, g.token)));
    }

    // 3. The register: admitted tokens never go back; admitted writes count up by one
    //    (a gap or repeat is an increment lost to a stale holder); every write a holder
    //    saw acknowledged is there.
    let mut highest = 0;
    let mut value = 0;
    let mut admitted = HashSet::new();
    for r in run.register.iter().filter(|r| r.admitted) {
        if r.token < highest {
            bad(
                "register-token",
                format!("register admitted token {} after {}", r.token, highest),
                (r.t, r.t),
            );
        }
        highest = highest.max(r.token);
        if r.write {
            if r.value != value + 1 {
                bad(
                    "lost-increment",
                    format!(
                        "worker {} wrote {} (token {}) over {}",
                        r.w, r.value, r.token, value
                    ),
                    (r.t.saturating_sub(2_000_000), r.t),
                );
            }
            value = r.value;
            admitted.insert((r.w, r.token, r.value));
        }
    }
    if value != run.register_final {
        bad(
            "register-final",
            format!(
                "register ends at {} but its writes say {value}",
                run.register_final
            ),
            (0, 0),
        );
    }

    // Counts, acknowledged writes, hangs.
    let mut c = Counts {
        grants_per_worker: vec![0; run.workers.len()],
        ..Counts::default()
    };
    let release_budget = us(crate::worker::release_timeout(run.ttl));
    for (w, events) in run.workers.iter().enumerate() {
        let mut done = false;
        // When this op's release() was called: its `release_start`, or, after a loss
        // (the worker logs none then), the op's last event before the release.
        let mut release_start: Option<u64> = None;
        let mut last = 0;
        for e in events {
            if !matches!(e, Event::Released { .. }) {
                last = event_time(e);
            }
            match e {
                Event::ReleaseStart { t, .. } => release_start = Some(*t),
                Event::Invoke { .. } => {
                    c.attempts += 1;
                    release_start = None;
                }
                Event::Granted { .. } => {
                    c.grants += 1;
                    c.grants_per_worker[w] += 1;
                }
                Event::LockFailed { timeout: true, .. } => c.lock_timeouts += 1,
                Event::LockFailed { .. } => c.lock_errors += 1,
                Event::Read { value, fenced, .. } => match (value, fenced) {
                    (Some(_), _) => c.reads_admitted += 1,
                    (None, Some(_)) => c.fenced_accesses += 1,
                    (None, None) => c.register_unreachable += 1,
                },
                Event::Write {
                    ok,
                    fenced,
                    w: ww,
                    token,
                    value,
                    t1,
                    ..
                } => {
                    if *ok {
                        c.writes_acknowledged += 1;
                        if !admitted.contains(&(*ww, *token, *value)) {
                            bad(
                                "acknowledged-write-missing",
                                format!("worker {ww} was told {value} (token {token}) was written"),
                                (t1.saturating_sub(2_000_000), *t1),
                            );
                        }
                    } else if fenced.is_some() {
                        c.fenced_accesses += 1;
                    } else {
                        c.register_unreachable += 1;
                    }
                }
                Event::Lost { .. } => c.losses_learned += 1,
                Event::Released {
                    timeout, t, error, ..
                } => {
                    if error.is_none() {
                        c.releases_ok += 1;
                    }
                    // A release may take the budget plus the time faults that could hold
                    // it up were active: cluster faults, and this worker's own (a
                    // frozen worker cannot finish anything; a cut link delays it).
                    let start = release_start.unwrap_or(last).min(*t);
                    let faulted = active_time(
                        faults
                            .iter()
                            .filter(|f| !is_clock(f) && f.worker.map_or(true, |fw| fw == w)),
                        start,
                        *t,
                    );
                    let took = t - start;
                    if *timeout {
                        bad(
                            "release-hung",
                            format!("worker {w}: release() did not return in {} ms", took / 1000),
                            (start, *t),
                        );
                    } else if took > release_budget + faulted {
                        bad(
                            "release-slow",
                            format!(
                                "worker {w}: release() took {} ms, more than {} ms + {} ms of faults",
                                took / 1000,
                                release_budget / 1000,
                                faulted / 1000
                            ),
                            (start, *t),
                        );
                    }
                }
                Event::Done { .. } => done = true,
                _ => {}
            }
        }
        match run.exits.get(w).copied().flatten() {
            None => bad("hung", format!("worker {w} did not exit"), (0, 0)),
            Some(0) if done => {}
            Some(code) => bad(
                "worker-failed",
                format!("worker {w} exited with {code} (finished: {done})"),
                (0, 0),
            ),
        }
    }
    for g in gs.iter().filter(|g| g.open) {
        bad(
            "grant-never-ended",
            format!(
                "worker {} op {} (token {}) never released nor lost",
                g.w, g.op, g.token
            ),
            (g.start, g.end),
        );
    }

    // 4. Nothing left behind.
    if !run.leftover.is_empty() {
        bad(
            "leftover-nodes",
            format!(
                "queue nodes left after every client closed: {:?}",
                run.leftover
            ),
            (0, 0),
        );
    }

    // 5. Losses learned in time: within TTL + margin of the fault that caused them
    //    (within the margin of the thaw, for a frozen holder). With faults overlapping,
    //    any of them may be the cause: the loss is late only if late for each.
    let mut notice: BTreeMap<String, u64> = BTreeMap::new();
    let mut unexplained = Vec::new();
    let allowance = |f: &Fault, g: &Grant| {
        if is_freeze(f) {
            (f.t1.max(g.start), margin)
        } else {
            (f.t0.max(g.start), ttl + margin)
        }
    };
    for g in gs.iter().filter(|g| g.lost) {
        let cause = faults
            .iter()
            .filter(|f| {
                !is_clock(f) && touches(f, g) && f.t0 <= g.end && f.t1 + ttl + margin >= g.start
            })
            .max_by_key(|f| {
                let (from, bound) = allowance(f, g);
                (from + bound, f.t0)
            });
        let Some(f) = cause else {
            unexplained.push(g.clone());
            continue;
        };
        let (from, bound) = allowance(f, g);
        let late = g.end.saturating_sub(from);
        let worst = notice.entry(f.kind.clone()).or_default();
        *worst = (*worst).max(late / 1000);
        if late > bound {
            bad(
                "late-loss-notice",
                format!(
                    "worker {} learned of its loss {} ms after the {} ({}) that caused it; bound {} ms",
                    g.w,
                    late / 1000,
                    f.kind,
                    f.detail,
                    bound / 1000
                ),
                (f.t0, g.end),
            );
        }
    }

    // 6. The queue kept moving: no gap between grants (or from the last grant to the
    //    last attempt) longer than the worst fault in it explains.
    let last_invoke = run
        .workers
        .iter()
        .flatten()
        .filter_map(|e| match e {
            Event::Invoke { t, .. } => Some(*t),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let mut starts: Vec<u64> = gs.iter().map(|g| g.start).collect();
    if starts.last().is_some_and(|&s| last_invoke > s) {
        starts.push(last_invoke);
    }
    for pair in starts.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let worst_fault = faults
            .iter()
            .filter(|f| !is_clock(f) && f.t1 >= a && f.t0 <= b)
            .map(|f| f.t1 - f.t0)
            .max()
            .unwrap_or(0);
        let allowed = 2 * ttl + 20_000_000 + worst_fault;
        if b - a > allowed {
            bad(
                "stalled",
                format!(
                    "no grant for {} ms (allowed {} ms)",
                    (b - a) / 1000,
                    allowed / 1000
                ),
                (a, b.min(a + 5_000_000)),
            );
        }
    }

    let mut fault_counts = BTreeMap::new();
    for f in &faults {
        *fault_counts.entry(f.kind.clone()).or_insert(0) += 1;
    }
    let overlapping_faults = faults
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            faults
                .iter()
                .enumerate()
                .any(|(j, o)| j != *i && o.t0 < f.t1 && f.t0 < o.t1)
        })
        .count() as u64;
    for viol in &mut v {
        viol.slice = slice(run, &faults, viol.window);
    }
    Verdict {
        counts: c,
        faults: fault_counts,
        overlapping_faults,
        register_final: run.register_final,
        paused_overlaps: excused_holders.len() as u64,
        loss_notice_ms: notice,
        unexplained_losses: unexplained,
        violations: v,
    }
}

/// Everything that happened in `[from - 1 s, to + 1 s]`, in time order (at most 400).
fn slice(run: &Run, faults: &[Fault], (from, to): (u64, u64)) -> Vec<serde_json::Value> {
    if (from, to) == (0, 0) {
        return Vec::new();
    }
    let (lo, hi) = (from.saturating_sub(1_000_000), to.saturating_add(1_000_000));
    let mut all: Vec<(u64, serde_json::Value)> = Vec::new();
    for e in run.workers.iter().flatten() {
        let t = event_time(e);
        if (lo..=hi).contains(&t) {
            all.push((t, serde_json::to_value(e).unwrap_or_default()));
        }
    }
    for f in faults {
        if f.t1 >= lo && f.t0 <= hi {
            all.push((f.t0, serde_json::json!({ "fault": f })));
        }
    }
    for r in &run.register {
        if (lo..=hi).contains(&r.t) {
            all.push((r.t, serde_json::json!({ "register": r })));
        }
    }
    all.sort_by_key(|(t, _)| *t);
    all.into_iter().take(400).map(|(_, v)| v).collect()
}
