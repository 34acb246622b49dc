//! The PostgreSQL and Redis implementations measured in-process: `pg_advisory_lock`
//! (session level) and the raw-operation floors of both stores (PostgreSQL: INSERT +
//! DELETE of one row; Redis: `SET NX PX` + `DEL`), from the same client crates the
//! queuelock backends use (tokio-postgres, redis).

use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::impls::TTL;
use crate::scenario::{time_loop, timed_tasks, BResult, Factory, Held, Locker, PerEntity};

/// The URL of the bench's PostgreSQL at `endpoint` (`host:port`): the cluster's superuser,
/// which `scripts/lib/postgres.sh` lets in over loopback without a password.
pub fn pg_url(endpoint: &str) -> String {
    format!("postgres://postgres@{endpoint}/postgres")
}

/// A tokio-postgres connection to the bench's server; its connection task runs in the
/// background until the client is dropped.
pub async fn pg_connect(endpoint: &str) -> BResult<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&pg_url(endpoint), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("postgres connection ended: {e}");
        }
    });
    Ok(client)
}

/// `pg_advisory_lock` on a 64-bit hash of the name (`hashtextextended`), released by
/// `pg_advisory_unlock`. A session-level advisory lock belongs to the connection that took
/// it (and is re-entrant on it), and a connection waiting in `pg_advisory_lock` runs
/// nothing else: so each "client" is a small pool, as sqlx's `PgAdvisoryLock` uses one,
/// and every lock call in flight holds a pooled connection of its own until its release
/// (a contender, a herd waiter, a per-entity task: a connection each).
pub struct PgAdvisory {
    endpoint: String,
}

impl PgAdvisory {
    /// Connects per contender.
    pub fn new(endpoint: &str) -> Self {
        PgAdvisory {
            endpoint: endpoint.to_owned(),
        }
    }
}

#[async_trait]
impl Factory for PgAdvisory {
    async fn connect(&self) -> BResult<Arc<dyn Locker>> {
        let pool = Arc::new(AdvisoryPool {
            endpoint: self.endpoint.clone(),
            free: StdMutex::new(Vec::new()),
        });
        // One connection opened up front (a contender's session exists before it locks).
        let first = AdvisoryConn::open(&self.endpoint).await?;
        pool.put(first);
        Ok(Arc::new(PgAdvisoryLocker(pool)))
    }
    fn sharing(&self, _own: bool) -> &'static str {
        "a tokio-postgres connection (server process) per waiter: a session-level advisory lock belongs to one connection"
    }
}

/// One connection with its two prepared statements.
struct AdvisoryConn {
    client: tokio_postgres::Client,
    lock: tokio_postgres::Statement,
    unlock: tokio_postgres::Statement,
}

impl AdvisoryConn {
    async fn open(endpoint: &str) -> BResult<Self> {
        let client = pg_connect(endpoint).await?;
        let lock = client
            .prepare("SELECT pg_advisory_lock(hashtextextended($1, 0))")
            .await?;
        let unlock = client
            .prepare("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .await?;
        Ok(AdvisoryConn {
            client,
            lock,
            unlock,
        })
    }
}

/// A client's connections not holding or waiting for a lock.
struct AdvisoryPool {
    endpoint: String,
    free: StdMutex<Vec<AdvisoryConn>>,
}

impl AdvisoryPool {
    fn put(&self, c: AdvisoryConn) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }
    async fn take(&self) -> BResult<AdvisoryConn> {
        let free = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match free {
            Some(c) => Ok(c),
            None => AdvisoryConn::open(&self.endpoint).await,
        }
    }
}

struct PgAdvisoryLocker(Arc<AdvisoryPool>);

#[async_trait]
impl Locker for PgAdvisoryLocker {
    async fn lock(&self, name: &str) -> BResult<Box<dyn Held>> {
        let conn = self.0.take().await?;
        conn.client.execute(&conn.lock, &[&name]).await?;
        Ok(Box::new(PgAdvisoryHeld {
            pool: self.0.clone(),
            conn: Some(conn),
            name: name.to_owned(),
        }))
    }
    async fn close(&self) -> BResult<()> {
        // Connections end (and the server releases what they held) when dropped.
        self.0
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }
}

struct PgAdvisoryHeld {
    pool: Arc<AdvisoryPool>,
    conn: Option<AdvisoryConn>,
    name: String,
}

#[async_trait]
impl Held for PgAdvisoryHeld {
    async fn release(mut self: Box<Self>) -> BResult<()> {
        let conn = self.conn.take().ok_or("released twice")?;
        let row = conn.client.query_one(&conn.unlock, &[&self.name]).await?;
        if !row.get::<_, bool>(0) {
            return Err(format!("pg_advisory_unlock({:?}) found no lock held", self.name).into());
        }
        self.pool.put(conn);
        Ok(())
    }
}

const PG_FLOOR_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS queuelock_bench_floor (k text PRIMARY KEY)";
const PG_FLOOR_OPS: &str = "INSERT + DELETE of one row (two autocommit transactions)";

/// The PostgreSQL floor's unit: insert the row `key`, then delete it (each its own
/// transaction, each a commit the server fsyncs, as a lock's acquire and release are).
async fn pg_pair(
    c: &tokio_postgres::Client,
    ins: &tokio_postgres::Statement,
    del: &tokio_postgres::Statement,
    key: &str,
) -> BResult<()> {
    c.execute(ins, &[&key]).await?;
    c.execute(del, &[&key]).await?;
    Ok(())
}

async fn pg_floor_client(
    endpoint: &str,
) -> BResult<(
    tokio_postgres::Client,
    tokio_postgres::Statement,
    tokio_postgres::Statement,
)> {
    let c = pg_connect(endpoint).await?;
    let ins = c
        .prepare("INSERT INTO queuelock_bench_floor (k) VALUES ($1)")
        .await?;
    let del = c
        .prepare("DELETE FROM queuelock_bench_floor WHERE k = $1")
        .await?;
    Ok((c, ins, del))
}

/// Scenario 1, PostgreSQL: INSERT + DELETE of one row, timed as a pair.
pub async fn pg_floor(endpoint: &str, iterations: usize) -> BResult<Value> {
    pg_connect(endpoint)
        .await?
        .batch_execute(PG_FLOOR_TABLE)
        .await?;
    let (c, ins, del) = pg_floor_client(endpoint).await?;
    let key = format!("floor-{}", std::process::id());
    let mut out = time_loop(iterations, || pg_pair(&c, &ins, &del, &key)).await?;
    out["scenario"] = json!("floor");
    out["operations"] = json!(PG_FLOOR_OPS);
    Ok(out)
}

/// The per-entity floor, PostgreSQL: `shape.tasks` tasks over `shape.clients`
/// connections (tokio-postgres pipelines the tasks sharing one), each looping INSERT +
/// DELETE of its own row.
pub async fn pg_floor_concurrent(endpoint: &str, shape: PerEntity) -> BResult<Value> {
    pg_connect(endpoint)
        .await?
        .batch_execute(PG_FLOOR_TABLE)
        .await?;
    let mut clients = Vec::with_capacity(shape.clients);
    for _ in 0..shape.clients {
        clients.push(Arc::new(pg_floor_client(endpoint).await?));
    }
    let clients = Arc::new(clients);
    let pid = std::process::id();
    let (elapsed, pairs, samples) = timed_tasks(shape.tasks, shape.seconds, move |task, _| {
        let c = clients[task % clients.len()].clone();
        async move { pg_pair(&c.0, &c.1, &c.2, &format!("floor-{pid}-{task}")).await }
    })
    .await?;
    let mut out = shape.result(elapsed, pairs, samples);
    out["operations"] = json!(PG_FLOOR_OPS);
    Ok(out)
}

/// A multiplexed `redis` connection to `endpoint` (`host:port`).
pub async fn redis_connect(endpoint: &str) -> BResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{endpoint}/0"))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

const REDIS_FLOOR_OPS: &str = "SET NX PX + DEL";

/// The Redis floor's unit: the plain lock's two commands, `SET key v NX PX ttl` + `DEL`.
async fn redis_pair(mut c: redis::aio::MultiplexedConnection, key: String) -> BResult<()> {
    let ok: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg("1")
        .arg("NX")
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .query_async(&mut c)
        .await?;
    if ok.is_none() {
        return Err(format!("SET {key} NX found the key set").into());
    }
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut c).await?;
    Ok(())
}

/// Scenario 1, Redis: `SET NX PX` + `DEL`, timed as a pair.
pub async fn redis_floor(endpoint: &str, iterations: usize) -> BResult<Value> {
    let c = redis_connect(endpoint).await?;
    let key = format!("floor-{}", std::process::id());
    let mut out = time_loop(iterations, || redis_pair(c.clone(), key.clone())).await?;
    out["scenario"] = json!("floor");
    out["operations"] = json!(REDIS_FLOOR_OPS);
    Ok(out)
}

/// The per-entity floor, Redis: `shape.tasks` tasks over `shape.clients` multiplexed
/// connections, each looping `SET NX PX` + `DEL` of its own key.
pub async fn redis_floor_concurrent(endpoint: &str, shape: PerEntity) -> BResult<Value> {
    let mut clients = Vec::with_capacity(shape.clients);
    for _ in 0..shape.clients {
        clients.push(redis_connect(endpoint).await?);
    }
    let clients = Arc::new(clients);
    let pid = std::process::id();
    let (elapsed, pairs, samples) = timed_tasks(shape.tasks, shape.seconds, move |task, _| {
        let c = clients[task % clients.len()].clone();
        redis_pair(c, format!("floor-{pid}-{task}"))
    })
    .await?;
    let mut out = shape.result(elapsed, pairs, samples);
    out["operations"] = json!(REDIS_FLOOR_OPS);
    Ok(out)
}
