//! One watch stream per backend, multiplexing every watch: a background task owns the
//! stream; callers register watches (with client-chosen ids) through a channel and get
//! their events back on their own channel. A broken stream fails every registration
//! (callers re-read and watch again) and is re-opened on the next registration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use etcd_client::{
    EventType, WatchClient, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream,
};
use queuelock_core::{Error, Result};
use tokio::sync::{mpsc, oneshot};

use crate::error::map_error;

/// What a registration hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A write, with the key's create revision (a new one: the key was re-created).
    Put(i64),
    /// A deletion, at this revision.
    Delete(i64),
    /// The stream broke or the server cancelled the watch: nothing more will come.
    Broken,
}

enum Cmd {
    Create {
        id: i64,
        key: Vec<u8>,
        prefix: bool,
        start_revision: i64,
        created: oneshot::Sender<Result<i64>>,
        events: mpsc::UnboundedSender<Event>,
    },
    Cancel(i64),
}

/// Handle to the backend's watch task.
pub(crate) struct WatchHub {
    tx: mpsc::UnboundedSender<Cmd>,
    next_id: AtomicI64,
}

/// A live watch; dropping it cancels the watch on the server.
pub(crate) struct Registration {
    id: i64,
    tx: mpsc::UnboundedSender<Cmd>,
    events: mpsc::UnboundedReceiver<Event>,
    /// The store revision at which the watch started.
    pub(crate) revision: i64,
}

impl Registration {
    /// The next event (`Broken` when the watch ended).
    pub(crate) async fn next(&mut self) -> Event {
        self.events.recv().await.unwrap_or(Event::Broken)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Cancel(self.id));
    }
}

impl WatchHub {
    pub(crate) fn new(client: WatchClient) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, rx));
        WatchHub {
            tx,
            next_id: AtomicI64::new(1),
        }
    }

    /// Opens a watch on `key` (or every key under it with `prefix`), from
    /// `start_revision` (0: now), and waits until the server confirms it.
    ///
    /// Cancel safety: safe; a dropped call's watch is cancelled.
    pub(crate) async fn watch(
        &self,
        key: String,
        prefix: bool,
        start_revision: i64,
    ) -> Result<Registration> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (created, confirmed) = oneshot::channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        self.tx
            .send(Cmd::Create {
                id,
                key: key.into_bytes(),
                prefix,
                start_revision,
                created,
                events: events_tx,
            })
            .map_err(|_| Error::connection("etcd watch task ended"))?;
        let mut reg = Registration {
            id,
            tx: self.tx.clone(),
            events,
            revision: 0,
        };
        reg.revision = confirmed
            .await
            .map_err(|_| Error::connection("etcd watch stream broke before the watch started"))??;
        Ok(reg)
    }
}

struct Watcher {
    created: Option<oneshot::Sender<Result<i64>>>,
    events: mpsc::UnboundedSender<Event>,
}

enum Wake {
    Cmd(Option<Cmd>),
    Msg(std::result::Result<Option<WatchResponse>, etcd_client::Error>),
}

async fn run(mut client: WatchClient, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut sender: Option<WatchRequestSender> = None;
    let mut stream: Option<WatchResponseStream> = None;
    let mut watchers: HashMap<i64, Watcher> = HashMap::new();
    loop {
        let wake = {
            let msg = async {
                match stream.as_mut() {
                    Some(s) => s.message().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = rx.recv() => Wake::Cmd(c),
                m = msg => Wake::Msg(m),
            }
        };
        match wake {
            Wake::Cmd(None) => return,
            Wake::Cmd(Some(Cmd::Create {
                id,
                key,
                prefix,
                start_revision,
                created,
                events,
            })) => {
                let mut opts = WatchOptions::new()
                    .with_watch_id(id)
                    .with_start_revision(start_revision);
                if prefix {
                    opts = opts.with_prefix();
                }
                let sent = match sender.as_mut() {
                    Some(s) => s.watch(key, Some(opts)).await,
                    None => match client.watch(key, Some(opts)).await {
                        Ok(ws) => {
                            let (s, r) = ws.split();
                            sender = Some(s);
                            stream = Some(r);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                };
                match sent {
                    Ok(()) => {
                        watchers.insert(
                            id,
                            Watcher {
                                created: Some(created),
                                events,
                            },
                        );
                    }
                    Err(e) => {
                        let _ = created.send(Err(map_error(e)));
                        break_stream(&mut sender, &mut stream, &mut watchers);
                    }
                }
            }
            Wake::Cmd(Some(Cmd::Cancel(id))) => {
                if watchers.remove(&id).is_some() {
                    if let Some(s) = sender.as_mut() {
                        let _ = s.cancel(id).await;
                    }
                }
            }
            Wake::Msg(Ok(Some(resp))) => {
                let id = resp.watch_id();
                let Some(w) = watchers.get_mut(&id) else {
                    continue;
                };
                if resp.created() {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    if let Some(c) = w.created.take() {
                        let _ = c.send(Ok(rev));
                    }
                }
                for ev in resp.events() {
                    let e = match ev.event_type() {
                        EventType::Delete => {
                            Event::Delete(ev.kv().map_or(0, |kv| kv.mod_revision()))
                        }
                        EventType::Put => Event::Put(ev.kv().map_or(0, |kv| kv.create_revision())),
                    };
                    let _ = w.events.send(e);
                }
                if resp.canceled() {
                    if let Some(w) = watchers.remove(&id) {
                        fail(w, "etcd cancelled the watch");
                    }
                }
            }
            Wake::Msg(Ok(None)) | Wake::Msg(Err(_)) => {
                break_stream(&mut sender, &mut stream, &mut watchers);
            }
        }
    }
}

fn fail(w: Watcher, why: &str) {
    match w.created {
        Some(c) => {
            let _ = c.send(Err(Error::connection(why)));
        }
        None => {
            let _ = w.events.send(Event::Broken);
        }
    }
}

fn break_stream(
    sender: &mut Option<WatchRequestSender>,
    stream: &mut Option<WatchResponseStream>,
    watchers: &mut HashMap<i64, Watcher>,
) {
    *sender = None;
    *stream = None;
    for (_, w) in watchers.drain() {
        fail(w, "etcd watch stream broke");
    }
}
