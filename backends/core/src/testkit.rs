//! Test support shared by every backend: the [`Harness`] a backend's test suite
//! implements, and contract tests ([`contract`]) that check a backend against the
//! semantics documented on [`crate::Session`]. Enabled by the `testkit` feature.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Backend, SessionId};

/// What a test suite needs from a backend under test. One implementation per backend;
/// every contract and recipe test is written once against this trait.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// A backend on the store under test, with its **own connection** each call, so that
    /// two calls behave like two separate processes.
    async fn backend(&self) -> Arc<dyn Backend>;

    /// Makes session `id` expire the way the server would expire it (memory: expire now;
    /// etcd: revoke the lease from another connection; ZooKeeper: end the session from
    /// another connection). Returns once the server has dropped the session.
    async fn expire(&self, id: SessionId);

    /// A backend like [`Harness::backend`] whose link to the store the test can break
    /// and heal, returned with it. Keep the link alive as long as the backend.
    async fn backend_with_link(&self) -> (Arc<dyn Backend>, Box<dyn Link>);

    /// The session TTL tests should use: short, so expiry tests finish quickly.
    fn ttl(&self) -> Duration;

    /// A queue/lock name no other test uses (tests share one server).
    fn unique_name(&self, base: &str) -> String {
        format!("t/{base}-{}", uuid::Uuid::new_v4().simple())
    }
}

/// A backend's link to its store, as a test breaks it.
pub trait Link: Send + Sync {
    /// Nothing moves between the backend and the store: requests and answers wait,
    /// connections stay open (a partition TCP has not given up on yet).
    fn stall(&self);
    /// Every open connection breaks, with whatever it had not delivered, and new ones
    /// fail (a partition TCP gave up on, a crashed middlebox).
    fn cut(&self);
    /// Everything moves again.
    fn heal(&self);
}

pub mod contract;
pub mod proxy;
