//! The backend contract tests, run against the in-process store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queuelock_core::testkit::Harness;
use queuelock_core::{Backend, SessionId};
use queuelock_memory::MemoryBackend;

struct Memory(MemoryBackend);

#[async_trait]
impl Harness for Memory {
    async fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.0.clone())
    }
    async fn expire(&self, id: SessionId) {
        assert!(self.0.expire_session(id), "no session {id}");
    }
    fn ttl(&self) -> Duration {
        Duration::from_millis(600)
    }
}

queuelock_core::contract_tests!(Memory(MemoryBackend::new()));
