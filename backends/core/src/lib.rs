//! # queuelock-core — the backend contract
//!
//! queuelock's recipes (mutex, read-write lock, semaphore, election) are written once,
//! against the traits in this crate. A backend (etcd, ZooKeeper, the in-process memory
//! store, or a third-party one) implements [`Backend`] and [`Session`] and nothing else:
//!
//! * a **session** (an etcd lease kept alive, a ZooKeeper session) whose state is a value
//!   the caller can watch ([`SessionState`]); closing or losing it removes its nodes;
//! * **ephemeral sequential nodes**, created idempotently ([`Session::create_sequential`]),
//!   each carrying a position in its queue and a cluster-wide increasing fencing token;
//! * an ordered **listing** of a queue with the revision it was read at;
//! * a **deletion watch** on one key that cannot miss a deletion between a listing and
//!   the watch ([`Session::deleted`]);
//! * **identity-guarded deletes** and **writes guarded by a node's existence**;
//! * small key/value reads and writes.
//!
//! Keys are `/`-separated paths relative to the backend's root (the etcd prefix or the
//! ZooKeeper chroot); the backend maps them to its own namespace.
//!
//! This crate depends on no client library.
//!
//! Most users depend on the facade crate `queuelock`, which builds the recipes over a
//! backend chosen by URL; depend on this crate to implement a backend, or to drive one
//! through the contract directly:
//!
//! ```
//! use queuelock_core::{LockName, NodeKind, NodeSpec};
//!
//! // Names are validated before any backend sees them.
//! let name = LockName::new("billing/invoice-run").unwrap();
//! assert!(LockName::new("../escape").is_err());
//! // One attempt to join a queue: kind, payload, and an id that makes retries idempotent.
//! let spec = NodeSpec::new(name.as_str(), NodeKind::Lock, b"holder metadata".to_vec());
//! assert_eq!(spec.queue, "billing/invoice-run");
//! ```
//!
//! ## Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `testkit` | no | [`testkit`]: the backend-independent contract tests and the `Harness` trait that every backend crate's test suite and the recipe conformance suite run |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod backend;
mod error;
mod name;
mod node;
mod session;
mod tls;

pub use backend::{Backend, Session, SessionOptions};
pub use error::{BoxError, Error, Result};
pub use name::{LockName, NameError, MAX_NAME_LEN, MAX_SEGMENT_LEN};
pub use node::{Ahead, Created, Listing, Node, NodeKind, NodeSpec, Op, Revision, Turn};
pub use session::{LossReason, SessionId, SessionState, SessionStatus};
pub use tls::TlsPem;

#[cfg(feature = "testkit")]
pub mod testkit;
