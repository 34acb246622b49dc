//! The shared queue algorithm: how a waiter joins a queue, finds the one node it must
//! wait for, waits without polling, and turns into a held [`Lease`]. Every recipe uses
//! this module; none re-implements waiting.
//!
//! 1. Create our ephemeral sequential node; the backend returns the queue as seen right
//!    after (one round trip).
//! 2. The recipe's [`WaitRule`] names the **one** node we must wait for, or none: granted.
//! 3. Otherwise wait for that node's deletion, our own node's deletion, our session's
//!    loss, or cancellation; then list again and go to 2. A grant is only ever decided on
//!    a listing that still contains our node, read from a session that is not lost.
//!
//! Dropping an acquire at any await point removes its node in the background
//! ([`Pending`]); a [`Lease`] is deleted exactly once, by `release` or on drop.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use queuelock_core::{Error, LossReason, Node, NodeKind, NodeSpec, Result, Session, SessionState};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, LossPolicy};
use crate::metadata::{HolderInfo, QueueEntry};

/// Given the queue in order and our index in it, the index of the node we must wait for
/// (`None`: the lock is ours).
pub(crate) type WaitRule = fn(&[Node], usize) -> Option<usize>;

/// Whether an acquire may wait.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// Wait in the queue until granted (re-queueing on a fresh session if ours is lost
    /// while waiting: nothing was held yet).
    Wait,
    /// Never wait: if the rule names a node to wait for, remove ours and return `None`.
    Try,
}

/// What a recipe asks the queue for.
pub(crate) struct Request<'a> {
    pub queue: &'a str,
    pub kind: NodeKind,
    pub rule: WaitRule,
    pub mode: Mode,
    /// The node's payload; `None` for holder metadata.
    pub payload: Option<Vec<u8>>,
}

/// Joins the queue and waits for our turn.
///
/// Cancel safety: safe. Dropped at any point, the node it created (or may have created)
/// is removed in the background.
#[tracing::instrument(level = "debug", skip_all, fields(lock = req.queue, kind = ?req.kind, mode = ?req.mode))]
pub(crate) async fn acquire(client: &Client, req: Request<'_>) -> Result<Option<Arc<Lease>>> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(20);
    // Waiting acquires ride out connection trouble (a new session cannot be opened
    // during a partition) for a while; a store that stays unreachable is an error.
    let patience = (client.options().ttl * 2).max(Duration::from_secs(10));
    let mut trouble_since: Option<Instant> = None;
    loop {
        match attempt(client, &req).await {
            Ok(Some(lease)) => {
                tracing::debug!(
                    lock = req.queue,
                    token = lease.node.token,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "granted"
                );
                return Ok(Some(lease));
            }
            Ok(None) => return Ok(None),
            // Our place in the queue vanished before anything was granted: join again.
            Err(e @ (Error::SessionExpired(_) | Error::LockLost(_))) if req.mode == Mode::Wait => {
                tracing::warn!(lock = req.queue, error = %e, "lost our place in the queue; joining again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) if e.is_retryable() && req.mode == Mode::Wait => {
                let since = *trouble_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= patience {
                    return Err(e);
                }
                tracing::warn!(lock = req.queue, error = %e, "cannot reach the store; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn attempt(client: &Client, req: &Request<'_>) -> Result<Option<Arc<Lease>>> {
    let session = client.session().await?;
    let payload = match &req.payload {
        Some(p) => p.clone(),
        None => HolderInfo::now(client.options().label.as_deref()).encode(),
    };
    let mut pending = Pending::new(session.clone(), NodeSpec::new(req.queue, req.kind, payload));
    let created = retry(&*session, || session.create_sequential(&pending.spec)).await?;
    let me = created.node;
    pending.node = Some(me.clone());
    let mut listing = created.listing;
    loop {
        let Some(idx) = listing.position(&me.key) else {
            return Err(vanished(&*session));
        };
        let Some(blocker) = (req.rule)(&listing.nodes, idx) else {
            // Granted on a listing that contains our node; refuse if the session has been
            // lost since (never grant after lease loss).
            if *session.state().borrow() == SessionState::Lost {
                return Err(Error::SessionExpired(session.id()));
            }
            pending.disarm();
            client
                .counters()
                .grants
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Some(Lease::grant(
                session,
                me,
                listing.revision,
                client.options().loss_policy,
            )));
        };
        if req.mode == Mode::Try {
            pending.remove().await;
            return Ok(None);
        }
        let blocker = listing.nodes[blocker].key.clone();
        tracing::trace!(lock = req.queue, waiting_for = %blocker, "queued");
        wait_turn(&*session, &blocker, &me.key, listing.revision).await?;
        client
            .counters()
            .wakeups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        listing = retry(&*session, || session.list(req.queue)).await?;
    }
}

/// The queue's nodes split into holders (nodes the rule waits on nothing for) and
/// waiters, in queue order, with their metadata. One read of the queue plus one per node.
///
/// Cancel safety: safe (read only).
pub(crate) async fn describe(
    client: &Client,
    queue: &str,
    rule: WaitRule,
) -> Result<(Vec<QueueEntry>, Vec<QueueEntry>)> {
    let session = client.session().await?;
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

/// Creates a node in `queue` and holds it at once, without waiting for anything: for
/// recipes whose admission was decided elsewhere (the semaphore's head waiter).
///
/// Cancel safety: safe; a dropped call's node is removed in the background.
pub(crate) async fn enter(
    client: &Client,
    session: Arc<dyn Session>,
    queue: &str,
    kind: NodeKind,
) -> Result<Arc<Lease>> {
    let payload = HolderInfo::now(client.options().label.as_deref()).encode();
    let mut pending = Pending::new(session.clone(), NodeSpec::new(queue, kind, payload));
    let created = retry(&*session, || session.create_sequential(&pending.spec)).await?;
    pending.disarm();
    Ok(Lease::grant(
        session,
        created.node,
        created.listing.revision,
        client.options().loss_policy,
    ))
}

/// Waits until any of `keys` is gone. Errors if `guard` is lost meanwhile. Returns `Ok`
/// after a broken watch too: the caller reads again either way.
///
/// Cancel safety: safe.
pub(crate) async fn any_deleted(guard: &Lease, keys: &[String], since: u64) -> Result<()> {
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

/// Waits until `blocker` is gone. Errors if our own node goes or the session is lost.
/// Returns `Ok` after a broken watch too: the caller lists again either way.
async fn wait_turn(session: &dyn Session, blocker: &str, me: &str, since: u64) -> Result<()> {
    enum Woke {
        Blocker(Result<()>),
        Me(Result<()>),
        Lost,
    }
    let mut state = session.state();
    // The select's outputs hold no borrow of the state channel, so the future stays Send.
    let woke = tokio::select! {
        r = session.deleted(blocker, since) => Woke::Blocker(r),
        r = session.deleted(me, since) => Woke::Me(r),
        _ = state.wait_for(|s| *s == SessionState::Lost) => Woke::Lost,
    };
    match woke {
        Woke::Blocker(Ok(())) => Ok(()),
        Woke::Me(Ok(())) => Err(vanished(session)),
        Woke::Blocker(Err(e)) | Woke::Me(Err(e)) if e.is_retryable() => {
            settle(session, Duration::from_millis(50)).await
        }
        Woke::Blocker(Err(e)) | Woke::Me(Err(e)) => Err(e),
        Woke::Lost => Err(Error::SessionExpired(session.id())),
    }
}

/// The error for "our node is not in the queue any more".
fn vanished(session: &dyn Session) -> Error {
    if *session.state().borrow() == SessionState::Lost {
        Error::SessionExpired(session.id())
    } else {
        Error::LockLost(LossReason::NodeDeleted)
    }
}

/// After a retryable error: pause, and while the session is suspended wait for it to come
/// back. Errors if the session is lost.
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
pub(crate) async fn retry<T, F, Fut>(session: &dyn Session, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut pause = Duration::from_millis(20);
    loop {
        match op().await {
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %e, "retrying");
                settle(session, pause).await?;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Removes a node (or the node an attempt may have created) until done or the session
/// is gone (which removes it anyway).
async fn remove_node(
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
fn spawn_removal(session: Arc<dyn Session>, spec: Option<NodeSpec>, node: Option<Node>) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                if let Err(e) = remove_node(session, spec, node).await {
                    tracing::warn!(error = %e, "could not remove a queue node in the background");
                }
            });
        }
        Err(_) => {
            tracing::warn!("no tokio runtime to remove a queue node; it goes when its session ends")
        }
    }
}

/// A node we created (or may have created) that is not held yet. Dropped while armed, it
/// removes the node in the background: this is what makes acquiring cancel safe.
struct Pending {
    session: Arc<dyn Session>,
    spec: NodeSpec,
    node: Option<Node>,
    armed: bool,
}

impl Pending {
    fn new(session: Arc<dyn Session>, spec: NodeSpec) -> Self {
        Pending {
            session,
            spec,
            node: None,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Removes the node now (falling back to the background if that fails).
    async fn remove(&mut self) {
        let r = remove_node(
            self.session.clone(),
            Some(self.spec.clone()),
            self.node.clone(),
        )
        .await;
        if r.is_ok() {
            self.armed = false;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            spawn_removal(
                self.session.clone(),
                Some(self.spec.clone()),
                self.node.take(),
            );
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
    released: AtomicBool,
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
    fn grant(session: Arc<dyn Session>, node: Node, since: u64, policy: LossPolicy) -> Arc<Self> {
        let (lost, _) = watch::channel(None);
        let lease = Arc::new(Lease {
            session: session.clone(),
            node: node.clone(),
            policy,
            lost: lost.clone(),
            stop: CancellationToken::new(),
            released: AtomicBool::new(false),
        });
        tokio::spawn(monitor(
            session,
            node.key,
            since,
            lost,
            lease.stop.clone(),
            policy,
        ));
        lease
    }

    /// The held node.
    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// The session that owns the node.
    pub(crate) fn session(&self) -> &Arc<dyn Session> {
        &self.session
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
        latch(&self.lost, r);
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
            }
        }
    }

    /// Deletes the node (once) and reports whether the lease was still held.
    ///
    /// Cancel safety: safe; the deletion runs in its own task and finishes if this future
    /// is dropped.
    pub(crate) async fn release(&self) -> Result<()> {
        if self.released.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.stop.cancel();
        let loss = self.loss();
        let task = tokio::spawn(remove_node(
            self.session.clone(),
            None,
            Some(self.node.clone()),
        ));
        let removed = task
            .await
            .unwrap_or_else(|e| Err(Error::connection(format!("release task failed: {e}"))));
        match loss {
            Some(r) => Err(Error::LockLost(r)),
            None => removed,
        }
    }

    /// Deletes the node in the background (once).
    pub(crate) fn release_in_background(&self) {
        if !self.released.swap(true, Ordering::SeqCst) {
            self.stop.cancel();
            spawn_removal(self.session.clone(), None, Some(self.node.clone()));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release_in_background();
    }
}

fn latch(tx: &watch::Sender<Option<LossReason>>, reason: LossReason) {
    tx.send_if_modified(|v| {
        if v.is_none() {
            *v = Some(reason);
            true
        } else {
            false
        }
    });
}

/// Watches a held node until it is released or lost.
async fn monitor(
    session: Arc<dyn Session>,
    key: String,
    since: u64,
    tx: watch::Sender<Option<LossReason>>,
    stop: CancellationToken,
    policy: LossPolicy,
) {
    let mut state = session.state();
    loop {
        let watch_broken = tokio::select! {
            _ = stop.cancelled() => return,
            s = state.wait_for(|s| classify(*s, policy).is_some()) => {
                let reason = s.ok().and_then(|s| classify(*s, policy)).unwrap_or(LossReason::SessionLost);
                latch(&tx, reason);
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
            tracing::warn!(key = %key, %reason, "lock lost");
            latch(&tx, reason);
        }
        return;
    }
}
