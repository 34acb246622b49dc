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
//! assert_eq!(created.turn.blocker, None); // first in the queue: nothing to wait for
//! store.expire_session(session.id());
//! assert!(session.list("jobs").await.is_err()); // our session is gone
//! # Ok(()) }
//! ```
//!
//! ## Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `testkit` | no | `testkit::MemoryHarness`: this backend under queuelock-core's test `Harness` (fresh stores, expire a session, stall a client) |
//!
//! Building needs a Rust toolchain and nothing else.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod store;

pub use store::{MemoryBackend, MemorySession};

/// The test [`queuelock_core::testkit::Harness`] for the in-process backend.
#[cfg(feature = "testkit")]
pub mod testkit {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use std::sync::Mutex as StdMutex;

    use queuelock_core::testkit::{Harness, Link};
    use queuelock_core::{Backend, Result, Session, SessionId, SessionOptions};

    use crate::MemoryBackend;

    /// Every backend it hands out shares one fresh store; sessions expire after 800 ms.
    #[derive(Clone, Debug, Default)]
    pub struct MemoryHarness(pub MemoryBackend);

    /// A backend on the harness's store that remembers the sessions it opened, so that
    /// its [`Link`] can cut exactly those.
    #[derive(Debug)]
    struct Linked {
        store: MemoryBackend,
        sessions: Arc<StdMutex<Vec<SessionId>>>,
    }

    #[async_trait]
    impl Backend for Linked {
        fn name(&self) -> &'static str {
            "memory"
        }

        async fn open_session(&self, options: &SessionOptions) -> Result<Arc<dyn Session>> {
            let s = self.store.open_session(options).await?;
            self.sessions.lock().expect("sessions").push(s.id());
            Ok(s)
        }
    }

    /// The in-process store has no wire: a stalled or cut link is a suspended session
    /// (its operations fail with a connection error, its watches wait, keep-alives stop).
    struct MemoryLink {
        store: MemoryBackend,
        sessions: Arc<StdMutex<Vec<SessionId>>>,
    }

    impl MemoryLink {
        fn each(&self, f: impl Fn(SessionId)) {
            for &id in self.sessions.lock().expect("sessions").iter() {
                f(id);
            }
        }
    }

    impl Link for MemoryLink {
        fn stall(&self) {
            self.each(|id| {
                self.store.suspend_session(id);
            });
        }
        fn cut(&self) {
            self.stall();
        }
        fn heal(&self) {
            self.each(|id| {
                self.store.resume_session(id);
            });
        }
    }

    #[async_trait]
    impl Harness for MemoryHarness {
        async fn backend(&self) -> Arc<dyn Backend> {
            Arc::new(self.0.clone())
        }

        async fn backend_with_link(&self) -> (Arc<dyn Backend>, Box<dyn Link>) {
            let sessions = Arc::new(StdMutex::new(Vec::new()));
            let backend = Linked {
                store: self.0.clone(),
                sessions: sessions.clone(),
            };
            let link = MemoryLink {
                store: self.0.clone(),
                sessions,
            };
            (Arc::new(backend), Box::new(link))
        }

        async fn expire(&self, id: SessionId) {
            assert!(self.0.expire_session(id), "no open memory session {id}");
        }

        fn ttl(&self) -> Duration {
            Duration::from_millis(800)
        }
    }
}
