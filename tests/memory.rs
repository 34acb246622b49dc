//! The conformance suite on the in-process backend, plus memory-only tests that need its
//! fault injection: herd-freedom and a randomized fault schedule.

mod conformance;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use queuelock::backend::testkit::Harness;
use queuelock::backend::{Backend, SessionId};
use queuelock::{Client, ClientOptions, MemoryBackend, MutexGuard};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct Memory(pub MemoryBackend);

#[async_trait]
impl Harness for Memory {
    async fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.0.clone())
    }
    async fn expire(&self, id: SessionId) {
        assert!(self.0.expire_session(id), "no session {id}");
    }
    fn ttl(&self) -> Duration {
        Duration::from_millis(800)
    }
}

conformance_tests!(Memory(MemoryBackend::new()));
