//! # queuelock — fair, fenced distributed locks on etcd, ZooKeeper or in-process
//!
//! queuelock gives Rust services coordination recipes that behave the same on every
//! backend:
//!
//! * **Fair queue**: waiters are granted in arrival order (FIFO).
//! * **No herd**: each waiter watches only the node just ahead of it; a release wakes one.
//! * **Fencing tokens**: every grant carries a token larger than every earlier one, to
//!   pass to the resource the lock protects.
//! * **Lost-lock signal**: [`MutexGuard::lost`] resolves the moment the lock is no longer
//!   safely held (session expiry, node deleted), to `select!` beside the work.
//! * **Clean cancellation**: dropping or timing out an acquire leaves nothing behind.
//! * **Backend swap by configuration**: `memory://` (default), `etcd://...`, `zk://...`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock::Result<()> {
//! // QUEUELOCK_URL picks the store; unset, it is the in-process one.
//! let client = queuelock::Client::from_env().await?;
//! let lock = client.mutex("billing/invoice-run")?;
//! let guard = lock.lock().await?;
//! tokio::select! {
//!     _ = async { /* the critical section, fenced with guard.fencing_token() */ } => {}
//!     reason = guard.lost() => eprintln!("lock lost: {reason}; stopping"),
//! }
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Recipes
//!
//! | recipe | guarantee |
//! |---|---|
//! | [`Client::mutex`] → [`Mutex`] | FIFO, exclusive, re-entrant through one handle |
//! | [`Client::rwlock`] → [`RwLock`] | FIFO; readers share until the next queued writer; writers never starve |
//! | [`Client::semaphore`] → [`Semaphore`] | at most `n` holders, FIFO admission |
//! | [`Client::election`] → [`Election`] | one leader; campaign, proclaim, resign, observe |
//! | [`Client::multilock`] → [`MultiLock`] | several locks all-or-nothing, deadlock-free |
//! | [`Client::barrier`] → [`Barrier`] | `wait` returns once the barrier is removed (or its setter's session is lost) |
//! | [`Client::double_barrier`] → [`DoubleBarrier`] | `enter` waits for `n` participants, `leave` for all to leave; a dead participant has left |
//! | [`Client::count_down_latch`] → [`CountDownLatch`] | `wait` returns after `n` `count_down`s, by anyone |
//!
//! Every grant is a guard with a fencing token, a `lost()` future and `release()`.
//!
//! ## Backends and feature flags
//!
//! Store backends are opt-in cargo features; the default builds the in-process store
//! only, with nothing but a Rust toolchain. A URL whose backend is not compiled in is an
//! [`Error::FeatureDisabled`] naming the feature to enable. The URL forms and options are
//! listed at [`Config::from_url`].
//!
//! | feature | default | URL | needs at build time |
//! |---|---|---|---|
//! | `memory` | yes | `memory://` | a Rust toolchain |
//! | `etcd` | no | `etcd://h1:2379,h2:2379/prefix` | `protoc` and protobuf's well-known types (Debian: `protobuf-compiler`, `libprotobuf-dev`) |
//! | `zookeeper` | no | `zk://h1:2181/chroot` | a C compiler (rustls' `aws-lc-rs`) |
//! | `redis` | no | `redis://h:6379/0?prefix=app` (`rediss://` for TLS) | a C compiler (rustls' `aws-lc-rs`) |
//! | `postgres` | no | `postgres://user:pass@h:5432/db?schema=queuelock` | a C compiler (rustls' `aws-lc-rs`) |
//! | `cli` | no | — | the `queuelock` command (`cargo install queuelock --features cli,etcd,zookeeper`) |
//!
//! ```toml
//! [dependencies]
//! queuelock = { version = "0.1", features = ["etcd"] }
//! ```
//!
//! The architecture: recipes live in this crate, over the backend contract of
//! [`queuelock_core`] ([`backend`]); the shared queue algorithm is in one place and every
//! recipe uses it.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Layers, bottom up (imports point down only): `queue` (the one queue algorithm, over a
// small context, and the session source a client gives it) and `guard`; the recipes;
// `options` and `client`; `config` and `connect` (from a URL or serde value to a
// connected client).
mod barrier;
mod client;
mod config;
mod connect;
mod election;
mod guard;
mod latch;
pub mod metadata;
mod multilock;
mod mutex;
mod options;
mod queue;
mod rwlock;
mod semaphore;

pub use barrier::{Barrier, DoubleBarrier, Entered};
pub use client::{Client, ClientStats};
pub use config::{BackendConfig, Config, Secret, TlsConfig, ZkNaming};
pub use election::{Election, Leader, Leadership};
pub use guard::Guard;
pub use latch::CountDownLatch;
pub use multilock::{MultiGuard, MultiLock};
pub use mutex::{Mutex, MutexGuard, Revocation};
pub use options::ClientOptions;
pub use queue::{describe_metrics, LossPolicy, NameLabel};
pub use queuelock_core::{Error, LockName, LossReason, NameError, Result, SessionId, SessionState};
pub use rwlock::RwLock;
pub use semaphore::Semaphore;

/// The backend contract, for implementing or driving a backend directly.
pub mod backend {
    pub use queuelock_core::*;
}

/// The in-process backend, with fault injection for tests.
#[cfg(feature = "memory")]
pub use queuelock_memory::MemoryBackend;
