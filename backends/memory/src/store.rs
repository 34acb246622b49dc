use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use queuelock_core::{
    Ahead, Backend, Created, Error, Listing, LossReason, Node, NodeKind, NodeSpec, Op, Result,
    Session, SessionId, SessionOptions, SessionState, SessionStatus, Turn,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

/// An in-process coordination store. Cheap to clone; clones share the store.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    revision: u64,
    next_session: u64,
    entries: BTreeMap<String, Entry>,
    /// Each queue's nodes by sequence: the waiter's read finds its one node in O(log n).
    queues: HashMap<String, BTreeMap<u64, (String, NodeKind)>>,
    sessions: HashMap<u64, SessionRec>,
    /// Deletion watches by key; each fires once.
    watchers: HashMap<String, Vec<(u64, oneshot::Sender<()>)>>,
    /// Revocation watches by node key; each fires once (dropped, unsent, with the node).
    revoke_watchers: HashMap<String, Vec<oneshot::Sender<()>>>,
    /// Queue-change watches by queue; each fires once.
    queue_watchers: HashMap<String, Vec<oneshot::Sender<()>>>,
    /// The revision of each queue's last change (membership or payload).
    queue_rev: HashMap<String, u64>,
    /// Deletion notifications delivered to a live watcher of another session than the
    /// node's owner, ever (a holder watching its own node does not count).
    notifications: u64,
    /// `Session::abandon` calls that reached the store, ever.
    abandons: u64,
    delay: Duration,
}

struct Entry {
    value: Vec<u8>,
    create_rev: u64,
    /// Owning session for ephemeral nodes, `None` for persistent keys.
    owner: Option<u64>,
    /// Queue nodes carry their kind; plain keys do not and are not listed.
    kind: Option<NodeKind>,
    /// A revocation of this node was requested ([`Session::request_revoke`]).
    revoke: bool,
    /// The attempt that created this queue node: its owner forgets the attempt when the
    /// node goes, so a long-lived session does not keep one record per acquire.
    attempt: Option<Uuid>,
}

struct SessionRec {
    state: SessionStatus,
    suspended: bool,
    /// When the "server" expires the session unless a keep-alive arrives first.
    deadline: Instant,
    ttl: Duration,
    /// Attempt id -> key, for idempotent create and abandon.
    attempts: HashMap<Uuid, String>,
}

impl State {
    fn check(&self, id: u64) -> Result<&SessionRec> {
        match self.sessions.get(&id) {
            None => Err(Error::SessionExpired(SessionId(id))),
            Some(rec) if rec.suspended => Err(Error::connection(format!(
                "memory session {:x} is suspended (fault injection)",
                id
            ))),
            Some(rec) => Ok(rec),
        }
    }

    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Records a change under `key`'s parent queue and wakes its queue watchers.
    fn touch_queue(&mut self, key: &str) {
        if let Some((queue, _)) = key.rsplit_once('/') {
            self.queue_rev.insert(queue.to_owned(), self.revision);
            for w in self.queue_watchers.remove(queue).unwrap_or_default() {
                let _ = w.send(());
            }
        }
    }

    fn remove_entry(&mut self, key: &str) -> bool {
        let Some(entry) = self.entries.remove(key) else {
            return false;
        };
        if entry.kind.is_some() {
            self.unindex(key, entry.create_rev);
        }
        if let (Some(owner), Some(attempt)) = (entry.owner, entry.attempt) {
            if let Some(rec) = self.sessions.get_mut(&owner) {
                rec.attempts.remove(&attempt);
            }
        }
        // Its revocation watchers hear that the node is gone (their senders drop).
        self.revoke_watchers.remove(key);
        self.bump();
        self.touch_queue(key);
        for (watcher, w) in self.watchers.remove(key).unwrap_or_default() {
            if w.send(()).is_ok() && entry.owner != Some(watcher) {
                self.notifications += 1;
            }
        }
        true
    }

    /// Ends a session the way a server does: the owner learns it is lost first, then its
    /// nodes go, all under one lock so nobody is granted anything in between.
    fn end_session(&mut self, id: u64) -> bool {
        let Some(rec) = self.sessions.remove(&id) else {
            return false;
        };
        rec.state.set(SessionState::Lost);
        let owned: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.owner == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in owned {
            self.remove_entry(&key);
        }
        true
    }

    fn node(&self, key: &str) -> Option<Node> {
        let e = self.entries.get(key)?;
        Some(Node {
            key: key.to_owned(),
            sequence: e.create_rev,
            token: e.create_rev,
            kind: e.kind?,
        })
    }

    fn listing(&self, queue: &str) -> Listing {
        let nodes = self
            .queues
            .get(queue)
            .into_iter()
            .flatten()
            .map(|(&seq, (key, kind))| Node {
                key: key.clone(),
                sequence: seq,
                token: seq,
                kind: *kind,
            })
            .collect();
        Listing {
            nodes,
            revision: self.revision,
        }
    }

    /// The waiter's read, from the queue's index: the nearest earlier node `ahead`
    /// selects, if `me` (same key and token) still exists.
    fn turn(&self, queue: &str, me: &Node, ahead: Ahead) -> Result<Turn> {
        if self.entries.get(&me.key).map(|e| e.create_rev) != Some(me.token) {
            return Err(Error::LockLost(LossReason::NodeDeleted));
        }
        let mut selected = self.queues.get(queue).into_iter().flat_map(|q| {
            q.range(..me.sequence)
                .rev()
                .filter(|(_, (_, kind))| ahead.selects(*kind))
        });
        let blocker = selected.next().map(|(&seq, (key, kind))| Node {
            key: key.clone(),
            sequence: seq,
            token: seq,
            kind: *kind,
        });
        let last = selected.next().is_none();
        Ok(Turn::new(blocker, self.revision).with_last(last))
    }

    fn index(&mut self, queue: &str, key: &str, seq: u64, kind: NodeKind) {
        self.queues
            .entry(queue.to_owned())
            .or_default()
            .insert(seq, (key.to_owned(), kind));
    }

    fn unindex(&mut self, key: &str, seq: u64) {
        if let Some((queue, _)) = key.rsplit_once('/') {
            if let Some(q) = self.queues.get_mut(queue) {
                q.remove(&seq);
                if q.is_empty() {
                    self.queues.remove(queue);
                }
            }
        }
    }
}

impl MemoryBackend {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide store behind `memory://`: every client connected to it in this
    /// process shares it.
    pub fn global() -> Self {
        static GLOBAL: OnceLock<MemoryBackend> = OnceLock::new();
        GLOBAL.get_or_init(MemoryBackend::new).clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock_state(&self.shared)
    }

    /// Fault injection: expires session `id` now, as a server would after its TTL. Its
    /// state becomes [`SessionState::Lost`] and its nodes are removed. Returns false if
    /// no such session is open.
    pub fn expire_session(&self, id: SessionId) -> bool {
        tracing::debug!(session = %id, "memory: expiring session (fault injection)");
        self.lock().end_session(id.0)
    }

    /// Fault injection: cuts session `id`'s "connection". Its state becomes
    /// [`SessionState::Suspended`], its operations fail with [`Error::Connection`], its
    /// watches deliver nothing until resumed, and keep-alives stop, so the session expires
    /// once its TTL has passed since the last keep-alive. Returns false if no such session.
    pub fn suspend_session(&self, id: SessionId) -> bool {
        let mut st = self.lock();
        match st.sessions.get_mut(&id.0) {
            Some(rec) => {
                rec.suspended = true;
                rec.state.set(SessionState::Suspended);
                true
            }
            None => false,
        }
    }

    /// Fault injection: restores session `id`'s connection if it has not expired yet
    /// (state back to [`SessionState::Live`]). Returns false if the session is gone.
    pub fn resume_session(&self, id: SessionId) -> bool {
        let mut st = self.lock();
        match st.sessions.get_mut(&id.0) {
            Some(rec) => {
                rec.suspended = false;
                rec.deadline = Instant::now() + rec.ttl;
                rec.state.set(SessionState::Live);
                true
            }
            None => false,
        }
    }

    /// Fault injection: every operation waits `delay` before it reaches the store, like
    /// a slow network. `Duration::ZERO` turns it off.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Every key at or below `prefix` (a `/`-separated path), sorted. For tests that check
    /// nothing is left behind.
    pub fn keys_under(&self, prefix: &str) -> Vec<String> {
        let st = self.lock();
        let dir = format!("{prefix}/");
        st.entries
            .keys()
            .filter(|k| k.as_str() == prefix || k.starts_with(&dir))
            .cloned()
            .collect()
    }

    /// How many deletion notifications have been delivered to watchers in sessions other
    /// than the deleted node's owner since the store was created: lets a test count how
    /// many waiters one release woke.
    pub fn notifications(&self) -> u64 {
        self.lock().notifications
    }

    /// How many [`Session::abandon`] calls have reached the store: the queue calls it only
    /// for an attempt whose create ended without an answer (a cancelled create is waited
    /// for and its node deleted), which lets a test see that.
    pub fn abandons(&self) -> u64 {
        self.lock().abandons
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }
}

fn lock_state(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave State half-updated in a way that matters
    // more than losing the whole store, so keep going with the data as it is.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("MemoryBackend")
            .field("revision", &st.revision)
            .field("entries", &st.entries.len())
            .field("sessions", &st.sessions.len())
            .finish()
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    /// Cancel safety: safe; the session is registered without awaiting anything.
    async fn open_session(&self, options: &SessionOptions) -> Result<Arc<dyn Session>> {
        let ttl = options.ttl.max(Duration::from_millis(10));
        let status = SessionStatus::new();
        let rx = status.subscribe();
        let id = {
            let mut st = self.lock();
            st.next_session += 1;
            let id = st.next_session;
            st.sessions.insert(
                id,
                SessionRec {
                    state: status,
                    suspended: false,
                    deadline: Instant::now() + ttl,
                    ttl,
                    attempts: HashMap::new(),
                },
            );
            id
        };
        let keepalive = tokio::spawn(keep_alive(Arc::downgrade(&self.shared), id, ttl));
        Ok(Arc::new(MemorySession {
            backend: self.clone(),
            id,
            ttl,
            state: rx,
            keepalive,
        }))
    }
}

/// Plays both the client's keep-alive loop and the server's expiry check.
async fn keep_alive(shared: Weak<Shared>, id: u64, ttl: Duration) {
    loop {
        let pause = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let st = lock_state(&shared);
            let Some(rec) = st.sessions.get(&id) else {
                return;
            };
            if rec.suspended {
                rec.deadline.saturating_duration_since(Instant::now())
            } else {
                ttl / 3
            }
        };
        tokio::time::sleep(pause.max(Duration::from_millis(1))).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut st = lock_state(&shared);
        let now = Instant::now();
        let Some(rec) = st.sessions.get_mut(&id) else {
            return;
        };
        if !rec.suspended {
            rec.deadline = now + ttl;
        } else if now >= rec.deadline {
            tracing::debug!(session = %SessionId(id), "memory: session expired after its TTL");
            st.end_session(id);
            return;
        }
    }
}

/// A session of a [`MemoryBackend`]. Dropping it closes it.
pub struct MemorySession {
    backend: MemoryBackend,
    id: u64,
    ttl: Duration,
    state: watch::Receiver<SessionState>,
    keepalive: JoinHandle<()>,
}

impl fmt::Debug for MemorySession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySession")
            .field("id", &SessionId(self.id))
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Drop for MemorySession {
    fn drop(&mut self) {
        self.keepalive.abort();
        self.backend.lock().end_session(self.id);
    }
}

impl MemorySession {
    /// Waits out the injected delay, then checks that the session can talk to the store.
    async fn gate(&self) -> Result<()> {
        let delay = self.backend.lock().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.backend.lock().check(self.id).map(|_| ())
    }

    fn expired(&self) -> Error {
        Error::SessionExpired(SessionId(self.id))
    }
}

#[async_trait]
impl Session for MemorySession {
    fn id(&self) -> SessionId {
        SessionId(self.id)
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    fn valid_until(&self) -> Option<std::time::Instant> {
        let st = self.backend.lock();
        st.sessions.get(&self.id).map(|rec| rec.deadline.into_std())
    }

    /// Cancel safety: a dropped call may have created the node; `abandon` removes it.
    async fn create_sequential(&self, spec: &NodeSpec) -> Result<Created> {
        self.gate().await?;
        let mut st = self.backend.lock();
        st.check(self.id)?;
        let existing = st.sessions[&self.id]
            .attempts
            .get(&spec.id)
            .and_then(|key| st.node(key));
        let node = match existing {
            Some(node) => node,
            None => {
                let rev = st.bump();
                let key = format!(
                    "{}/{}-{}-{:010}",
                    spec.queue,
                    spec.kind.tag(),
                    spec.id.simple(),
                    rev
                );
                st.entries.insert(
                    key.clone(),
                    Entry {
                        value: spec.payload.clone(),
                        create_rev: rev,
                        owner: Some(self.id),
                        kind: Some(spec.kind),
                        revoke: false,
                        attempt: Some(spec.id),
                    },
                );
                if let Some(rec) = st.sessions.get_mut(&self.id) {
                    rec.attempts.insert(spec.id, key.clone());
                }
                st.index(&spec.queue, &key, rev, spec.kind);
                st.touch_queue(&key);
                Node {
                    key,
                    sequence: rev,
                    token: rev,
                    kind: spec.kind,
                }
            }
        };
        let turn = st.turn(&spec.queue, &node, spec.ahead)?;
        let ahead = st
            .queues
            .get(&spec.queue)
            .map(|q| q.range(..node.sequence).count());
        Ok(Created { node, turn, ahead })
    }

    /// Cancel safety: safe.
    async fn abandon(&self, spec: &NodeSpec) -> Result<()> {
        self.gate().await?;
        let mut st = self.backend.lock();
        st.check(self.id)?;
        st.abandons += 1;
        let key = st
            .sessions
            .get_mut(&self.id)
            .and_then(|rec| rec.attempts.remove(&spec.id));
        if let Some(key) = key {
            if st
                .entries
                .get(&key)
                .is_some_and(|e| e.owner == Some(self.id))
            {
                st.remove_entry(&key);
            }
        }
        Ok(())
    }

    /// Cancel safety: safe (read only).
    async fn list(&self, queue: &str) -> Result<Listing> {
        self.gate().await?;
        let st = self.backend.lock();
        st.check(self.id)?;
        Ok(st.listing(queue))
    }

    /// Cancel safety: safe (read only).
    async fn turn(&self, queue: &str, me: &Node, ahead: Ahead) -> Result<Turn> {
        self.gate().await?;
        let st = self.backend.lock();
        st.check(self.id)?;
        st.turn(queue, me, ahead)
    }

    /// Cancel safety: safe.
    async fn deleted(&self, key: &str, _since: u64) -> Result<()> {
        self.gate().await?;
        let fired = {
            let mut st = self.backend.lock();
            st.check(self.id)?;
            if !st.entries.contains_key(key) {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            let list = st.watchers.entry(key.to_owned()).or_default();
            list.retain(|(_, w)| !w.is_closed());
            list.push((self.id, tx));
            rx
        };
        let mut state = self.state.clone();
        tokio::select! {
            r = fired => r.map_err(|_| Error::connection("memory store dropped"))?,
            _ = state.wait_for(|s| *s == SessionState::Lost) => return Err(self.expired()),
        }
        // A suspended connection hears of the deletion only once it is back.
        let live = matches!(
            state
                .wait_for(|s| *s != SessionState::Suspended)
                .await
                .map(|s| *s),
            Ok(SessionState::Live)
        );
        if live {
            Ok(())
        } else {
            Err(self.expired())
        }
    }

    /// Cancel safety: safe.
    async fn queue_changed(&self, queue: &str, since: u64) -> Result<()> {
        self.gate().await?;
        let fired = {
            let mut st = self.backend.lock();
            st.check(self.id)?;
            if st.queue_rev.get(queue).is_some_and(|&r| r > since) {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            let list = st.queue_watchers.entry(queue.to_owned()).or_default();
            list.retain(|w| !w.is_closed());
            list.push(tx);
            rx
        };
        let mut state = self.state.clone();
        tokio::select! {
            r = fired => r.map_err(|_| Error::connection("memory store dropped")),
            _ = state.wait_for(|s| *s == SessionState::Lost) => Err(self.expired()),
        }
    }

    /// Cancel safety: safe.
    async fn delete(&self, node: &Node) -> Result<()> {
        self.gate().await?;
        let mut st = self.backend.lock();
        st.check(self.id)?;
        if st
            .entries
            .get(&node.key)
            .is_some_and(|e| e.create_rev == node.token)
        {
            st.remove_entry(&node.key);
        }
        Ok(())
    }

    /// Cancel safety: the batch is applied entirely or not at all, once the call has
    /// passed the injected delay.
    async fn guarded(&self, guard: &Node, ops: &[Op]) -> Result<()> {
        self.gate().await?;
        let mut st = self.backend.lock();
        st.check(self.id)?;
        if st.entries.get(&guard.key).map(|e| e.create_rev) != Some(guard.token) {
            return Err(Error::LockLost(LossReason::NodeDeleted));
        }
        // Refuse the whole batch before applying any of it: all or nothing.
        if let Some(other) = ops
            .iter()
            .find(|op| !matches!(op, Op::Put { .. } | Op::Delete { .. }))
        {
            return Err(Error::Backend {
                backend: "memory",
                message: format!("unsupported operation {other:?}"),
                source: None,
            });
        }
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    let rev = st.bump();
                    st.touch_queue(key);
                    st.entries
                        .entry(key.clone())
                        .and_modify(|e| e.value = value.clone())
                        .or_insert_with(|| Entry {
                            value: value.clone(),
                            create_rev: rev,
                            owner: None,
                            kind: None,
                            revoke: false,
                            attempt: None,
                        });
                }
                Op::Delete { key } => {
                    st.remove_entry(key);
                }
                _ => {} // refused above
            }
        }
        Ok(())
    }

    /// Cancel safety: safe (read only).
    async fn read_node(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        self.gate().await?;
        let st = self.backend.lock();
        st.check(self.id)?;
        Ok(st.entries.get(key).map(|e| (e.value.clone(), e.create_rev)))
    }

    /// Cancel safety: safe (read only).
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.read_node(key).await?.map(|(value, _)| value))
    }

    /// Cancel safety: safe once past the injected delay.
    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>> {
        self.gate().await?;
        let mut st = self.backend.lock();
        st.check(self.id)?;
        if let Some(e) = st.entries.get(key) {
            return Ok(Some(e.value.clone()));
        }
        let rev = st.bump();
        st.entries.insert(
            key.to_owned(),
            Entry {
                value: value.to_vec(),
                create_rev: rev,
                owner: None,
                kind: None,
                revoke: false,
                attempt: None,
            },
        );
        Ok(None)
    }

    /// Cancel safety: safe once past the injected delay.
    async fn request_revoke(&self, holder: &Node) -> Result<bool> {
        self.gate().await?;
        let mut st = self.backend.lock();
        st.check(self.id)?;
        let st = &mut *st;
        match st.entries.get_mut(&holder.key) {
            Some(e) if e.create_rev == holder.token && e.kind.is_some() => {
                e.revoke = true;
                for w in st.revoke_watchers.remove(&holder.key).unwrap_or_default() {
                    let _ = w.send(());
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Cancel safety: safe.
    async fn revoke_requested(&self, node: &Node) -> Result<()> {
        self.gate().await?;
        let fired = {
            let mut st = self.backend.lock();
            st.check(self.id)?;
            match st.entries.get(&node.key) {
                Some(e) if e.create_rev == node.token => {
                    if e.revoke {
                        return Ok(());
                    }
                }
                _ => return Err(Error::LockLost(LossReason::NodeDeleted)),
            }
            let (tx, rx) = oneshot::channel();
            let list = st.revoke_watchers.entry(node.key.clone()).or_default();
            list.retain(|w| !w.is_closed());
            list.push(tx);
            rx
        };
        let mut state = self.state.clone();
        tokio::select! {
            r = fired => r.map_err(|_| Error::LockLost(LossReason::NodeDeleted)),
            _ = state.wait_for(|s| *s == SessionState::Lost) => Err(self.expired()),
        }
    }

    /// Cancel safety: safe (nothing is awaited).
    async fn close(&self) -> Result<()> {
        self.keepalive.abort();
        self.backend.lock().end_session(self.id);
        Ok(())
    }
}
