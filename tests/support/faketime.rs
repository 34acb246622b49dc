//! A stepped wall clock for child processes: Debian's libfaketime (`apt-get install
//! faketime`) preloaded into the processes a test starts, reading its offset from a file
//! that [`FakeClock::set_offset`] rewrites at runtime. Only `CLOCK_REALTIME` (and what is
//! derived from it: `gettimeofday`, `time`, Rust's `SystemTime`) is shifted;
//! `CLOCK_MONOTONIC` (Rust's `Instant`, tokio's timers) is left alone
//! (`FAKETIME_DONT_FAKE_MONOTONIC=1`).
//!
//! Measured on Debian 12, libfaketime 0.9.10: a running Rust process sees `SystemTime`
//! jump by the new offset on its next read after the file changes (no cache), while
//! `Instant` keeps counting real time; a wall-clock read costs ~12 µs under it (the file
//! is re-read), a monotonic read is unchanged (~35 ns).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::TempDir;

/// The multi-threaded variant (`libfaketimeMT`): its state is guarded for programs that
/// read the clock from several threads at once (tokio's workers, PostgreSQL's and
/// Redis's threads).
const LIB: &str = "libfaketimeMT.so.1";

/// Where Debian's `libfaketime` package puts its preload libraries.
fn find_lib() -> PathBuf {
    let known = [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
        "/usr/lib64/faketime",
    ];
    if let Some(p) = known
        .iter()
        .map(|d| Path::new(d).join(LIB))
        .find(|p| p.is_file())
    {
        return p;
    }
    // Another multiarch path: ask dpkg where the package put it.
    Command::new("dpkg")
        .args(["-L", "libfaketime"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(PathBuf::from)
                .find(|p| p.file_name().is_some_and(|n| n == LIB) && p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "libfaketime ({LIB}) is not installed: apt-get install faketime \
                 (./scripts/test does it)"
            )
        })
}

/// A wall-clock offset shared by every process it is applied to.
pub struct FakeClock {
    dir: TempDir,
    lib: PathBuf,
}

impl FakeClock {
    /// A clock at offset 0 (real time), its control file in a fresh temp dir. Panics when
    /// libfaketime is not installed.
    pub fn new() -> FakeClock {
        let lib = find_lib();
        let dir = TempDir::new("queuelock-faketime");
        let clock = FakeClock { dir, lib };
        clock.set_offset(0);
        clock
    }

    /// The control file libfaketime reads (`+N` / `-N` seconds from real time).
    pub fn file(&self) -> PathBuf {
        self.dir.0.join("offset")
    }

    /// The environment that puts a process under this clock.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.lib.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.file().display().to_string(),
            ),
            // Re-read the file on every wall-clock read, so a step shows at once.
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            // Only CLOCK_REALTIME moves: timers and leases run on CLOCK_MONOTONIC.
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }

    /// Puts the process `cmd` will start (and its children) under this clock.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.envs(self.env());
    }

    /// Steps the wall clock of every process under this clock to real time + `secs`, at
    /// once (the file is replaced atomically, so no reader sees it half-written).
    pub fn set_offset(&self, secs: i64) {
        let tmp = self.dir.0.join("offset.tmp");
        std::fs::write(&tmp, format!("{secs:+}\n")).expect("write the faketime offset");
        std::fs::rename(&tmp, self.file()).expect("replace the faketime offset");
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}
