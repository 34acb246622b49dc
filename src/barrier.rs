//! [`Barrier`] (a gate that holds everyone until it is removed) and [`DoubleBarrier`]
//! (enter waits for `n` participants, leave waits for all of them to leave).
//!
//! Both are built only from what the backend contract can watch on every store: ephemeral
//! nodes and their deletion (one node at a time), and a queue's changes. Persistent keys
//! (the stored participant count) are written once and never waited on, because the
//! PostgreSQL and Redis backends cannot watch a plain key's deletion through the contract.
//!
//! Layout under the barrier's name:
//!
//! * barrier: `NAME/gate` — one ephemeral node per `set` (normally one). The barrier
//!   stands while any gate node exists.
//! * double barrier: `NAME/members` — one ephemeral node per participant inside;
//!   `NAME/ready` — the round's ready mark (ephemeral, created by the participant that saw
//!   the `n`-th arrive; two that see it at once may each put one up, and the last one out
//!   clears them all); `NAME/meta/count` — `n`, stored and checked like a semaphore's
//!   permit count.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use queuelock_core::{Ahead, Error, LockName, LossReason, NodeKind, NodeSpec, Result, Session};

use crate::queue::{self, Context, Deadline};

/// What a waiting loop does after `e`: `Ok` to go round again (a lost session: the next
/// round opens a new one; connection trouble: after a pause), `Err` to give up.
///
/// Cancel safety: safe.
pub(crate) async fn recover(e: Error, pause: &mut Duration) -> Result<()> {
    match e {
        Error::SessionExpired(_) | Error::LockLost(LossReason::SessionLost) => Ok(()),
        e if e.is_retryable() => {
            tracing::debug!(error = %e, "retrying a barrier wait");
            tokio::time::sleep(*pause).await;
            *pause = (*pause * 2).min(Duration::from_secs(1));
            Ok(())
        }
        e => Err(e),
    }
}

/// Stores `ours` at `key`, or checks it against the value stored there: every user of a
/// recipe that has a count must agree on it. `what` names the recipe in the error, and
/// `unit` the count ("participants", "counts").
///
/// Cancel safety: safe (a dropped call may still have stored the count).
pub(crate) async fn agree_on_count(
    session: &dyn Session,
    key: &str,
    ours: u32,
    what: &str,
    unit: &str,
) -> Result<()> {
    let ours_text = ours.to_string();
    let stored = queue::retry(session, || session.put_if_absent(key, ours_text.as_bytes())).await?;
    match stored {
        Some(v) if v != ours_text.as_bytes() => Err(Error::Conflict {
            key: key.to_owned(),
            message: format!(
                "{what} is stored with {} {unit}, this handle asks for {ours}",
                // Someone else's bytes: escaped, so no control characters reach a terminal.
                String::from_utf8_lossy(&v).escape_debug(),
            ),
        }),
        _ => Ok(()),
    }
}

/// A count of at least 1, or a [`Error::Config`] naming the recipe.
pub(crate) fn positive(n: u32, what: &str, name: &LockName, unit: &str) -> Result<u32> {
    if n == 0 {
        return Err(Error::Config(format!(
            "{what} {name} needs at least 1 {unit}"
        )));
    }
    Ok(n)
}

/// A spec for an ephemeral node that waits for nothing through the queue (barriers read
/// and watch on their own).
fn spec(ctx: &Context, queue: &str, kind: NodeKind) -> NodeSpec {
    NodeSpec::new(queue, kind, ctx.payload()).with_ahead(Ahead::Nothing)
}

/// Run by a participant after its own node is gone: if nobody is inside any more, the
/// round is over and every ready mark goes, not only the ones this participant saw.
/// Two participants that see the `n`-th arrive at once both put up a mark, and the first
/// may not see the second's; if only seen marks went, the second could outlive the
/// round (its owner's session lives on) and let the next round in without its `n`.
///
/// The marks are read *before* the members: a mark in that read was put up by a
/// participant inside at the time, so an empty member list after it means everyone who
/// could still rely on it has left. The last participant to remove its node reads after
/// every mark's creation, so it clears them all.
async fn end_round_if_empty(session: &dyn Session, members: &str, ready: &str) -> Result<()> {
    let marks = queue::retry(session, || session.list(ready)).await?.nodes;
    if marks.is_empty() {
        return Ok(());
    }
    let inside = queue::retry(session, || session.list(members)).await?;
    if inside.nodes.is_empty() {
        for mark in &marks {
            queue::retry(session, || session.delete(mark)).await?;
        }
    }
    Ok(())
}

/// A distributed barrier (Curator's `DistributedBarrier`, kazoo's `Barrier`, etcd's
/// `recipe.Barrier`): [`Barrier::set`] puts it up, [`Barrier::remove`] takes it down,
/// [`Barrier::wait`] waits until it is down.
///
/// # Session loss
///
/// The barrier is held by the session of the client that set it: if that session is lost
/// (the process died, its lease expired), the barrier falls and every waiter is released,
/// exactly as if the setter had called [`Barrier::remove`]. A barrier therefore never
/// blocks its waiters forever after its owner is gone. A waiter whose own session is lost
/// keeps waiting through a new session; it leaves nothing behind.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock::Result<()> {
/// let client = queuelock::Client::connect("memory://").await?;
/// let gate = client.barrier("deploy/gate")?;
/// gate.set().await?;
/// let waiter = {
///     let gate = gate.clone();
///     tokio::spawn(async move { gate.wait().await })
/// };
/// gate.remove().await?; // every waiter goes on
/// waiter.await.unwrap()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Barrier {
    ctx: Arc<Context>,
    name: LockName,
    gate: String,
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier").field("name", &self.name).finish()
    }
}

impl Barrier {
    pub(crate) fn new(ctx: Arc<Context>, name: LockName) -> Self {
        Barrier {
            gate: format!("{name}/gate"),
            ctx,
            name,
        }
    }

    /// The barrier's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Puts the barrier up (held by this client's session). `true` if this call put it
    /// up, `false` if it was already up.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have put the barrier up; [`Barrier::remove`] takes it
    /// down either way.
    pub async fn set(&self) -> Result<bool> {
        let session = self.ctx.session().await?;
        let listing = queue::retry(&*session, || session.list(&self.gate)).await?;
        if !listing.nodes.is_empty() {
            return Ok(false);
        }
        let spec = spec(&self.ctx, &self.gate, NodeKind::Lock);
        // Idempotent per spec: a retry returns the node the first try created.
        queue::retry(&*session, || session.create_sequential(&spec)).await?;
        Ok(true)
    }

    /// Takes the barrier down, whoever put it up: every waiter goes on. `Ok` if it was
    /// not up.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may have taken the barrier down or not; call again to be sure.
    pub async fn remove(&self) -> Result<()> {
        let session = self.ctx.session().await?;
        let listing = queue::retry(&*session, || session.list(&self.gate)).await?;
        for node in &listing.nodes {
            queue::retry(&*session, || session.delete(node)).await?;
        }
        Ok(())
    }

    /// Whether the barrier is up now.
    ///
    /// # Cancel safety
    ///
    /// Safe (read only).
    pub async fn is_set(&self) -> Result<bool> {
        let session = self.ctx.session().await?;
        let listing = queue::retry(&*session, || session.list(&self.gate)).await?;
        Ok(!listing.nodes.is_empty())
    }

    /// Waits until the barrier is down (at once if it is not up). Waits on one node's
    /// deletion at a time; no polling.
    /// Connection trouble and a lost session of our own are waited out (through a new
    /// session); bound the wait with the `_timeout` variant.
    ///
    /// # Cancel safety
    ///
    /// Safe: waiting writes nothing, so a dropped call leaves nothing behind.
    pub async fn wait(&self) -> Result<()> {
        let mut pause = Duration::from_millis(20);
        loop {
            let session = self.ctx.session().await?;
            let listing = match session.list(&self.gate).await {
                Ok(l) => l,
                Err(e) => {
                    recover(e, &mut pause).await?;
                    continue;
                }
            };
            let Some(gate) = listing.nodes.last() else {
                return Ok(());
            };
            if let Err(e) = session.deleted(&gate.key, listing.revision).await {
                recover(e, &mut pause).await?;
            }
        }
    }

    /// [`Barrier::wait`] that fails with [`Error::Timeout`] after `timeout`.
    ///
    /// # Cancel safety
    ///
    /// Safe, as [`Barrier::wait`].
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        Deadline::run(Some(Deadline::after(timeout)), self.wait()).await
    }
}

/// A double barrier (Curator's `DistributedDoubleBarrier`, kazoo's `DoubleBarrier`,
/// etcd's `recipe.DoubleBarrier`): [`DoubleBarrier::enter`] waits until `n` participants
/// are inside; [`Entered::leave`] waits until every participant has left.
///
/// The count `n` is stored with the barrier: every user must agree on it, and a handle
/// asking for another count gets [`Error::Conflict`]. The barrier can be used for round
/// after round: the last participant out clears the round's ready mark.
///
/// # Session loss
///
/// A participant is inside while its node (owned by its client's session) exists. A
/// participant whose session is lost **counts as having left**, whether it was still
/// waiting in `enter` or already inside:
///
/// * in `enter`, the others count only live participants: `n` must be inside at the same
///   time (a dead one is replaced by the next to arrive). Once one participant has seen
///   `n` and put up the ready mark, later arrivals pass at once.
/// * in `leave`, nobody waits for a dead participant: its node goes with its session, and
///   the others are released once every live participant has left.
///
/// A participant whose own session is lost while waiting in `enter` gets
/// [`Error::SessionExpired`] (it has left); one whose session is lost in `leave` has left
/// and still waits, through a new session, for the others.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock::Result<()> {
/// let client = queuelock::Client::connect("memory://").await?;
/// let mut tasks = Vec::new();
/// for _ in 0..3 {
///     let barrier = client.double_barrier("batch/42", 3)?;
///     tasks.push(tokio::spawn(async move {
///         let inside = barrier.enter().await?; // all three are in
///         inside.leave().await // all three are out
///     }));
/// }
/// for t in tasks {
///     t.await.unwrap()?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DoubleBarrier {
    ctx: Arc<Context>,
    name: LockName,
    n: u32,
    members: String,
    ready: String,
    count_key: String,
}

impl fmt::Debug for DoubleBarrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoubleBarrier")
            .field("name", &self.name)
            .field("n", &self.n)
            .finish()
    }
}

impl DoubleBarrier {
    pub(crate) fn new(ctx: Arc<Context>, name: LockName, n: u32) -> Result<Self> {
        let n = positive(n, "double barrier", &name, "participant")?;
        Ok(DoubleBarrier {
            members: format!("{name}/members"),
            ready: format!("{name}/ready"),
            count_key: format!("{name}/meta/count"),
            ctx,
            name,
            n,
        })
    }

    /// The barrier's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The number of participants `enter` waits for.
    pub fn participants(&self) -> u32 {
        self.n
    }

    /// Joins and waits until `n` participants are inside (at once if the round has
    /// already started). Wakes on changes of the participant list, not by polling.
    ///
    /// # Cancel safety
    ///
    /// Safe: a dropped call removes its participant node in the background (it never
    /// entered), leaving nothing behind.
    pub async fn enter(&self) -> Result<Entered> {
        let session = self.ctx.session().await?;
        agree_on_count(
            &*session,
            &self.count_key,
            self.n,
            &format!("double barrier {}", self.name),
            "participants",
        )
        .await?;
        let mut member = queue::Pending::new(
            session.clone(),
            spec(&self.ctx, &self.members, NodeKind::Latch),
        );
        let created = member.create().await?;
        let key = created.node.key.clone();
        let mut pause = Duration::from_millis(20);
        loop {
            let step = async {
                let listing = session.list(&self.members).await?;
                if listing.position(&key).is_none() {
                    return Err(match session.probe().await {
                        Ok(queuelock_core::SessionState::Lost) | Err(_) => {
                            Error::SessionExpired(session.id())
                        }
                        Ok(_) => Error::LockLost(LossReason::NodeDeleted),
                    });
                }
                // Members first, then the mark: a participant passes only once the mark
                // is up, so one that has passed and left already is never missed.
                // Our own node keeps the mark up until we leave (the last one out
                // clears marks only when nobody is inside), so seeing it once is enough.
                if !session.list(&self.ready).await?.nodes.is_empty() {
                    return Ok(true);
                }
                if listing.nodes.len() >= self.n as usize {
                    // Two participants may both put one up; the last one out clears all.
                    let mark = spec(&self.ctx, &self.ready, NodeKind::Lock);
                    queue::retry(&*session, || session.create_sequential(&mark)).await?;
                    return Ok(true);
                }
                session
                    .queue_changed(&self.members, listing.revision)
                    .await?;
                Ok(false)
            };
            match step.await {
                Ok(true) => {
                    return Ok(Entered {
                        ctx: self.ctx.clone(),
                        members: self.members.clone(),
                        ready: self.ready.clone(),
                        member,
                    });
                }
                Ok(false) => {}
                Err(e) if e.is_retryable() => recover(e, &mut pause).await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// [`DoubleBarrier::enter`] that fails with [`Error::Timeout`] after `timeout`.
    ///
    /// # Cancel safety
    ///
    /// Safe, as [`DoubleBarrier::enter`]: a timed-out call leaves nothing behind.
    pub async fn enter_timeout(&self, timeout: Duration) -> Result<Entered> {
        Deadline::run(Some(Deadline::after(timeout)), self.enter()).await
    }
}

/// A participant inside a [`DoubleBarrier`]. [`Entered::leave`] leaves and waits for the
/// others; dropping it leaves without waiting (its node is removed in the background, and
/// the last participant out clears the round's ready mark either way).
pub struct Entered {
    ctx: Arc<Context>,
    members: String,
    /// Our participant node: removed in the background unless disarmed, so a dropped `enter` or
    /// [`Entered`] leaves nothing behind.
    member: queue::Pending,
    /// The queue of the round's ready marks: the last one out removes them.
    ready: String,
}

impl fmt::Debug for Entered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entered")
            .field("members", &self.members)
            .field("session", &self.member.session().id())
            .finish()
    }
}

impl Drop for Entered {
    /// Leaves without waiting: removes our node in the background and, if nobody else
    /// is inside by then, the round's ready marks (so the next round waits for its own
    /// `n`). Of several participants dropped at once, the last to remove its node sees
    /// the list empty.
    fn drop(&mut self) {
        if !self.member.armed {
            return;
        }
        let session = self.member.session().clone();
        let removal = self.member.take_removal();
        let (members, ready) = (self.members.clone(), self.ready.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "no tokio runtime to leave a double barrier; it is left when the session ends"
            );
            return;
        };
        rt.spawn(async move {
            let r = async {
                removal.await?;
                end_round_if_empty(&*session, &members, &ready).await
            };
            match r.await {
                Ok(()) | Err(Error::SessionExpired(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not leave a double barrier in the background")
                }
            }
        });
    }
}

impl Entered {
    /// The session the participant's node belongs to (expiring it makes the participant
    /// leave).
    pub fn session_id(&self) -> queuelock_core::SessionId {
        self.member.session().id()
    }

    /// Leaves and waits until every other live participant has left too. Each waiter
    /// waits on one node's deletion at a time (etcd's and Curator's scheme: the earliest
    /// participant waits for the latest, everyone else leaves and waits for the
    /// earliest), so nobody polls and a release wakes few.
    ///
    /// # Cancel safety
    ///
    /// Safe: a dropped call has left (its node is removed, in the background if the call
    /// was dropped before removing it); it only stops waiting for the others.
    pub async fn leave(mut self) -> Result<()> {
        let mut session = self.member.session().clone();
        let mut pause = Duration::from_millis(20);
        loop {
            let step = async {
                let listing = session.list(&self.members).await?;
                if let Some(m) = &self.member.node {
                    if listing.position(&m.key).is_none() {
                        self.member.node = None; // gone with its session: we have left
                    }
                }
                let mine = self.member.node.as_ref().map(|m| m.key.clone());
                let (Some(first), Some(last)) = (
                    listing.nodes.iter().find(|n| Some(&n.key) != mine.as_ref()),
                    listing
                        .nodes
                        .iter()
                        .rev()
                        .find(|n| Some(&n.key) != mine.as_ref()),
                ) else {
                    // Nobody else is inside: the round is over.
                    if let Some(m) = self.member.node.take() {
                        queue::retry(&*session, || session.delete(&m)).await?;
                    }
                    end_round_if_empty(&*session, &self.members, &self.ready).await?;
                    return Ok(true);
                };
                let target = match &listing.nodes[0] {
                    // The earliest participant stays until the latest other has gone.
                    n if Some(&n.key) == mine.as_ref() => last.clone(),
                    // Everyone else leaves, then waits for the earliest.
                    _ => {
                        if let Some(m) = self.member.node.take() {
                            queue::retry(&*session, || session.delete(&m)).await?;
                        }
                        first.clone()
                    }
                };
                session.deleted(&target.key, listing.revision).await?;
                Ok(false)
            };
            match step.await {
                Ok(true) => {
                    self.member.armed = false;
                    return Ok(());
                }
                Ok(false) => {}
                Err(Error::SessionExpired(_)) | Err(Error::LockLost(LossReason::SessionLost)) => {
                    // Our node went with the session: we have left. Wait for the others
                    // through a new session.
                    self.member.node = None;
                    session = self.ctx.session().await?;
                }
                Err(e) => recover(e, &mut pause).await?,
            }
        }
    }
}
