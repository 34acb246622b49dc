//! A session: one ZooKeeper session, and every contract operation on it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use queuelock_core::{
    Created, Error, Listing, LossReason, Node, NodeSpec, Op, Result, Session, SessionId,
    SessionState,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, EventType};

use crate::error::map_error;
use crate::names;
use crate::Inner;

/// Connects a ZooKeeper client (a new session unless `session` names one to resume).
pub(crate) async fn connect(
    inner: &Inner,
    timeout: Duration,
    session: Option<zookeeper_client::SessionInfo>,
) -> Result<Client> {
    let mut c = Client::connector()
        .with_session_timeout(timeout)
        .with_connection_timeout(
            inner
                .options
                .connect_timeout
                .unwrap_or(Duration::from_secs(10)),
        );
    if let Some(d) = &inner.options.digest {
        c = c.with_auth("digest", d.as_bytes());
    }
    if let Some(s) = session {
        c = c.with_session(s);
    }
    c.connect(&inner.hosts).await.map_err(map_error)
}

struct Shared {
    state: watch::Sender<SessionState>,
    /// Send time of the last request the server answered + session timeout.
    deadline: StdMutex<Instant>,
}

impl Shared {
    fn set(&self, s: SessionState) {
        self.state.send_if_modified(|cur| {
            if *cur == s || *cur == SessionState::Lost {
                false
            } else {
                *cur = s;
                true
            }
        });
    }

    fn heard_at(&self, sent: Instant, timeout: Duration) {
        let mut d = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        *d = (*d).max(sent + timeout);
    }

    fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One ZooKeeper session.
pub(crate) struct ZkSession {
    inner: Arc<Inner>,
    client: StdMutex<Option<Client>>,
    id: i64,
    timeout: Duration,
    shared: Arc<Shared>,
    state: watch::Receiver<SessionState>,
    /// Attempt ids whose create was sent: a retry looks for the node before creating.
    attempted: StdMutex<HashSet<uuid::Uuid>>,
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

fn container() -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Container.with_acls(Acls::anyone_all())
}

impl ZkSession {
    pub(crate) async fn open(inner: Arc<Inner>, timeout: Duration) -> Result<Self> {
        let sent = Instant::now();
        let client = connect(&inner, timeout, None).await?;
        let timeout = client.session_timeout();
        let id = client.session_id().0;
        let (tx, state) = watch::channel(SessionState::Live);
        inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (client.session().clone(), state.clone()));
        let shared = Arc::new(Shared {
            state: tx,
            deadline: StdMutex::new(sent + timeout),
        });
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
            attempted: StdMutex::new(HashSet::new()),
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
        format!("{}/{rel}", self.inner.chroot)
    }

    fn rel<'a>(&self, abs: &'a str) -> &'a str {
        abs.strip_prefix(&self.inner.chroot)
            .map(|p| p.trim_start_matches('/'))
            .unwrap_or(abs)
    }

    /// A listing from child names; `own` supplies the exact token of our node.
    fn listing(
        &self,
        queue: &str,
        children: &[String],
        revision: i64,
        own: Option<(&str, u64)>,
    ) -> Listing {
        let mut nodes: Vec<Node> = children
            .iter()
            .filter_map(|name| {
                let Some((sequence, kind)) = names::parse(name) else {
                    tracing::warn!(queue, child = %name, "ignoring a child without a sequence number");
                    return None;
                };
                let key = format!("{queue}/{name}");
                let token = match own {
                    Some((k, t)) if k == key => t,
                    _ => 0,
                };
                Some(Node {
                    key,
                    sequence,
                    token,
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

    /// Our node for `spec` if one exists and our session owns it (after a lost answer).
    async fn find_own(&self, client: &Client, spec: &NodeSpec) -> Result<Option<(String, u64)>> {
        let dir = self.path(&spec.queue);
        let children = match client.list_children(&dir).await {
            Ok(c) => c,
            Err(ZkError::NoNode) => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        let marker = names::marker(spec);
        for name in children.into_iter().filter(|c| c.starts_with(&marker)) {
            let path = format!("{dir}/{name}");
            match client.check_stat(&path).await {
                Ok(Some(stat)) if stat.ephemeral_owner == self.id => {
                    return Ok(Some((format!("{}/{name}", spec.queue), stat.czxid as u64)))
                }
                Ok(_) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(None)
    }
}

/// Maps ZooKeeper's session states; Lost too once the timeout has passed since the
/// disconnection, whatever the server has (not yet) said.
async fn follow_state(mut watcher: zookeeper_client::StateWatcher, shared: Arc<Shared>) {
    use zookeeper_client::SessionState as Zk;
    loop {
        // Whatever the client library reports, the session is lost once the deadline
        // (last answer + timeout) passes without a new answer.
        let next = match tokio::time::timeout_at(shared.deadline().into(), watcher.changed()).await
        {
            Ok(s) => s,
            Err(_) => {
                if Instant::now() >= shared.deadline() {
                    tracing::warn!(
                        "no answer from ZooKeeper within the session timeout: session lost"
                    );
                    shared.set(SessionState::Lost);
                    return;
                }
                continue;
            }
        };
        match next {
            // The deadline (last answer + timeout) is never later than Curator's
            // "disconnected + timeout".
            Zk::Disconnected => shared.set(SessionState::Suspended),
            Zk::SyncConnected | Zk::ConnectedReadOnly => shared.set(SessionState::Live),
            Zk::Expired | Zk::AuthFailed | Zk::Closed => {
                shared.set(SessionState::Lost);
                return;
            }
        }
    }
}

/// A cheap request every timeout/3: its answers move the conservative deadline.
async fn heartbeat(client: Client, shared: Arc<Shared>, timeout: Duration) {
    let period = timeout / 3;
    loop {
        let sent = Instant::now();
        if let Ok(Ok(_)) = tokio::time::timeout(period, client.check_stat("/")).await {
            shared.heard_at(sent, timeout);
        }
        if *shared.state.borrow() == SessionState::Lost {
            return;
        }
        tokio::time::sleep_until((sent + period).into()).await;
    }
}

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
        Some(self.shared.deadline())
    }

    /// The create and the children read are sent back to back: one round trip.
    ///
    /// Cancel safety: a dropped call may have created the node; `abandon` removes it.
    async fn create_sequential(&self, spec: &NodeSpec) -> Result<Created> {
        let client = self.client()?;
        let dir = self.path(&spec.queue);
        let retry = !self
            .attempted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.id);
        if retry {
            if let Some((key, token)) = self.find_own(&client, spec).await? {
                let (children, stat) = client.get_children(&dir).await.map_err(|e| self.fail(e))?;
                let listing = self.listing(&spec.queue, &children, stat.pzxid, Some((&key, token)));
                let node = listing
                    .nodes
                    .iter()
                    .find(|n| n.key == key)
                    .cloned()
                    .ok_or(Error::LockLost(LossReason::NodeDeleted))?;
                return Ok(Created { node, listing });
            }
        }
        let prefix = format!("{dir}/{}", names::prefix(spec));
        let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        for _ in 0..3 {
            // Sent in this order now; awaited together.
            let create = client.create(&prefix, &spec.payload, &opts);
            let children = client.get_children(&dir);
            let (created, children) = tokio::join!(create, children);
            match created {
                Ok((stat, seq)) => {
                    let (children, parent) = children.map_err(|e| self.fail(e))?;
                    let key = format!("{}/{}{seq}", spec.queue, names::prefix(spec));
                    let listing = self.listing(
                        &spec.queue,
                        &children,
                        parent.pzxid,
                        Some((&key, stat.czxid as u64)),
                    );
                    let node = listing
                        .nodes
                        .iter()
                        .find(|n| n.key == key)
                        .cloned()
                        .ok_or(Error::LockLost(LossReason::NodeDeleted))?;
                    return Ok(Created { node, listing });
                }
                Err(ZkError::NoNode) => {
                    // Parent missing (or reaped as an empty container): create, try again.
                    match client.mkdir(&dir, &container()).await {
                        Ok(()) | Err(ZkError::NodeExists) => {}
                        Err(e) => return Err(self.fail(e)),
                    }
                }
                Err(ZkError::ConnectionLoss) => {
                    if let Some((key, token)) = self.find_own(&client, spec).await? {
                        let (children, stat) =
                            client.get_children(&dir).await.map_err(|e| self.fail(e))?;
                        let listing =
                            self.listing(&spec.queue, &children, stat.pzxid, Some((&key, token)));
                        if let Some(node) = listing.nodes.iter().find(|n| n.key == key).cloned() {
                            return Ok(Created { node, listing });
                        }
                    }
                    return Err(Error::connection("ZooKeeper connection lost during create"));
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        Err(Error::Backend {
            backend: "zookeeper",
            message: format!("parent {dir} keeps disappearing"),
            source: None,
        })
    }

    /// Cancel safety: safe. ZooKeeper orders one session's requests, so a create sent
    /// before this cannot land after it.
    async fn abandon(&self, spec: &NodeSpec) -> Result<()> {
        let client = self.client()?;
        if let Some((key, _)) = self.find_own(&client, spec).await? {
            match client.delete(&self.path(&key), None).await {
                Ok(()) | Err(ZkError::NoNode) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(())
    }

    /// Cancel safety: safe (read only).
    async fn list(&self, queue: &str) -> Result<Listing> {
        let client = self.client()?;
        match client.get_children(&self.path(queue)).await {
            Ok((children, stat)) => Ok(self.listing(queue, &children, stat.pzxid, None)),
            Err(ZkError::NoNode) => Ok(Listing::default()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// A data watch on the key (it cannot leak like an `exists` watch on a missing node).
    ///
    /// Cancel safety: safe.
    async fn deleted(&self, key: &str, _since: u64) -> Result<()> {
        let client = self.client()?;
        let path = self.path(key);
        let mut state = self.state.clone();
        loop {
            let watcher = match client.get_and_watch_data(&path).await {
                Ok((_, _, w)) => w,
                Err(ZkError::NoNode) => return Ok(()),
                Err(e) => return Err(self.fail(e)),
            };
            let event = tokio::select! {
                e = watcher.changed() => e,
                _ = state.wait_for(|s| *s == SessionState::Lost) => return Err(self.expired()),
            };
            match event.event_type {
                EventType::NodeDeleted => return Ok(()),
                EventType::Session => {
                    return Err(match event.session_state {
                        zookeeper_client::SessionState::Expired
                        | zookeeper_client::SessionState::Closed => self.expired(),
                        _ => Error::connection("ZooKeeper watch interrupted"),
                    })
                }
                _ => continue, // data changed: watch again
            }
        }
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
                let (_, w) = client
                    .check_and_watch_stat(&dir)
                    .await
                    .map_err(|e| self.fail(e))?;
                w.changed().await;
                return Ok(());
            }
            Err(e) => return Err(self.fail(e)),
        };
        if stat.pzxid.max(0) as u64 > since {
            return Ok(());
        }
        let head = self
            .listing(queue, &children, stat.pzxid, None)
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
            Ok(_) => self.shared.heard_at(sent, self.timeout),
            Err(e) => {
                let _ = self.fail(e);
            }
        }
        Ok(*self.state.borrow())
    }

    /// Deletes the exact node (its name is unique to one attempt); gone is fine.
    ///
    /// Cancel safety: a dropped call may still delete.
    async fn delete(&self, node: &Node) -> Result<()> {
        let client = self.client()?;
        match client.delete(&self.path(&node.key), None).await {
            Ok(()) | Err(ZkError::NoNode) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// A `multi`: a check of the guard node, then the writes.
    ///
    /// Cancel safety: the batch is applied entirely or not at all.
    async fn guarded(&self, guard: &Node, ops: &[Op]) -> Result<()> {
        let client = self.client()?;
        let guard_path = self.path(&guard.key);
        // ZooKeeper's multi cannot "create or update": look first, and try again if
        // someone else changed a key in between.
        for _ in 0..5 {
            let mut plan = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Put { key, value } => {
                        let path = self.path(key);
                        let exists = if path == guard_path {
                            true
                        } else {
                            let exists = client
                                .check_stat(&path)
                                .await
                                .map_err(|e| self.fail(e))?
                                .is_some();
                            if !exists {
                                if let Some((parent, _)) = path.rsplit_once('/') {
                                    match client.mkdir(parent, &container()).await {
                                        Ok(()) | Err(ZkError::NodeExists) => {}
                                        Err(e) => return Err(self.fail(e)),
                                    }
                                }
                            }
                            exists
                        };
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
            let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
            let mut multi = client.new_multi_writer();
            let add = (|| -> std::result::Result<(), ZkError> {
                multi.add_check_version(&guard_path, -1)?;
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
                Err(zookeeper_client::MultiWriteError::OperationFailed { index: 0, .. }) => {
                    return Err(Error::LockLost(LossReason::NodeDeleted))
                }
                Err(zookeeper_client::MultiWriteError::OperationFailed {
                    source: ZkError::NodeExists | ZkError::NoNode,
                    ..
                }) => continue, // raced with another writer: look again
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
        let client = self.client()?;
        match client.get_data(&self.path(key)).await {
            Ok((data, stat)) => {
                self.saw(key, stat.mzxid);
                Ok(Some(data))
            }
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Cancel safety: a dropped call may still create the key.
    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>> {
        let client = self.client()?;
        let path = self.path(key);
        if let Some((parent, _)) = path.rsplit_once('/') {
            match client.mkdir(parent, &container()).await {
                Ok(()) | Err(ZkError::NodeExists) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
        match client.create(&path, value, &opts).await {
            Ok(_) => Ok(None),
            Err(ZkError::NodeExists) => match client.get_data(&path).await {
                Ok((data, _)) => Ok(Some(data)),
                Err(e) => Err(self.fail(e)),
            },
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Closes the ZooKeeper session: its ephemeral nodes go at once.
    ///
    /// Cancel safety: safe; the session closes when the client is dropped.
    async fn close(&self) -> Result<()> {
        let client = self.client.lock().unwrap_or_else(|p| p.into_inner()).take();
        for t in &self.tasks {
            t.abort();
        }
        if let Some(c) = client {
            let mut watcher = c.state_watcher();
            drop(c);
            // Wait for the close to reach the server, so the nodes are gone on return.
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if matches!(
                        watcher.changed().await,
                        zookeeper_client::SessionState::Closed
                            | zookeeper_client::SessionState::Expired
                    ) {
                        break;
                    }
                }
            })
            .await;
        }
        self.shared.set(SessionState::Lost);
        Ok(())
    }
}

impl ZkSession {
    /// Used by `rel` in tests of key mapping.
    #[allow(dead_code)]
    fn rel_key<'a>(&self, abs: &'a str) -> &'a str {
        self.rel(abs)
    }
}
