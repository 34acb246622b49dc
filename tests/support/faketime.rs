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

    /// [`FakeClock::env`] for a program linked with jemalloc (Debian's `redis-server`):
    /// libfaketime cannot initialise under jemalloc (jemalloc reads the clock while
    /// libfaketime is resolving its symbols; libfaketime issue #130, "Unexpected recursive
    /// calls to clock_gettime()"), so glibc's `libc_malloc_debug` is preloaded first and
    /// the program allocates with glibc's malloc instead.
    pub fn env_for_jemalloc(&self) -> Vec<(String, String)> {
        let glibc = self
            .lib
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("libc_malloc_debug.so.0"));
        let glibc = glibc
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"));
        assert!(glibc.is_file(), "glibc's {} is missing", glibc.display());
        let mut env = self.env();
        env[0].1 = format!("{}:{}", glibc.display(), self.lib.display());
        env
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

impl Drop for FakeClock {
    /// libfaketime shares its state through `/dev/shm/faketime_shm_PID` and
    /// `sem.faketime_sem_PID`, which the creating process removes only when it exits
    /// normally: remove those whose process is gone (a server or holder killed by a test).
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/dev/shm") else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("faketime_shm_")
                .or_else(|| name.strip_prefix("sem.faketime_sem_"));
            if let Some(pid) = pid.filter(|p| p.bytes().all(|b| b.is_ascii_digit())) {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}
