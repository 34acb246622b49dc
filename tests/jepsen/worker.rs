//! A client process: its own session; loops acquire → fenced read → fenced write of
//! value+1 → release until its stop time, logging everything.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use queuelock::Client;
use rand::Rng;

use crate::history::{now_us, Event, Log};
use crate::register::{RegisterClient, Reply};

/// What the driver passes a worker (through the environment).
pub struct WorkerArgs {
    pub w: usize,
    pub url: String,
    pub lock: String,
    pub register: String,
    pub history: PathBuf,
    /// Stop acquiring at this `now_us()`.
    pub stop_at: u64,
    pub ttl: Duration,
}

impl WorkerArgs {
    pub fn to_env(&self) -> Vec<(String, String)> {
        [
            ("W", self.w.to_string()),
            ("URL", self.url.clone()),
            ("LOCK", self.lock.clone()),
            ("REGISTER", self.register.clone()),
            ("HISTORY", self.history.display().to_string()),
            ("STOP_AT", self.stop_at.to_string()),
            ("TTL_MS", self.ttl.as_millis().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("QUEUELOCK_JEPSEN_{k}"), v))
        .collect()
    }

    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var(format!("QUEUELOCK_JEPSEN_{k}")).unwrap_or_else(|_| panic!("{k}"))
        };
        WorkerArgs {
            w: var("W").parse().expect("W"),
            url: var("URL"),
            lock: var("LOCK"),
            register: var("REGISTER"),
            history: var("HISTORY").into(),
            stop_at: var("STOP_AT").parse().expect("STOP_AT"),
            ttl: Duration::from_millis(var("TTL_MS").parse().expect("TTL_MS")),
        }
    }
}

/// How often a long critical section freezes itself before a write.
const SELF_FREEZE: f64 = 0.05;

/// How long one `lock()` may take before the worker gives up on it (recorded, not a
/// failure by itself: a frozen or partitioned holder ahead keeps everyone waiting).
pub fn lock_timeout(ttl: Duration) -> Duration {
    ttl * 6 + Duration::from_secs(30)
}

/// How long `release()` may take beyond the time faults were active during it (the
/// checker's budget): it retries until the node is gone or the session is.
pub fn release_timeout(ttl: Duration) -> Duration {
    ttl * 2 + Duration::from_secs(10)
}

/// When the worker gives up on a `release()` (recorded as hung): far past the budget, so
/// that a release slowed by faults still ends and the checker judges its duration.
pub fn release_give_up(ttl: Duration) -> Duration {
    release_timeout(ttl) + Duration::from_secs(60)
}

pub async fn run(a: WorkerArgs) {
    let log = Log::create(&a.history);
    let w = a.w;
    log.put(&Event::Start {
        w,
        pid: std::process::id(),
        t: now_us(),
    });
    let client = Client::connect(&a.url).await.expect("connect");
    let mutex = client.mutex(&a.lock).expect("lock name");
    let mut reg = RegisterClient::new(a.register.clone(), w);
    let mut op = 0u64;
    while now_us() < a.stop_at {
        op += 1;
        log.put(&Event::Invoke { w, op, t: now_us() });
        let g = match tokio::time::timeout(lock_timeout(a.ttl), mutex.lock()).await {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                log.put(&Event::LockFailed {
                    w,
                    op,
                    t: now_us(),
                    timeout: false,
                    error: e.to_string(),
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => {
                log.put(&Event::LockFailed {
                    w,
                    op,
                    t: now_us(),
                    timeout: true,
                    error: "timeout".into(),
                });
                continue;
            }
        };
        let token = g.fencing_token();
        log.put(&Event::Granted {
            w,
            op,
            t: now_us(),
            token,
            session: g.session_id().0,
            key: g.key().to_owned(),
        });
        let outcome = {
            let held = Held {
                g: &g,
                log: &log,
                w,
                op,
                token,
                loss_logged: AtomicBool::new(false),
            };
            // The critical section runs to completion (an access in flight cannot be
            // recalled); the lost() future beside it records when the loss was learned.
            let work = held.critical(&mut reg);
            tokio::pin!(work);
            let mut watching = true;
            let outcome = loop {
                tokio::select! {
                    r = &mut work => break r,
                    reason = g.lost(), if watching => {
                        watching = false;
                        held.lost(reason.to_string(), "lost-future");
                    }
                }
            };
            outcome
        };
        if !outcome {
            log.put(&Event::ReleaseStart { w, op, t: now_us() });
        }
        let r = tokio::time::timeout(release_give_up(a.ttl), g.release()).await;
        log.put(&Event::Released {
            w,
            op,
            t: now_us(),
            error: match &r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timeout".into()),
            },
            timeout: r.is_err(),
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), client.close()).await;
    log.put(&Event::Done { w, t: now_us() });
}

/// One grant, while its critical section runs.
struct Held<'a> {
    g: &'a queuelock::MutexGuard,
    log: &'a Log,
    w: usize,
    op: u64,
    token: u64,
    loss_logged: AtomicBool,
}

impl Held<'_> {
    /// Logs (once) that the holder learned of its loss.
    fn lost(&self, reason: String, via: &str) {
        if !self.loss_logged.swap(true, Ordering::SeqCst) {
            self.log.put(&Event::Lost {
                w: self.w,
                op: self.op,
                t: now_us(),
                reason,
                via: via.into(),
            });
        }
    }

    /// Whether the lock is still held, as a careful user checks before each access.
    fn still_held(&self) -> bool {
        match self.g.is_lost() {
            Some(r) => {
                self.lost(r.to_string(), "is_lost");
                false
            }
            None => true,
        }
    }

    /// Some rounds of read → work → write value+1: mostly one quick round, but one
    /// grant in twelve holds on for a second or so (several rounds), so that faults land inside
    /// critical sections. Returns whether the lock was lost (true) or the critical
    /// section ended normally (false).
    async fn critical(&self, reg: &mut RegisterClient) -> bool {
        let long = rand::rng().random_bool(1.0 / 12.0);
        let rounds = if long {
            rand::rng().random_range(2..5)
        } else {
            1
        };
        for _ in 0..rounds {
            let pause = if long {
                Duration::from_millis(rand::rng().random_range(100..500))
            } else {
                Duration::from_millis(rand::rng().random_range(0..10))
            };
            match self.round(reg, pause).await {
                Some(lost) => return lost,
                None => continue,
            }
        }
        false
    }

    /// One read-modify-write. `None`: done, go on; `Some(lost)`: stop.
    async fn round(&self, reg: &mut RegisterClient, pause: Duration) -> Option<bool> {
        let (w, op, token) = (self.w, self.op, self.token);
        if !self.still_held() {
            return Some(true);
        }
        let t0 = now_us();
        let read = reg.read(token).await;
        let t1 = now_us();
        let (value, fenced) = match read {
            Ok(Reply::Ok(v)) => (Some(v.unwrap_or(0)), None),
            Ok(Reply::Fenced(h)) => (None, Some(h)),
            Err(_) => (None, None),
        };
        self.log.put(&Event::Read {
            w,
            op,
            t0,
            t1,
            token,
            value,
            fenced,
        });
        let Some(value) = value else {
            return Some(self.fenced(fenced));
        };
        tokio::time::sleep(pause).await;
        if !self.still_held() {
            return Some(true);
        }
        // Now and then, in a long critical section, freeze between the check and the
        // access (the driver thaws us after the TTL): the write goes out under a token
        // that may be stale by then.
        if pause >= Duration::from_millis(100) && rand::rng().random_bool(SELF_FREEZE) {
            self.log.put(&Event::SelfFreeze { w, op, t: now_us() });
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
        }
        let t0 = now_us();
        let wrote = reg.write(token, value + 1).await;
        let t1 = now_us();
        let (ok, fenced) = match wrote {
            Ok(Reply::Ok(_)) => (true, None),
            Ok(Reply::Fenced(h)) => (false, Some(h)),
            Err(_) => (false, None),
        };
        self.log.put(&Event::Write {
            w,
            op,
            t0,
            t1,
            token,
            value: value + 1,
            ok,
            fenced,
        });
        if ok {
            None
        } else {
            Some(self.fenced(fenced))
        }
    }

    /// A fenced access means a newer holder exists: the lock is lost, whatever the
    /// session says. An unreachable register is only a failed operation.
    fn fenced(&self, fenced: Option<u64>) -> bool {
        match fenced {
            Some(h) => {
                self.lost(format!("fenced by token {h}"), "register");
                true
            }
            None => false,
        }
    }
}
