//! One watch stream per backend, multiplexing every watch: a background task owns the
//! stream; callers register watches (with client-chosen ids) through a channel and get
//! their events back on their own channel. A broken stream fails every registration
//! (callers re-read and watch again) and is re-opened on the next registration.
//!
//! A waiter's watch for a key's deletion is **shared and kept** for a while after use
//! ([`WatchHub::deletions`]): etcd 3.4 turns a watch from "now" into one from the revision
//! it read just before taking its store lock, so a watch created while a write holds
//! that lock starts in the past and is served by the "unsynced" loop, up to 100 ms late.
//! Under write load that hit about one handoff in thirty on one lock (8 sessions: ~70 ms
//! each, a third of the time). A kept watch has long been in sync: the next waiter on the
//! same key (a session reuses its keys, and sessions that contend keep their order in a
//! fair queue) subscribes without a round trip and hears the deletion at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    EventType, WatchClient, WatchFilterType, WatchOptions, WatchRequestSender, WatchResponse,
    WatchResponseStream,
};
use queuelock_core::{Error, Result};
use tokio::sync::{mpsc, oneshot};

use crate::error::map_error;

/// What a registration hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A write, with the key's create revision (a new one: the key was re-created).
    Put(i64),
    /// A deletion at revision `at`, with the deleted key's create revision and version
    /// (both 0 unless the watch has them: [`WatchHub::deletions`]).
    Delete { at: i64, created: i64, version: i64 },
    /// The stream broke or the server cancelled the watch: nothing more will come.
    Broken,
}

enum Cmd {
    Create {
        id: i64,
        key: Vec<u8>,
        prefix: bool,
        start_revision: i64,
        created: Confirm,
        events: mpsc::UnboundedSender<Event>,
    },
    Cancel(i64),
    Subscribe {
        key: Vec<u8>,
        id: i64,
        since: i64,
        subscribed: Confirm,
        events: mpsc::UnboundedSender<Event>,
    },
    Unsubscribe {
        key: Vec<u8>,
        id: i64,
    },
}

/// How long a shared deletion watch with no subscriber is kept, and how many are kept.
const KEEP: Duration = Duration::from_secs(2);
const KEEP_AT_MOST: usize = 4096;

/// Handle to the backend's watch task.
pub(crate) struct WatchHub {
    tx: mpsc::UnboundedSender<Cmd>,
    next_id: AtomicI64,
}

/// A live watch; dropping it cancels the watch on the server (or, for a subscription
/// to a shared watch, leaves it).
pub(crate) struct Registration {
    id: i64,
    /// The key of a subscription to a shared watch.
    shared: Option<Vec<u8>>,
    tx: mpsc::UnboundedSender<Cmd>,
    events: mpsc::UnboundedReceiver<Event>,
    /// The store revision at which the watch started; for a subscription to a watch
    /// that was running already, the newest revision the stream had reported when it
    /// began: every event after it comes, earlier ones may have gone to others.
    pub(crate) revision: i64,
    /// Whether every deletion of the key after the subscription's `since` reaches this
    /// registration: the watch started at `since` exactly, or it started no later and
    /// has reported no deletion after `since`. Otherwise read the key (from `revision`).
    pub(crate) covers: bool,
}

impl Registration {
    /// The next event (`Broken` when the watch ended).
    pub(crate) async fn next(&mut self) -> Event {
        self.events.recv().await.unwrap_or(Event::Broken)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.tx.send(match self.shared.take() {
            Some(key) => Cmd::Unsubscribe { key, id: self.id },
            None => Cmd::Cancel(self.id),
        });
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
        self.register(None, |id, created, events| Cmd::Create {
            id,
            key: key.into_bytes(),
            prefix,
            start_revision,
            created,
            events,
        })
        .await
    }

    /// Subscribes to the shared watch of `key`'s deletions (opening it if there is none),
    /// which the server sends with the deleted key as it was (create revision, version),
    /// and no writes. Events from the subscription on are this registration's; unless it
    /// [covers](Registration::covers) `since` (a revision at which the caller knew the
    /// node existed), callers read the key after subscribing, at a revision no older than
    /// [`Registration::revision`], to learn of an earlier deletion.
    ///
    /// Cancel safety: safe; a dropped call leaves the watch to expire.
    pub(crate) async fn deletions(&self, key: String, since: i64) -> Result<Registration> {
        let key = key.into_bytes();
        self.register(Some(key.clone()), |id, subscribed, events| Cmd::Subscribe {
            key,
            id,
            since,
            subscribed,
            events,
        })
        .await
    }

    /// Sends the command `cmd` builds (from a fresh id, the confirmation's sender and the
    /// events' sender) and waits for the watch task's confirmation.
    ///
    /// Cancel safety: safe; a dropped call's registration is dropped with it.
    async fn register(
        &self,
        shared: Option<Vec<u8>>,
        cmd: impl FnOnce(i64, Confirm, mpsc::UnboundedSender<Event>) -> Cmd,
    ) -> Result<Registration> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (confirm, confirmed) = oneshot::channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        self.tx
            .send(cmd(id, confirm, events_tx))
            .map_err(|_| Error::connection("etcd watch task ended"))?;
        let mut reg = Registration {
            id,
            shared,
            tx: self.tx.clone(),
            events,
            revision: 0,
            covers: false,
        };
        (reg.revision, reg.covers) = confirmed
            .await
            .map_err(|_| Error::connection("etcd watch stream broke before the watch started"))??;
        Ok(reg)
    }
}

/// Where a registration learns the revision it starts at and whether it hears every
/// deletion after its `since` (see [`Registration::covers`]; always `false` for a watch
/// of its own).
type Confirm = oneshot::Sender<Result<(i64, bool)>>;

/// A shared deletion watch and its subscribers.
struct Shared {
    /// The watch's id on the stream.
    id: i64,
    /// Subscribers waiting for the watch to start (it has not been confirmed yet).
    starting: Vec<(i64, i64, Confirm, mpsc::UnboundedSender<Event>)>,
    /// The revision the watch started after (its events are from the next one on).
    start: i64,
    /// The newest deletion it has reported.
    deleted: i64,
    subscribers: Vec<(i64, mpsc::UnboundedSender<Event>)>,
    /// Since when it has had no subscriber.
    idle: Option<Instant>,
}

struct Watcher {
    created: Option<Confirm>,
    events: mpsc::UnboundedSender<Event>,
}

/// What a watch id on the stream is.
enum Target {
    One(Watcher),
    /// The shared deletion watch of this key.
    Shared(Vec<u8>),
}

/// The watch task's state.
#[derive(Default)]
struct Hub {
    sender: Option<WatchRequestSender>,
    stream: Option<WatchResponseStream>,
    watchers: HashMap<i64, Target>,
    shared: HashMap<Vec<u8>, Shared>,
    /// The newest header revision the stream has reported.
    revision: i64,
}

enum Wake {
    Cmd(Option<Cmd>),
    Sweep,
    Msg(std::result::Result<Option<WatchResponse>, etcd_client::Error>),
}

async fn run(mut client: WatchClient, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut hub = Hub::default();
    let mut sweep = tokio::time::interval(KEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = {
            let msg = async {
                match hub.stream.as_mut() {
                    Some(s) => s.message().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = rx.recv() => Wake::Cmd(c),
                m = msg => Wake::Msg(m),
                _ = sweep.tick() => Wake::Sweep,
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
                match hub.open(&mut client, key, opts).await {
                    Ok(()) => {
                        let w = Watcher {
                            created: Some(created),
                            events,
                        };
                        hub.watchers.insert(id, Target::One(w));
                    }
                    Err(e) => {
                        let _ = created.send(Err(e));
                        hub.break_stream();
                    }
                }
            }
            Wake::Cmd(Some(Cmd::Cancel(id))) => {
                if hub.watchers.remove(&id).is_some() {
                    hub.cancel(id).await;
                }
            }
            Wake::Cmd(Some(Cmd::Subscribe {
                key,
                id,
                since,
                subscribed,
                events,
            })) => {
                if let Some(s) = hub.shared.get_mut(&key) {
                    s.idle = None;
                    if s.starting.is_empty() {
                        // Every event after the stream's newest revision is this
                        // subscriber's too; one before it went to the hub, which keeps
                        // the newest deletion.
                        let covers = since != 0 && s.start <= since && s.deleted <= since;
                        let _ = subscribed.send(Ok((hub.revision, covers)));
                        s.subscribers.push((id, events));
                    } else {
                        s.starting.push((id, since, subscribed, events));
                    }
                    continue;
                }
                if hub.shared.len() >= KEEP_AT_MOST {
                    hub.expire(Duration::ZERO).await;
                }
                let opts = WatchOptions::new()
                    .with_watch_id(id)
                    .with_prev_key()
                    .with_filters([WatchFilterType::NoPut]);
                match hub.open(&mut client, key.clone(), opts).await {
                    Ok(()) => {
                        hub.watchers.insert(id, Target::Shared(key.clone()));
                        let s = Shared {
                            id,
                            starting: vec![(id, since, subscribed, events)],
                            start: 0,
                            deleted: 0,
                            subscribers: Vec::new(),
                            idle: None,
                        };
                        hub.shared.insert(key, s);
                    }
                    Err(e) => {
                        let _ = subscribed.send(Err(e));
                        hub.break_stream();
                    }
                }
            }
            Wake::Cmd(Some(Cmd::Unsubscribe { key, id })) => {
                if let Some(s) = hub.shared.get_mut(&key) {
                    s.subscribers.retain(|(i, _)| *i != id);
                    s.starting.retain(|(i, ..)| *i != id);
                    if s.subscribers.is_empty() && s.starting.is_empty() {
                        s.idle = Some(Instant::now());
                    }
                }
            }
            Wake::Sweep => hub.expire(KEEP).await,
            Wake::Msg(Ok(Some(resp))) => hub.dispatch(resp),
            Wake::Msg(Ok(None)) | Wake::Msg(Err(_)) => hub.break_stream(),
        }
    }
}

impl Hub {
    /// Sends a watch's create request, opening the stream with it if there is none.
    async fn open(
        &mut self,
        client: &mut WatchClient,
        key: Vec<u8>,
        opts: WatchOptions,
    ) -> Result<()> {
        match self.sender.as_mut() {
            Some(s) => s.watch(key, Some(opts)).await.map_err(map_error),
            None => {
                let (s, r) = client
                    .watch(key, Some(opts))
                    .await
                    .map_err(map_error)?
                    .split();
                self.sender = Some(s);
                self.stream = Some(r);
                Ok(())
            }
        }
    }

    async fn cancel(&mut self, id: i64) {
        if let Some(s) = self.sender.as_mut() {
            let _ = s.cancel(id).await;
        }
    }

    /// Cancels the shared watches idle for `keep` or longer.
    async fn expire(&mut self, keep: Duration) {
        let now = Instant::now();
        let old: Vec<Vec<u8>> = self
            .shared
            .iter()
            .filter(|(_, s)| s.idle.is_some_and(|t| now.duration_since(t) >= keep))
            .map(|(k, _)| k.clone())
            .collect();
        for key in old {
            if let Some(s) = self.shared.remove(&key) {
                self.watchers.remove(&s.id);
                self.cancel(s.id).await;
            }
        }
    }

    fn dispatch(&mut self, resp: WatchResponse) {
        let rev = resp.header().map_or(0, |h| h.revision());
        let id = resp.watch_id();
        let events: Vec<Event> = resp
            .events()
            .iter()
            .map(|ev| match ev.event_type() {
                EventType::Delete => Event::Delete {
                    at: ev.kv().map_or(0, |kv| kv.mod_revision()),
                    created: ev.prev_kv().map_or(0, |kv| kv.create_revision()),
                    version: ev.prev_kv().map_or(0, |kv| kv.version()),
                },
                EventType::Put => Event::Put(ev.kv().map_or(0, |kv| kv.create_revision())),
            })
            .collect();
        match self.watchers.get_mut(&id) {
            None => {}
            Some(Target::One(w)) => {
                if resp.created() {
                    if let Some(c) = w.created.take() {
                        let _ = c.send(Ok((rev, false)));
                    }
                }
                for e in &events {
                    let _ = w.events.send(*e);
                }
            }
            Some(Target::Shared(key)) => {
                if let Some(s) = self.shared.get_mut(key.as_slice()) {
                    if resp.created() {
                        s.start = rev;
                        for (sub, since, subscribed, tx) in s.starting.drain(..) {
                            // Started at `since`: nothing was written in between.
                            if subscribed
                                .send(Ok((rev, since != 0 && rev == since)))
                                .is_ok()
                            {
                                s.subscribers.push((sub, tx));
                            }
                        }
                    }
                    for e in &events {
                        if let Event::Delete { at, .. } = e {
                            s.deleted = s.deleted.max(*at);
                        }
                        s.subscribers.retain(|(_, tx)| tx.send(*e).is_ok());
                    }
                }
            }
        }
        // After the events: a subscriber that starts now hears every later one.
        self.revision = self.revision.max(rev);
        if resp.canceled() {
            match self.watchers.remove(&id) {
                Some(Target::One(w)) => fail(w, "etcd cancelled the watch"),
                Some(Target::Shared(key)) => {
                    if let Some(s) = self.shared.remove(&key) {
                        fail_shared(s, "etcd cancelled the watch");
                    }
                }
                None => {}
            }
        }
    }

    fn break_stream(&mut self) {
        self.sender = None;
        self.stream = None;
        for (_, t) in self.watchers.drain() {
            if let Target::One(w) = t {
                fail(w, "etcd watch stream broke");
            }
        }
        for (_, s) in self.shared.drain() {
            fail_shared(s, "etcd watch stream broke");
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

fn fail_shared(s: Shared, why: &str) {
    for (_, _, subscribed, _) in s.starting {
        let _ = subscribed.send(Err(Error::connection(why)));
    }
    for (_, tx) in s.subscribers {
        let _ = tx.send(Event::Broken);
    }
}
