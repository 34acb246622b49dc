//! A session: one etcd lease, kept alive in the background, and every contract operation.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use queuelock_core::{
    Created, Error, Listing, LossReason, Node, NodeSpec, Op, Result, Session, SessionId,
    SessionState, SessionStatus,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::map_error;
use crate::keys::parse_kind;
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
        let tasks = vec![
            tokio::spawn(keep_alive(inner.client.clone(), lease, ttl, shared.clone())),
            tokio::spawn(watchdog(shared.clone())),
        ];
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

    /// Waits on a key watch for the key's deletion, or this session's loss.
    async fn until_deleted(&self, reg: &mut crate::watch::Registration) -> Result<()> {
        let mut state = self.state.clone();
        loop {
            let ev = tokio::select! {
                ev = reg.next() => ev,
                _ = state.wait_for(|s| *s == SessionState::Lost) => return Err(self.expired()),
            };
            match ev {
                Event::Delete => return Ok(()),
                Event::Put => continue,
                Event::Broken => return Err(Error::connection("etcd watch broke")),
            }
        }
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

    /// The queue's direct children in `create_revision` order.
    fn listing(&self, queue: &str, kvs: &[etcd_client::KeyValue], revision: i64) -> Listing {
        let dir = self.inner.keys.queue_dir(queue);
        let mut nodes: Vec<Node> = kvs
            .iter()
            .filter_map(|kv| {
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
            })
            .collect();
        nodes.sort_by_key(|n| n.sequence);
        Listing {
            nodes,
            revision: revision as u64,
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

/// Keeps the lease alive at TTL/3, always draining the responses. Suspended while
/// keep-alives fail; Lost when the server says the lease is gone.
async fn keep_alive(
    mut client: etcd_client::Client,
    lease: i64,
    ttl: Duration,
    shared: Arc<SessionStatus>,
) {
    let period = ttl / 3;
    loop {
        let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "etcd keep-alive stream failed");
                shared.set(SessionState::Suspended);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                shared.set(SessionState::Suspended);
                break;
            }
            match tokio::time::timeout(period, responses.message()).await {
                Ok(Ok(Some(r))) if r.ttl() <= 0 => {
                    tracing::warn!(lease = format_args!("{lease:x}"), "etcd lease expired");
                    shared.set(SessionState::Lost);
                    return;
                }
                Ok(Ok(Some(r))) => {
                    shared.renew(sent + Duration::from_secs(r.ttl() as u64));
                    shared.set(SessionState::Live);
                }
                _ => {
                    shared.set(SessionState::Suspended);
                    break;
                }
            }
            tokio::time::sleep_until((sent + period).into()).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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
    /// reads the queue in either branch.
    ///
    /// Cancel safety: a dropped call may have created the key; `abandon` removes it.
    async fn create_sequential(&self, spec: &NodeSpec) -> Result<Created> {
        self.check()?;
        let key = self.inner.keys.node(self.lease, spec);
        let tomb = self.inner.keys.tombstone(self.lease, spec);
        let dir = self.inner.keys.queue_dir(&spec.queue);
        let read = || {
            TxnOp::get(
                dir.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
        };
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
                read(),
            ])
            .or_else([read()]);
        let resp = self.kv().txn(txn).await.map_err(|e| self.fail(e))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        self.listing(&spec.queue, &get_response(&resp), revision)
            .created(self.inner.keys.rel(&key))
    }

    /// Deletes the attempt's key and leaves a lease-bound tombstone that makes a create
    /// for the attempt still in flight fail.
    ///
    /// Cancel safety: safe.
    async fn abandon(&self, spec: &NodeSpec) -> Result<()> {
        self.check()?;
        let key = self.inner.keys.node(self.lease, spec);
        let tomb = self.inner.keys.tombstone(self.lease, spec);
        let txn = Txn::new().and_then([
            TxnOp::put(
                tomb,
                Vec::new(),
                Some(PutOptions::new().with_lease(self.lease)),
            ),
            TxnOp::delete(key, None),
        ]);
        self.kv().txn(txn).await.map_err(|e| self.fail(e))?;
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

    /// Opens the watch at the current revision (the fast path of etcd 3.4), then reads
    /// the key unless nothing at all was written since `since`.
    ///
    /// Cancel safety: safe; dropping it cancels the watch.
    async fn deleted(&self, key: &str, since: u64) -> Result<()> {
        self.check()?;
        let abs = self.inner.keys.abs(key);
        let mut reg = self.inner.watches.watch(abs.clone(), false, 0).await?;
        if since == 0 || reg.revision as u64 != since {
            let resp = self
                .kv()
                .get(abs, Some(GetOptions::new().with_count_only()))
                .await
                .map_err(|e| self.fail(e))?;
            if resp.count() == 0 {
                return Ok(());
            }
        }
        self.until_deleted(&mut reg).await
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
        self.until_deleted(&mut reg).await
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

    /// Cancel safety: a dropped call may still delete; call again to be sure.
    async fn delete(&self, node: &Node) -> Result<()> {
        self.check()?;
        let abs = self.inner.keys.abs(&node.key);
        let txn = Txn::new()
            .when([Compare::create_revision(
                abs.clone(),
                CompareOp::Equal,
                node.token as i64,
            )])
            .and_then([TxnOp::delete(abs, None)]);
        self.kv().txn(txn).await.map_err(|e| self.fail(e))?;
        Ok(())
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
