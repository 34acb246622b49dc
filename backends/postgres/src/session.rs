//! A session: one row of `sessions`, kept alive in the background, and every contract
//! operation on it.

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use queuelock_core::{
    Ahead, Created, Error, Listing, LossReason, Node, NodeKind, NodeSpec, Op, Result, Session,
    SessionId, SessionState, SessionStatus, Turn,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::conn::{Conn, Listener};
use crate::error::{has_code, map_error};
use crate::Inner;

/// One session row.
pub(crate) struct PgSession {
    inner: Arc<Inner>,
    id: i64,
    ttl: Duration,
    status: Arc<SessionStatus>,
    state: watch::Receiver<SessionState>,
    closed: Arc<AtomicBool>,
    keepalive: JoinHandle<()>,
}

impl fmt::Debug for PgSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSession")
            .field("id", &format_args!("{:x}", self.id))
            .field("state", &*self.state.borrow())
            .finish()
    }
}

/// Deletes the session row (its nodes go by cascade). Best effort.
async fn delete_row(inner: &Inner, id: i64) -> Result<()> {
    let c = inner.pool.get(inner).await?;
    c.client
        .execute(&c.st.close, &[&id])
        .await
        .map_err(map_error)?;
    Ok(())
}

/// Keeps the row alive every TTL/3; `Suspended` while keep-alives go unanswered or fail,
/// `Lost` once the server says the session expired or the client-side deadline passed.
async fn keepalive(inner: Arc<Inner>, id: i64, ttl: Duration, status: Arc<SessionStatus>) {
    let period = ttl / 3;
    loop {
        let sent = Instant::now();
        let deadline = status.deadline().unwrap_or(sent);
        let attempt = async {
            let c = inner.pool.get(&inner).await?;
            // The reap rides in the same round trip, as a statement (transaction) of its
            // own; its outcome does not matter to this session.
            let args: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let (kept, _reaped) = futures::join!(
                c.client.query_one(&c.st.keepalive, &args),
                c.client.execute(&c.st.reap, &[])
            );
            Ok::<bool, Error>(kept.map_err(map_error)?.get(0))
        };
        tokio::pin!(attempt);
        let answer = tokio::select! {
            r = &mut attempt => Some(r),
            _ = tokio::time::sleep(period) => None,
        };
        let answer = match answer {
            Some(r) => r,
            None => {
                status.set(SessionState::Suspended);
                tokio::select! {
                    r = &mut attempt => r,
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        Err(Error::Timeout(ttl))
                    }
                }
            }
        };
        match answer {
            Ok(true) => {
                status.renew(sent + ttl);
                if Instant::now() < status.deadline().unwrap_or(sent) {
                    status.set(SessionState::Live);
                }
                let next = sent + period;
                tokio::time::sleep_until(next.into()).await;
            }
            Ok(false) => {
                tracing::debug!(
                    session = format_args!("{id:x}"),
                    "PostgreSQL session expired"
                );
                status.set(SessionState::Lost);
                return;
            }
            Err(e) => {
                if Instant::now() >= status.deadline().unwrap_or(sent) {
                    tracing::debug!(session = format_args!("{id:x}"), error = %e,
                        "PostgreSQL session past its TTL without a keep-alive");
                    status.set(SessionState::Lost);
                    // Its row expires on the server by now (or soon): remove it early.
                    let _ = tokio::time::timeout(ttl, delete_row(&inner, id)).await;
                    return;
                }
                status.set(SessionState::Suspended);
                tokio::time::sleep(Duration::from_millis(100).min(period)).await;
            }
        }
    }
}

impl PgSession {
    pub(crate) async fn open(inner: Arc<Inner>, ttl: Duration) -> Result<Self> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        if ttl_ms < 100 {
            return Err(Error::Config(format!("session TTL {ttl:?} is below 100ms")));
        }
        let sent = Instant::now();
        let c = inner.pool.get(&inner).await?;
        let row = c
            .client
            .query_one(&c.st.open_session, &[&ttl_ms])
            .await
            .map_err(map_error)?;
        let id: i64 = row.get(0);
        let status = Arc::new(SessionStatus::with_deadline(sent + ttl));
        let state = status.subscribe();
        let keepalive = tokio::spawn(keepalive(inner.clone(), id, ttl, status.clone()));
        tracing::debug!(
            session = format_args!("{id:x}"),
            ?ttl,
            "PostgreSQL session opened"
        );
        Ok(PgSession {
            inner,
            id,
            ttl,
            status,
            state,
            closed: Arc::new(AtomicBool::new(false)),
            keepalive,
        })
    }

    fn expired(&self) -> Error {
        Error::SessionExpired(SessionId(self.id as u64))
    }

    /// A request connection, unless the session is lost.
    async fn conn(&self) -> Result<Arc<Conn>> {
        if *self.state.borrow() == SessionState::Lost {
            return Err(self.expired());
        }
        self.inner.pool.get(&self.inner).await
    }

    fn fail(&self, e: tokio_postgres::Error) -> Error {
        if has_code(&e, "QL003") {
            self.status.set(SessionState::Lost);
            return self.expired();
        }
        map_error(e)
    }

    /// Runs `op` unless the session is lost first.
    async fn until_lost<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let mut state = self.state.clone();
        tokio::select! {
            r = op => r,
            _ = state.wait_for(|s| *s == SessionState::Lost) => Err(self.expired()),
        }
    }

    async fn listing(&self, c: &Conn, queue: &str) -> Result<Listing> {
        let rows = c
            .client
            .query(&c.st.list, &[&queue])
            .await
            .map_err(|e| self.fail(e))?;
        Ok(listing(rows))
    }
}

/// A listing from rows `(key, seq, kind, pver)`. Its revision is a 64-bit digest of the
/// queue's last sequence, size and payload versions: any join, leave or payload change
/// gives another revision (tokens are never reused, so a join always raises the last
/// sequence). Revisions are compared for equality only ([`Session::queue_changed`]).
fn listing(rows: Vec<tokio_postgres::Row>) -> Listing {
    let mut pvers = 0i64;
    let nodes: Vec<Node> = rows
        .iter()
        .map(|r| {
            let seq: i64 = r.get(1);
            pvers = pvers.wrapping_add(r.get::<_, i64>(3));
            Node {
                key: r.get(0),
                sequence: seq as u64,
                token: seq as u64,
                kind: NodeKind::from_tag(r.get(2)),
            }
        })
        .collect();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (nodes.last().map(|n| n.sequence), nodes.len(), pvers).hash(&mut h);
    Listing {
        nodes,
        revision: h.finish() | 1,
    }
}

/// The arguments of the waiter's read for a rule: the kinds it does not wait for, and
/// whether it waits for nothing at all.
fn rule(ahead: Ahead) -> (Vec<&'static str>, bool) {
    let all = [
        NodeKind::Lock,
        NodeKind::Read,
        NodeKind::Write,
        NodeKind::Latch,
        NodeKind::Permit,
        NodeKind::Unknown,
    ];
    let skipped = all
        .into_iter()
        .filter(|k| !ahead.selects(*k))
        .map(NodeKind::tag)
        .collect::<Vec<_>>();
    let nothing = skipped.len() == all.len();
    (skipped, nothing)
}

/// Our node and the waiter's read from a row of the turn statements (see `turn_sql`).
fn turn_row(r: &tokio_postgres::Row, kind: NodeKind) -> (Node, Turn, usize) {
    let seq: i64 = r.get(1);
    let me = Node {
        key: r.get(0),
        sequence: seq as u64,
        token: seq as u64,
        kind,
    };
    let blocker = r.get::<_, Option<String>>(2).map(|key| {
        let bseq: i64 = r.get(3);
        Node {
            key,
            sequence: bseq as u64,
            token: bseq as u64,
            kind: NodeKind::from_tag(r.get(4)),
        }
    });
    let ahead: i64 = r.get(5);
    // The revision is not needed by `deleted` (which LISTENs before it reads); our token
    // is a point in the store's history at which our node existed. A blocker that is the
    // only node ahead is the last one we wait for.
    let turn = Turn::new(blocker, seq as u64).with_last(ahead == 1);
    (me, turn, ahead as usize)
}

impl Drop for PgSession {
    fn drop(&mut self) {
        self.keepalive.abort();
        self.status.set(SessionState::Lost);
        if !self.closed.swap(true, Ordering::SeqCst) {
            let (inner, id) = (self.inner.clone(), self.id);
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), delete_row(&inner, id)).await;
                });
            }
        }
    }
}

#[async_trait]
impl Session for PgSession {
    fn id(&self) -> SessionId {
        SessionId(self.id as u64)
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

    /// Asks the server whether the session row exists and has not expired.
    ///
    /// Cancel safety: safe (read only).
    async fn probe(&self) -> Result<SessionState> {
        let c = self.conn().await?;
        let row = c
            .client
            .query_opt(&c.st.probe, &[&self.id])
            .await
            .map_err(|e| self.fail(e))?;
        if !row.is_some_and(|r| r.get::<_, bool>(0)) {
            self.status.set(SessionState::Lost);
        }
        Ok(*self.state.borrow())
    }

    /// The create and the waiter's read are sent back to back on one connection (which
    /// runs them in order): one round trip.
    ///
    /// Cancel safety: a dropped call may have created the node; `abandon` removes it.
    async fn create_sequential(&self, spec: &NodeSpec) -> Result<Created> {
        let c = self.conn().await?;
        self.until_lost(async {
            let kind = spec.kind.tag();
            let create_args: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&self.id, &spec.queue, &kind, &spec.id, &spec.payload];
            let (skipped, nothing) = rule(spec.ahead);
            let turn_args: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&spec.id, &skipped, &nothing];
            let create = c.client.query_one(&c.st.create, &create_args);
            let turn = c.client.query_opt(&c.st.created, &turn_args);
            let (created, row) = futures::join!(create, turn);
            let created = created.map_err(|e| {
                if has_code(&e, "QL002") {
                    Error::LockLost(queuelock_core::LossReason::NodeDeleted)
                } else if has_code(&e, "QL001") {
                    Error::Conflict {
                        key: spec.queue.clone(),
                        message: format!("attempt {} belongs to another session", spec.id),
                    }
                } else {
                    self.fail(e)
                }
            })?;
            let _ = created;
            // No row: our node was deleted between the create and the read.
            let row = row
                .map_err(|e| self.fail(e))?
                .ok_or(Error::LockLost(LossReason::NodeDeleted))?;
            let (node, turn, ahead) = turn_row(&row, spec.kind);
            Ok(Created {
                node,
                turn,
                ahead: Some(ahead),
            })
        })
        .await
    }

    /// Leaves a tombstone for the attempt and deletes its node, under the queue's row
    /// lock (so a create still in flight either landed before, and is deleted, or fails).
    ///
    /// Cancel safety: safe; call again to finish.
    async fn abandon(&self, spec: &NodeSpec) -> Result<()> {
        let c = self.conn().await?;
        self.until_lost(async {
            c.client
                .execute(&c.st.abandon, &[&self.id, &spec.queue, &spec.id])
                .await
                .map_err(|e| self.fail(e))?;
            Ok(())
        })
        .await
    }

    /// Cancel safety: safe (read only).
    async fn list(&self, queue: &str) -> Result<Listing> {
        let c = self.conn().await?;
        self.listing(&c, queue).await
    }

    /// One statement: our node, and the nearest earlier node the rule selects (an index
    /// range read backwards from our sequence, `LIMIT 1`).
    ///
    /// Cancel safety: safe (read only).
    async fn turn(&self, queue: &str, me: &Node, ahead: Ahead) -> Result<Turn> {
        let _ = queue; // our node's row names its queue
        let c = self.conn().await?;
        let (skipped, nothing) = rule(ahead);
        let row = c
            .client
            .query_opt(&c.st.turn, &[&me.key, &skipped, &nothing])
            .await
            .map_err(|e| self.fail(e))?
            .ok_or(Error::LockLost(LossReason::NodeDeleted))?;
        Ok(turn_row(&row, me.kind).1)
    }

    /// LISTEN on the key's channel, then read the node, then wait for its deletion's
    /// notification, or for its session's expiry (then reap and read again).
    ///
    /// Cancel safety: safe; dropping it ends the subscription.
    async fn deleted(&self, key: &str, _since: u64) -> Result<()> {
        self.until_lost(async {
            loop {
                let mut sub = Listener::subscribe(&self.inner, "k", key).await?;
                let c = self.conn().await?;
                let row = c
                    .client
                    .query_opt(&c.st.node, &[&key])
                    .await
                    .map_err(|e| self.fail(e))?;
                let Some(row) = row else { return Ok(()) };
                let ms: i64 = row.get(0);
                let expiry = Duration::from_millis(ms.max(0) as u64 + 5);
                tokio::select! {
                    r = sub.changed() => r?,
                    _ = tokio::time::sleep(expiry) => {
                        // Nothing on the server expires the row: whoever notices reaps.
                        c.client.execute(&c.st.reap, &[]).await.map_err(|e| self.fail(e))?;
                    }
                }
            }
        })
        .await
    }

    /// LISTEN on the queue's channel, then compare the queue's revision with `since`.
    ///
    /// Cancel safety: safe.
    async fn queue_changed(&self, queue: &str, since: u64) -> Result<()> {
        self.until_lost(async {
            let mut sub = Listener::subscribe(&self.inner, "q", queue).await?;
            let c = self.conn().await?;
            if since == 0 || self.listing(&c, queue).await?.revision != since {
                return Ok(());
            }
            sub.changed().await
        })
        .await
    }

    /// Cancel safety: a dropped call may still delete; call again to be sure.
    async fn delete(&self, node: &Node) -> Result<()> {
        let c = self.conn().await?;
        c.client
            .execute(&c.st.delete, &[&node.key, &(node.token as i64)])
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// One function call: share-locks the guard's row, then writes.
    ///
    /// Cancel safety: the call is one transaction: applied entirely or not at all.
    async fn guarded(&self, guard: &Node, ops: &[Op]) -> Result<()> {
        let mut keys = Vec::with_capacity(ops.len());
        let mut values: Vec<&[u8]> = Vec::with_capacity(ops.len());
        let mut deletes = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    keys.push(key.as_str());
                    values.push(value);
                    deletes.push(false);
                }
                Op::Delete { key } => {
                    keys.push(key.as_str());
                    values.push(&[]);
                    deletes.push(true);
                }
                _ => {
                    return Err(Error::NotSupported {
                        operation: "this guarded write operation",
                    })
                }
            }
        }
        let c = self.conn().await?;
        self.until_lost(async {
            c.client
                .execute(
                    &c.st.guarded,
                    &[&guard.key, &(guard.token as i64), &keys, &values, &deletes],
                )
                .await
                .map_err(|e| self.fail(e))?;
            Ok(())
        })
        .await
    }

    /// One function call: the request row (going with the node) and its notification.
    ///
    /// Cancel safety: a dropped call may still leave the request.
    async fn request_revoke(&self, holder: &Node) -> Result<bool> {
        let c = self.conn().await?;
        let sql = format!("SELECT {}.request_revoke($1, $2)", self.inner.schema);
        let row = c
            .client
            .query_one(&sql, &[&holder.key, &(holder.token as i64)])
            .await
            .map_err(|e| self.fail(e))?;
        Ok(row.get(0))
    }

    /// LISTEN on the node's revocation and deletion channels, then read the node and its
    /// request.
    ///
    /// Cancel safety: safe; dropping it ends the subscription.
    async fn revoke_requested(&self, node: &Node) -> Result<()> {
        let sql = format!(
            "SELECT r.seq IS NOT NULL FROM {s}.nodes n LEFT JOIN {s}.revocations r \
             ON r.key = n.key AND r.seq = n.seq WHERE n.key = $1 AND n.seq = $2",
            s = self.inner.schema
        );
        self.until_lost(async {
            let mut sub = Listener::subscribe(&self.inner, "r", &node.key).await?;
            // The node's deletion too, which ends the wait.
            let mut gone = Listener::subscribe(&self.inner, "k", &node.key).await?;
            loop {
                let c = self.conn().await?;
                let row = c
                    .client
                    .query_opt(&sql, &[&node.key, &(node.token as i64)])
                    .await
                    .map_err(|e| self.fail(e))?;
                match row {
                    None => return Err(Error::LockLost(LossReason::NodeDeleted)),
                    Some(r) if r.get::<_, bool>(0) => return Ok(()),
                    Some(_) => tokio::select! {
                        r = sub.changed() => r?,
                        r = gone.changed() => r?,
                    },
                }
            }
        })
        .await
    }

    /// Cancel safety: safe (read only).
    async fn read_node(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
        let c = self.conn().await?;
        let row = c
            .client
            .query_opt(&c.st.read_node, &[&key])
            .await
            .map_err(|e| self.fail(e))?;
        Ok(row.map(|r| (r.get(0), r.get::<_, i64>(1) as u64)))
    }

    /// Cancel safety: safe (read only).
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let c = self.conn().await?;
        let row = c
            .client
            .query_opt(&c.st.get, &[&key])
            .await
            .map_err(|e| self.fail(e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Cancel safety: a dropped call may still create the key.
    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>> {
        let c = self.conn().await?;
        let row = c
            .client
            .query_one(&c.st.put_if_absent, &[&key, &value])
            .await
            .map_err(|e| self.fail(e))?;
        if row.get::<_, bool>(0) {
            return Ok(None);
        }
        if let Some(v) = row.get::<_, Option<Vec<u8>>>(1) {
            return Ok(Some(v));
        }
        // The conflicting row was committed after this statement's snapshot was taken:
        // a new statement sees it.
        let row = c
            .client
            .query_opt(&c.st.get, &[&key])
            .await
            .map_err(|e| self.fail(e))?;
        row.map(|r| Some(r.get(0)))
            .ok_or_else(|| Error::connection("put_if_absent: the key vanished; retry"))
    }

    /// Deletes the session row; its nodes go by cascade (each deletion notifies).
    ///
    /// Cancel safety: a dropped call may or may not have deleted the row; dropping the
    /// last handle deletes it in the background.
    async fn close(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            self.status.set(SessionState::Lost);
            return Ok(());
        }
        self.keepalive.abort();
        let r = delete_row(&self.inner, self.id).await;
        if r.is_ok() {
            self.closed.store(true, Ordering::SeqCst);
        }
        self.status.set(SessionState::Lost);
        r
    }
}
