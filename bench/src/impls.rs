//! The implementations measured in-process: queuelock itself (on every store), `etcd-client`'s server-side
//! lock and `zookeeper-client`'s `LockClient`, plus the raw-operation floors.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::scenario::{time_loop, timed_tasks, BResult, Factory, Held, Locker, PerEntity};

/// The session TTL every implementation uses (etcd lease TTL, ZooKeeper session timeout).
pub const TTL: Duration = Duration::from_secs(15);

/// The members of a comma-separated endpoint list (`scripts/bench --cluster`).
pub fn members(endpoint: &str) -> Vec<&str> {
    endpoint.split(',').collect()
}

/// queuelock on etcd, ZooKeeper, PostgreSQL or Redis.
pub struct QueueLock {
    url: String,
    backend: String,
    shared: queuelock::Client,
    /// On PostgreSQL, the shared backend itself: its LISTEN connection counts the
    /// NOTIFYs it receives (the herd's notifications; PostgreSQL counts none itself).
    pg: Option<queuelock_postgres::PgBackend>,
    clients: StdMutex<Vec<queuelock::Client>>,
    /// Release by dropping the guard (the deletion runs in the background, unawaited),
    /// as `zookeeper-client`'s `LockClient` releases: the like-for-like row for it.
    by_drop: bool,
}

impl QueueLock {
    /// [`QueueLock::new`], releasing by drop.
    pub async fn new_by_drop(backend: &str, endpoint: &str) -> BResult<Self> {
        let mut q = Self::new(backend, endpoint).await?;
        q.by_drop = true;
        Ok(q)
    }

    /// `backend` is `etcd`, `zookeeper`, `postgres` or `redis`; `endpoint` is `host:port`
    /// (a comma-separated member list on etcd and ZooKeeper).
    pub async fn new(backend: &str, endpoint: &str) -> BResult<Self> {
        let url = match backend {
            "etcd" => format!("etcd://{endpoint}/queuelock-bench?ttl=15s"),
            "zookeeper" => format!("zk://{endpoint}/queuelock-bench?ttl=15s"),
            "postgres" => format!("{}?ttl=15s", crate::stores::pg_url(endpoint)),
            "redis" => format!("redis://{endpoint}/0?prefix=queuelock-bench&ttl=15s"),
            other => return Err(format!("queuelock: unknown backend {other}").into()),
        };
        let mut shared = queuelock::Client::connect(&url).await?;
        let mut pg = None;
        if backend == "postgres" {
            // The same backend the URL makes (default schema and options), but kept by
            // its own type for `notifications_received`.
            let config: queuelock_postgres::PgConfig = crate::stores::pg_url(endpoint).parse()?;
            let b = queuelock_postgres::PgBackend::connect(
                config,
                queuelock_postgres::PgOptions::default(),
            )
            .await?;
            let options = shared.options().clone();
            shared.close().await?;
            shared = queuelock::Client::new(Arc::new(b.clone()), options);
            pg = Some(b);
        }
        Ok(QueueLock {
            url,
            backend: backend.to_owned(),
            shared,
            pg,
            clients: StdMutex::new(Vec::new()),
            by_drop: false,
        })
    }

    fn keep(&self, client: queuelock::Client) -> Arc<dyn Locker> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(client.clone());
        Arc::new(QlLocker(client, self.by_drop))
    }
}

#[async_trait]
impl Factory for QueueLock {
    async fn connect(&self) -> BResult<Arc<dyn Locker>> {
        Ok(self.keep(queuelock::Client::connect(&self.url).await?))
    }

    /// A client with its own session on the shared backend (etcd: one gRPC channel and
    /// watch stream; ZooKeeper: every session is its own connection anyway; PostgreSQL:
    /// one LISTEN connection and a pool of two; Redis: one command and one pub/sub
    /// connection).
    async fn connect_shared(&self) -> BResult<Arc<dyn Locker>> {
        let client =
            queuelock::Client::new(self.shared.backend().clone(), self.shared.options().clone());
        Ok(self.keep(client))
    }

    fn sharing(&self, own: bool) -> &'static str {
        match (own, self.backend.as_str()) {
            (false, "etcd") => "one gRPC channel for all; a queuelock Client (lease, keep-alive stream) per waiter",
            (true, "etcd") => "a Client::connect (own gRPC channel, lease, keep-alive stream) per waiter",
            (false, "zookeeper") => "a queuelock Client on the shared Backend per waiter: each its own ZooKeeper session, so its own connection",
            (true, "zookeeper") => "a Client::connect (own Backend, ZooKeeper session and connection) per waiter",
            (false, "postgres") => "one PgBackend for all (a LISTEN connection + 2 request connections); a queuelock Client (session row, keep-alive) per waiter",
            (true, "postgres") => "a Client::connect (own PgBackend: 3 connections) per waiter",
            (false, _) => "one RedisBackend for all (a multiplexed command connection + a pub/sub connection); a queuelock Client (session key, renewals) per waiter",
            (true, _) => "a Client::connect (own RedisBackend and its connections) per waiter",
        }
    }

    fn client_wakeups(&self) -> Option<u64> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        Some(clients.iter().map(|c| c.stats().wakeups).sum())
    }

    fn notifications_received(&self) -> Option<u64> {
        self.pg.as_ref().map(|b| b.notifications_received())
    }
}

struct QlLocker(queuelock::Client, bool);

#[async_trait]
impl Locker for QlLocker {
    async fn lock(&self, name: &str) -> BResult<Box<dyn Held>> {
        let guard = self.0.mutex(name)?.lock().await?;
        Ok(if self.1 {
            Box::new(DroppedOnRelease(guard))
        } else {
            Box::new(guard)
        })
    }
    async fn close(&self) -> BResult<()> {
        Ok(self.0.close().await?)
    }
}

/// A guard released by dropping it: `Drop` deletes the node in the background.
struct DroppedOnRelease(#[allow(dead_code)] queuelock::MutexGuard);

#[async_trait]
impl Held for DroppedOnRelease {
    async fn release(self: Box<Self>) -> BResult<()> {
        drop(self);
        Ok(())
    }
}

#[async_trait]
impl Held for queuelock::MutexGuard {
    async fn release(self: Box<Self>) -> BResult<()> {
        Ok((*self).release().await?)
    }
}

/// `etcd-client`'s `lock()`/`unlock()` (etcd's server-side lock service, v3lock) with a
/// lease kept alive by the client.
pub struct EtcdClientLock {
    endpoint: String,
    shared: etcd_client::Client,
}

impl EtcdClientLock {
    /// Connects the shared channel.
    pub async fn new(endpoint: &str) -> BResult<Self> {
        Ok(EtcdClientLock {
            endpoint: endpoint.to_owned(),
            shared: etcd_client::Client::connect(members(endpoint), None).await?,
        })
    }

    async fn session(client: etcd_client::Client) -> BResult<Arc<dyn Locker>> {
        let mut c = client.clone();
        let lease = c.lease_grant(TTL.as_secs() as i64, None).await?.id();
        let (mut keeper, mut responses) = c.lease_keep_alive(lease).await?;
        let keep_alive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(TTL / 3).await;
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match responses.message().await {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        });
        Ok(Arc::new(EtcdLocker {
            client,
            lease,
            keep_alive,
        }))
    }
}

#[async_trait]
impl Factory for EtcdClientLock {
    async fn connect(&self) -> BResult<Arc<dyn Locker>> {
        Self::session(etcd_client::Client::connect(members(&self.endpoint), None).await?).await
    }
    async fn connect_shared(&self) -> BResult<Arc<dyn Locker>> {
        Self::session(self.shared.clone()).await
    }
    fn sharing(&self, own: bool) -> &'static str {
        if own {
            "a client (gRPC channel) and a lease with its keep-alive stream per waiter"
        } else {
            "one gRPC channel for all; a lease with its keep-alive stream per waiter"
        }
    }
}

struct EtcdLocker {
    client: etcd_client::Client,
    lease: i64,
    keep_alive: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl Locker for EtcdLocker {
    async fn lock(&self, name: &str) -> BResult<Box<dyn Held>> {
        let mut c = self.client.clone();
        let opts = etcd_client::LockOptions::new().with_lease(self.lease);
        let key = c.lock(name, Some(opts)).await?.key().to_vec();
        Ok(Box::new(EtcdHeld { client: c, key }))
    }
    async fn close(&self) -> BResult<()> {
        self.keep_alive.abort();
        self.client.clone().lease_revoke(self.lease).await?;
        Ok(())
    }
}

struct EtcdHeld {
    client: etcd_client::Client,
    key: Vec<u8>,
}

#[async_trait]
impl Held for EtcdHeld {
    async fn release(mut self: Box<Self>) -> BResult<()> {
        self.client.unlock(self.key.clone()).await?;
        Ok(())
    }
}

/// `zookeeper-client`'s own `Client::lock` (`LockClient`), with Curator's node naming.
pub struct ZkClientLock {
    endpoint: String,
}

impl ZkClientLock {
    /// Connects per session (ZooKeeper has one session per connection).
    pub fn new(endpoint: &str) -> Self {
        ZkClientLock {
            endpoint: endpoint.to_owned(),
        }
    }
}

/// Connects a `zookeeper-client` session with the common TTL.
pub async fn zk_connect(endpoint: &str) -> BResult<zookeeper_client::Client> {
    Ok(zookeeper_client::Client::connector()
        .with_session_timeout(TTL)
        .connect(endpoint)
        .await?)
}

#[async_trait]
impl Factory for ZkClientLock {
    async fn connect(&self) -> BResult<Arc<dyn Locker>> {
        Ok(Arc::new(ZkLocker(zk_connect(&self.endpoint).await?)))
    }
    fn sharing(&self, _own: bool) -> &'static str {
        "a zookeeper-client Client (ZooKeeper session, own connection) per waiter"
    }
}

struct ZkLocker(zookeeper_client::Client);

#[async_trait]
impl Locker for ZkLocker {
    async fn lock(&self, name: &str) -> BResult<Box<dyn Held>> {
        use zookeeper_client::{Acls, CreateMode, LockOptions, LockPrefix};
        let dir = format!("/zkclient-bench/{name}");
        let prefix = LockPrefix::new_curator(&dir, "lock-")?;
        let options = LockOptions::new(Acls::anyone_all())
            .with_ancestor_options(CreateMode::Persistent.with_acls(Acls::anyone_all()))?;
        let lock = self.0.lock(prefix, b"", options).await?;
        Ok(Box::new(ZkHeld {
            _lock: lock.into_owned(),
        }))
    }
    async fn close(&self) -> BResult<()> {
        // Dropping the last handle closes the session.
        Ok(())
    }
}

/// Holds the lock while it lives.
struct ZkHeld {
    _lock: zookeeper_client::OwnedLockClient,
}

#[async_trait]
impl Held for ZkHeld {
    /// `LockClient` releases by being dropped: the delete runs in the background.
    async fn release(self: Box<Self>) -> BResult<()> {
        drop(self);
        Ok(())
    }
}

/// The etcd floor's unit: put `key` with `lease`, then delete it.
async fn etcd_pair(mut c: etcd_client::Client, lease: i64, key: String) -> BResult<()> {
    let opts = etcd_client::PutOptions::new().with_lease(lease);
    c.put(key.as_str(), "", Some(opts)).await?;
    c.delete(key.as_str(), None).await?;
    Ok(())
}

/// Scenario 1, etcd: put-with-lease + delete, the writes a lock needs, timed as a pair.
pub async fn etcd_floor(endpoint: &str, iterations: usize) -> BResult<Value> {
    let mut client = etcd_client::Client::connect(members(endpoint), None).await?;
    let lease = client.lease_grant(TTL.as_secs() as i64, None).await?.id();
    let key = format!("floor-{}", std::process::id());
    let mut out = time_loop(iterations, || etcd_pair(client.clone(), lease, key.clone())).await?;
    client.lease_revoke(lease).await?;
    out["scenario"] = json!("floor");
    out["operations"] = json!("put-with-lease + delete");
    Ok(out)
}

/// Scenario 1, ZooKeeper: create-ephemeral + delete, timed as a pair.
pub async fn zk_floor(endpoint: &str, iterations: usize) -> BResult<Value> {
    use zookeeper_client::{Acls, CreateMode};
    let client = zk_connect(endpoint).await?;
    let path = format!("/floor-{}", std::process::id());
    let opts = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    let mut out = time_loop(iterations, || {
        let (client, path, opts) = (&client, path.clone(), opts.clone());
        async move {
            client.create(&path, b"", &opts).await?;
            client.delete(&path, None).await?;
            Ok(())
        }
    })
    .await?;
    out["scenario"] = json!("floor");
    out["operations"] = json!("create-ephemeral + delete");
    Ok(out)
}

/// The per-entity floor, etcd: `shape.tasks` tasks over `shape.clients` clients (a lease
/// each), each looping put-with-lease + delete of its own key: the raw writes of a lock
/// at the scenario's concurrency, without any lock's reads, watches or queue.
pub async fn etcd_floor_concurrent(endpoint: &str, shape: PerEntity) -> BResult<Value> {
    let pid = std::process::id();
    let mut out = etcd_tasks(endpoint, shape, move |c, lease, task, _| {
        etcd_pair(c, lease, format!("floor-{pid}-{task}"))
    })
    .await?;
    out["operations"] = json!("put-with-lease + delete");
    Ok(out)
}

/// `shape.tasks` tasks over `shape.clients` etcd clients with a lease each, looping `op`
/// (client, lease, task, random pick) for the row's seconds; revokes the leases after.
async fn etcd_tasks<F, Fut>(endpoint: &str, shape: PerEntity, op: F) -> BResult<Value>
where
    F: Fn(etcd_client::Client, i64, usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = BResult<()>> + Send,
{
    let mut clients = Vec::with_capacity(shape.clients);
    for _ in 0..shape.clients {
        let mut c = etcd_client::Client::connect(members(endpoint), None).await?;
        let lease = c.lease_grant(TTL.as_secs() as i64, None).await?.id();
        clients.push((c, lease));
    }
    let clients = Arc::new(clients);
    let cs = clients.clone();
    let (elapsed, done, samples) = timed_tasks(shape.tasks, shape.seconds, move |task, pick| {
        let (c, lease) = cs[task % cs.len()].clone();
        op(c, lease, task, pick)
    })
    .await?;
    for (c, lease) in clients.iter() {
        c.clone().lease_revoke(*lease).await?;
    }
    Ok(shape.result(elapsed, done, samples))
}

/// The per-entity floor, ZooKeeper: `shape.tasks` tasks over `shape.clients` sessions,
/// each looping create-ephemeral + delete of its own node.
pub async fn zk_floor_concurrent(endpoint: &str, shape: PerEntity) -> BResult<Value> {
    use zookeeper_client::{Acls, CreateMode};
    let mut clients = Vec::with_capacity(shape.clients);
    for _ in 0..shape.clients {
        clients.push(zk_connect(endpoint).await?);
    }
    let clients = Arc::new(clients);
    let pid = std::process::id();
    let cs = clients.clone();
    let (elapsed, pairs, samples) = timed_tasks(shape.tasks, shape.seconds, move |task, _| {
        let c = cs[task % cs.len()].clone();
        let path = format!("/floor-{pid}-{task}");
        async move {
            let opts = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
            c.create(&path, b"", &opts).await?;
            c.delete(&path, None).await?;
            Ok(())
        }
    })
    .await?;
    let mut out = shape.result(elapsed, pairs, samples);
    out["operations"] = json!("create-ephemeral + delete");
    Ok(out)
}

/// queuelock's own ZooKeeper requests, raw: a sequential ephemeral create in a container
/// with the children read sent behind it (one round trip), then the delete. Beside the
/// floor, it shows what an uncontended lock + release costs the server beyond a write
/// pair (the children read), apart from what the client adds.
pub async fn zk_floor_queue(endpoint: &str, iterations: usize) -> BResult<Value> {
    use zookeeper_client::{Acls, CreateMode};
    let client = zk_connect(endpoint).await?;
    let dir = format!("/floorq-{}", std::process::id());
    let _ = client
        .create(
            &dir,
            b"",
            &CreateMode::Container.with_acls(Acls::anyone_all()),
        )
        .await;
    let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let prefix = format!("{dir}/n-");
    let mut out = time_loop(iterations, || {
        let (client, prefix, opts, dir) = (&client, prefix.clone(), opts.clone(), dir.clone());
        async move {
            let c = client.create(&prefix, b"somepayload-of-about-100-bytes", &opts);
            let l = client.get_children(&dir);
            let (c, l) = tokio::join!(c, l);
            l?;
            let (_, seq) = c?;
            client.delete(&format!("{prefix}{seq}"), None).await?;
            Ok(())
        }
    })
    .await?;
    // A row of its own in the uncontended line, beside queuelock.
    out["scenario"] = json!("uncontended");
    out["operations"] = json!("queuelock's create + children read and delete, raw");
    Ok(out)
}

/// queuelock's etcd requests for one uncontended lock + release, raw: the create
/// transaction (compares on the key and the attempt's tombstone, put with lease, the
/// newest keys of the directory) and the plain delete of the session's own key.
async fn etcd_queue_cycle(
    mut kv: etcd_client::KvClient,
    lease: i64,
    key: String,
    dir: String,
    tomb: String,
) -> BResult<()> {
    use etcd_client::{
        Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    };
    let newest = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(3);
    let create = Txn::new()
        .when([
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            // queuelock's tombstone of an abandoned attempt.
            Compare::create_revision(tomb.as_str(), CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put(
                key.as_str(),
                "a payload of about the size of queuelock's holder metadata",
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::get(dir.as_str(), Some(newest)),
        ]);
    kv.txn(create).await?;
    kv.delete(key.as_str(), None).await?;
    Ok(())
}

/// queuelock's own etcd requests, raw: [`etcd_queue_cycle`] in a loop.
pub async fn etcd_floor_queue(endpoint: &str, iterations: usize) -> BResult<Value> {
    let mut client = etcd_client::Client::connect(members(endpoint), None).await?;
    let lease = client.lease_grant(TTL.as_secs() as i64, None).await?.id();
    let dir = format!("floorq-{}/", std::process::id());
    let key = format!("{dir}{lease:x}-m-0");
    let tomb = format!("floorq-abandoned/{lease:x}");
    let mut out = time_loop(iterations, || {
        etcd_queue_cycle(
            client.kv_client(),
            lease,
            key.clone(),
            dir.clone(),
            tomb.clone(),
        )
    })
    .await?;
    client.lease_revoke(lease).await?;
    out["scenario"] = json!("uncontended");
    out["operations"] = json!("queuelock's create transaction and delete, raw");
    Ok(out)
}

/// queuelock's own etcd requests at the per-entity row's concurrency, raw: each task's
/// create transaction (as [`etcd_floor_queue`]'s) on a random name's directory, then the
/// plain delete. Between it and the per-entity floor is what the store charges for the
/// lock's requests; between it and queuelock, what the library adds.
pub async fn etcd_floor_queue_concurrent(endpoint: &str, shape: PerEntity) -> BResult<Value> {
    let pid = std::process::id();
    let mut out = etcd_tasks(endpoint, shape, move |c, lease, task, pick| {
        let dir = format!("floorq-{pid}/e{}/", pick % shape.names);
        // A key per task: two tasks of one client on the same name take two slots.
        let key = format!("{dir}{lease:x}-m-{task}");
        let tomb = format!("floorq-abandoned/{lease:x}-{task}");
        etcd_queue_cycle(c.kv_client(), lease, key, dir, tomb)
    })
    .await?;
    out["operations"] = json!("queuelock's create transaction and delete, raw");
    Ok(out)
}

/// queuelock's own ZooKeeper requests at the per-entity row's concurrency, raw: each
/// task's sequential ephemeral create in a random name's container with the children
/// read behind it (one round trip; a missing container is made in the retry's round
/// trip, as queuelock does), then the delete.
pub async fn zk_floor_queue_concurrent(endpoint: &str, shape: PerEntity) -> BResult<Value> {
    use zookeeper_client::{Acls, CreateMode};
    let mut clients = Vec::with_capacity(shape.clients);
    for _ in 0..shape.clients {
        clients.push(zk_connect(endpoint).await?);
    }
    let root = format!("/floorq-{}", std::process::id());
    clients[0]
        .create(
            &root,
            b"",
            &CreateMode::Persistent.with_acls(Acls::anyone_all()),
        )
        .await?;
    let clients = Arc::new(clients);
    let cs = clients.clone();
    let r = root.clone();
    let (elapsed, grants, samples) = timed_tasks(shape.tasks, shape.seconds, move |task, pick| {
        let c = cs[task % cs.len()].clone();
        let dir = format!("{r}/e{}", pick % shape.names);
        async move {
            let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
            let prefix = format!("{dir}/n-");
            let payload = b"somepayload-of-about-100-bytes";
            let (created, listed) =
                tokio::join!(c.create(&prefix, payload, &opts), c.get_children(&dir));
            let seq = match created {
                Ok((_, seq)) => {
                    listed?;
                    seq
                }
                Err(zookeeper_client::Error::NoNode) => {
                    // The container, then the retry, in one round trip (as queuelock).
                    let container = CreateMode::Container.with_acls(Acls::anyone_all());
                    let (made, created, listed) = tokio::join!(
                        c.create(&dir, b"", &container),
                        c.create(&prefix, payload, &opts),
                        c.get_children(&dir)
                    );
                    match made {
                        Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
                        Err(e) => return Err(e.into()),
                    }
                    listed?;
                    created?.1
                }
                Err(e) => return Err(e.into()),
            };
            c.delete(&format!("{prefix}{seq}"), None).await?;
            Ok(())
        }
    })
    .await?;
    let mut out = shape.result(elapsed, grants, samples);
    out["operations"] = json!("queuelock's create + children read and delete, raw");
    Ok(out)
}
