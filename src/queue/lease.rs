//! A held node ([`Lease`]) and when it counts as lost ([`LossPolicy`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use queuelock_core::{Error, LossReason, Node, Op, Result, Session, SessionState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::delay::mark_released;
use super::telemetry::HoldRecord;
use super::{finish, remove_node, settle, spawn_removal};
use crate::metadata::HolderInfo;

/// When a held lock counts as lost.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[non_exhaustive]
pub enum LossPolicy {
    /// Only when the session is known lost (expired, revoked, closed) or the node was
    /// deleted. A brief disconnection keeps the lock. On etcd the client computes expiry
    /// conservatively (send time of the last acknowledged keep-alive + TTL), so it never
    /// believes it holds a lock the server has already given away.
    #[default]
    #[serde(rename = "session")]
    OnSessionLoss,
    /// Also as soon as the session is suspended (connection trouble), like Curator's
    /// standard error policy: safer for work that must stop at the first doubt, at the
    /// price of losing locks on brief network blips.
    #[serde(rename = "suspension")]
    OnSuspension,
}

impl std::str::FromStr for LossPolicy {
    type Err = Error;

    /// `session` ([`LossPolicy::OnSessionLoss`]) or `suspension`
    /// ([`LossPolicy::OnSuspension`]), as in URLs and `QUEUELOCK_LOSS_POLICY`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "session" => Ok(LossPolicy::OnSessionLoss),
            "suspension" => Ok(LossPolicy::OnSuspension),
            _ => Err(Error::Config(format!(
                "loss policy {s:?}: expected \"session\" or \"suspension\""
            ))),
        }
    }
}

/// Whether a session state counts as losing the lock under `policy`.
fn classify(state: SessionState, policy: LossPolicy) -> Option<LossReason> {
    match (state, policy) {
        (SessionState::Lost, _) => Some(LossReason::SessionLost),
        (SessionState::Suspended, LossPolicy::OnSuspension) => Some(LossReason::SessionSuspended),
        _ => None,
    }
}

/// A granted node: the lock (or permit, or leadership) is held while it exists and its
/// session is not lost. Watches for loss in the background from the moment of the grant.
pub(crate) struct Lease {
    session: Arc<dyn Session>,
    node: Node,
    policy: LossPolicy,
    lost: watch::Sender<Option<LossReason>>,
    stop: CancellationToken,
    /// The loss watch's task: stopped, and awaited, before the node is deleted, so that
    /// its watch is cancelled before the delete reaches the server (ZooKeeper would
    /// otherwise fire the holder's own watch on its own delete: a second notification
    /// per release).
    monitor: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Whether the loss watch has set a watch on the node yet ([`WatchState`]): a short
    /// hold's monitor never does, and then the release need not wait for it to stop.
    watch_state: Arc<WatchState>,
    /// `true` once a revocation was requested and seen ([`Lease::watch_revocation`]).
    revoke: watch::Sender<bool>,
    /// The revocation watch's task, if the hold is revocable: stopped and awaited before
    /// the node is deleted, like the loss watch.
    revoke_watch: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    released: AtomicBool,
    /// The revision at which the node was known to exist (the grant's read).
    since: u64,
    /// The hold's metrics and span; `None` for a lease that is not a hold (the
    /// semaphore's turn in its waiting line).
    hold: Option<Arc<HoldRecord>>,
    /// The release marker to write before a release deletes the node (lock-delay; see
    /// `super::delay`), if the client has a lock-delay.
    marker: Option<String>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.node.key)
            .field("token", &self.node.token)
            .field("lost", &*self.lost.borrow())
            .finish()
    }
}

impl Lease {
    /// A held `node`; its loss watch starts if the hold lasts (see [`Monitors`]).
    pub(super) fn grant(
        session: Arc<dyn Session>,
        node: Node,
        since: u64,
        policy: LossPolicy,
        hold: Option<HoldRecord>,
        marker: Option<String>,
        monitors: &Monitors,
    ) -> Arc<Self> {
        let lease = Arc::new(Lease {
            session,
            node,
            policy,
            lost: watch::channel(None).0,
            stop: CancellationToken::new(),
            monitor: std::sync::Mutex::new(None),
            watch_state: Arc::new(WatchState::default()),
            revoke: watch::channel(false).0,
            revoke_watch: std::sync::Mutex::new(None),
            released: AtomicBool::new(false),
            since,
            hold: hold.map(Arc::new),
            marker,
        });
        monitors.register(&lease);
        lease
    }

    /// Starts the loss watch (from [`Monitors`], once the hold has lasted), unless the
    /// lease was released first.
    fn start_monitor(&self) {
        let mut slot = self.monitor.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock `take_monitor` takes after setting `released`: either
        // we see it released, or the release finds (and stops) the task.
        if self.released.load(Ordering::SeqCst) || slot.is_some() {
            return;
        }
        *slot = Some(tokio::spawn(monitor(
            self.session.clone(),
            self.node.key.clone(),
            self.since,
            self.latch(),
            self.stop.clone(),
            self.policy,
            self.watch_state.clone(),
        )));
    }

    /// The held node.
    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// The session that owns the node.
    pub(crate) fn session(&self) -> &Arc<dyn Session> {
        &self.session
    }

    /// Starts watching for revocation requests of the held node
    /// ([`Session::revoke_requested`]); once one is seen, [`Lease::revoke_requested`]
    /// resolves and the node's metadata is written back as `info`, marked with the time
    /// the request was seen (on ZooKeeper the request replaced it: Curator's protocol),
    /// so holder metadata stays readable and shows the request.
    pub(crate) fn watch_revocation(self: &Arc<Self>, info: HolderInfo) {
        if self.released.load(Ordering::SeqCst) {
            return;
        }
        let task = tokio::spawn(watch_revocation(
            self.session.clone(),
            self.node.clone(),
            info,
            self.revoke.clone(),
            self.stop.clone(),
        ));
        let old = self
            .revoke_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Resolves once a revocation of this lease has been requested and seen; never if the
    /// lease does not watch for them ([`Lease::watch_revocation`]).
    ///
    /// Cancel safety: safe.
    pub(crate) async fn revoke_requested(&self) {
        let mut rx = self.revoke.subscribe();
        // The sender lives as long as the lease: `wait_for` only ends by the value.
        if rx.wait_for(|seen| *seen).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether a revocation of this lease has been requested and seen.
    pub(crate) fn is_revoke_requested(&self) -> bool {
        *self.revoke.borrow()
    }

    /// Why the lease is lost, if it is. Checks the session's state right now too, so the
    /// answer is never behind the session (latched: once lost, always lost).
    pub(crate) fn loss(&self) -> Option<LossReason> {
        if let Some(r) = *self.lost.borrow() {
            return Some(r);
        }
        let expired = self
            .session
            .valid_until()
            .is_some_and(|t| std::time::Instant::now() >= t);
        let r = if expired {
            LossReason::SessionLost
        } else {
            classify(*self.session.state().borrow(), self.policy)?
        };
        self.latch().set(r);
        Some(r)
    }

    /// Resolves when the lease is lost.
    ///
    /// Cancel safety: safe.
    pub(crate) async fn lost(&self) -> LossReason {
        let mut rx = self.lost.subscribe();
        let mut state = self.session.state();
        loop {
            if let Some(r) = self.loss() {
                return r;
            }
            tokio::select! {
                _ = rx.changed() => {}
                r = state.changed() => if r.is_err() { return LossReason::SessionLost },
                // The client-side deadline, here too: a short hold has no loss watch yet.
                _ = past_deadline(&*self.session) => {}
            }
        }
    }

    /// Deletes the node (once) and reports whether the lease was still held.
    ///
    /// Cancel safety: safe; the deletion finishes in a task of its own if this future is
    /// dropped.
    pub(crate) async fn release(&self) -> Result<()> {
        if self.released.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.stop.cancel();
        let loss = self.loss();
        let span = self.release_span();
        self.end_hold();
        let started = tokio::time::Instant::now();
        let monitor = self.take_monitor();
        let (session, node) = (self.session.clone(), self.node.clone());
        let marker = self.marker.clone().filter(|_| loss.is_none());
        let removed = finish(
            async move {
                unwatch(monitor).await;
                if let Some(marker) = marker {
                    mark_released(&session, &node, &marker).await;
                }
                remove_node(session, None, Some(node)).await
            }
            .instrument(span.clone()),
        )
        .await;
        if let Some(hold) = &self.hold {
            hold.labels.release(started.elapsed());
        }
        span.record(
            "outcome",
            match (&loss, &removed) {
                (Some(_), _) => "lost",
                (None, Ok(())) => "released",
                (None, Err(_)) => "error",
            },
        );
        match loss {
            Some(r) => Err(Error::LockLost(r)),
            None => removed,
        }
    }

    /// Deletes the node in the background (once).
    pub(crate) fn release_in_background(&self) {
        if !self.released.swap(true, Ordering::SeqCst) {
            self.stop.cancel();
            let loss = self.loss();
            self.end_hold();
            let monitor = self.take_monitor();
            let (session, node) = (self.session.clone(), self.node.clone());
            let marker = self.marker.clone().filter(|_| loss.is_none());
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        unwatch(monitor).await;
                        if let Some(marker) = marker {
                            mark_released(&session, &node, &marker).await;
                        }
                        spawn_removal(session, None, Some(node));
                    });
                }
                Err(_) => spawn_removal(session, None, Some(node)),
            }
        }
    }

    /// The watch tasks (loss, revocation) that must have stopped before the node goes.
    /// A loss watch that never set a watch is only aborted: it holds none to cancel.
    fn take_monitor(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(t) = self
            .monitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            if self.watch_state.stop() {
                tasks.push(t);
            } else {
                t.abort();
            }
        }
        tasks.extend(
            self.revoke_watch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        tasks
    }

    fn latch(&self) -> Latch {
        Latch {
            tx: self.lost.clone(),
            hold: self.hold.clone(),
        }
    }

    /// Ends the hold's record (a no-op if a loss already ended it).
    fn end_hold(&self) {
        if let Some(hold) = &self.hold {
            hold.end(None);
        }
    }

    /// The `queuelock.release` span, a child of the hold's.
    fn release_span(&self) -> tracing::Span {
        let parent = self.hold.as_ref().and_then(|h| h.span());
        let (lock, recipe) = self
            .hold
            .as_ref()
            .map_or(("", ""), |h| (&*h.labels.name, h.labels.recipe));
        tracing::info_span!(
            parent: parent.as_ref().and_then(|s| s.id()),
            "queuelock.release",
            lock,
            recipe,
            key = %self.node.key,
            token = self.node.token,
            outcome = tracing::field::Empty,
        )
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release_in_background();
    }
}

/// Where a loss is latched: the lease's loss value, and its hold record (a loss ends the
/// hold and is counted, once).
struct Latch {
    tx: watch::Sender<Option<LossReason>>,
    hold: Option<Arc<HoldRecord>>,
}

impl Latch {
    fn set(&self, reason: LossReason) {
        self.tx.send_if_modified(|v| {
            if v.is_some() {
                return false;
            }
            *v = Some(reason);
            // Recorded before anyone waiting on the loss is woken, so whoever sees the
            // loss also sees it counted.
            if let Some(hold) = &self.hold {
                hold.end(Some(reason));
            }
            true
        });
    }
}

/// How long a hold goes before its node is watched (see [`monitor`]).
const WATCH_HELD_AFTER: Duration = Duration::from_millis(100);

/// How late [`Monitors`] may start a due watch: the task wakes once for every hold that
/// fell due in this span, not once per grant (at hundreds of short holds a second, a
/// timer wake-up per grant was a worker thread's park and unpark on every lock +
/// release). A hold is watched 100 to 150 ms after its grant.
const WATCH_BATCH: Duration = Duration::from_millis(50);

/// Starts the loss watch of each hold that lasts [`WATCH_HELD_AFTER`], from one task per
/// client. Until then a hold needs no task of its own: its session's state and deadline
/// are read by [`Lease::loss`] and waited on by [`Lease::lost`], and a node deleted by
/// someone else in that time is reported when the watch starts (from the grant's
/// revision, so it is not missed). A task per grant cost a spawn, and a wake-up of
/// another worker thread to run it and again to stop it, on every lock + release.
#[derive(Default)]
pub(crate) struct Monitors {
    inner: Arc<MonitorsInner>,
}

#[derive(Default)]
struct MonitorsInner {
    /// Holds in grant order (so by due time), each due `WATCH_HELD_AFTER` after it.
    due: std::sync::Mutex<std::collections::VecDeque<(tokio::time::Instant, Weak<Lease>)>>,
    wake: tokio::sync::Notify,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Monitors {
    fn register(&self, lease: &Arc<Lease>) {
        let first = {
            let mut due = self.inner.due.lock().unwrap_or_else(|p| p.into_inner());
            due.push_back((
                tokio::time::Instant::now() + WATCH_HELD_AFTER,
                Arc::downgrade(lease),
            ));
            due.len() == 1
        };
        let mut task = self.inner.task.lock().unwrap_or_else(|p| p.into_inner());
        // (Re)started on the caller's runtime if it is not running (a runtime that
        // ended took it along).
        if task.as_ref().map_or(true, |t| t.is_finished()) {
            *task = Some(tokio::spawn(run_monitors(self.inner.clone())));
        } else if first {
            self.inner.wake.notify_one();
        }
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        if let Some(t) = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
    }
}

/// The [`Monitors`] task: sleeps until the oldest hold is due, starts the loss watch of
/// every due hold still held, waits for a hold when there is none.
async fn run_monitors(inner: Arc<MonitorsInner>) {
    loop {
        let next = {
            let mut due = inner.due.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            while let Some((at, _)) = due.front() {
                if *at > now {
                    break;
                }
                if let Some((_, lease)) = due.pop_front() {
                    if let Some(lease) = lease.upgrade() {
                        lease.start_monitor();
                    }
                }
            }
            due.front().map(|(at, _)| *at)
        };
        match next {
            Some(at) => tokio::time::sleep_until(at + WATCH_BATCH).await,
            None => inner.wake.notified().await,
        }
    }
}

/// Whether a loss watch has started watching its node, or was stopped first: one atomic
/// that both sides change with a single read-modify-write, so exactly one of them wins
/// (a monitor never starts a watch after the release looked and saw none).
#[derive(Default)]
struct WatchState(std::sync::atomic::AtomicU8);

impl WatchState {
    const IDLE: u8 = 0;
    const WATCHING: u8 = 1;
    const STOPPED: u8 = 2;

    /// The monitor is about to watch: false if it was stopped first (then it must not).
    fn start(&self) -> bool {
        self.0
            .compare_exchange(
                Self::IDLE,
                Self::WATCHING,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// The release stops the monitor: true if it had started watching (wait for it).
    fn stop(&self) -> bool {
        self.0.swap(Self::STOPPED, Ordering::SeqCst) == Self::WATCHING
    }
}

/// Stops the watches and waits until their futures (and so their watches) are dropped.
///
/// Cancel safety: safe; the tasks are aborted either way.
async fn unwatch(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
}

/// Waits for a revocation request of `node` until the lease is released (`stop`) or the
/// node or its session is gone (the loss watch reports those); connection trouble is
/// ridden out. Once one is seen: latches `seen`, then writes `info` back to the node.
async fn watch_revocation(
    session: Arc<dyn Session>,
    node: Node,
    info: HolderInfo,
    seen: watch::Sender<bool>,
    stop: CancellationToken,
) {
    loop {
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = session.revoke_requested(&node) => r,
        };
        match r {
            Ok(()) => break,
            Err(e) if e.is_retryable() => {
                tracing::debug!(key = %node.key, error = %e, "revocation watch broke; watching again");
                if settle(&*session, Duration::from_millis(50)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(key = %node.key, error = %e, "revocation watch ended");
                return;
            }
        }
    }
    tracing::info!(key = %node.key, token = node.token, "revocation requested");
    seen.send_replace(true);
    let put = [Op::Put {
        key: node.key.clone(),
        value: info.with_revoke_seen().encode(),
    }];
    let write = super::retry(&*session, || session.guarded(&node, &put));
    tokio::select! {
        _ = stop.cancelled() => {}
        r = write => if let Err(e) = r {
            tracing::debug!(key = %node.key, error = %e, "could not record the revocation request");
        },
    }
}

/// Watches a held node until it is released or lost.
/// Resolves once the session's client-side deadline ([`Session::valid_until`]: the send
/// time of the last acknowledged renewal + TTL, never later than the server's expiry)
/// has passed without a renewal; never for a session without one.
///
/// Cancel safety: safe (only timers).
async fn past_deadline(session: &dyn Session) {
    loop {
        let Some(until) = session.valid_until() else {
            return std::future::pending().await;
        };
        if until <= std::time::Instant::now() {
            return;
        }
        // Renewals move the deadline on: sleep to the one we know, then look again.
        tokio::time::sleep_until(until.into()).await;
    }
}

async fn monitor(
    session: Arc<dyn Session>,
    key: String,
    since: u64,
    tx: Latch,
    stop: CancellationToken,
    policy: LossPolicy,
    watch_state: Arc<WatchState>,
) {
    let mut state = session.state();
    // A short hold sets no watch at all: no request, no server-side watcher, nothing to
    // fire on its own delete. Watching from `since` later misses no deletion (etcd replays
    // from the revision; ZooKeeper's read shows the node gone); it only reports one done
    // by someone else in the meantime that much later. The session's state is watched
    // from the start.
    // The client-side deadline, watched here rather than left to the backend's keep-alive
    // loop: a loop that only looks at the deadline after a renewal attempt (a failed one
    // can take a third of the TTL, then it sleeps) would report the loss late, while the
    // server may already have expired the session and granted the lock to the next
    // waiter (found by the Jepsen run on Redis: a holder still believed it held 0.7 ms
    // after the next grant). Pinned once, so it is one timer for the whole hold.
    let deadline = past_deadline(&*session);
    tokio::pin!(deadline);
    if !watch_state.start() {
        return; // released meanwhile
    }
    loop {
        let watch_broken = tokio::select! {
            _ = stop.cancelled() => return,
            s = state.wait_for(|s| classify(*s, policy).is_some()) => {
                let reason = s.ok().and_then(|s| classify(*s, policy)).unwrap_or(LossReason::SessionLost);
                tx.set(reason);
                return;
            }
            _ = &mut deadline => {
                tracing::debug!(key = %key, "lease lost: the session's deadline passed without a renewal");
                tx.set(LossReason::SessionLost);
                return;
            }
            r = session.deleted_lazily(&key, since) => r.is_err(),
        };
        if watch_broken {
            // The state branch reports a lost session; otherwise watch again once the
            // connection is back.
            let _ = settle(&*session, Duration::from_millis(50)).await;
            continue;
        }
        // Our node went: because our session did (ask the server), or someone deleted it.
        let state = match session.probe().await {
            Ok(s) => s,
            Err(_) => *session.state().borrow(),
        };
        let reason = if state == SessionState::Lost {
            LossReason::SessionLost
        } else {
            LossReason::NodeDeleted
        };
        if !stop.is_cancelled() {
            // The hold record warns with the lock's name; a lease that is no hold (a
            // turn in a waiting line) is only worth a debug line.
            tracing::debug!(key = %key, %reason, "lease lost");
            tx.set(reason);
        }
        return;
    }
}
