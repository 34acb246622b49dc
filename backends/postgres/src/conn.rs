//! Connections: a small set of request connections shared by every session of a backend
//! (each contract operation is one statement, so sessions pipeline on them), and one
//! dedicated LISTEN connection per backend whose notifications wake waiters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use futures::StreamExt;
use queuelock_core::{Error, Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client, Connection, Statement};

use crate::error::map_error;
use crate::Inner;

/// What a connection does with a notification's channel name.
pub(crate) type OnNote = Arc<dyn Fn(&str) + Send + Sync>;

/// One request connection and its prepared statements.
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) st: Statements,
}

/// The statements every operation uses, prepared once per connection.
pub(crate) struct Statements {
    pub(crate) open_session: Statement,
    pub(crate) keepalive: Statement,
    pub(crate) probe: Statement,
    pub(crate) close: Statement,
    pub(crate) create: Statement,
    pub(crate) abandon: Statement,
    pub(crate) list: Statement,
    pub(crate) node: Statement,
    pub(crate) read_node: Statement,
    pub(crate) get: Statement,
    pub(crate) put_if_absent: Statement,
    pub(crate) delete: Statement,
    pub(crate) guarded: Statement,
    pub(crate) reap: Statement,
    /// The waiter's read for our node found by key (`turn`) or attempt (`created`).
    pub(crate) turn: Statement,
    pub(crate) created: Statement,
}

/// The waiter's read: our node (`WHERE {me}`), the nearest earlier node whose kind is not
/// in `$2` (none when `$3`), and how many nodes are ahead of ours (with the index on
/// `(queue, seq)` an index-only count). No row: our node is gone.
///
/// `count_to` caps that count: after a wake only "one ahead or more" matters (`Turn::last`),
/// so the waiter's read counts at most 2 rows and stays O(1) at any queue length; the read
/// after create counts them all, once per acquire, for the queue-depth metric.
fn turn_sql(s: &str, me: &str, count_to: Option<u32>) -> String {
    let limit = count_to.map_or(String::new(), |n| format!(" LIMIT {n}"));
    format!(
        "SELECT me.key, me.seq, b.key, b.seq, b.kind, \
         (SELECT count(*) FROM (SELECT 1 FROM {s}.nodes a \
           WHERE a.queue = me.queue AND a.seq < me.seq{limit}) ahead) \
         FROM (SELECT key, seq, queue FROM {s}.nodes WHERE {me}) me \
         LEFT JOIN LATERAL (SELECT key, seq, kind FROM {s}.nodes x \
           WHERE x.queue = me.queue AND x.seq < me.seq AND NOT $3 AND x.kind <> ALL($2) \
           ORDER BY x.seq DESC LIMIT 1) b ON true"
    )
}

impl Statements {
    async fn prepare(c: &Client, s: &str) -> std::result::Result<Self, tokio_postgres::Error> {
        let p = |sql: String| async move { c.prepare(&sql).await };
        // Sent back to back: tokio-postgres pipelines requests polled together.
        let (a, b, c2, d, e, f, g) = futures::join!(
            p(format!("SELECT {s}.open_session($1)")),
            p(format!("SELECT {s}.keepalive($1)")),
            p(format!(
                "SELECT expires_at > clock_timestamp() FROM {s}.sessions WHERE id = $1"
            )),
            p(format!("DELETE FROM {s}.sessions WHERE id = $1")),
            p(format!(
                "SELECT key, seq FROM {s}.create_node($1, $2, $3, $4, $5)"
            )),
            p(format!("SELECT {s}.abandon($1, $2, $3)")),
            p(format!(
                "SELECT key, seq, kind, pver FROM {s}.nodes WHERE queue = $1 ORDER BY seq"
            )),
        );
        let (h, i, j, k, l, m, n) = futures::join!(
            // The node and how long until its session expires (server clock), in ms.
            p(format!(
                "SELECT greatest(0, (extract(epoch FROM s.expires_at - clock_timestamp()) * 1000)::bigint) \
                 FROM {s}.nodes n JOIN {s}.sessions s ON s.id = n.session_id WHERE n.key = $1"
            )),
            p(format!("SELECT payload, seq FROM {s}.nodes WHERE key = $1")),
            p(format!(
                "SELECT payload FROM {s}.nodes WHERE key = $1 \
                 UNION ALL SELECT value FROM {s}.kv WHERE key = $1 LIMIT 1"
            )),
            p(format!(
                "WITH ins AS (INSERT INTO {s}.kv (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO NOTHING RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM ins), (SELECT value FROM {s}.kv WHERE key = $1)"
            )),
            p(format!("DELETE FROM {s}.nodes WHERE key = $1 AND seq = $2")),
            p(format!("SELECT {s}.guarded($1, $2, $3, $4, $5)")),
            p(format!("SELECT {s}.reap()")),
        );
        let (o, q) = futures::join!(
            p(turn_sql(s, "key = $1", Some(2))),
            p(turn_sql(s, "attempt = $1", None)),
        );
        Ok(Statements {
            open_session: a?,
            keepalive: b?,
            probe: c2?,
            close: d?,
            create: e?,
            abandon: f?,
            list: g?,
            node: h?,
            read_node: i?,
            get: j?,
            put_if_absent: k?,
            delete: l?,
            guarded: m?,
            reap: n?,
            turn: o?,
            created: q?,
        })
    }
}

/// Opens a connection and drives it in a background task; notifications go to `on_note`.
/// The returned receiver turns `true` when the connection has ended.
pub(crate) async fn open(
    inner: &Inner,
    on_note: Option<OnNote>,
) -> Result<(Client, watch::Receiver<bool>)> {
    let (ended_tx, ended) = watch::channel(false);
    let connect = async {
        match &inner.tls {
            Some(tls) => {
                let (client, conn) = inner.pg.connect(tls.clone()).await.map_err(map_error)?;
                tokio::spawn(drive(conn, on_note, ended_tx));
                Ok::<_, Error>(client)
            }
            None => {
                let (client, conn) = inner
                    .pg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(map_error)?;
                tokio::spawn(drive(conn, on_note, ended_tx));
                Ok(client)
            }
        }
    };
    let client = tokio::time::timeout(inner.connect_timeout, connect)
        .await
        .map_err(|_| {
            Error::connection(format!(
                "no answer from PostgreSQL at {} within {:?}",
                inner.shown, inner.connect_timeout
            ))
        })??;
    Ok((client, ended))
}

async fn drive<S, T>(
    mut conn: Connection<S, T>,
    on_note: Option<OnNote>,
    ended: watch::Sender<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(n)) => {
                if let Some(f) = &on_note {
                    f(n.channel());
                }
            }
            Ok(AsyncMessage::Notice(n)) => tracing::debug!(notice = %n, "PostgreSQL notice"),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
                break;
            }
        }
    }
    ended.send_replace(true);
}

/// The request connections: a few, opened lazily, re-opened when they break.
pub(crate) struct Pool {
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(size: usize) -> Self {
        Pool {
            slots: (0..size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Makes `client` (just opened) the first slot's connection.
    pub(crate) async fn adopt(&self, client: Client, schema: &str) -> Result<()> {
        let st = Statements::prepare(&client, schema)
            .await
            .map_err(map_error)?;
        *self.slots[0].lock().await = Some(Arc::new(Conn { client, st }));
        Ok(())
    }

    /// A working connection (round robin over the slots).
    pub(crate) async fn get(&self, inner: &Inner) -> Result<Arc<Conn>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = &*slot {
            if !c.client.is_closed() {
                return Ok(c.clone());
            }
        }
        let (client, _ended) = open(inner, None).await?;
        let st = Statements::prepare(&client, &inner.schema)
            .await
            .map_err(map_error)?;
        let c = Arc::new(Conn { client, st });
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// Subscribers of one channel.
struct Channel {
    refs: usize,
    tx: watch::Sender<u64>,
}

/// The LISTEN connection of a backend.
pub(crate) struct Listener {
    /// The connection, and the receiver that says it ended. Held while a LISTEN or
    /// UNLISTEN is in flight, so the server's set of channels follows `channels`.
    conn: tokio::sync::Mutex<Option<(Client, watch::Receiver<bool>)>>,
    channels: Arc<StdMutex<HashMap<String, Channel>>>,
    /// Notifications received (for tests that count wake-ups).
    pub(crate) received: Arc<AtomicU64>,
}

/// A subscription to one channel: `changed` resolves on a notification, or fails when
/// the LISTEN connection ends (a notification may then have been lost: re-read).
pub(crate) struct Subscription {
    listener: Arc<crate::Inner>,
    channel: String,
    rx: watch::Receiver<u64>,
    ended: watch::Receiver<bool>,
}

impl Subscription {
    /// Waits for a notification on the channel (since the subscription or the last call).
    ///
    /// Cancel safety: safe.
    pub(crate) async fn changed(&mut self) -> Result<()> {
        tokio::select! {
            r = self.rx.changed() => r.map_err(|_| Error::Closed),
            _ = self.ended.wait_for(|e| *e) => Err(Error::connection(
                "the PostgreSQL LISTEN connection ended; a notification may be lost",
            )),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let inner = self.listener.clone();
        let channel = std::mem::take(&mut self.channel);
        let last = {
            let mut map = inner
                .listener
                .channels
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match map.get_mut(&channel) {
                Some(c) => {
                    c.refs -= 1;
                    c.refs == 0
                }
                None => false,
            }
        };
        if last {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move { inner.listener.unlisten(&channel).await });
            }
        }
    }
}

impl Listener {
    pub(crate) fn new() -> Self {
        Listener {
            conn: tokio::sync::Mutex::new(None),
            channels: Arc::new(StdMutex::new(HashMap::new())),
            received: Arc::new(AtomicU64::new(0)),
        }
    }

    /// LISTENs on the channel of `(kind, name)` (`'k'` a node key, `'q'` a queue) and
    /// returns once the server has registered it: a notification sent after that is
    /// delivered.
    ///
    /// Cancel safety: safe (a dropped call may leave the channel listened on until the
    /// next unlisten of it).
    pub(crate) async fn subscribe(
        inner: &Arc<Inner>,
        kind: &str,
        name: &str,
    ) -> Result<Subscription> {
        let me = &inner.listener;
        let mut conn = me.conn.lock().await;
        let fresh = !matches!(&*conn, Some((c, ended)) if !c.is_closed() && !*ended.borrow());
        if fresh {
            let channels = me.channels.clone();
            let received = me.received.clone();
            let on_note = Arc::new(move |ch: &str| {
                received.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = channels.lock().unwrap_or_else(|p| p.into_inner()).get(ch) {
                    c.tx.send_modify(|n| *n += 1);
                }
            });
            let (client, ended) = open(inner, Some(on_note)).await?;
            // Channels still subscribed from before (their waiters re-read anyway).
            let names: Vec<String> = {
                let map = me.channels.lock().unwrap_or_else(|p| p.into_inner());
                map.iter()
                    .filter(|(_, c)| c.refs > 0)
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            for ch in names {
                client
                    .batch_execute(&format!("LISTEN \"{ch}\""))
                    .await
                    .map_err(map_error)?;
            }
            *conn = Some((client, ended));
        }
        let Some((client, ended)) = &*conn else {
            return Err(Error::connection("no LISTEN connection"));
        };
        let row = client
            .query_one(
                &format!("SELECT {}.listen($1, $2)", inner.schema),
                &[&kind, &name],
            )
            .await
            .map_err(map_error)?;
        let channel: String = row.get(0);
        let rx = {
            let mut map = me.channels.lock().unwrap_or_else(|p| p.into_inner());
            let c = map.entry(channel.clone()).or_insert_with(|| Channel {
                refs: 0,
                tx: watch::channel(0).0,
            });
            c.refs += 1;
            let mut rx = c.tx.subscribe();
            rx.mark_unchanged();
            rx
        };
        Ok(Subscription {
            listener: inner.clone(),
            channel,
            rx,
            ended: ended.clone(),
        })
    }

    async fn unlisten(&self, channel: &str) {
        let conn = self.conn.lock().await;
        {
            let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(channel) {
                Some(c) if c.refs == 0 => {
                    map.remove(channel);
                }
                _ => return, // subscribed again meanwhile
            }
        }
        if let Some((client, _)) = &*conn {
            let _ = client
                .batch_execute(&format!("UNLISTEN \"{channel}\""))
                .await;
        }
    }
}
