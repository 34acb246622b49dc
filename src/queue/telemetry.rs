//! What the queue records about itself, in one place: metrics through the `metrics`
//! facade (the application installs a recorder, or none) and the client's own counters
//! ([`crate::ClientStats`]), both fed by the same calls so they cannot disagree.
//!
//! Every sample carries the labels `backend` and `recipe`, and `lock` only when the
//! client's [`NameLabel`] asks for it: the user chooses the cardinality.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::Label;
use queuelock_core::{Error, LossReason, NodeKind, SessionState};
use tokio::time::Instant;

/// Seconds spent in an acquire, from its call to its answer (label `outcome`).
pub(crate) const ACQUIRE_WAIT: &str = "queuelock_acquire_wait_seconds";
/// Seconds from grant to release or loss.
pub(crate) const HOLD: &str = "queuelock_hold_seconds";
/// Seconds an explicit release took (the node's deletion).
pub(crate) const RELEASE: &str = "queuelock_release_seconds";
/// Grants obtained.
pub(crate) const GRANTS: &str = "queuelock_grants_total";
/// Acquires that gave up at their deadline.
pub(crate) const TIMEOUTS: &str = "queuelock_acquire_timeouts_total";
/// Acquires dropped before an answer.
pub(crate) const CANCELLED: &str = "queuelock_acquire_cancelled_total";
/// Held locks lost (label `reason`).
pub(crate) const LOSSES: &str = "queuelock_losses_total";
/// Times a waiter was woken to look at the queue again.
pub(crate) const WAKEUPS: &str = "queuelock_wakeups_total";
/// Acquires waiting right now.
pub(crate) const WAITING: &str = "queuelock_waiting";
/// Nodes ahead of ours when it joined the queue.
pub(crate) const QUEUE_DEPTH: &str = "queuelock_queue_depth";
/// Session state changes (label `state`: live, suspended, lost).
pub(crate) const SESSION_STATES: &str = "queuelock_session_state_changes_total";

/// Describes every queuelock metric (unit and help text) to the installed recorder.
/// Call it once after installing one; recording works without it, exporters just show
/// no help text.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        ACQUIRE_WAIT,
        Unit::Seconds,
        "time from an acquire's call to its answer, by outcome (granted, timeout, cancelled, error)"
    );
    describe_histogram!(HOLD, Unit::Seconds, "time from grant to release or loss");
    describe_histogram!(RELEASE, Unit::Seconds, "time an explicit release took");
    describe_counter!(GRANTS, Unit::Count, "grants obtained");
    describe_counter!(TIMEOUTS, Unit::Count, "acquires that timed out");
    describe_counter!(CANCELLED, Unit::Count, "acquires dropped before an answer");
    describe_counter!(LOSSES, Unit::Count, "held locks lost, by reason");
    describe_counter!(
        WAKEUPS,
        Unit::Count,
        "waiters woken to look at the queue again"
    );
    describe_gauge!(WAITING, Unit::Count, "acquires waiting now");
    describe_histogram!(
        QUEUE_DEPTH,
        Unit::Count,
        "nodes ahead of ours when it joined the queue (the contention)"
    );
    describe_counter!(
        SESSION_STATES,
        Unit::Count,
        "session state changes, by new state"
    );
}

/// Whether, and how much of, the lock name becomes the `lock` label of queuelock's
/// metrics. Every distinct value is a time series: keep it bounded.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NameLabel {
    /// No `lock` label (the default): series per backend and recipe only.
    #[default]
    None,
    /// The whole lock name.
    Full,
    /// The first N `/`-separated segments (`jobs/nightly/42` with 2: `jobs/nightly`).
    Segments(usize),
}

impl NameLabel {
    fn apply(self, name: &str) -> Option<String> {
        match self {
            NameLabel::None => None,
            NameLabel::Full => Some(name.to_owned()),
            NameLabel::Segments(n) => Some(name.split('/').take(n).collect::<Vec<_>>().join("/")),
        }
    }
}

impl std::str::FromStr for NameLabel {
    type Err = Error;

    /// `none`, `full`, or a positive number of segments, as in the URL option
    /// `name_label` and `QUEUELOCK_NAME_LABEL`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "none" => Ok(NameLabel::None),
            "full" => Ok(NameLabel::Full),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(NameLabel::Segments(n)),
                _ => Err(Error::Config(format!(
                    "name label {s:?}: expected \"none\", \"full\" or a positive number of segments"
                ))),
            },
        }
    }
}

/// The recipe a node kind belongs to (the `recipe` label).
fn recipe(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Lock => "mutex",
        NodeKind::Read | NodeKind::Write => "rwlock",
        NodeKind::Latch => "election",
        NodeKind::Permit => "semaphore",
        _ => "other",
    }
}

/// The client's counters, readable back as [`crate::ClientStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Grants obtained.
    pub(crate) grants: AtomicU64,
    /// Times a waiter was woken to look at the queue again.
    pub(crate) wakeups: AtomicU64,
    /// Acquires that timed out.
    pub(crate) timeouts: AtomicU64,
    /// Held locks lost.
    pub(crate) losses: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A client's recording: its backend's name, its name-label choice and its counters.
#[derive(Debug)]
pub(crate) struct Telemetry {
    backend: &'static str,
    names: NameLabel,
    pub(crate) counters: Counters,
}

/// The labels of one acquire and of the hold it leads to, with the counters to feed.
#[derive(Clone, Debug)]
pub(crate) struct Labels {
    telemetry: Arc<Telemetry>,
    labels: Arc<[Label]>,
    /// The lock's name and recipe, for spans (always full: spans are not series).
    pub(crate) name: Arc<str>,
    pub(crate) recipe: &'static str,
}

impl Telemetry {
    pub(crate) fn new(backend: &'static str, names: NameLabel) -> Self {
        Telemetry {
            backend,
            names,
            counters: Counters::default(),
        }
    }

    /// The backend's name (the `backend` label).
    pub(crate) fn backend(&self) -> &'static str {
        self.backend
    }

    /// The labels for an acquire of lock `name` with nodes of `kind`.
    pub(crate) fn labels(self: &Arc<Self>, name: &str, kind: NodeKind) -> Labels {
        let recipe = recipe(kind);
        let mut labels = vec![
            Label::new("backend", self.backend),
            Label::new("recipe", recipe),
        ];
        if let Some(lock) = self.names.apply(name) {
            labels.push(Label::new("lock", lock));
        }
        Labels {
            telemetry: self.clone(),
            labels: labels.into(),
            name: Arc::from(name),
            recipe,
        }
    }
}

impl Labels {
    fn with(&self, key: &'static str, value: &'static str) -> Vec<Label> {
        let mut v = self.labels.to_vec();
        v.push(Label::new(key, value));
        v
    }

    fn base(&self) -> Vec<Label> {
        self.labels.to_vec()
    }

    /// Our node joined the queue with `ahead` nodes before it.
    pub(crate) fn queue_depth(&self, ahead: usize) {
        metrics::histogram!(QUEUE_DEPTH, self.base()).record(ahead as f64);
    }

    /// A waiter was woken.
    pub(crate) fn wakeup(&self) {
        bump(&self.telemetry.counters.wakeups);
        metrics::counter!(WAKEUPS, self.base()).increment(1);
    }

    /// A held lock was lost.
    pub(crate) fn loss(&self, reason: LossReason) {
        bump(&self.telemetry.counters.losses);
        let reason = match reason {
            LossReason::SessionLost => "session_lost",
            LossReason::SessionSuspended => "session_suspended",
            LossReason::NodeDeleted => "node_deleted",
            _ => "other",
        };
        metrics::counter!(LOSSES, self.with("reason", reason)).increment(1);
    }

    /// A hold ended (released or lost) after `held`.
    pub(crate) fn hold(&self, held: Duration) {
        metrics::histogram!(HOLD, self.base()).record(held.as_secs_f64());
    }

    /// An explicit release took `took`.
    pub(crate) fn release(&self, took: Duration) {
        metrics::histogram!(RELEASE, self.base()).record(took.as_secs_f64());
    }
}

/// How an acquire ended (the `outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Granted,
    /// A `try` that found the lock taken: no wait sample (nothing was waited for).
    Busy,
    Timeout,
    Cancelled,
    Error,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Busy => "busy",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::Error => "error",
        }
    }
}

/// One acquire in progress: counted in `queuelock_waiting` while it waits, recorded once
/// when it ends — as cancelled if it is dropped before [`AcquireRecord::finish`].
pub(crate) struct AcquireRecord {
    labels: Labels,
    started: Instant,
    waiting: bool,
    done: bool,
}

impl AcquireRecord {
    /// Starts timing an acquire called at `called`; `waits`: it may wait (counted in
    /// the gauge).
    pub(crate) fn start(labels: Labels, waits: bool, called: Instant) -> Self {
        if waits {
            metrics::gauge!(WAITING, labels.base()).increment(1.0);
        }
        AcquireRecord {
            labels,
            started: called,
            waiting: waits,
            done: false,
        }
    }

    /// Time since the call.
    pub(crate) fn waited(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records the acquire's end.
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let counters = &self.labels.telemetry.counters;
        match outcome {
            Outcome::Granted => {
                bump(&counters.grants);
                metrics::counter!(GRANTS, self.labels.base()).increment(1);
            }
            Outcome::Timeout => {
                bump(&counters.timeouts);
                metrics::counter!(TIMEOUTS, self.labels.base()).increment(1);
            }
            Outcome::Cancelled => {
                metrics::counter!(CANCELLED, self.labels.base()).increment(1);
            }
            Outcome::Busy | Outcome::Error => {}
        }
        if outcome != Outcome::Busy {
            metrics::histogram!(ACQUIRE_WAIT, self.labels.with("outcome", outcome.as_str()))
                .record(self.waited().as_secs_f64());
        }
        if self.waiting {
            metrics::gauge!(WAITING, self.labels.base()).decrement(1.0);
        }
    }
}

impl Drop for AcquireRecord {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

/// A hold in progress: its hold time is recorded once, at release or at loss, whichever
/// comes first; a loss is counted once.
#[derive(Debug)]
pub(crate) struct HoldRecord {
    pub(crate) labels: Labels,
    granted: Instant,
    ended: AtomicBool,
    /// The `queuelock.hold` span, open from grant to release or loss.
    span: std::sync::Mutex<Option<tracing::Span>>,
}

impl HoldRecord {
    pub(crate) fn start(labels: Labels, span: tracing::Span) -> Self {
        HoldRecord {
            labels,
            granted: Instant::now(),
            ended: AtomicBool::new(false),
            span: std::sync::Mutex::new(Some(span)),
        }
    }

    /// The hold's span (a parent for the release's).
    pub(crate) fn span(&self) -> Option<tracing::Span> {
        self.span.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The hold ended: `Some(reason)` lost, `None` released.
    pub(crate) fn end(&self, loss: Option<LossReason>) {
        if self.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        let held = self.granted.elapsed();
        self.labels.hold(held);
        let span = self.span.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(span) = &span {
            span.record("held_ms", held.as_millis() as u64);
        }
        if let Some(reason) = loss {
            self.labels.loss(reason);
            if let Some(span) = &span {
                span.record("lost", tracing::field::display(reason));
            }
            tracing::warn!(
                parent: span.as_ref().and_then(|s| s.id()),
                lock = &*self.labels.name,
                recipe = self.labels.recipe,
                %reason,
                held_ms = held.as_millis() as u64,
                "lock lost"
            );
        }
    }
}

/// Counts a session's state changes until it is lost (in the background).
pub(crate) fn watch_session(
    backend: &'static str,
    mut state: tokio::sync::watch::Receiver<SessionState>,
) {
    let name = |s: SessionState| match s {
        SessionState::Live => "live",
        SessionState::Suspended => "suspended",
        SessionState::Lost => "lost",
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut last = *state.borrow_and_update();
        metrics::counter!(SESSION_STATES, "backend" => backend, "state" => name(last)).increment(1);
        while last != SessionState::Lost && state.changed().await.is_ok() {
            let now = *state.borrow_and_update();
            if now != last {
                metrics::counter!(SESSION_STATES, "backend" => backend, "state" => name(now))
                    .increment(1);
                tracing::debug!(backend, state = name(now), "session state changed");
                last = now;
            }
        }
    });
}
