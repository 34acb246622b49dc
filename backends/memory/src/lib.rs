//! # queuelock-memory — the in-process backend
//!
//! A coordination store that lives in the process: the embedded default for single-process
//! use (`memory://`), examples and fast tests. It keeps the semantics of a real server —
//! sessions expire after their TTL unless kept alive, closing or losing a session removes
//! its nodes atomically, revisions and fencing tokens grow monotonically, deletion watches
//! fire once — and adds **fault injection** for tests: expire a session now, suspend and
//! resume a session's "connection", delay every operation.
//!
//! Clones of a [`MemoryBackend`] share one store, so several clients built on clones
//! contend with each other as separate processes would on a real server.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock_core::Result<()> {
//! use queuelock_core::{Backend, NodeKind, NodeSpec, SessionOptions};
//! use queuelock_memory::MemoryBackend;
//!
//! let store = MemoryBackend::new();
//! let session = store.open_session(&SessionOptions::default()).await?;
//! let created = session.create_sequential(&NodeSpec::new("jobs", NodeKind::Lock, vec![])).await?;
//! assert_eq!(created.listing.nodes, vec![created.node.clone()]);
//! store.expire_session(session.id());
//! assert!(session.list("jobs").await.is_err()); // our session is gone
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod store;

pub use store::{MemoryBackend, MemorySession};

/// The test [`queuelock_core::testkit::Harness`] for the in-process backend.
#[cfg(feature = "testkit")]
pub mod testkit {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use queuelock_core::testkit::Harness;
    use queuelock_core::{Backend, SessionId};

    use crate::MemoryBackend;

    /// Every backend it hands out shares one fresh store; sessions expire after 800 ms.
    #[derive(Clone, Debug, Default)]
    pub struct MemoryHarness(pub MemoryBackend);

    #[async_trait]
    impl Harness for MemoryHarness {
        async fn backend(&self) -> Arc<dyn Backend> {
            Arc::new(self.0.clone())
        }

        async fn expire(&self, id: SessionId) {
            assert!(self.0.expire_session(id), "no open memory session {id}");
        }

        fn ttl(&self) -> Duration {
            Duration::from_millis(800)
        }
    }
}
