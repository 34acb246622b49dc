//! The backend's one pub/sub connection: channels waiters subscribe to (counted, so a
//! channel stays subscribed while anyone waits on it), and a generation that moves on
//! every disconnect and every resubscription, because pub/sub is not replayed: a waiter
//! whose generation moved re-checks the store.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::StreamExt;
use queuelock_core::{Error, Result};
use tokio::sync::{watch, Mutex as AsyncMutex, Notify};

use crate::error::map_error;

#[derive(Default)]
struct Channel {
    users: usize,
    messages: Option<watch::Sender<u64>>,
}

/// Shared between the pub/sub task and the waiters.
pub(crate) struct Watcher {
    channels: StdMutex<HashMap<String, Channel>>,
    /// The sink of the current connection; `None` while disconnected. Subscribing and
    /// unsubscribing hold this lock, so they reach the server in the order taken.
    sink: AsyncMutex<Option<redis::aio::PubSubSink>>,
    generation: watch::Sender<u64>,
    /// Channels whose last user left, for the unsubscriber to drop (in one command per
    /// batch: one task and one round trip per channel fell behind under load and piled
    /// up tasks).
    unused: StdMutex<HashSet<String>>,
    unused_added: Arc<Notify>,
    /// Messages delivered to waiters (for tests that count wake-ups).
    pub(crate) delivered: AtomicU64,
    /// Dropped with the watcher: ends the pub/sub task and its connection.
    _stop: watch::Sender<()>,
}

/// One waiter's interest in a channel; dropping it unsubscribes when it was the last.
pub(crate) struct Subscription {
    watcher: Arc<Watcher>,
    channel: String,
    pub(crate) messages: watch::Receiver<u64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = {
            let mut map = self.watcher.lock();
            match map.get_mut(&self.channel) {
                Some(c) => {
                    c.users = c.users.saturating_sub(1);
                    c.users == 0
                }
                None => false,
            }
        };
        if last {
            let channel = std::mem::take(&mut self.channel);
            self.watcher
                .unused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(channel);
            self.watcher.unused_added.notify_one();
        }
    }
}

impl Watcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the pub/sub task (reconnecting with backoff until the watcher is dropped).
    pub(crate) fn start(client: redis::Client) -> Arc<Watcher> {
        let (stop, stopped) = watch::channel(());
        let w = Arc::new(Watcher {
            channels: StdMutex::new(HashMap::new()),
            sink: AsyncMutex::new(None),
            generation: watch::channel(0).0,
            unused: StdMutex::new(HashSet::new()),
            unused_added: Arc::new(Notify::new()),
            delivered: AtomicU64::new(0),
            _stop: stop,
        });
        let weak = Arc::downgrade(&w);
        let added = w.unused_added.clone();
        tokio::spawn(async move {
            let mut stopped = stopped;
            tokio::select! {
                () = run(weak.clone(), client) => {}
                () = unsubscriber(weak, added) => {}
                () = async { while stopped.changed().await.is_ok() {} } => {}
            }
        });
        w
    }

    /// The generation now, as a receiver whose `changed()` says it moved.
    pub(crate) fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Subscribes to `channel`; returns once the server has confirmed the subscription
    /// (so a message published after this returns is delivered).
    ///
    /// Cancel safety: safe (a dropped call leaves the channel counted until dropped).
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        channel: &str,
        timeout: Duration,
    ) -> Result<Subscription> {
        let messages = {
            let mut map = self.lock();
            let c = map.entry(channel.to_owned()).or_default();
            c.users += 1;
            c.messages
                .get_or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        let sub = Subscription {
            watcher: self.clone(),
            channel: channel.to_owned(),
            messages,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut generation = self.generation();
        loop {
            generation.borrow_and_update();
            let mut sink = tokio::time::timeout_at(deadline, self.sink.lock())
                .await
                .map_err(|_| Error::connection("Redis pub/sub connection is busy"))?;
            if let Some(s) = sink.as_mut() {
                return match tokio::time::timeout_at(deadline, s.subscribe(channel)).await {
                    Ok(Ok(())) => Ok(sub),
                    Ok(Err(e)) => Err(map_error(e)),
                    Err(_) => Err(Error::connection(format!(
                        "no answer to SUBSCRIBE within {timeout:?}"
                    ))),
                };
            }
            drop(sink);
            // (Re)connecting: wait for the pub/sub task's next generation.
            if tokio::time::timeout_at(deadline, generation.changed())
                .await
                .is_err()
            {
                return Err(Error::connection(format!(
                    "Redis pub/sub connection down for {timeout:?}"
                )));
            }
        }
    }

    /// Waits until the pub/sub connection is up (for connecting a backend).
    pub(crate) async fn connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut generation = self.generation();
        loop {
            generation.borrow_and_update();
            if self.sink.lock().await.is_some() {
                return true;
            }
            if tokio::time::timeout_at(deadline, generation.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    fn deliver(&self, channel: &str) {
        let map = self.lock();
        if let Some(tx) = map.get(channel).and_then(|c| c.messages.as_ref()) {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            tx.send_modify(|n| *n += 1);
        }
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Unsubscribes from channels nobody uses any more, a batch per command.
async fn unsubscriber(weak: std::sync::Weak<Watcher>, added: Arc<Notify>) {
    loop {
        let Some(w) = weak.upgrade() else { return };
        let batch: Vec<String> =
            std::mem::take(&mut *w.unused.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        if batch.is_empty() {
            drop(w);
            // A channel added since the take left a permit: this returns at once.
            added.notified().await;
            continue;
        }
        let mut sink = w.sink.lock().await;
        // Still unused under the sink lock: nobody subscribed in between (a subscribe
        // after this reaches the server after our UNSUBSCRIBE, in lock order).
        let unused: Vec<String> = {
            let mut map = w.lock();
            batch
                .into_iter()
                .filter(|ch| {
                    let unused = map.get(ch).is_some_and(|c| c.users == 0);
                    if unused {
                        map.remove(ch);
                    }
                    unused
                })
                .collect()
        };
        if let Some(s) = sink.as_mut() {
            for chunk in unused.chunks(512) {
                // Disconnected meanwhile: the reconnect subscribes only channels in use.
                if tokio::time::timeout(Duration::from_secs(5), s.unsubscribe(chunk))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    break;
                }
            }
        }
    }
}

async fn run(weak: std::sync::Weak<Watcher>, client: redis::Client) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let Some(w) = weak.upgrade() else { return };
        let connected = tokio::time::timeout(Duration::from_secs(5), client.get_async_pubsub())
            .await
            .ok()
            .and_then(|r| r.ok());
        let Some(pubsub) = connected else {
            drop(w);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        };
        backoff = Duration::from_millis(20);
        let (mut sink, mut stream) = pubsub.split();
        {
            let mut guard = w.sink.lock().await;
            let wanted: Vec<String> = w.lock().keys().cloned().collect();
            let mut ok = true;
            for ch in wanted {
                if tokio::time::timeout(Duration::from_secs(5), sink.subscribe(&ch))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    ok = false;
                    break;
                }
            }
            if !ok {
                *guard = None;
                drop(guard);
                w.bump();
                drop(w);
                tokio::time::sleep(backoff).await;
                continue;
            }
            *guard = Some(sink);
        }
        // Everyone re-checks: what was published while we were away is lost.
        w.bump();
        drop(w);
        while let Some(msg) = stream.next().await {
            let Some(w) = weak.upgrade() else { return };
            w.deliver(msg.get_channel_name());
        }
        let Some(w) = weak.upgrade() else { return };
        *w.sink.lock().await = None;
        w.bump();
        tracing::debug!("Redis pub/sub connection ended; reconnecting");
    }
}
