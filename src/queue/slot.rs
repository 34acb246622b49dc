//! [`SessionSlot`]: the one session a client shares among all its locks, opened on
//! demand and replaced when lost: the session source a `Client` gives the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use queuelock_core::{Backend, Error, Result, Session, SessionOptions, SessionState};

use super::SessionSource;

/// A backend's session for a client: at most one open, shared by every acquire.
pub(crate) struct SessionSlot {
    backend: Arc<dyn Backend>,
    ttl: Duration,
    current: StdMutex<Option<Arc<dyn Session>>>,
    /// Serialises opening a session so concurrent acquires share one.
    opening: tokio::sync::Mutex<()>,
    closed: AtomicBool,
}

impl SessionSlot {
    /// A slot that opens sessions with `ttl` on `backend`.
    pub(crate) fn new(backend: Arc<dyn Backend>, ttl: Duration) -> Self {
        SessionSlot {
            backend,
            ttl,
            current: StdMutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        }
    }

    /// The open session, if there is one and it is not lost (never opens one).
    pub(crate) fn current(&self) -> Option<Arc<dyn Session>> {
        let slot = self.current.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|s| *s.state().borrow() != SessionState::Lost)
            .cloned()
    }

    /// Closes the session; later calls to [`SessionSource::session`] fail with
    /// [`Error::Closed`].
    ///
    /// Cancel safety: safe; the session is closed at the latest when its last handle is
    /// dropped.
    pub(crate) async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::SeqCst);
        let session = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match session {
            Some(s) => s.close().await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl SessionSource for SessionSlot {
    /// The live session, opening a new one if there is none or the last one was lost.
    ///
    /// Cancel safety: safe; a dropped call opens no session, or one that the next call uses.
    async fn session(&self) -> Result<Arc<dyn Session>> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _opening = self.opening.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let options = SessionOptions::with_ttl(self.ttl);
        let session = self.backend.open_session(&options).await?;
        tracing::debug!(backend = self.backend.name(), session = %session.id(), "session opened");
        super::telemetry::watch_session(self.backend.name(), session.state());
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.clone());
        Ok(session)
    }
}
