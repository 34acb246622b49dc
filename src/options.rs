//! [`ClientOptions`]: how a client behaves, whether it was built from a [`crate::Config`]
//! or by hand.

use std::time::Duration;

use queuelock_core::SessionOptions;

use crate::queue::{LossPolicy, NameLabel};

/// How a [`crate::Client`] behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Session TTL (etcd lease TTL, ZooKeeper session timeout). Default 15 s: a crashed
    /// holder's locks pass on within this time.
    pub ttl: Duration,
    /// When a held lock counts as lost. Default [`LossPolicy::OnSessionLoss`].
    pub loss_policy: LossPolicy,
    /// A label stored with every node this client creates (shown in holder metadata).
    pub label: Option<String>,
    /// Whether metrics carry the lock name as a `lock` label. Default
    /// [`NameLabel::None`]: every distinct name would be a time series.
    pub name_label: NameLabel,
    /// Lock-delay (Chubby's, Consul's): after a holder's node disappears because the
    /// holder was **lost** (its session expired or was revoked; not released), the next
    /// waiter is granted only this long after it saw the node go, so that writes a
    /// stalled former holder still has in flight drain first. A release hands off at
    /// once. Default zero: no delay, and nothing extra is read or written. Applies to
    /// mutexes (and so multi-locks), both sides of read-write locks, and elections; not
    /// to semaphores. Set it on every client of a lock: see the README's "Lock-delay".
    pub lock_delay: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ttl: SessionOptions::default().ttl,
            loss_policy: LossPolicy::default(),
            label: None,
            name_label: NameLabel::None,
            lock_delay: Duration::ZERO,
        }
    }
}

impl ClientOptions {
    /// Sets the session TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the loss policy.
    pub fn with_loss_policy(mut self, policy: LossPolicy) -> Self {
        self.loss_policy = policy;
        self
    }

    /// Sets how much of the lock name metrics carry as their `lock` label.
    pub fn with_name_label(mut self, name_label: NameLabel) -> Self {
        self.name_label = name_label;
        self
    }

    /// Sets the lock-delay after a lost holder ([`ClientOptions::lock_delay`]).
    pub fn with_lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = delay;
        self
    }

    /// Sets the label stored with this client's nodes.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}
