//! A session: one ZooKeeper session, and every contract operation on it.

mod create;
mod liveness;
mod owned;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use queuelock_core::{
    Ahead, Created, Error, Listing, LossReason, Node, NodeSpec, Op, Result, Session, SessionId,
    SessionState, SessionStatus, Turn,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zookeeper_client::{Client, CreateMode, Error as ZkError, EventType};

use crate::error::map_error;
use crate::names;
use crate::Inner;

use create::Attempts;
pub(crate) use liveness::connect;
use liveness::{follow_state, heartbeat};

/// One ZooKeeper session.
pub(crate) struct ZkSession {
    inner: Arc<Inner>,
    client: StdMutex<Option<Client>>,
    id: i64,
    timeout: Duration,
    /// Shared with the state follower and the heartbeat.
    shared: Arc<SessionStatus>,
    state: watch::Receiver<SessionState>,
    /// Attempt ids whose create was sent: a retry looks for the node before creating.
    attempted: StdMutex<Attempts>,
    /// Our live nodes (relative key -> `czxid`). A node name is unique per attempt
    /// (`_c_<uuid>-...`) *unless* a reaped container parent is re-created and its sequence
    /// counter starts again: then a re-created attempt can get an old node's exact name.
    /// This map tells the two apart without a round trip (see `delete` and `guarded`).
    owned: StdMutex<HashMap<String, u64>>,
    /// The newest `mzxid` this session has read per key: a change newer than what the
    /// caller saw is reported at once by `queue_changed`.
    seen: StdMutex<HashMap<String, i64>>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for ZkSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkSession")
            .field("id", &format_args!("{:x}", self.id))
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl ZkSession {
    pub(crate) async fn open(inner: Arc<Inner>, timeout: Duration) -> Result<Self> {
        let sent = Instant::now();
        let client = connect(&inner, timeout, None).await?;
        let timeout = client.session_timeout();
        let id = client.session_id().0;
        // Send time of the last request the server answered + session timeout.
        let shared = Arc::new(SessionStatus::with_deadline(sent + timeout));
        let state = shared.subscribe();
        inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (client.session().clone(), state.clone()));
        let tasks = vec![
            tokio::spawn(follow_state(client.state_watcher(), shared.clone())),
            tokio::spawn(heartbeat(client.clone(), shared.clone(), timeout)),
        ];
        tracing::debug!(
            session = format_args!("{id:x}"),
            ?timeout,
            "ZooKeeper session opened"
        );
        Ok(ZkSession {
            inner,
            client: StdMutex::new(Some(client)),
            id,
            timeout,
            shared,
            state,
            attempted: StdMutex::new(Attempts::default()),
            owned: StdMutex::new(HashMap::new()),
            seen: StdMutex::new(HashMap::new()),
            tasks,
        })
    }

    fn expired(&self) -> Error {
        Error::SessionExpired(SessionId(self.id as u64))
    }

    /// The client, unless the session is lost or closed.
    fn client(&self) -> Result<Client> {
        if *self.state.borrow() == SessionState::Lost {
            return Err(self.expired());
        }
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| self.expired())
    }

    fn fail(&self, e: ZkError) -> Error {
        match map_error(e) {
            Error::SessionExpired(_) => {
                self.shared.set(SessionState::Lost);
                self.expired()
            }
            other => other,
        }
    }

    fn saw(&self, key: &str, mzxid: i64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.clear(); // forgetting only makes queue_changed fire early, never late
        }
        let e = seen.entry(key.to_owned()).or_insert(mzxid);
        *e = (*e).max(mzxid);
    }

    fn seen(&self, key: &str) -> i64 {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(-1)
    }

    fn path(&self, rel: &str) -> String {
        // Concatenated, not `format!`: every request builds one.
        let root = &self.inner.chroot;
        let mut path = String::with_capacity(root.len() + 1 + rel.len());
        path.push_str(root);
        path.push('/');
        path.push_str(rel);
        path
    }

    /// A listing from child names (tokens 0: a listing does not read them).
    fn listing(&self, queue: &str, children: &[String], revision: i64) -> Listing {
        let mut nodes: Vec<Node> = children
            .iter()
            .filter_map(|name| {
                let Some((sequence, kind)) = names::parse(name) else {
                    tracing::warn!(queue, child = %name, "ignoring a child without a sequence number");
                    return None;
                };
                let key = format!("{queue}/{name}");
                Some(Node {
                    key,
                    sequence,
                    token: 0,
                    kind,
                })
            })
            .collect();
        nodes.sort_by_key(|n| n.sequence);
        Listing {
            nodes,
            revision: revision.max(0) as u64,
        }
    }

    /// The error of a watch that a session event ended: the session is lost (expired or
    /// closed), or the connection broke (watch again).
    fn interrupted(&self, event: &zookeeper_client::WatchedEvent) -> Error {
        match event.session_state {
            zookeeper_client::SessionState::Expired | zookeeper_client::SessionState::Closed => {
                self.shared.set(SessionState::Lost);
                self.expired()
            }
            _ => Error::connection("ZooKeeper watch interrupted"),
        }
    }

    /// Runs `op` unless the session is lost first (requests sent while disconnected wait
    /// for a reconnection that may never come; the session's deadline still ends them).
    async fn until_lost<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let mut state = self.state.clone();
        tokio::select! {
            r = op => r,
            _ = state.wait_for(|s| *s == SessionState::Lost) => Err(self.expired()),
        }
    }

    /// Creates `dir` and its missing ancestors as containers.
    async fn mkdirs(&self, client: &Client, dir: &str) -> Result<()> {
        if dir.is_empty() || dir == self.inner.chroot {
            return Ok(());
        }
        match client
            .mkdir(dir, &CreateMode::Container.with_acls(self.inner.acls()))
            .await
        {
            Ok(()) | Err(ZkError::NodeExists) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }
}
/// How often a write is retried when a container parent is reaped under it, or another
/// writer changes a key between our read and our `multi`.
const MAX_RACES: usize = 10;

impl Drop for ZkSession {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.set(SessionState::Lost);
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        // Dropping the last client closes the session on the server.
    }
}

#[async_trait]
impl Session for ZkSession {
    fn id(&self) -> SessionId {
        SessionId(self.id as u64)
    }

    fn ttl(&self) -> Duration {
        self.timeout
    }

    fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    fn valid_until(&self) -> Option<Instant> {
        self.shared.deadline()
    }

    /// The create and the children read are sent back to back: one round trip.
    ///
    /// Cancel safety: a dropped call may have created the node; `abandon` removes it.
    async fn create_sequential(&self, spec: &NodeSpec) -> Result<Created> {
        let client = self.client()?;
        self.until_lost(self.create_inner(&client, spec)).await
    }

    /// Finds the attempt's node by its uuid (owned by this session) and deletes it.
    ///
    /// Cancel safety: safe; call again to finish. ZooKeeper executes one session's
    /// requests in order, so a create sent before this call cannot land after it.
    async fn abandon(&self, spec: &NodeSpec) -> Result<()> {
        let client = self.client()?;
        self.until_lost(async {
            if let Some((key, token)) = self.find_own(&client, spec).await? {
                match client.delete(&self.path(&key), None).await {
                    Ok(()) | Err(ZkError::NoNode) => self.disown(&key, token),
                    Err(e) => return Err(self.fail(e)),
                }
            }
            Ok(())
        })
        .await
    }

    /// Cancel safety: safe (read only).
    async fn list(&self, queue: &str) -> Result<Listing> {
        let client = self.client()?;
        match client.get_children(&self.path(queue)).await {
            Ok((children, stat)) => Ok(self.listing(queue, &children, stat.pzxid)),
            Err(ZkError::NoNode) => Ok(Listing::default()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// One children read, scanned for the nearest older node `ahead` selects without
    /// building the queue: ZooKeeper cannot read less than every child's name, but a
    /// wake-up in a 1,000-waiter queue then costs one pass over the names instead of a
    /// key, a node and a sort for each.
    ///
    /// Cancel safety: safe (read only).
    async fn turn(&self, queue: &str, me: &Node, ahead: Ahead) -> Result<Turn> {
        let client = self.client()?;
        let (children, stat) = match client.get_children(&self.path(queue)).await {
            Ok(v) => v,
            Err(ZkError::NoNode) => return Err(Error::LockLost(LossReason::NodeDeleted)),
            Err(e) => return Err(self.fail(e)),
        };
        let mine = me.key.rsplit('/').next().unwrap_or(&me.key);
        let scan = scan(&children, mine, me.sequence, ahead)
            .ok_or(Error::LockLost(LossReason::NodeDeleted))?;
        Ok(scan.turn(queue, &children, stat.pzxid))
    }

    /// A data watch on the key (it cannot leak like an `exists` watch on a missing node);
    /// `NoNode` resolves at once. `since` is not needed: the watch is set atomically with
    /// the read that shows the node still exists.
    ///
    /// Cancel safety: safe; dropping it removes the watcher.
    async fn deleted(&self, key: &str, _since: u64) -> Result<()> {
        let client = self.client()?;
        let path = self.path(key);
        self.until_lost(async {
            loop {
                let watcher = match client.get_and_watch_data(&path).await {
                    Ok((_, _, w)) => w,
                    Err(ZkError::NoNode) => return Ok(()),
                    Err(e) => return Err(self.fail(e)),
                };
                let event = watcher.changed().await;
                match event.event_type {
                    EventType::NodeDeleted => return Ok(()),
                    EventType::Session => return Err(self.interrupted(&event)),
                    _ => continue, // data changed: watch again
                }
            }
        })
        .await
    }

    /// Watches the children and the head's data. Fires at once if the children changed
    /// after `since` (a parent `pzxid`). A payload change of the head within one round
    /// trip before the call is reported with the next change only.
    ///
    /// Cancel safety: safe.
    async fn queue_changed(&self, queue: &str, since: u64) -> Result<()> {
        let client = self.client()?;
        let dir = self.path(queue);
        let (children, stat, children_watch) = match client.get_and_watch_children(&dir).await {
            Ok(v) => v,
            Err(ZkError::NoNode) => {
                // No queue yet: wait for it to appear.
                return self
                    .until_lost(async {
                        let (_, w) = client
                            .check_and_watch_stat(&dir)
                            .await
                            .map_err(|e| self.fail(e))?;
                        w.changed().await;
                        Ok(())
                    })
                    .await;
            }
            Err(e) => return Err(self.fail(e)),
        };
        if stat.pzxid.max(0) as u64 > since {
            return Ok(());
        }
        let head = self
            .listing(queue, &children, stat.pzxid)
            .nodes
            .into_iter()
            .next();
        let head_watch = match head {
            Some(h) => match client.get_and_watch_data(&self.path(&h.key)).await {
                // Changed after the caller's read of it (or never read): report now.
                Ok((_, st, w)) => {
                    let seen = self.seen(&h.key);
                    let newer = if seen >= 0 {
                        // Changed since this session last read it.
                        st.mzxid > seen
                    } else {
                        // Never read here: changed after its creation and after `since`.
                        st.mzxid > st.czxid && st.mzxid.max(0) as u64 > since
                    };
                    if newer {
                        return Ok(());
                    }
                    Some(w)
                }
                Err(ZkError::NoNode) => return Ok(()),
                Err(e) => return Err(self.fail(e)),
            },
            None => None,
        };
        let mut state = self.state.clone();
        let head_changed = async {
            match head_watch {
                Some(w) => {
                    w.changed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = children_watch.changed() => Ok(()),
            _ = head_changed => Ok(()),
            _ = state.wait_for(|s| *s == SessionState::Lost) => Err(self.expired()),
        }
    }

    /// Asks the server: a cheap read fails once the session has expired.
    ///
    /// Cancel safety: safe.
    async fn probe(&self) -> Result<SessionState> {
        let client = self.client()?;
        let sent = Instant::now();
        match client.check_stat("/").await {
            Ok(_) => self.shared.renew(sent + self.timeout),
            Err(e) => {
                let _ = self.fail(e);
            }
        }
        Ok(*self.state.borrow())
    }

    /// Deletes the exact node; gone is fine. A node of ours is deleted by name in one
    /// request, unless this session has since created a *newer* node under the same name
    /// (possible only after its container parent was reaped and re-created), which is
    /// then left alone. Anyone else's node is deleted only if its `czxid` is the node's
    /// token, with the version read together with it.
    ///
    /// Cancel safety: a dropped call may still delete; call again to be sure.
    async fn delete(&self, node: &Node) -> Result<()> {
        let client = self.client()?;
        let path = self.path(&node.key);
        let mut version = match self.owned_token(&node.key) {
            Some(t) if node.token != 0 && t != node.token => return Ok(()),
            Some(_) => None,
            None if node.token == 0 => None,
            None => match client.check_stat(&path).await {
                Ok(Some(stat)) if stat.czxid as u64 == node.token => Some(stat.version),
                Ok(_) => return Ok(()),
                Err(e) => return Err(self.fail(e)),
            },
        };
        for _ in 0..MAX_RACES {
            match client.delete(&path, version).await {
                Ok(()) | Err(ZkError::NoNode) => {
                    self.disown(&node.key, node.token);
                    return Ok(());
                }
                // Someone changed the payload between our read and the delete: read again.
                Err(ZkError::BadVersion) => match client.check_stat(&path).await {
                    Ok(Some(stat)) if stat.czxid as u64 == node.token => {
                        version = Some(stat.version)
                    }
                    Ok(_) => return Ok(()),
                    Err(e) => return Err(self.fail(e)),
                },
                Err(e) => return Err(self.fail(e)),
            }
        }
        Err(Error::Backend {
            backend: "zookeeper",
            message: format!("{path} kept changing while we deleted it"),
            source: None,
        })
    }

    /// A `multi`: a check of the guard node, then the writes. A `Put` on a key that does
    /// not exist creates it (persistent, parents as containers); on an existing key (or
    /// the guard's own key) it sets the data: ZooKeeper's `multi` cannot "create or
    /// update", so existence is read first and the batch retried on a race.
    ///
    /// Cancel safety: the batch is applied entirely or not at all.
    async fn guarded(&self, guard: &Node, ops: &[Op]) -> Result<()> {
        let client = self.client()?;
        let guard_path = self.path(&guard.key);
        for _ in 0..MAX_RACES {
            // The guard's identity: ours by name (one request), anyone else's by czxid.
            let guard_version = match self.owned_token(&guard.key) {
                Some(t) if guard.token != 0 && t != guard.token => {
                    return Err(Error::LockLost(LossReason::NodeDeleted))
                }
                Some(_) => -1,
                None => match client.check_stat(&guard_path).await {
                    Ok(Some(stat)) if guard.token == 0 || stat.czxid as u64 == guard.token => {
                        stat.version
                    }
                    Ok(_) => return Err(Error::LockLost(LossReason::NodeDeleted)),
                    Err(e) => return Err(self.fail(e)),
                },
            };
            let mut plan = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Put { key, value } => {
                        let path = self.path(key);
                        let exists = path == guard_path
                            || client
                                .check_stat(&path)
                                .await
                                .map_err(|e| self.fail(e))?
                                .is_some();
                        if !exists {
                            if let Some((parent, _)) = path.rsplit_once('/') {
                                self.mkdirs(&client, parent).await?;
                            }
                        }
                        plan.push((path, Some(value.clone()), exists));
                    }
                    Op::Delete { key } => {
                        let path = self.path(key);
                        let exists = client
                            .check_stat(&path)
                            .await
                            .map_err(|e| self.fail(e))?
                            .is_some();
                        if exists {
                            plan.push((path, None, true));
                        }
                    }
                    other => {
                        return Err(Error::Backend {
                            backend: "zookeeper",
                            message: format!("unsupported operation {other:?}"),
                            source: None,
                        })
                    }
                }
            }
            let persistent = CreateMode::Persistent.with_acls(self.inner.acls());
            let mut multi = client.new_multi_writer();
            let add = (|| -> std::result::Result<(), ZkError> {
                multi.add_check_version(&guard_path, guard_version)?;
                for (path, value, exists) in &plan {
                    match (value, exists) {
                        (Some(v), true) => multi.add_set_data(path, v, None)?,
                        (Some(v), false) => multi.add_create(path, v, &persistent)?,
                        (None, _) => multi.add_delete(path, None)?,
                    }
                }
                Ok(())
            })();
            add.map_err(|e| self.fail(e))?;
            match multi.commit().await {
                Ok(_) => return Ok(()),
                Err(zookeeper_client::MultiWriteError::OperationFailed {
                    index: 0,
                    source: ZkError::BadVersion,
                }) => continue, // the guard's payload changed under us: read it again
                Err(zookeeper_client::MultiWriteError::OperationFailed { index: 0, .. }) => {
                    return Err(Error::LockLost(LossReason::NodeDeleted))
                }
                Err(zookeeper_client::MultiWriteError::OperationFailed {
                    source: ZkError::NodeExists | ZkError::NoNode,
                    ..
                }) => continue, // raced with another writer or a reaper: look again
                Err(zookeeper_client::MultiWriteError::OperationFailed { source, .. })
                | Err(zookeeper_client::MultiWriteError::RequestFailed { source }) => {
                    return Err(self.fail(source))
                }
            }
        }
        Err(Error::Backend {
            backend: "zookeeper",
            message: "guarded write kept racing with other writers".to_owned(),
            source: None,
        })
    }

    /// Curator's protocol (`Revoker.attemptRevoke`): sets the node's data to
    /// `__REVOKE__`, with the version read together with its `czxid`, so a node of the
    /// same name created since is never marked. The holder's data watch sees it.
    ///
    /// Cancel safety: a dropped call may still set the data.
    async fn request_revoke(&self, holder: &Node) -> Result<bool> {
        let client = self.client()?;
        let path = self.path(&holder.key);
        for _ in 0..MAX_RACES {
            let version = match client.check_stat(&path).await {
                Ok(Some(stat)) if holder.token == 0 || stat.czxid as u64 == holder.token => {
                    stat.version
                }
                Ok(_) => return Ok(false),
                Err(e) => return Err(self.fail(e)),
            };
            match client
                .set_data(&path, crate::REVOKE_MESSAGE, Some(version))
                .await
            {
                Ok(_) => return Ok(true),
                Err(ZkError::NoNode) => return Ok(false),
                // The holder rewrote its data between our read and the write: read again.
                Err(ZkError::BadVersion) => continue,
                Err(e) => return Err(self.fail(e)),
            }
        }
        Err(Error::Backend {
            backend: "zookeeper",
            message: format!("{path} kept changing while we asked its holder to let go"),
            source: None,
        })
    }

    /// A data watch on our own node, as Curator's revocable holder sets: resolves when
    /// its data is `__REVOKE__` (now, or after a change).
    ///
    /// Cancel safety: safe; dropping it removes the watcher.
    async fn revoke_requested(&self, node: &Node) -> Result<()> {
        let client = self.client()?;
        let path = self.path(&node.key);
        self.until_lost(async {
            loop {
                let watcher = match client.get_and_watch_data(&path).await {
                    Ok((_, stat, _)) if node.token != 0 && stat.czxid as u64 != node.token => {
                        return Err(Error::LockLost(LossReason::NodeDeleted))
                    }
                    Ok((data, _, _)) if data == crate::REVOKE_MESSAGE => return Ok(()),
                    Ok((_, _, w)) => w,
                    Err(ZkError::NoNode) => return Err(Error::LockLost(LossReason::NodeDeleted)),
                    Err(e) => return Err(self.fail(e)),
                };
                let event = watcher.changed().await;
                match event.event_type {
                    EventType::NodeDeleted => return Err(Error::LockLost(LossReason::NodeDeleted)),
                    EventType::Session => return Err(self.interrupted(&event)),
                    _ => continue, // data changed: read it (and watch) again
                }
            }
        })
        .await
    }

    /// Cancel safety: safe (read only).
    async fn read_node(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        let client = self.client()?;
        match client.get_data(&self.path(key)).await {
            Ok((data, stat)) => {
                self.saw(key, stat.mzxid);
                Ok(Some((data, stat.czxid as u64)))
            }
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Cancel safety: safe (read only).
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.read_node(key).await?.map(|(data, _)| data))
    }

    /// Creates a persistent node (parents as containers); `NodeExists` returns the
    /// existing data.
    ///
    /// Cancel safety: a dropped call may still create the key.
    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>> {
        let client = self.client()?;
        let path = self.path(key);
        let opts = CreateMode::Persistent.with_acls(self.inner.acls());
        for _ in 0..MAX_RACES {
            match client.create(&path, value, &opts).await {
                Ok(_) => return Ok(None),
                Err(ZkError::NodeExists) => match client.get_data(&path).await {
                    Ok((data, _)) => return Ok(Some(data)),
                    Err(ZkError::NoNode) => continue, // deleted in between: try again
                    Err(e) => return Err(self.fail(e)),
                },
                Err(ZkError::NoNode) => {
                    if let Some((parent, _)) = path.rsplit_once('/') {
                        self.mkdirs(&client, parent).await?;
                    }
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        Err(Error::Backend {
            backend: "zookeeper",
            message: format!("parent of {path} keeps disappearing"),
            source: None,
        })
    }

    /// Closes the ZooKeeper session: its ephemeral nodes go at once. The state becomes
    /// `Lost` first, so that this session's pending watches end and let go of the
    /// connection; returns once the server has closed the session (or after 10 s).
    ///
    /// Cancel safety: safe; the session closes when the last client handle is dropped.
    async fn close(&self) -> Result<()> {
        self.shared.set(SessionState::Lost);
        let client = self.client.lock().unwrap_or_else(|p| p.into_inner()).take();
        for t in &self.tasks {
            t.abort();
        }
        self.owned.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if let Some(c) = client {
            let mut watcher = c.state_watcher();
            drop(c);
            // Wait for the close to reach the server, so the nodes are gone on return.
            let closed = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if watcher.changed().await.is_terminated() {
                        break;
                    }
                }
            })
            .await;
            if closed.is_err() {
                tracing::warn!(
                    session = format_args!("{:x}", self.id),
                    "ZooKeeper session not closed within 10 s; it expires after its timeout"
                );
            }
        }
        Ok(())
    }
}

/// One pass over a queue's child names for the waiter whose node is `mine` (sequence
/// `sequence`): whether it is there, the nearest older child `ahead` selects, whether
/// another selected one is older still, and how many parsed children are ahead of it.
/// `None` when `mine` is not among the children. No key or node is built for the other
/// children: a create or a wake-up in a long queue costs one pass over the names.
pub(crate) fn scan(children: &[String], mine: &str, sequence: u64, ahead: Ahead) -> Option<Scan> {
    let mut present = false;
    let mut out = Scan {
        nearest: None,
        more: false,
        before: 0,
    };
    for (i, name) in children.iter().enumerate() {
        if name == mine {
            present = true;
            continue;
        }
        let Some((seq, kind)) = names::parse(name) else {
            continue;
        };
        if seq >= sequence {
            continue;
        }
        out.before += 1;
        if !ahead.selects(kind) {
            continue;
        }
        match out.nearest {
            Some((s, _, _)) if s > seq => out.more = true,
            Some(_) => {
                out.more = true;
                out.nearest = Some((seq, i, kind));
            }
            None => out.nearest = Some((seq, i, kind)),
        }
    }
    present.then_some(out)
}

/// What [`scan`] found.
pub(crate) struct Scan {
    /// The nearest older selected child: (sequence, index among the children, kind).
    nearest: Option<(u64, usize, queuelock_core::NodeKind)>,
    /// Another selected child is older than `nearest`.
    more: bool,
    /// Children (with a sequence) ahead of ours.
    pub(crate) before: usize,
}

impl Scan {
    /// The waiter's read this scan answers, for `queue` read at `pzxid`.
    pub(crate) fn turn(&self, queue: &str, children: &[String], pzxid: i64) -> Turn {
        let blocker = self.nearest.map(|(sequence, i, kind)| Node {
            key: format!("{queue}/{}", children[i]),
            sequence,
            token: 0,
            kind,
        });
        let last = blocker.is_some() && !self.more;
        Turn::new(blocker, pzxid.max(0) as u64).with_last(last)
    }
}
