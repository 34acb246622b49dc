//! A session: a key with a PX TTL, renewed by the script, and every contract operation.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use queuelock_core::{
    Ahead, Created, Error, Listing, LossReason, Node, NodeKind, NodeSpec, Op, Result, Session,
    SessionId, SessionState, SessionStatus, Turn,
};
use redis::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Inner;

/// The last segment of the key that stands for a plain `SET NX` lock on the queue's name.
pub(crate) const PLAIN: &str = "=plain";

/// What a key names.
pub(crate) enum Target<'a> {
    /// A queue node: queue, attempt id.
    Node(&'a str, &'a str),
    /// The plain lock of another tool on a queue's name.
    Plain(&'a str),
    /// A plain value.
    Value(&'a str),
}

/// `<queue>/<kind tag>-<uuid>` is a node, `<queue>/=plain` the plain lock, anything else a
/// value.
pub(crate) fn target(key: &str) -> Target<'_> {
    if let Some((queue, last)) = key.rsplit_once('/') {
        if last == PLAIN {
            return Target::Plain(queue);
        }
        if let Some((tag, id)) = last.split_once('-') {
            let known = NodeKind::from_tag(tag) != NodeKind::Unknown || tag == "node";
            if known && uuid::Uuid::try_parse(id).is_ok() {
                return Target::Node(queue, id);
            }
        }
    }
    Target::Value(key)
}

pub(crate) struct RedisSession {
    inner: Arc<Inner>,
    sid: u64,
    ttl: Duration,
    status: Arc<SessionStatus>,
    state: watch::Receiver<SessionState>,
    keepalive: JoinHandle<()>,
    /// Request number: creates and deletes carry it, so a create sent before the delete
    /// of its node (arriving late on an old connection) is refused by the script.
    requests: std::sync::atomic::AtomicU64,
    /// Ids of the nodes this session created (a wake-up on one of them is not a waiter's).
    own: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl fmt::Debug for RedisSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSession")
            .field("id", &format_args!("{:x}", self.sid))
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Drop for RedisSession {
    fn drop(&mut self) {
        self.keepalive.abort();
        if self.status.get() != SessionState::Lost {
            let inner = self.inner.clone();
            let sid = self.hex();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = inner.call("close", &[sid.as_bytes()], None).await;
                });
            }
        }
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(&bytes(v)).into_owned()
}

fn malformed(what: &str) -> Error {
    Error::Backend {
        backend: "redis",
        message: format!("unexpected answer from the queuelock script: {what}"),
        source: None,
    }
}

/// A listing from the script's `read` answer: `{revision, foreign, id, token, kind, ...}`.
fn listing(queue: &str, v: &[Value]) -> Result<Listing> {
    let revision = v
        .first()
        .and_then(int)
        .ok_or_else(|| malformed("revision"))?;
    let mut nodes = Vec::new();
    if let Some(Value::Array(f)) = v.get(1) {
        if !f.is_empty() {
            nodes.push(Node {
                key: format!("{queue}/{PLAIN}"),
                sequence: 0,
                token: 0,
                kind: NodeKind::Unknown,
            });
        }
    }
    for n in v.get(2..).unwrap_or_default().chunks(3) {
        let [id, token, kind] = n else {
            return Err(malformed("node triple"));
        };
        let token = int(token).ok_or_else(|| malformed("token"))? as u64;
        let kind = NodeKind::from_tag(&text(kind));
        nodes.push(Node {
            key: format!("{queue}/{}-{}", kind.tag(), text(id)),
            sequence: token,
            token,
            kind,
        });
    }
    Ok(Listing {
        nodes,
        revision: revision.max(0) as u64,
    })
}

/// The script's code for an [`Ahead`]; `None` for a rule it does not know (then the turn
/// is answered from a full listing).
fn ahead_code(ahead: Ahead) -> Option<&'static str> {
    match ahead {
        Ahead::Predecessor => Some("p"),
        Ahead::NearestNonReader => Some("r"),
        Ahead::Nothing => Some("n"),
        _ => None,
    }
}

/// A turn from the script's answer `{revision, rank, foreign, [id, token, kind]}`, and the
/// number of nodes ahead of ours (`rank`, plus a plain lock of someone else).
fn turn(queue: &str, v: &[Value]) -> Result<(Turn, usize)> {
    let revision = v
        .first()
        .and_then(int)
        .ok_or_else(|| malformed("revision"))?;
    let rank = v.get(1).and_then(int).unwrap_or(0).max(0) as usize;
    let foreign = matches!(v.get(2), Some(Value::Array(f)) if !f.is_empty());
    let blocker = match v.get(3..6) {
        Some([id, token, kind]) => {
            let id = text(id);
            Some(if id.is_empty() {
                Node {
                    key: format!("{queue}/{PLAIN}"),
                    sequence: 0,
                    token: 0,
                    kind: NodeKind::Unknown,
                }
            } else {
                let token = int(token).ok_or_else(|| malformed("token"))? as u64;
                let kind = NodeKind::from_tag(&text(kind));
                Node {
                    key: format!("{queue}/{}-{id}", kind.tag()),
                    sequence: token,
                    token,
                    kind,
                }
            })
        }
        _ => None,
    };
    Ok((
        // `last` stays unknown (false): a plain SET NX lock can stand ahead of any node.
        Turn::new(blocker, revision.max(0) as u64),
        rank + usize::from(foreign),
    ))
}

impl RedisSession {
    pub(crate) async fn open(inner: Arc<Inner>, ttl: Duration) -> Result<Self> {
        let ttl = ttl.max(Duration::from_millis(100));
        let ms = ttl.as_millis().to_string();
        let (sid, sent) = loop {
            let sid: u64 = rand_id();
            let sent = Instant::now();
            let hex = format!("{sid:x}");
            let v = inner
                .call("open", &[hex.as_bytes(), ms.as_bytes()], None)
                .await?;
            if int(&v) == Some(1) {
                break (sid, sent);
            }
        };
        let status = Arc::new(SessionStatus::with_deadline(sent + ttl));
        let state = status.subscribe();
        let keepalive = tokio::spawn(keepalive(
            inner.clone(),
            format!("{sid:x}"),
            ttl,
            status.clone(),
        ));
        tracing::debug!(
            session = format_args!("{sid:x}"),
            ?ttl,
            "Redis session opened"
        );
        Ok(RedisSession {
            inner,
            sid,
            ttl,
            status,
            state,
            keepalive,
            own: Default::default(),
            requests: std::sync::atomic::AtomicU64::new(1),
        })
    }

    fn request(&self) -> u64 {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn hex(&self) -> String {
        format!("{:x}", self.sid)
    }

    fn expired(&self) -> Error {
        Error::SessionExpired(SessionId(self.sid))
    }

    fn live(&self) -> Result<()> {
        if self.status.get() == SessionState::Lost {
            return Err(self.expired());
        }
        Ok(())
    }

    fn ttl_ms(&self) -> String {
        self.ttl.as_millis().to_string()
    }

    /// Maps the script's own error replies (`QLEXPIRED`, `QLLOST`, ...).
    fn script_error(&self, e: Error) -> Error {
        let text = e.to_string();
        if text.contains("QLEXPIRED") {
            self.status.set(SessionState::Lost);
            self.expired()
        } else if text.contains("QLLOST") || text.contains("QLABANDONED") {
            Error::LockLost(LossReason::NodeDeleted)
        } else if text.contains("QLCONFLICT") {
            Error::Conflict {
                key: "attempt id".into(),
                message: "the attempt's id belongs to another session's node".into(),
            }
        } else {
            e
        }
    }

    async fn call(&self, op: &str, args: &[&[u8]], queue: Option<&str>) -> Result<Value> {
        self.live()?;
        self.inner
            .call(op, args, queue)
            .await
            .map_err(|e| self.script_error(e))
    }

    /// Whether the node / plain lock behind `key` exists, and for how long it surely will
    /// unless deleted: `None` = gone, `Some(ms)` = re-check after that long at the latest.
    async fn check(&self, key: &str) -> Result<Option<Duration>> {
        let (op, q, id) = match target(key) {
            Target::Node(q, id) => ("state", q, id),
            Target::Plain(q) => ("plain", q, ""),
            Target::Value(_) => {
                return Ok(self.get(key).await?.map(|_| Duration::from_millis(100)));
            }
        };
        let v = self
            .call(op, &[q.as_bytes(), id.as_bytes()], Some(q))
            .await?;
        let pttl = int(&v).ok_or_else(|| malformed("pttl"))?;
        Ok(match (op, pttl) {
            (_, -2) => None,
            // A plain lock is not ours to be told about: poll it.
            ("plain", -1) => Some(Duration::from_millis(100)),
            ("plain", ms) => Some(Duration::from_millis(ms.clamp(1, 100) as u64)),
            (_, ms) if ms < 0 => Some(self.ttl),
            (_, ms) => Some(Duration::from_millis(ms as u64 + 2)),
        })
    }

    /// Subscribe first, then check, then wait for the message, the timer, a reconnect or
    /// our own loss; re-check after a timer or reconnect.
    async fn wait_gone(&self, key: &str, channel: Option<String>) -> Result<()> {
        let mut generation = self.inner.watcher.generation();
        let sub = match &channel {
            Some(ch) => Some(
                self.inner
                    .watcher
                    .subscribe(ch, self.inner.op_timeout)
                    .await?,
            ),
            None => None,
        };
        let mut messages = sub.as_ref().map(|s| s.messages.clone());
        let mut state = self.state.clone();
        loop {
            generation.borrow_and_update();
            let Some(wait) = self.check(key).await? else {
                return Ok(());
            };
            let message = async {
                match messages.as_mut() {
                    Some(m) => m.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = message => {
                    if got {
                        if let Target::Node(_, id) = target(key) {
                            let own = self.own.lock().unwrap_or_else(|p| p.into_inner());
                            if !own.contains(id) {
                                self.inner.woken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = generation.changed() => {}
                _ = state.wait_for(|s| *s == SessionState::Lost) => return Err(self.expired()),
            }
        }
    }
}

fn rand_id() -> u64 {
    let u = uuid::Uuid::new_v4().as_u64_pair().0;
    u | 1
}

/// Renews the session key every TTL/3 through the script (which refuses once the key has
/// expired: then the session is lost); suspended while renewals fail, lost once the
/// client-side deadline (send time of the last acknowledged renewal + TTL) has passed.
async fn keepalive(inner: Arc<Inner>, sid: String, ttl: Duration, status: Arc<SessionStatus>) {
    let ms = ttl.as_millis().to_string();
    let every = ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        let r = tokio::time::timeout(
            every.max(Duration::from_millis(50)),
            inner.call("renew", &[sid.as_bytes(), ms.as_bytes()], None),
        )
        .await;
        match r {
            Ok(Ok(v)) if int(&v) == Some(1) => {
                status.renew(sent + ttl);
                if status.deadline().is_some_and(|d| d > Instant::now()) {
                    status.set(SessionState::Live);
                }
            }
            Ok(Ok(_)) => {
                tracing::debug!(session = %sid, "Redis session expired on the server");
                status.set(SessionState::Lost);
                return;
            }
            Ok(Err(e)) if !e.is_retryable() => {
                tracing::warn!(session = %sid, error = %e, "Redis session renewal refused");
                status.set(SessionState::Suspended);
            }
            _ => status.set(SessionState::Suspended),
        }
        if status.deadline().is_some_and(|d| d <= Instant::now()) {
            tracing::debug!(session = %sid, "Redis session deadline passed without renewal");
            status.set(SessionState::Lost);
            return;
        }
    }
}

#[async_trait]
impl Session for RedisSession {
    fn id(&self) -> SessionId {
        SessionId(self.sid)
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    fn valid_until(&self) -> Option<Instant> {
        self.status.deadline()
    }

    /// Cancel safety: safe.
    async fn probe(&self) -> Result<SessionState> {
        let v = self.call("alive", &[self.hex().as_bytes()], None).await?;
        if int(&v) != Some(1) {
            self.status.set(SessionState::Lost);
        }
        Ok(self.status.get())
    }

    /// Cancel safety: a dropped call may still create the node; `abandon` removes it.
    async fn create_sequential(&self, spec: &NodeSpec) -> Result<Created> {
        let id = spec.id.hyphenated().to_string();
        let sid = self.hex();
        let ttl = self.ttl_ms();
        let code = ahead_code(spec.ahead).unwrap_or("p");
        let n = self.request().to_string();
        let v = self
            .call(
                "create",
                &[
                    sid.as_bytes(),
                    ttl.as_bytes(),
                    spec.queue.as_bytes(),
                    id.as_bytes(),
                    spec.kind.tag().as_bytes(),
                    &spec.payload,
                    code.as_bytes(),
                    n.as_bytes(),
                ],
                Some(&spec.queue),
            )
            .await?;
        let Value::Array(v) = v else {
            return Err(malformed("create"));
        };
        let token = v.first().and_then(int).ok_or_else(|| malformed("token"))? as u64;
        let (mut turn, rank) = turn(&spec.queue, v.get(1..).unwrap_or_default())?;
        let key = format!("{}/{}-{id}", spec.queue, spec.kind.tag());
        {
            let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
            if own.len() > 100_000 {
                own.clear(); // only the wake-up count of tests depends on it
            }
            own.insert(id);
        }
        let node = Node {
            key,
            sequence: token,
            token,
            kind: spec.kind,
        };
        if ahead_code(spec.ahead).is_none() {
            turn = self.turn(&spec.queue, &node, spec.ahead).await?;
        }
        Ok(Created {
            node,
            turn,
            ahead: Some(rank),
        })
    }

    /// Cancel safety: safe; call again to finish.
    async fn abandon(&self, spec: &NodeSpec) -> Result<()> {
        let id = spec.id.hyphenated().to_string();
        let sid = self.hex();
        match self
            .inner
            .call(
                "abandon",
                &[sid.as_bytes(), spec.queue.as_bytes(), id.as_bytes()],
                Some(&spec.queue),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.script_error(e)),
        }
    }

    /// Cancel safety: safe (its only writes purge dead sessions' nodes and keep the plain
    /// lock's marker).
    async fn list(&self, queue: &str) -> Result<Listing> {
        let ttl = self.ttl_ms();
        let v = self
            .call("list", &[ttl.as_bytes(), queue.as_bytes()], Some(queue))
            .await?;
        let Value::Array(v) = v else {
            return Err(malformed("list"));
        };
        listing(queue, &v)
    }

    /// One script: our node (same token), then `ZREVRANGEBYSCORE (mine -inf LIMIT o 16`
    /// pages until the first live node `ahead` selects (dead sessions' nodes purged on the
    /// way), and the plain lock of another tool when nothing of ours is ahead.
    ///
    /// Cancel safety: safe (its only writes purge dead sessions' nodes and keep the plain
    /// lock's marker).
    async fn turn(&self, queue: &str, me: &Node, ahead: Ahead) -> Result<Turn> {
        let Some(code) = ahead_code(ahead) else {
            return self.list(queue).await?.turn(&me.key, ahead);
        };
        let Target::Node(q, id) = target(&me.key) else {
            return Err(Error::LockLost(LossReason::NodeDeleted));
        };
        if q != queue {
            return Err(Error::LockLost(LossReason::NodeDeleted));
        }
        let (ttl, token) = (self.ttl_ms(), me.token.to_string());
        let v = self
            .call(
                "turn",
                &[
                    ttl.as_bytes(),
                    q.as_bytes(),
                    id.as_bytes(),
                    code.as_bytes(),
                    token.as_bytes(),
                ],
                Some(q),
            )
            .await?;
        let Value::Array(v) = v else {
            return Err(malformed("turn"));
        };
        Ok(turn(queue, &v)?.0)
    }

    /// Cancel safety: safe; dropping it cancels the subscription.
    async fn deleted(&self, key: &str, _since: u64) -> Result<()> {
        let channel = match target(key) {
            Target::Node(q, id) => Some(format!("{}:{{{q}}}:d:{id}", self.inner.prefix)),
            _ => None,
        };
        self.wait_gone(key, channel).await
    }

    /// Cancel safety: safe; dropping it cancels the subscription.
    async fn queue_changed(&self, queue: &str, since: u64) -> Result<()> {
        let channel = format!("{}:{{{queue}}}:c", self.inner.prefix);
        let mut generation = self.inner.watcher.generation();
        let sub = self
            .inner
            .watcher
            .subscribe(&channel, self.inner.op_timeout)
            .await?;
        let mut messages = sub.messages.clone();
        let mut state = self.state.clone();
        loop {
            generation.borrow_and_update();
            let v = self
                .call("version", &[queue.as_bytes()], Some(queue))
                .await?;
            if int(&v).unwrap_or(0).max(0) as u64 != since {
                return Ok(());
            }
            tokio::select! {
                r = messages.changed() => if r.is_ok() { return Ok(()) },
                _ = generation.changed() => {}
                _ = state.wait_for(|s| *s == SessionState::Lost) => return Err(self.expired()),
            }
        }
    }

    /// Cancel safety: a dropped call may still delete; call again to be sure.
    async fn delete(&self, node: &Node) -> Result<()> {
        let Target::Node(q, id) = target(&node.key) else {
            return Err(Error::Config(format!(
                "{:?} is not a queuelock node on Redis",
                node.key
            )));
        };
        let (token, sid, n) = (
            node.token.to_string(),
            self.hex(),
            self.request().to_string(),
        );
        self.inner
            .call(
                "delete",
                &[
                    q.as_bytes(),
                    id.as_bytes(),
                    token.as_bytes(),
                    sid.as_bytes(),
                    n.as_bytes(),
                ],
                Some(q),
            )
            .await?;
        Ok(())
    }

    /// Cancel safety: a dropped call may or may not have applied the whole batch.
    async fn guarded(&self, guard: &Node, ops: &[Op]) -> Result<()> {
        let Target::Node(q, id) = target(&guard.key) else {
            return Err(Error::LockLost(LossReason::NodeDeleted));
        };
        let token = guard.token.to_string();
        let mut owned: Vec<Vec<u8>> = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value } if *key == guard.key => {
                    owned.extend([b"own".to_vec(), value.clone(), Vec::new()]);
                }
                Op::Put { key, value } => {
                    owned.extend([
                        b"put".to_vec(),
                        self.value_key(key)?.into_bytes(),
                        value.clone(),
                    ]);
                }
                Op::Delete { key } => {
                    owned.extend([
                        b"del".to_vec(),
                        self.value_key(key)?.into_bytes(),
                        Vec::new(),
                    ]);
                }
                other => {
                    return Err(Error::Config(format!(
                        "unsupported guarded write {other:?}"
                    )));
                }
            }
        }
        let mut args: Vec<&[u8]> = vec![q.as_bytes(), id.as_bytes(), token.as_bytes()];
        args.extend(owned.iter().map(Vec::as_slice));
        self.call("guarded", &args, Some(q)).await?;
        Ok(())
    }

    /// One script step: the request beside the node (going with it) and its message.
    /// A plain `SET NX` lock of another tool cannot be asked: `NotSupported`.
    ///
    /// Cancel safety: a dropped call may still leave the request.
    async fn request_revoke(&self, holder: &Node) -> Result<bool> {
        let Target::Node(q, id) = target(&holder.key) else {
            return Err(Error::NotSupported {
                operation: "request_revoke of a plain Redis lock",
            });
        };
        let token = holder.token.to_string();
        let v = self
            .call(
                "revoke",
                &[q.as_bytes(), id.as_bytes(), token.as_bytes()],
                Some(q),
            )
            .await?;
        Ok(int(&v) == Some(1))
    }

    /// Subscribe to the node's revocation channel first, then check; check again after a
    /// reconnect (pub/sub is not replayed) or the node's own deletion message.
    ///
    /// Cancel safety: safe; dropping it cancels the subscriptions.
    async fn revoke_requested(&self, node: &Node) -> Result<()> {
        let Target::Node(q, id) = target(&node.key) else {
            return Err(Error::LockLost(LossReason::NodeDeleted));
        };
        let token = node.token.to_string();
        let mut generation = self.inner.watcher.generation();
        let channel = |what: &str| format!("{}:{{{q}}}:{what}:{id}", self.inner.prefix);
        let timeout = self.inner.op_timeout;
        // Held while waiting: dropping a subscription unsubscribes.
        let asked_sub = self.inner.watcher.subscribe(&channel("r"), timeout).await?;
        let gone_sub = self.inner.watcher.subscribe(&channel("d"), timeout).await?;
        let (mut asked, mut gone) = (asked_sub.messages.clone(), gone_sub.messages.clone());
        let mut state = self.state.clone();
        loop {
            generation.borrow_and_update();
            let v = self
                .call(
                    "revoked",
                    &[q.as_bytes(), id.as_bytes(), token.as_bytes()],
                    Some(q),
                )
                .await?;
            match int(&v) {
                Some(1) => return Ok(()),
                Some(0) => {}
                _ => return Err(Error::LockLost(LossReason::NodeDeleted)),
            }
            tokio::select! {
                _ = asked.changed() => {}
                _ = gone.changed() => {}
                _ = generation.changed() => {}
                _ = state.wait_for(|s| *s == SessionState::Lost) => return Err(self.expired()),
            }
        }
    }

    /// Cancel safety: safe (read only, but for purging a dead session's node).
    async fn read_node(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        match target(key) {
            Target::Node(q, id) => {
                let v = self
                    .call("node", &[q.as_bytes(), id.as_bytes()], Some(q))
                    .await?;
                match v {
                    Value::Array(v) if v.len() == 2 => {
                        let token = int(&v[1]).ok_or_else(|| malformed("token"))? as u64;
                        Ok(Some((bytes(&v[0]), token)))
                    }
                    _ => Ok(None),
                }
            }
            Target::Plain(q) => {
                let v: Option<Vec<u8>> = self.inner.get(&self.inner.plain_key(q)).await?;
                Ok(v.map(|v| (v, 0)))
            }
            Target::Value(_) => Ok(None),
        }
    }

    /// Cancel safety: safe (read only).
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match target(key) {
            Target::Node(..) | Target::Plain(_) => {
                Ok(self.read_node(key).await?.map(|(payload, _)| payload))
            }
            Target::Value(k) => self.inner.get(&self.value_key(k)?).await,
        }
    }

    /// Cancel safety: a dropped call may still create the key.
    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>> {
        self.live()?;
        let key = self.value_key(key)?;
        self.inner.put_if_absent(&key, value).await
    }

    /// Cancel safety: a dropped call may or may not have closed the session; dropping
    /// the last handle closes it in the background.
    async fn close(&self) -> Result<()> {
        if self.status.get() == SessionState::Lost {
            return Ok(());
        }
        self.keepalive.abort();
        let sid = self.hex();
        let r = self.inner.call("close", &[sid.as_bytes()], None).await;
        self.status.set(SessionState::Lost);
        r.map(|_| ())
    }
}

impl RedisSession {
    /// The Redis key of a plain value (`P:k:<key>`).
    fn value_key(&self, key: &str) -> Result<String> {
        if key.is_empty() || key.contains(['{', '}', '\n']) {
            return Err(Error::Config(format!("invalid key {key:?} for Redis")));
        }
        Ok(format!("{}:k:{key}", self.inner.prefix))
    }
}
