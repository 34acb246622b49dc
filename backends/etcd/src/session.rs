//! A session: one etcd lease, kept alive in the background, and every contract operation.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use queuelock_core::{
    Ahead, Created, Error, Listing, LossReason, Node, NodeSpec, Op, Result, Session, SessionId,
    SessionState, SessionStatus, Turn,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::map_error;
use crate::keys::{parse_kind, slot_of, written_only_while_held, Slots};
use crate::watch::Event;
use crate::Inner;

/// A lease-backed session.
pub(crate) struct EtcdSession {
    inner: Arc<Inner>,
    lease: i64,
    ttl: Duration,
    /// Shared with the keep-alive task and the watchdog.
    shared: Arc<SessionStatus>,
    state: watch::Receiver<SessionState>,
    tasks: Vec<JoinHandle<()>>,
    /// The queue-node key of each live attempt (reused: see [`Slots`]).
    slots: StdMutex<Slots>,
    /// The newest revision this session has seen a waiter's blocker deleted at: a
    /// waiter's next read must not be older (see [`EtcdSession::read`]).
    seen: AtomicI64,
}

impl fmt::Debug for EtcdSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSession")
            .field("lease", &format_args!("{:x}", self.lease))
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl EtcdSession {
    pub(crate) async fn open(inner: Arc<Inner>, ttl: Duration) -> Result<Self> {
        let secs = (ttl.as_millis() as i64 + 999) / 1000;
        let sent = Instant::now();
        let grant = inner
            .client
            .clone()
            .lease_grant(secs.max(1), None)
            .await
            .map_err(map_error)?;
        // The server may raise a TTL below its minimum.
        let ttl = Duration::from_secs(grant.ttl().max(1) as u64);
        // Send time of the last acknowledged keep-alive + TTL: the lease is surely alive
        // until then, and maybe not after.
        let shared = Arc::new(SessionStatus::with_deadline(sent + ttl));
        let state = shared.subscribe();
        let lease = grant.id();
        inner.renewer.keep(lease, ttl, &shared);
        let tasks = vec![tokio::spawn(watchdog(shared.clone()))];
        tracing::debug!(
            lease = format_args!("{lease:x}"),
            ?ttl,
            "etcd session opened"
        );
        Ok(EtcdSession {
            inner,
            lease,
            ttl,
            shared,
            state,
            tasks,
            slots: StdMutex::new(Slots::default()),
            seen: AtomicI64::new(0),
        })
    }

    fn expired(&self) -> Error {
        Error::SessionExpired(SessionId(self.lease as u64))
    }

    /// Fails fast once the session is lost.
    fn check(&self) -> Result<()> {
        if *self.state.borrow() == SessionState::Lost {
            return Err(self.expired());
        }
        Ok(())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on a key watch for the deletion of the node that `key` held at revision
    /// `since`, or this session's loss. A put that re-creates the key (a reused slot: a
    /// create revision after `since`) means that node is gone too. Returns the deleted
    /// key's create revision and version where the watch reports them (else zeros).
    /// A deletion at or before revision `after`, when the node was known to exist, is an
    /// earlier node's: a shared watch that lagged in etcd's unsynced loop may report it
    /// after the subscription.
    async fn until_deleted(
        &self,
        reg: &mut crate::watch::Registration,
        since: u64,
        after: u64,
    ) -> Result<(i64, i64)> {
        let mut state = self.state.clone();
        loop {
            let ev = tokio::select! {
                ev = reg.next() => ev,
                _ = state.wait_for(|s| *s == SessionState::Lost) => return Err(self.expired()),
            };
            match ev {
                Event::Delete { at, .. } if after != 0 && at as u64 <= after => continue,
                Event::Delete {
                    at,
                    created,
                    version,
                } => {
                    self.seen.fetch_max(at, Ordering::Relaxed);
                    return Ok((created, version));
                }
                Event::Put(created) if since != 0 && created as u64 > since => {
                    self.seen.fetch_max(created, Ordering::Relaxed);
                    return Ok((0, 0));
                }
                Event::Put(_) => continue,
                Event::Broken => return Err(Error::connection("etcd watch broke")),
            }
        }
    }

    /// [`Session::deleted`] on the key's shared deletion watch ([`crate::watch::WatchHub::deletions`]);
    /// returns what [`EtcdSession::until_deleted`] does (zeros when the node was gone
    /// already). The key is read after subscribing unless the watch hears every deletion
    /// after `since` ([`crate::watch::Registration::covers`]).
    ///
    /// Cancel safety: safe; dropping it leaves the watch.
    async fn gone(&self, key: &str, since: u64) -> Result<(i64, i64)> {
        self.check()?;
        let abs = self.inner.keys.abs(key);
        let mut reg = self
            .inner
            .watches
            .deletions(abs.clone(), since as i64)
            .await?;
        // The newest revision at which the node is known to exist.
        let mut after = since;
        if !reg.covers {
            // From the watch's start on: a deletion after that read is the watch's.
            let resp = self
                .read(reg.revision, |serializable| {
                    vec![TxnOp::get(abs.clone(), Some(keys_only(serializable)))]
                })
                .await?;
            let same = get_response(&resp)
                .first()
                .is_some_and(|kv| since == 0 || kv.create_revision() as u64 <= since);
            if !same {
                return Ok((0, 0));
            }
            after = after.max(resp.header().map_or(0, |h| h.revision()) as u64);
        }
        self.until_deleted(&mut reg, since, after).await
    }

    /// Maps an error, recognising a lease the server no longer knows.
    fn fail(&self, e: etcd_client::Error) -> Error {
        if e.to_string().contains("lease not found") {
            self.shared.set(SessionState::Lost);
            return self.expired();
        }
        map_error(e)
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.inner.client.kv_client()
    }

    /// A key of `queue`'s directory as a node of the queue; `None` for a nested queue's
    /// key (or one that is not UTF-8).
    fn node_of(&self, queue: &str, kv: &etcd_client::KeyValue) -> Option<Node> {
        let dir = self.inner.keys.queue_dir(queue);
        let Ok(key) = kv.key_str() else {
            tracing::warn!(queue, key = ?kv.key(), "ignoring a key that is not UTF-8");
            return None;
        };
        let name = key.strip_prefix(&dir)?;
        if name.is_empty() || name.contains('/') {
            return None; // a nested queue, not a node of this one
        }
        Some(Node {
            key: self.inner.keys.rel(key).to_owned(),
            sequence: kv.create_revision() as u64,
            token: kv.create_revision() as u64,
            kind: parse_kind(name),
        })
    }

    /// The queue's direct children in `create_revision` order.
    fn listing(&self, queue: &str, kvs: &[etcd_client::KeyValue], revision: i64) -> Listing {
        let mut nodes: Vec<Node> = kvs
            .iter()
            .filter_map(|kv| self.node_of(queue, kv))
            .collect();
        nodes.sort_by_key(|n| n.sequence);
        Listing {
            nodes,
            revision: revision as u64,
        }
    }

    /// The read of up to `limit` keys of `queue`'s directory created before revision
    /// `before`, newest first: how a waiter finds the one node it waits for without
    /// reading the queue (Go's Mutex reads its predecessor the same way). etcd sorts on
    /// the server; only `limit` keys cross the network.
    fn older(&self, queue: &str, before: i64, limit: i64, serializable: bool) -> TxnOp {
        let opts = keys_only(serializable)
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_max_create_revision(before - 1)
            .with_limit(limit);
        TxnOp::get(self.inner.keys.queue_dir(queue), Some(opts))
    }

    /// A read-only transaction, first served by the member we reach without a round of
    /// consensus (serializable), and again linearizably only if that member's revision
    /// is older than `floor`. Safe for a waiter's reads: what they decide on only ever
    /// becomes more true with time (a key older than ours never appears; a deleted node
    /// never comes back, a reused key holds a newer node), so any state from `floor` on
    /// (our create, the blocker's deletion, the watch's start) is as good as the latest.
    /// A linearizable read would wait for etcd's raft loop, which under write load is
    /// busy with the fsync of the last batch: that wait was on every handoff's path.
    ///
    /// Cancel safety: safe (read only).
    async fn read(
        &self,
        floor: i64,
        ops: impl Fn(bool) -> Vec<TxnOp>,
    ) -> Result<etcd_client::TxnResponse> {
        let floor = floor.max(self.seen.load(Ordering::Relaxed));
        let resp = self
            .kv()
            .txn(Txn::new().and_then(ops(true)))
            .await
            .map_err(|e| self.fail(e))?;
        if resp.header().map_or(0, |h| h.revision()) >= floor {
            return Ok(resp);
        }
        self.kv()
            .txn(Txn::new().and_then(ops(false)))
            .await
            .map_err(|e| self.fail(e))
    }

    /// The first node of `kvs` (newest first) that `ahead` selects, and whether it is
    /// known to be the last one (no other in the page, and the page was not full); or
    /// where to read on: `Err(revision)` when every key was passed over and there may be
    /// older ones (the page was full), below the oldest key seen.
    fn pick(
        &self,
        queue: &str,
        kvs: &[etcd_client::KeyValue],
        ahead: Ahead,
        limit: i64,
    ) -> std::result::Result<Turn, i64> {
        let full = kvs.len() as i64 >= limit;
        let mut selected = kvs
            .iter()
            .filter_map(|kv| self.node_of(queue, kv))
            .filter(|n| ahead.selects(n.kind));
        if let Some(n) = selected.next() {
            let last = selected.next().is_none() && !full;
            return Ok(Turn::new(Some(n), 0).with_last(last));
        }
        match kvs.last() {
            Some(last) if full => Err(last.create_revision()),
            _ => Ok(Turn::new(None, 0)),
        }
    }

    /// Reads on from a page that passed over every key (nested queues' keys, or readers
    /// for a reader), in pages that double, until a node `ahead` selects or the start of
    /// the queue. Rare: a mutex's first page is its predecessor.
    ///
    /// Cancel safety: safe (read only).
    async fn scan_older(&self, queue: &str, mut before: i64, ahead: Ahead) -> Result<Turn> {
        let mut limit = 16;
        loop {
            let resp = self
                .kv()
                .txn(Txn::new().and_then([self.older(queue, before, limit, false)]))
                .await
                .map_err(|e| self.fail(e))?;
            let revision = resp.header().map_or(0, |h| h.revision()) as u64;
            match self.pick(queue, &get_response(&resp), ahead, limit) {
                Ok(turn) => return Ok(Turn { revision, ..turn }),
                Err(below) => before = below,
            }
            limit = (limit * 2).min(1024);
        }
    }

    /// How many keys the first page of a waiter's read asks for.
    fn first_page(ahead: Ahead) -> i64 {
        match ahead {
            // Readers often queue behind readers: skip a few in the same round trip.
            Ahead::NearestNonReader => 16,
            // The predecessor and whether anything is older: if not, its deletion alone
            // makes it our turn (no second read).
            _ => 2,
        }
    }
}

/// A removal of one of this session's slots in flight: unless it got an answer, it may
/// still reach etcd later, so the slot is retired (see [`Slots`]).
struct Removal<'a> {
    slots: &'a StdMutex<Slots>,
    at: Option<(String, u32)>,
}

impl<'a> Removal<'a> {
    fn new(slots: &'a StdMutex<Slots>, queue: &str, slot: u32) -> Self {
        Removal {
            slots,
            at: Some((queue.to_owned(), slot)),
        }
    }

    /// etcd answered: the removal is done and cannot arrive again.
    fn answered(mut self) {
        self.at = None;
    }
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        if let Some((queue, slot)) = self.at.take() {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.retire(&queue, slot);
        }
    }
}

impl Drop for EtcdSession {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if *self.state.borrow() != SessionState::Lost {
            self.shared.set(SessionState::Lost);
            let (mut client, lease) = (self.inner.client.clone(), self.lease);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = client.lease_revoke(lease).await;
                });
            }
        }
    }
}

/// Declares the session Lost once the conservative deadline passes without a renewal,
/// whatever the keep-alive task is stuck on.
async fn watchdog(shared: Arc<SessionStatus>) {
    while let Some(deadline) = shared.deadline() {
        tokio::time::sleep_until(deadline.into()).await;
        if shared.deadline().is_some_and(|d| Instant::now() >= d) {
            shared.set(SessionState::Lost);
            return;
        }
    }
}

/// Options for a keys-only read, served without consensus if `serializable` (see
/// [`EtcdSession::read`]).
fn keys_only(serializable: bool) -> GetOptions {
    let opts = GetOptions::new().with_keys_only();
    if serializable {
        opts.with_serializable()
    } else {
        opts
    }
}

fn get_response(resp: &etcd_client::TxnResponse) -> Vec<etcd_client::KeyValue> {
    resp.op_responses()
        .into_iter()
        .rev()
        .find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().to_vec()),
            _ => None,
        })
        .unwrap_or_default()
}

#[async_trait]
impl Session for EtcdSession {
    fn id(&self) -> SessionId {
        SessionId(self.lease as u64)
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    fn valid_until(&self) -> Option<Instant> {
        self.shared.deadline()
    }

    /// One round trip: a transaction creates our key if absent (bound to the lease) and
    /// reads the newest keys of the queue's directory, which are ours and the one we wait
    /// for (and counts the directory, for the queue depth). A retried create whose key
    /// exists already reads it and then waits as [`Session::turn`] (a second round trip).
    ///
    /// Cancel safety: a dropped call may have created the key; `abandon` removes it.
    async fn create_sequential(&self, spec: &NodeSpec) -> Result<Created> {
        self.check()?;
        let slot = self.slots().take(spec);
        let key = self.inner.keys.node(self.lease, spec, slot);
        let tomb = self.inner.keys.tombstone(self.lease, spec);
        let dir = self.inner.keys.queue_dir(&spec.queue);
        // Ours is the newest key right after the put: ask for it and the page behind it.
        let limit = match spec.ahead {
            Ahead::Nothing => 1,
            ahead => 1 + Self::first_page(ahead),
        };
        let newest = TxnOp::get(
            dir,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_sort(SortTarget::Create, SortOrder::Descend)
                    .with_limit(limit),
            ),
        );
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                // etcd does not order requests of different gRPC streams: an abandoned
                // attempt's create may arrive after the abandon.
                Compare::create_revision(tomb, CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(
                    key.clone(),
                    spec.payload.clone(),
                    Some(PutOptions::new().with_lease(self.lease)),
                ),
                newest,
            ])
            .or_else([TxnOp::get(
                key.clone(),
                Some(GetOptions::new().with_keys_only()),
            )]);
        let resp = self.kv().txn(txn).await.map_err(|e| self.fail(e))?;
        let revision = resp.header().map_or(0, |h| h.revision()) as u64;
        let (kvs, count) = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => Some((g.kvs().to_vec(), g.count())),
                _ => None,
            })
            .unwrap_or_default();
        let rel = self.inner.keys.rel(&key).to_owned();
        let node = kvs
            .first()
            .and_then(|kv| self.node_of(&spec.queue, kv))
            .filter(|n| n.key == rel)
            // Absent: the attempt was abandoned (its tombstone stopped the create).
            .ok_or(Error::LockLost(LossReason::NodeDeleted))?;
        self.slots().created(spec, node.token);
        if !resp.succeeded() {
            // A retry of a create that took effect: read our turn afresh.
            let turn = self.turn(&spec.queue, &node, spec.ahead).await?;
            return Ok(Created {
                node,
                turn,
                ahead: None,
            });
        }
        let turn = match spec.ahead {
            Ahead::Nothing => Turn::new(None, revision),
            ahead => match self.pick(&spec.queue, &kvs[1..], ahead, limit - 1) {
                Ok(turn) => Turn { revision, ..turn },
                Err(below) => self.scan_older(&spec.queue, below, ahead).await?,
            },
        };
        Ok(Created {
            node,
            turn,
            // Every key under the queue's prefix, as Go's Mutex orders them.
            ahead: Some(count.saturating_sub(1) as usize),
        })
    }

    /// One round trip: a transaction reads our key (is it still the same node?) and the
    /// nearest older keys of the queue's directory (`limit 2`, sorted by create revision
    /// descending, `max_create_revision` = ours − 1), as Go's Mutex reads its
    /// predecessor; the second key tells whether the predecessor is the last one ahead.
    /// Only those keys cross the network, so a handoff costs the same at any queue length.
    ///
    /// Cancel safety: safe (read only).
    async fn turn(&self, queue: &str, me: &Node, ahead: Ahead) -> Result<Turn> {
        self.check()?;
        let key = self.inner.keys.abs(&me.key);
        let limit = Self::first_page(ahead);
        let resp = self
            .read(me.sequence as i64, |serializable| {
                let mut ops = vec![TxnOp::get(key.clone(), Some(keys_only(serializable)))];
                if ahead != Ahead::Nothing && me.sequence > 1 {
                    ops.push(self.older(queue, me.sequence as i64, limit, serializable));
                }
                ops
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision()) as u64;
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().to_vec()),
            _ => None,
        });
        let mine = gets.next().unwrap_or_default();
        if mine.first().map(|kv| kv.create_revision() as u64) != Some(me.token) {
            return Err(Error::LockLost(LossReason::NodeDeleted));
        }
        let older = gets.next().unwrap_or_default();
        match self.pick(queue, &older, ahead, limit) {
            Ok(turn) => Ok(Turn { revision, ..turn }),
            Err(below) => self.scan_older(queue, below, ahead).await,
        }
    }

    /// Deletes the attempt's key and leaves a lease-bound tombstone that makes a create
    /// for the attempt still in flight fail.
    ///
    /// Cancel safety: safe.
    async fn abandon(&self, spec: &NodeSpec) -> Result<()> {
        self.check()?;
        let tomb = self.inner.keys.tombstone(self.lease, spec);
        let mut ops = vec![TxnOp::put(
            tomb,
            Vec::new(),
            Some(PutOptions::new().with_lease(self.lease)),
        )];
        // The attempt's slot is still taken, so its key is this attempt's node if any.
        let slot = self.slots().get(spec);
        if let Some(slot) = slot {
            ops.push(TxnOp::delete(
                self.inner.keys.node(self.lease, spec, slot),
                None,
            ));
        }
        let removal = slot.map(|slot| Removal::new(&self.slots, &spec.queue, slot));
        self.kv()
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(|e| self.fail(e))?;
        if let Some(removal) = removal {
            removal.answered();
        }
        self.slots().forget(spec.id);
        Ok(())
    }

    /// Asks etcd for the lease's remaining TTL.
    ///
    /// Cancel safety: safe.
    async fn probe(&self) -> Result<SessionState> {
        self.check()?;
        match self
            .inner
            .client
            .clone()
            .lease_time_to_live(self.lease, None)
            .await
        {
            Ok(r) if r.ttl() <= 0 => self.shared.set(SessionState::Lost),
            Ok(_) => {}
            Err(e) => return Err(self.fail(e)),
        }
        Ok(*self.state.borrow())
    }

    /// Cancel safety: safe (read only).
    async fn list(&self, queue: &str) -> Result<Listing> {
        self.check()?;
        let dir = self.inner.keys.queue_dir(queue);
        let resp = self
            .kv()
            .get(dir, Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .map_err(|e| self.fail(e))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(self.listing(queue, resp.kvs(), revision))
    }

    /// Subscribes to the key's shared deletion watch (opened at the current revision, the
    /// fast path of etcd 3.4, if there is none), then reads the key unless the watch
    /// hears every deletion after `since` (it started then, or earlier and has reported
    /// none since). The node counts as deleted when the key is gone or holds a newer
    /// node (created after `since`: a session reuses its keys).
    ///
    /// Cancel safety: safe; dropping it leaves the watch (kept a while for the next).
    async fn deleted(&self, key: &str, since: u64) -> Result<()> {
        self.gone(key, since).await.map(|_| ())
    }

    /// [`Session::deleted`] on a watch that hears deletions only, each with the key as it
    /// was: a version above 1 is a write after the create, which for the nodes of
    /// [`written_only_while_held`] comes only while they hold (`mark_held`, a revocation
    /// seen, a leader's proclaim). One notification per release, as before: the server
    /// drops the writes.
    ///
    /// Cancel safety: safe; dropping it leaves the watch (kept a while for the next).
    async fn blocker_deleted(&self, blocker: &Node, since: u64) -> Result<bool> {
        let (created, version) = self.gone(&blocker.key, since).await?;
        Ok(created == blocker.token as i64 && version > 1 && written_only_while_held(&blocker.key))
    }

    /// Marks a held node with a write that keeps its value and lease (its version goes
    /// up), in a transaction that compares its create revision with the token, so it
    /// cannot touch a later node at the same key. Not awaited: the holder's work and its
    /// release do not wait for it; a release that overtakes it only costs the waiter
    /// behind the read it would have made anyway.
    fn mark_held(&self, node: &Node) {
        if !written_only_while_held(&node.key) {
            return;
        }
        let abs = self.inner.keys.abs(&node.key);
        let txn = Txn::new()
            .when([Compare::create_revision(
                abs.clone(),
                CompareOp::Equal,
                node.token as i64,
            )])
            .and_then([TxnOp::put(
                abs,
                Vec::new(),
                Some(PutOptions::new().with_ignore_value().with_ignore_lease()),
            )]);
        let mut kv = self.kv();
        tokio::spawn(async move {
            if let Err(e) = kv.txn(txn).await {
                tracing::debug!(error = %e, "could not mark a held node");
            }
        });
    }

    /// A watch from `since + 1` and no read: the deletion cannot be missed, and etcd's
    /// slower path for watches that start in the past only delays its report.
    ///
    /// Cancel safety: safe.
    async fn deleted_lazily(&self, key: &str, since: u64) -> Result<()> {
        if since == 0 {
            return self.deleted(key, since).await;
        }
        self.check()?;
        let mut reg = self
            .inner
            .watches
            .watch(self.inner.keys.abs(key), false, since as i64 + 1)
            .await?;
        self.until_deleted(&mut reg, since, since).await.map(|_| ())
    }

    /// Watches the queue from `since + 1`: a past start revision is served by etcd's
    /// slower "unsynced" path (up to 100 ms late), which observers can afford.
    ///
    /// Cancel safety: safe.
    async fn queue_changed(&self, queue: &str, since: u64) -> Result<()> {
        self.check()?;
        let dir = self.inner.keys.queue_dir(queue);
        let mut reg = self
            .inner
            .watches
            .watch(dir, true, since as i64 + 1)
            .await?;
        let mut state = self.state.clone();
        tokio::select! {
            ev = reg.next() => match ev {
                Event::Broken => Err(Error::connection("etcd watch broke")),
                _ => Ok(()),
            },
            _ = state.wait_for(|s| *s == SessionState::Lost) => Err(self.expired()),
        }
    }

    /// This session's own node, while the session still holds its slot, goes with a
    /// plain delete: no other session creates at its key, and this one creates there
    /// again only after the delete has answered (see [`Slots`]), so the key holds that
    /// node or nothing. etcd 3.4 pays for a transaction's compare with a copy of its
    /// buffer of uncommitted writes; the plain delete made per-entity locking (64 tasks)
    /// about 30 % faster. Any other node (another session's, one of `etcdctl lock`) goes
    /// with a transaction that compares its create revision with the token. A revocation
    /// request for our node stays until the lease ends; one older than a node is not
    /// that node's ([`Session::revoke_requested`]).
    ///
    /// Cancel safety: a dropped call may still delete; call again to be sure.
    async fn delete(&self, node: &Node) -> Result<()> {
        self.check()?;
        let abs = self.inner.keys.abs(&node.key);
        let own = slot_of(&node.key, self.lease)
            .filter(|(queue, slot)| self.slots().holds(queue, *slot, node.token));
        if let Some((queue, slot)) = own {
            let removal = Removal::new(&self.slots, queue, slot);
            self.kv()
                .delete(abs, None)
                .await
                .map_err(|e| self.fail(e))?;
            removal.answered();
            self.slots().deleted(queue, slot, node.token);
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                abs.clone(),
                CompareOp::Equal,
                node.token as i64,
            )])
            .and_then([
                TxnOp::delete(abs, None),
                // A revocation request goes with its node.
                TxnOp::delete(self.inner.keys.revoke(&node.key), None),
            ]);
        self.kv().txn(txn).await.map_err(|e| self.fail(e))?;
        // Our node with this token is gone now (deleted, or gone before): its key is free.
        if let Some((queue, slot)) = slot_of(&node.key, self.lease) {
            self.slots().deleted(queue, slot, node.token);
        }
        Ok(())
    }

    /// Puts the request key beside the holder's node, bound to the holder's lease (so it
    /// goes with the holder's session; a delete by another session takes it along),
    /// in a transaction that compares the holder's `create_revision` with its token.
    ///
    /// Cancel safety: a dropped call may still leave the request.
    async fn request_revoke(&self, holder: &Node) -> Result<bool> {
        self.check()?;
        let abs = self.inner.keys.abs(&holder.key);
        let options = crate::keys::lease_of(&holder.key).map(|l| PutOptions::new().with_lease(l));
        let txn = Txn::new()
            .when([Compare::create_revision(
                abs,
                CompareOp::Equal,
                holder.token as i64,
            )])
            .and_then([TxnOp::put(
                self.inner.keys.revoke(&holder.key),
                Vec::new(),
                options,
            )]);
        match self.kv().txn(txn).await {
            Ok(resp) => Ok(resp.succeeded()),
            // The holder's lease ended between the compare and the put: it is gone (not
            // ours: this session is fine).
            Err(e) if e.to_string().contains("lease not found") => Ok(false),
            Err(e) => Err(map_error(e)),
        }
    }

    /// Opens a watch on the request key at the current revision, then reads it (the node
    /// too: a request for a node that is gone never comes). A request written before the
    /// node was created is an earlier node's of the same key (this session's release
    /// leaves it to the lease: see [`Session::delete`]), so it does not count.
    ///
    /// Cancel safety: safe; dropping it cancels the watch.
    async fn revoke_requested(&self, node: &Node) -> Result<()> {
        self.check()?;
        let key = self.inner.keys.revoke(&node.key);
        let mut reg = self.inner.watches.watch(key.clone(), false, 0).await?;
        let txn = Txn::new().and_then([
            TxnOp::get(key, Some(GetOptions::new().with_keys_only())),
            TxnOp::get(
                self.inner.keys.abs(&node.key),
                Some(GetOptions::new().with_keys_only()),
            ),
        ]);
        let resp = self.kv().txn(txn).await.map_err(|e| self.fail(e))?;
        let mut reads = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| (kv.create_revision(), kv.mod_revision())),
            _ => None,
        });
        let request = reads.next().flatten();
        let created = reads.next().flatten().map(|(created, _)| created);
        if created != Some(node.token as i64) {
            return Err(Error::LockLost(LossReason::NodeDeleted));
        }
        if request.is_some_and(|(_, written)| written > node.token as i64) {
            return Ok(());
        }
        let mut state = self.state.clone();
        let ev = tokio::select! {
            ev = reg.next() => ev,
            _ = state.wait_for(|s| *s == SessionState::Lost) => return Err(self.expired()),
        };
        match ev {
            Event::Put(_) => Ok(()),
            // The request goes with the node (its delete, its lease).
            Event::Delete { .. } => Err(Error::LockLost(LossReason::NodeDeleted)),
            Event::Broken => Err(Error::connection("etcd watch broke")),
        }
    }

    /// Cancel safety: the batch is applied entirely or not at all.
    async fn guarded(&self, guard: &Node, ops: &[Op]) -> Result<()> {
        self.check()?;
        let guard_abs = self.inner.keys.abs(&guard.key);
        let mut txn_ops = Vec::with_capacity(ops.len());
        for op in ops {
            txn_ops.push(match op {
                Op::Put { key, value } if *key == guard.key => TxnOp::put(
                    guard_abs.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(self.lease)),
                ),
                Op::Put { key, value } => TxnOp::put(self.inner.keys.abs(key), value.clone(), None),
                Op::Delete { key } => TxnOp::delete(self.inner.keys.abs(key), None),
                other => {
                    return Err(Error::Backend {
                        backend: "etcd",
                        message: format!("unsupported operation {other:?}"),
                        source: None,
                    })
                }
            });
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                guard_abs,
                CompareOp::Equal,
                guard.token as i64,
            )])
            .and_then(txn_ops);
        let resp = self.kv().txn(txn).await.map_err(|e| self.fail(e))?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(Error::LockLost(LossReason::NodeDeleted))
        }
    }

    /// Cancel safety: safe (read only).
    async fn read_node(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        self.check()?;
        let resp = self
            .kv()
            .get(self.inner.keys.abs(key), None)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.create_revision() as u64)))
    }

    /// Cancel safety: safe (read only).
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.read_node(key).await?.map(|(value, _)| value))
    }

    /// Cancel safety: a dropped call may still create the key.
    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check()?;
        let abs = self.inner.keys.abs(key);
        let txn = Txn::new()
            .when([Compare::create_revision(abs.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(abs.clone(), value.to_vec(), None)])
            .or_else([TxnOp::get(abs, None)]);
        let resp = self.kv().txn(txn).await.map_err(|e| self.fail(e))?;
        if resp.succeeded() {
            return Ok(None);
        }
        Ok(get_response(&resp).first().map(|kv| kv.value().to_vec()))
    }

    /// Revokes the lease: every key of the session goes at once.
    ///
    /// Cancel safety: a dropped call may or may not have revoked; the lease then expires
    /// after its TTL.
    async fn close(&self) -> Result<()> {
        if *self.state.borrow() == SessionState::Lost {
            return Ok(());
        }
        for t in &self.tasks {
            t.abort();
        }
        let r = self.inner.client.clone().lease_revoke(self.lease).await;
        self.shared.set(SessionState::Lost);
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("lease not found") => Ok(()),
            Err(e) => Err(map_error(e)),
        }
    }
}
