//! The history: what every process did and when, one JSON object a line. All processes
//! run on this machine and stamp events with CLOCK_MONOTONIC (shared by every process,
//! unaffected by wall-clock steps), in microseconds.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Microseconds on the system-wide monotonic clock.
pub fn now_us() -> u64 {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000
}

/// What a worker did. `op` numbers one acquire attempt and everything done under it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// The worker process started.
    Start { w: usize, pid: u32, t: u64 },
    /// `lock()` called.
    Invoke { w: usize, op: u64, t: u64 },
    /// `lock()` returned a guard.
    Granted {
        w: usize,
        op: u64,
        t: u64,
        token: u64,
        session: u64,
        key: String,
    },
    /// `lock()` failed or timed out.
    LockFailed {
        w: usize,
        op: u64,
        t: u64,
        timeout: bool,
        error: String,
    },
    /// A fenced read of the register: `value` if admitted, `fenced` (the register's
    /// highest token) if rejected, `error` if the register could not be reached.
    Read {
        w: usize,
        op: u64,
        t0: u64,
        t1: u64,
        token: u64,
        value: Option<u64>,
        fenced: Option<u64>,
    },
    /// A fenced write of `value`; `ok` if the register acknowledged it.
    Write {
        w: usize,
        op: u64,
        t0: u64,
        t1: u64,
        token: u64,
        value: u64,
        ok: bool,
        fenced: Option<u64>,
    },
    /// The holder learned it lost the lock (`via`: the `lost()` future, an `is_lost()`
    /// check, a fenced register, or `release()` reporting it).
    Lost {
        w: usize,
        op: u64,
        t: u64,
        reason: String,
        via: String,
    },
    /// `release()` called while the holder believed it held the lock.
    ReleaseStart { w: usize, op: u64, t: u64 },
    /// `release()` returned.
    Released {
        w: usize,
        op: u64,
        t: u64,
        error: Option<String>,
        timeout: bool,
    },
    /// The worker stops itself (SIGSTOP) right after checking it still holds the lock
    /// and right before a register access: the pause no client can guard against, which
    /// only the register's fencing can make harmless. The driver thaws it.
    SelfFreeze { w: usize, op: u64, t: u64 },
    /// The worker closed its client and is exiting normally.
    Done { w: usize, t: u64 },
}

/// A fault the nemesis injected, `t0` to `t1` (healed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    /// `leader-kill`, `freeze`, `blackhole`, `drop`, `delay`, `admin-expire`.
    pub kind: String,
    /// The worker it targeted (None: the whole cluster).
    pub worker: Option<usize>,
    /// What exactly (member, lease, delay...).
    pub detail: String,
    /// The session it ended (admin expiry).
    pub session: Option<u64>,
    pub t0: u64,
    pub t1: u64,
}

/// An access the register admitted or rejected, in the order it decided them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RegisterOp {
    pub t: u64,
    pub w: usize,
    pub write: bool,
    pub token: u64,
    /// The value read, or written.
    pub value: u64,
    pub admitted: bool,
}

/// Appends events to a file, one line each, flushed at once: a frozen or killed process
/// loses nothing it logged.
pub struct Log(std::sync::Mutex<std::fs::File>);

impl Log {
    pub fn create(path: &Path) -> Self {
        Log(std::sync::Mutex::new(
            std::fs::File::create(path).expect("history file"),
        ))
    }

    pub fn put<T: Serialize>(&self, e: &T) {
        let mut line = serde_json::to_vec(e).expect("event json");
        line.push(b'\n');
        self.0
            .lock()
            .expect("log")
            .write_all(&line)
            .expect("write history");
    }
}

/// Reads a JSON-lines file; a torn last line (a process killed mid-write) is skipped.
pub fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Vec<T> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}
