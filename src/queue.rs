//! The shared queue algorithm, the bottom layer of this crate: how a waiter joins a
//! queue, finds the one node it must wait for, waits without polling, and turns into a
//! held [`Lease`]. All waiting lives here; recipes only supply a [`Request`] (a queue, a
//! node kind and the [`Ahead`] it waits for).
//!
//! 1. Create our ephemeral sequential node; the backend answers, in the same round trip
//!    where it can, the waiter's read: the **one** node our [`Ahead`] selects before ours.
//! 2. No such node: granted.
//! 3. Otherwise wait for that node's deletion, our session's loss, or cancellation; then
//!    read again (the one node we wait for now, with our own node: O(1) where the store
//!    can) and go to 2. A grant is only ever decided on a read that still saw our node,
//!    from a session that is not lost — or, when that read showed the blocker was the
//!    last node ahead ([`queuelock_core::Turn::last`]), on the blocker's deletion while
//!    our session is known alive (no node joins ahead of ours; a handoff then costs no
//!    read).
//! 4. With an [`Admission`] (the semaphore) the grant is only a turn at the head of a
//!    waiting line: the head watches a holders directory and enters it (a node of its
//!    own there) as soon as the admission rule lets it, then leaves the line.
//!
//! Dropping an acquire at any await point removes its node in the background
//! ([`Pending`]); a [`Lease`] is deleted exactly once, by `release` or on drop.
//!
//! This module knows nothing of `Client`, configuration or recipes: it takes a small
//! [`Context`] (where sessions come from, the loss policy, the label, counters).

mod delay;
mod lease;
mod rules;
mod slot;
mod telemetry;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queuelock_core::{
    Ahead, Created, Error, LossReason, Node, NodeKind, NodeSpec, Result, Session, SessionState,
};
use tokio::time::Instant;
use tracing::Instrument;

use crate::metadata::{HolderInfo, QueueEntry};

pub(crate) use lease::Lease;
pub use lease::LossPolicy;
use rules::admits;
pub(crate) use rules::{by_kind, everyone_holds, predecessor, shared_or_exclusive, WaitRule};
pub(crate) use slot::SessionSlot;
pub use telemetry::{describe_metrics, NameLabel};
use telemetry::{AcquireRecord, HoldRecord, Labels, Outcome, Telemetry};

/// Where the queue gets the session it creates nodes through: a live one, opened on
/// demand (a `Client`'s shared session; in tests, any session).
#[async_trait]
pub(crate) trait SessionSource: Send + Sync {
    /// A session that is not lost, opening one if needed.
    ///
    /// Cancel safety: safe.
    async fn session(&self) -> Result<Arc<dyn Session>>;
}

pub(crate) use telemetry::Counters;

/// What the queue needs from its surroundings.
pub(crate) struct Context {
    sessions: Arc<dyn SessionSource>,
    policy: LossPolicy,
    label: Option<String>,
    /// How long a waiting acquire rides out connection trouble before failing.
    patience: Duration,
    /// Lock-delay after a lost holder; zero: none (nothing extra read or written).
    lock_delay: Duration,
    telemetry: Arc<Telemetry>,
    /// Starts the loss watches of holds that last.
    monitors: lease::Monitors,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("policy", &self.policy)
            .field("label", &self.label)
            .field("patience", &self.patience)
            .field("lock_delay", &self.lock_delay)
            .finish()
    }
}

impl Context {
    /// A context over `sessions` whose session TTL is `ttl`, on the backend named
    /// `backend` (a metrics label), labelling metrics with lock names as `names` says.
    pub(crate) fn new(
        sessions: Arc<dyn SessionSource>,
        policy: LossPolicy,
        label: Option<String>,
        ttl: Duration,
        backend: &'static str,
        names: NameLabel,
    ) -> Self {
        Context {
            sessions,
            policy,
            label,
            // A new session cannot be opened during a partition: wait that long at least.
            patience: (ttl * 2).max(Duration::from_secs(10)),
            lock_delay: Duration::ZERO,
            telemetry: Arc::new(Telemetry::new(backend, names)),
            monitors: lease::Monitors::default(),
        }
    }

    /// The same context with a lock-delay after lost holders (see the `delay` module).
    pub(crate) fn with_lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = delay;
        self
    }

    /// A live session.
    ///
    /// Cancel safety: safe.
    pub(crate) async fn session(&self) -> Result<Arc<dyn Session>> {
        self.sessions.session().await
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.telemetry.counters
    }

    /// A node payload: this process's holder metadata.
    pub(crate) fn payload(&self) -> Vec<u8> {
        self.holder_info().encode()
    }

    /// This process's holder metadata, now.
    fn holder_info(&self) -> HolderInfo {
        HolderInfo::now(self.label.as_deref())
    }
}

/// What a recipe asks the queue for.
pub(crate) struct Request<'a> {
    pub queue: &'a str,
    /// The recipe's name for the lock (metrics and spans); `queue` unless the recipe
    /// keeps its queue under the name (the semaphore's `NAME/waiters`).
    pub name: &'a str,
    pub kind: NodeKind,
    /// The one earlier node this waiter waits for.
    pub ahead: Ahead,
    /// The node's payload; `None` for holder metadata.
    pub payload: Option<Vec<u8>>,
    /// `Some`: `queue` is a waiting line and the hold is a node in another directory.
    pub admission: Option<Admission<'a>>,
    /// `Some`: give up then, with [`Error::Timeout`] (recorded as a timeout).
    pub deadline: Option<Deadline>,
    /// The hold watches for revocation requests ([`Lease::watch_revocation`]) and says
    /// so in its metadata. Only without an admission and a custom payload.
    pub revocable: bool,
}

/// When a waiting acquire gives up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    at: Instant,
    after: Duration,
}

impl Deadline {
    /// `timeout` from now.
    pub(crate) fn after(timeout: Duration) -> Self {
        Deadline {
            at: Instant::now() + timeout,
            after: timeout,
        }
    }

    /// Runs `fut` until the deadline: [`Error::Timeout`] naming the original timeout then.
    ///
    /// Not an `async fn`: that would keep `fut` twice in its state (the argument and the
    /// future it awaits), which doubled the size of every waiting acquire (4.9 KiB).
    ///
    /// Cancel safety: as `fut`'s.
    pub(crate) fn run<T, F>(deadline: Option<Deadline>, fut: F) -> impl Future<Output = Result<T>>
    where
        F: Future<Output = Result<T>>,
    {
        use futures::future::{Either, FutureExt};
        match deadline {
            None => Either::Left(fut),
            Some(d) => Either::Right(
                tokio::time::timeout_at(d.at, fut)
                    .map(move |r| r.unwrap_or(Err(Error::Timeout(d.after)))),
            ),
        }
    }
}

impl<'a> Request<'a> {
    /// A request for a node of `kind` in `queue`, waiting for what `ahead` selects.
    pub(crate) fn new(queue: &'a str, kind: NodeKind, ahead: Ahead) -> Self {
        Request {
            queue,
            name: queue,
            kind,
            ahead,
            payload: None,
            admission: None,
            deadline: None,
            revocable: false,
        }
    }
}

/// The semaphore's second step: the head of the waiting line enters `holders` while
/// [`admits`] says a permit is free.
pub(crate) struct Admission<'a> {
    pub holders: &'a str,
    pub permits: u32,
}

/// Whether an acquire waits, and what it returns: the two modes share one algorithm, and
/// their result types say what each can answer (a waiting acquire has no "not granted").
pub(crate) trait Mode {
    /// What the acquire returns.
    type Output: Send;
    /// Whether the acquire waits (and so joins again when its place is lost).
    const WAITS: bool;
    /// The answer for a grant.
    fn granted(lease: Arc<Lease>) -> Self::Output;
    /// The answer when the acquire would have to wait; `None`: it waits.
    fn busy() -> Option<Self::Output>;
    /// The held lease an answer carries, if any.
    fn lease(out: &Self::Output) -> Option<&Arc<Lease>>;
}

/// Wait in the queue until granted (joining again on a fresh session if ours is lost
/// while waiting: nothing was held yet).
pub(crate) enum Wait {}

impl Mode for Wait {
    type Output = Arc<Lease>;
    const WAITS: bool = true;
    fn granted(lease: Arc<Lease>) -> Arc<Lease> {
        lease
    }
    fn busy() -> Option<Arc<Lease>> {
        None
    }
    fn lease(out: &Arc<Lease>) -> Option<&Arc<Lease>> {
        Some(out)
    }
}

/// Never wait: if the rule names a node to wait for, remove ours and answer `None`.
pub(crate) enum Try {}

impl Mode for Try {
    type Output = Option<Arc<Lease>>;
    const WAITS: bool = false;
    fn granted(lease: Arc<Lease>) -> Option<Arc<Lease>> {
        Some(lease)
    }
    fn busy() -> Option<Option<Arc<Lease>>> {
        Some(None)
    }
    fn lease(out: &Option<Arc<Lease>>) -> Option<&Arc<Lease>> {
        out.as_ref()
    }
}

/// Joins the queue and waits for our turn. Connection trouble is ridden out for the
/// context's patience; a place lost before the grant is taken again at the back.
///
/// Cancel safety: safe. Dropped at any point, the node it created (or may have created)
/// is removed in the background.
pub(crate) async fn acquire(ctx: &Context, req: Request<'_>) -> Result<Arc<Lease>> {
    run::<Wait>(ctx, &req).await
}

/// Takes the grant if the rule names nothing to wait for, without waiting: `None`
/// otherwise, having removed our node again.
///
/// Cancel safety: safe; a dropped call's node is removed in the background.
pub(crate) async fn try_acquire(ctx: &Context, req: Request<'_>) -> Result<Option<Arc<Lease>>> {
    run::<Try>(ctx, &req).await
}

/// Runs one acquire inside its `queuelock.acquire` span and records how it ended
/// (granted, busy, timeout, error; cancelled if dropped).
///
/// Cancel safety: safe, as [`acquire`]; a dropped call is recorded as cancelled.
async fn run<M: Mode>(ctx: &Context, req: &Request<'_>) -> Result<M::Output> {
    let labels = ctx.telemetry.labels(req.name, req.kind);
    let span = tracing::info_span!(
        "queuelock.acquire",
        lock = req.name,
        recipe = labels.recipe,
        backend = ctx.telemetry.backend(),
        waits = M::WAITS,
        position = tracing::field::Empty,
        waited_ms = tracing::field::Empty,
        token = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    // A timed acquire is timed from its caller's call (the deadline's origin), so its
    // wait is never recorded shorter than the timeout it hit.
    let called = req.deadline.map_or_else(Instant::now, |d| d.at - d.after);
    let mut record = AcquireRecord::start(labels.clone(), M::WAITS, called);
    let r = Deadline::run(req.deadline, join::<M>(ctx, req, &labels))
        .instrument(span.clone())
        .await;
    let outcome = match &r {
        Ok(out) => match M::lease(out) {
            Some(lease) => {
                span.record("token", lease.node().token);
                Outcome::Granted
            }
            None => Outcome::Busy,
        },
        Err(Error::Timeout(_)) => Outcome::Timeout,
        Err(_) => Outcome::Error,
    };
    span.record("waited_ms", record.waited().as_millis() as u64);
    span.record("outcome", outcome.as_str());
    record.finish(outcome);
    r
}

/// Joins the queue until answered, riding out connection trouble and joining again when
/// our place is lost before the grant.
///
/// Cancel safety: safe, as [`acquire`].
async fn join<M: Mode>(ctx: &Context, req: &Request<'_>, labels: &Labels) -> Result<M::Output> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(20);
    let mut trouble_since: Option<Instant> = None;
    loop {
        match attempt::<M>(ctx, req, labels).await {
            Ok(out) => {
                tracing::debug!(
                    lock = req.name,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "answered"
                );
                return Ok(out);
            }
            // Our place in the queue vanished before anything was granted: join again.
            Err(e @ (Error::SessionExpired(_) | Error::LockLost(_))) if M::WAITS => {
                tracing::warn!(lock = req.queue, error = %e, "lost our place in the queue; joining again");
            }
            Err(e) if e.is_retryable() && M::WAITS => {
                let since = *trouble_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= ctx.patience {
                    return Err(e);
                }
                tracing::warn!(lock = req.queue, error = %e, "cannot reach the store; trying again");
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// One pass: create our node, wait for our turn as the rule says, then (with an
/// admission) wait for a free place among the holders.
///
/// Cancel safety: safe; our node (created or maybe created) is removed if dropped.
async fn attempt<M: Mode>(ctx: &Context, req: &Request<'_>, labels: &Labels) -> Result<M::Output> {
    let session = ctx.session().await?;
    let info = ctx.holder_info().with_revocable(req.revocable);
    let payload = req.payload.clone().unwrap_or_else(|| info.encode());
    let spec = NodeSpec::new(req.queue, req.kind, payload).with_ahead(req.ahead);
    let mut pending = Pending::new(session.clone(), spec);
    let created = pending.create().await.map_err(|e| gone_err(&*session, e))?;
    let me = created.node;
    if let Some(ahead) = created.ahead {
        labels.queue_depth(ahead);
        tracing::Span::current().record("position", ahead);
    }
    let mut read = created.turn;
    // With a lock-delay (not for an admission's waiting line): the last node we waited
    // for, whether it was the last node ahead then, and the instant we knew it was gone
    // (`None` until a read showed it gone after a broken watch). See `delay`.
    let delayed = !ctx.lock_delay.is_zero() && req.admission.is_none();
    let mut waited_for: Option<(Node, bool, Option<Instant>)> = None;
    // Whether this attempt waited: then others likely queue behind it (see `mark_held`).
    let mut waited = false;
    let turn = loop {
        let Some(blocker) = read.blocker else {
            if let Some((gone, last, seen)) = waited_for.take() {
                let seen = seen.unwrap_or_else(Instant::now);
                if !delay::was_released(&*session, req.queue, &gone, last).await {
                    tracing::info!(
                        lock = req.queue,
                        gone = %gone.key,
                        delay_ms = ctx.lock_delay.as_millis() as u64,
                        "the holder ahead was lost, not released: waiting out the lock-delay"
                    );
                    let mut state = session.state();
                    tokio::select! {
                        _ = tokio::time::sleep_until(seen + ctx.lock_delay) => {}
                        _ = state.wait_for(|s| *s == SessionState::Lost) => {
                            return Err(Error::SessionExpired(session.id()));
                        }
                    }
                    // A fresh read after the delay: our node still there, nothing ahead.
                    read = retry(&*session, || session.turn(req.queue, &me, req.ahead))
                        .await
                        .map_err(|e| gone_err(&*session, e))?;
                    continue;
                }
            }
            // Granted on a read that saw our node; refuse if the session has been lost
            // since (never grant after lease loss).
            if *session.state().borrow() == SessionState::Lost {
                return Err(Error::SessionExpired(session.id()));
            }
            pending.disarm();
            tracing::debug!(lock = req.queue, token = me.token, "granted");
            if waited && req.ahead == Ahead::Predecessor {
                // Nothing older is left: the waiter behind us may take our deletion as
                // its turn without a read (`Session::blocker_deleted`).
                session.mark_held(&me);
            }
            // With an admission this is only a turn in the waiting line: the hold is the
            // holder node entered next.
            let hold = req.admission.is_none().then(|| hold_record(labels));
            // A holder with a lock-delay marks its release, so that waiters can tell it
            // from a loss.
            let marker = delayed.then(|| delay::marker(req.queue));
            let lease = Lease::grant(
                session.clone(),
                me,
                read.revision,
                ctx.policy,
                hold,
                marker,
                &ctx.monitors,
            );
            if req.revocable && req.admission.is_none() && req.payload.is_none() {
                lease.watch_revocation(info);
            }
            break lease;
        };
        if let Some(out) = M::busy() {
            // Boxed, as `admit` below: kept inline, the largest branch sets the size of
            // every waiting acquire's future.
            Box::pin(pending.remove()).await;
            return Ok(out);
        }
        tracing::trace!(lock = req.queue, waiting_for = %blocker.key, "queued");
        let woke = wait_turn(&*session, &blocker, read.revision).await?;
        let deleted = woke.is_some();
        waited = true;
        labels.wakeup();
        if delayed {
            waited_for = Some((blocker.clone(), read.last, deleted.then(Instant::now)));
        }
        if deleted && (read.last || woke == Some(true)) && alive(&*session) {
            // The blocker was the last node ahead, or was held when it went (nothing
            // older was left then), and none can join ahead of ours: our turn, without a
            // second read. Our node exists while our session lives (only someone
            // deleting it could remove it, and the lease's watch, from the revision of
            // our last read, reports that as a loss like any holder's).
            read = queuelock_core::Turn::new(None, read.revision);
            continue;
        }
        // The one node we wait for now (and proof that ours still exists): O(1) where the
        // store can read just that node.
        read = retry(&*session, || session.turn(req.queue, &me, req.ahead))
            .await
            .map_err(|e| gone_err(&*session, e))?;
        if let Some((_, _, seen @ None)) = &mut waited_for {
            // After a broken watch: the blocker was gone by this read at the latest.
            *seen = Some(Instant::now());
        }
    };
    match &req.admission {
        None => Ok(M::granted(turn)),
        Some(admission) => Box::pin(admit::<M>(ctx, turn, req.kind, admission, labels)).await,
    }
}

/// The record of a hold starting now, with its `queuelock.hold` span (a child of the
/// acquire's span, open until release or loss).
fn hold_record(labels: &Labels) -> HoldRecord {
    let span = tracing::info_span!(
        "queuelock.hold",
        lock = &*labels.name,
        recipe = labels.recipe,
        held_ms = tracing::field::Empty,
        lost = tracing::field::Empty,
    );
    HoldRecord::start(labels.clone(), span)
}

/// The head of a waiting line (`turn`) enters the holders directory as soon as the
/// admission rule lets it, watching the holders meanwhile. Only the head watches them, so
/// a release wakes one waiter, and an admission the next head.
///
/// Cancel safety: safe; dropping it drops `turn` (and a holder node not yet returned),
/// which removes them in the background.
async fn admit<M: Mode>(
    ctx: &Context,
    turn: Arc<Lease>,
    kind: NodeKind,
    admission: &Admission<'_>,
    labels: &Labels,
) -> Result<M::Output> {
    let session = turn.session().clone();
    loop {
        let holders = retry(&*session, || session.list(admission.holders)).await?;
        if admits(holders.nodes.len(), admission.permits) {
            let held = enter(ctx, session.clone(), admission.holders, kind, labels).await?;
            // Our holder node exists before our waiter node goes, so the next head
            // counts us.
            turn.release().await?;
            return Ok(M::granted(held));
        }
        if let Some(out) = M::busy() {
            turn.release().await?;
            return Ok(out);
        }
        let keys: Vec<String> = holders.nodes.into_iter().map(|n| n.key).collect();
        any_deleted(&turn, &keys, holders.revision).await?;
        labels.wakeup();
    }
}

/// The queue's nodes split into holders (nodes the rule waits on nothing for) and
/// waiters, in queue order, with their metadata. One read of the queue plus one per node.
///
/// Cancel safety: safe (read only).
pub(crate) async fn describe(
    ctx: &Context,
    queue: &str,
    rule: WaitRule,
) -> Result<(Vec<QueueEntry>, Vec<QueueEntry>)> {
    let session = ctx.session().await?;
    let listing = retry(&*session, || session.list(queue)).await?;
    let (mut holders, mut waiters) = (Vec::new(), Vec::new());
    for (i, node) in listing.nodes.iter().enumerate() {
        let read = retry(&*session, || session.read_node(&node.key)).await?;
        let entry = QueueEntry {
            key: node.key.clone(),
            fencing_token: read.as_ref().map_or(node.token, |r| r.1),
            kind: node.kind,
            holder: read.as_ref().and_then(|r| HolderInfo::decode(&r.0)),
        };
        if rule(&listing.nodes, i).is_none() {
            holders.push(entry);
        } else {
            waiters.push(entry);
        }
    }
    Ok((holders, waiters))
}

/// Waits until `queue` may have changed after revision `since` (for observers, who read
/// it again either way). Connection trouble and a lost session end the wait too (the
/// next read opens a fresh session); other errors, such as a backend without
/// [`Session::queue_changed`], are returned.
///
/// Cancel safety: safe.
pub(crate) async fn changed(ctx: &Context, queue: &str, since: u64) -> Result<()> {
    let session = ctx.session().await?;
    match session.queue_changed(queue, since).await {
        Err(e) if e.is_retryable() => {
            // Whatever the session does meanwhile, the next read tells.
            let _ = settle(&*session, Duration::from_millis(100)).await;
            Ok(())
        }
        // A lost session: the next read opens a fresh one.
        Err(Error::SessionExpired(_)) => Ok(()),
        other => other,
    }
}

/// Creates a node in `queue` and holds it at once, without waiting for anything: for an
/// admission decided on the holders' listing.
///
/// Cancel safety: safe; a dropped call's node is removed in the background.
async fn enter(
    ctx: &Context,
    session: Arc<dyn Session>,
    queue: &str,
    kind: NodeKind,
    labels: &Labels,
) -> Result<Arc<Lease>> {
    let spec = NodeSpec::new(queue, kind, ctx.payload()).with_ahead(Ahead::Nothing);
    let mut pending = Pending::new(session.clone(), spec);
    let created = pending.create().await?;
    pending.disarm();
    Ok(Lease::grant(
        session,
        created.node,
        created.turn.revision,
        ctx.policy,
        Some(hold_record(labels)),
        None,
        &ctx.monitors,
    ))
}

/// Waits until any of `keys` is gone. Errors if `guard` is lost meanwhile. Returns `Ok`
/// after a broken watch too: the caller reads again either way.
///
/// Cancel safety: safe.
async fn any_deleted(guard: &Lease, keys: &[String], since: u64) -> Result<()> {
    let session = guard.session().clone();
    let watches: Vec<_> = keys
        .iter()
        .map(|k| {
            let s = session.clone();
            let k = k.clone();
            Box::pin(async move { s.deleted(&k, since).await })
        })
        .collect();
    if watches.is_empty() {
        return Ok(());
    }
    let r = tokio::select! {
        (r, _, _) = futures::future::select_all(watches) => r,
        reason = guard.lost() => return Err(Error::LockLost(reason)),
    };
    match r {
        Err(e) if e.is_retryable() => settle(&*session, Duration::from_millis(50)).await,
        other => other,
    }
}

/// Waits until `blocker` is gone: `Ok(Some(held))`, `held` when the store showed it was
/// held as it went ([`Session::blocker_deleted`]). Errors if the session is lost. Returns
/// `Ok(None)` after a broken watch: the caller reads again.
///
/// Our own node is not watched: the session's state reports its loss, and the read after
/// every wake proves our node still exists (a node deleted by someone else is found
/// then). Watching it too cost a second notification per release (ZooKeeper fires a
/// watch on our own delete) and a second watch per waiter.
///
/// Cancel safety: safe; dropping it cancels the watch.
async fn wait_turn(session: &dyn Session, blocker: &Node, since: u64) -> Result<Option<bool>> {
    let mut state = session.state();
    // The select's outputs hold no borrow of the state channel, so the future stays Send.
    let woke = tokio::select! {
        r = session.blocker_deleted(blocker, since) => Some(r),
        _ = state.wait_for(|s| *s == SessionState::Lost) => None,
    };
    match woke {
        Some(Ok(held)) => Ok(Some(held)),
        Some(Err(e)) if e.is_retryable() => settle(session, Duration::from_millis(50))
            .await
            .map(|()| None),
        Some(Err(e)) => Err(e),
        None => Err(Error::SessionExpired(session.id())),
    }
}

/// Whether the session is known alive right now: live, and inside the client-side
/// deadline of its last acknowledged keep-alive (so the server still has it). A backend
/// that tracks no deadline is never "known" alive here.
fn alive(session: &dyn Session) -> bool {
    *session.state().borrow() == SessionState::Live
        && session
            .valid_until()
            .is_some_and(|t| std::time::Instant::now() < t)
}

/// "Our node is not in the queue any more" told apart: a lost session, or a node deleted
/// by someone else. Other errors pass through.
fn gone_err(session: &dyn Session, e: Error) -> Error {
    match e {
        Error::LockLost(LossReason::NodeDeleted)
            if *session.state().borrow() == SessionState::Lost =>
        {
            Error::SessionExpired(session.id())
        }
        e => e,
    }
}

/// After a retryable error: pause, and while the session is suspended wait for it to come
/// back. Errors if the session is lost.
///
/// Cancel safety: safe.
async fn settle(session: &dyn Session, pause: Duration) -> Result<()> {
    tokio::time::sleep(pause).await;
    let mut state = session.state();
    let now = *state
        .wait_for(|s| *s != SessionState::Suspended)
        .await
        .map_err(|_| Error::Closed)?;
    if now == SessionState::Lost {
        return Err(Error::SessionExpired(session.id()));
    }
    Ok(())
}

/// Runs `op` until it succeeds, fails for good, or the session is lost. Retryable errors
/// (connection trouble) are retried with backoff, waiting out a suspension.
///
/// Cancel safety: as `op`'s.
pub(crate) async fn retry<T, F, Fut>(session: &dyn Session, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Err(e) if e.is_retryable() => backoff.wait(session, &e).await?,
            other => return other,
        }
    }
}

/// The pause between tries of [`retry`]: 20 ms doubling to 1 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(20))
    }
}

impl Backoff {
    /// Waits out the pause (and a suspension) after the retryable error `e`.
    ///
    /// Cancel safety: safe.
    async fn wait(&mut self, session: &dyn Session, e: &Error) -> Result<()> {
        tracing::debug!(error = %e, "retrying");
        settle(session, self.0).await?;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
        Ok(())
    }
}

/// Removes a node (or the node an attempt may have created) until done or the session
/// is gone (which removes it anyway).
///
/// Cancel safety: a dropped call may or may not have removed the node; callers that
/// must finish run it in a task of its own.
pub(crate) async fn remove_node(
    session: Arc<dyn Session>,
    spec: Option<NodeSpec>,
    node: Option<Node>,
) -> Result<()> {
    let r = retry(&*session, || async {
        match (&node, &spec) {
            (Some(n), _) => session.delete(n).await,
            (None, Some(s)) => session.abandon(s).await,
            (None, None) => Ok(()),
        }
    })
    .await;
    match r {
        // A lost session's nodes are gone with it.
        Err(Error::SessionExpired(_)) => Ok(()),
        other => other,
    }
}

/// Removal that must happen even though nobody waits for it (a dropped future or guard).
pub(crate) fn spawn_removal(session: Arc<dyn Session>, spec: Option<NodeSpec>, node: Option<Node>) {
    spawn_cleanup(remove_node(session, spec, node));
}

/// Runs `work` in the caller's task, and to its end even if the caller stops waiting:
/// dropped unfinished, the rest runs in a task of its own. For work that must finish
/// (a release's delete) without a spawn and a cross-thread wake-up on every call.
///
/// Cancel safety: safe; that is what it is for.
pub(crate) async fn finish<F>(work: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    struct Finish<F: Future + Send + 'static>(Option<std::pin::Pin<Box<F>>>);
    impl<F: Future + Send + 'static> Drop for Finish<F> {
        fn drop(&mut self) {
            if let Some(rest) = self.0.take() {
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            rest.await;
                        });
                    }
                    Err(_) => tracing::warn!(
                        "no tokio runtime to finish a release; its node goes when its session ends"
                    ),
                }
            }
        }
    }
    let mut guard = Finish(Some(Box::pin(work)));
    let out = std::future::poll_fn(|cx| match guard.0.as_mut() {
        Some(f) => f.as_mut().poll(cx),
        None => std::task::Poll::Pending,
    })
    .await;
    guard.0 = None;
    out
}

/// Runs a queue node's removal in the background; without a runtime the node goes when
/// its session ends.
fn spawn_cleanup(removal: impl Future<Output = Result<()>> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                if let Err(e) = removal.await {
                    tracing::warn!(error = %e, "could not remove a queue node in the background");
                }
            });
        }
        Err(_) => {
            tracing::warn!("no tokio runtime to remove a queue node; it goes when its session ends")
        }
    }
}

/// A create try in flight, owned (see [`Pending::create`]).
type CreateTry = std::pin::Pin<Box<dyn Future<Output = Result<Created>> + Send>>;

/// A node we created (or may have created) that is not held yet: an acquire's, a
/// barrier member's, a latch waiter's. Dropped while armed, it removes the node in the
/// background: this is what makes waiting cancel safe.
pub(crate) struct Pending {
    session: Arc<dyn Session>,
    pub(crate) spec: NodeSpec,
    pub(crate) node: Option<Node>,
    /// The create try in flight: polled by the caller while it waits, and handed to the
    /// background removal if the caller stops waiting for it.
    inflight: Option<CreateTry>,
    /// A create try ended without a clear answer: it may still take effect, so only the
    /// backend's `abandon` removes the attempt for sure.
    uncertain: bool,
    pub(crate) armed: bool,
}

impl Pending {
    /// An armed attempt for `spec` through `session`, not created yet.
    pub(crate) fn new(session: Arc<dyn Session>, spec: NodeSpec) -> Self {
        Pending {
            session,
            spec,
            node: None,
            inflight: None,
            uncertain: false,
            armed: true,
        }
    }

    /// Creates the node, retrying connection trouble. Each try is an owned future kept
    /// in the `Pending`, so a caller dropped mid-create leaves the try to the background
    /// removal, which finishes it, learns the node from its answer and deletes it. (It
    /// is polled in the caller's task rather than spawned: no task and no wake-up from
    /// another thread on the path of every acquire.) Only a try that ended without an answer
    /// needs the backend's `abandon`, which on etcd and PostgreSQL keeps a tombstone for
    /// the rest of the session: cancelling one wait in five for hours must not grow the
    /// store (the soak measured exactly that growth before).
    ///
    /// Cancel safety: safe; dropped, the `Pending` removes what the create made.
    pub(crate) async fn create(&mut self) -> Result<Created> {
        let mut backoff = Backoff::default();
        loop {
            match self.try_create().await {
                Err(e) if e.is_retryable() => backoff.wait(&*self.session, &e).await?,
                other => return other,
            }
        }
    }

    /// One create try, kept in the `Pending` while it runs (see [`Pending::create`]).
    ///
    /// Cancel safety: safe; the try (and so its outcome) stays with the `Pending`.
    async fn try_create(&mut self) -> Result<Created> {
        let (session, spec) = (self.session.clone(), self.spec.clone());
        // In the caller's span: the create shows in its acquire's trace.
        let try_: CreateTry =
            Box::pin(async move { session.create_sequential(&spec).await }.in_current_span());
        self.inflight = Some(try_);
        let r = std::future::poll_fn(|cx| match self.inflight.as_mut() {
            Some(f) => f.as_mut().poll(cx),
            None => std::task::Poll::Ready(Err(Error::Closed)),
        })
        .await;
        self.inflight = None;
        match &r {
            Ok(c) => self.node = Some(c.node.clone()),
            // The session's nodes and tombstones are gone with it.
            Err(Error::SessionExpired(_)) => {}
            Err(_) => self.uncertain = true,
        }
        r
    }

    /// The session the node is (to be) created through.
    pub(crate) fn session(&self) -> &Arc<dyn Session> {
        &self.session
    }

    /// Stops the `Pending` from removing the node: it is held (or gone) now.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// The removal of what this attempt created, as a task that needs nothing of `self`:
    /// waits for a create try in flight, then deletes its node, or abandons the attempt
    /// if a try's outcome is unknown. Disarms.
    pub(crate) fn take_removal(&mut self) -> impl Future<Output = Result<()>> + Send + 'static {
        self.armed = false;
        let session = self.session.clone();
        let spec = self.spec.clone();
        let (mut node, mut uncertain) = (self.node.take(), self.uncertain);
        let inflight = self.inflight.take();
        async move {
            if let Some(try_) = inflight {
                match try_.await {
                    Ok(c) => node = Some(c.node),
                    Err(Error::SessionExpired(_)) => {}
                    Err(_) => uncertain = true,
                }
            }
            match (uncertain, node) {
                (true, _) => remove_node(session, Some(spec), None).await,
                (false, Some(n)) => remove_node(session, None, Some(n)).await,
                (false, None) => Ok(()),
            }
        }
    }

    /// Removes the node now (leaving it to the background removal if that fails).
    ///
    /// Cancel safety: safe; a dropped call leaves the `Pending` armed.
    pub(crate) async fn remove(&mut self) {
        let (node, inflight) = (self.node.clone(), self.inflight.is_some());
        if self.take_removal().await.is_err() {
            // Still ours to remove: the drop tries again in the background.
            self.armed = true;
            self.node = node;
            self.uncertain |= inflight;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            spawn_cleanup(self.take_removal());
        }
    }
}
