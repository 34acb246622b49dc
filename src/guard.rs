//! [`Guard`]: proof of holding a lock, a read or write lock, or a semaphore permit — one
//! type for every recipe.

use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};

use queuelock_core::{Error, LockName, LossReason, Op, Result, SessionId};

use crate::queue::Lease;

/// Who decides when the node goes: the guard itself, or a re-entrant handle's count.
enum Hold {
    /// The guard owns the node: releasing it deletes the node.
    Single,
    /// A re-entrant handle counts its holds; the node goes with the last.
    Counted(Arc<HoldCount>),
}

/// The holds of one re-entrant handle (a [`crate::Mutex`]): the lease it holds and how
/// many guards share it. The node is deleted when the last guard goes.
#[derive(Debug, Default)]
pub(crate) struct HoldCount {
    held: StdMutex<Option<Held>>,
}

#[derive(Debug)]
struct Held {
    lease: Arc<Lease>,
    count: usize,
}

impl HoldCount {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many guards hold the lease (0: not held).
    pub(crate) fn holds(&self) -> usize {
        self.slot().as_ref().map_or(0, |h| h.count)
    }

    /// One more guard of the lease this handle holds, if it holds one; fails with
    /// [`Error::LockLost`] if that lease is lost.
    pub(crate) fn reenter(self: &Arc<Self>, name: &Arc<str>) -> Result<Option<Guard>> {
        let mut slot = self.slot();
        let Some(held) = slot.as_mut() else {
            return Ok(None);
        };
        if let Some(reason) = held.lease.loss() {
            return Err(Error::LockLost(reason));
        }
        held.count += 1;
        Ok(Some(self.guard(name, held.lease.clone())))
    }

    /// The first guard of a freshly granted lease.
    pub(crate) fn install(self: &Arc<Self>, name: &Arc<str>, lease: Arc<Lease>) -> Guard {
        *self.slot() = Some(Held {
            lease: lease.clone(),
            count: 1,
        });
        self.guard(name, lease)
    }

    fn guard(self: &Arc<Self>, name: &Arc<str>, lease: Arc<Lease>) -> Guard {
        Guard::with_hold(name.clone(), lease, Hold::Counted(self.clone()))
    }

    /// Drops one hold; returns the lease when it was the last.
    fn leave(&self) -> Option<Arc<Lease>> {
        let mut slot = self.slot();
        let held = slot.as_mut()?;
        held.count -= 1;
        if held.count == 0 {
            slot.take().map(|h| h.lease)
        } else {
            None
        }
    }
}

/// Proof of holding a lock (or a read/write side, or a semaphore permit).
///
/// Dropping it releases in the background; [`Guard::release`] releases and reports.
#[must_use = "the lock is released when the guard is dropped"]
pub struct Guard {
    name: Arc<str>,
    lease: Arc<Lease>,
    hold: Hold,
    done: bool,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("name", &self.name)
            .field("key", &self.lease.node().key)
            .field("fencing_token", &self.lease.node().token)
            .field("lost", &self.lease.loss())
            .finish()
    }
}

impl Guard {
    /// A guard that owns its node.
    pub(crate) fn new(name: Arc<str>, lease: Arc<Lease>) -> Self {
        Self::with_hold(name, lease, Hold::Single)
    }

    fn with_hold(name: Arc<str>, lease: Arc<Lease>, hold: Hold) -> Self {
        Guard {
            name,
            lease,
            hold,
            done: false,
        }
    }

    /// The fencing token of this grant: larger than that of every earlier grant of any
    /// lock in the store. Pass it to the resource you protect and have it reject writes
    /// carrying a token lower than the highest it has seen: a holder that lost the lock
    /// without knowing (a long GC pause, a partition) cannot then overwrite a newer
    /// holder's work.
    pub fn fencing_token(&self) -> u64 {
        self.lease.node().token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key of our node in the store (for operators and debugging).
    pub fn key(&self) -> &str {
        &self.lease.node().key
    }

    /// The session that holds the lock.
    pub fn session_id(&self) -> SessionId {
        self.lease.session().id()
    }

    /// Why the lock is no longer safely held, if it is not: checked against the session's
    /// state right now, without waiting.
    pub fn is_lost(&self) -> Option<LossReason> {
        self.lease.loss()
    }

    /// Resolves when the lock is lost: the session expired or was closed, (with
    /// [`crate::LossPolicy::OnSuspension`]) the connection is suspended, or someone else
    /// deleted our node. Never resolves while the lock is safely held. `select!` on it
    /// beside the critical section to stop work the moment the lock goes.
    ///
    /// Cancel safety: safe; call it again at will.
    pub async fn lost(&self) -> LossReason {
        self.lease.lost().await
    }

    /// Resolves once a revocation of this hold has been requested
    /// ([`crate::Mutex::request_revoke`], `queuelock revoke NAME`, Curator's
    /// `Revoker.attemptRevoke` on ZooKeeper), for a hold of a [`crate::Mutex`] made
    /// [`crate::Mutex::revocable`]; never for any other hold. Resolves at once for a hold
    /// that was already asked. It is a request, not a loss: the lock stays held until the
    /// holder releases it, so `select!` on it beside the work, finish or checkpoint, then
    /// [`Guard::release`].
    ///
    /// Cancel safety: safe; call it again at will (the request stays seen).
    pub async fn revoke_requested(&self) {
        self.lease.revoke_requested().await
    }

    /// Whether a revocation of this hold has been requested and seen
    /// ([`Guard::revoke_requested`]), checked without waiting.
    pub fn is_revoke_requested(&self) -> bool {
        self.lease.is_revoke_requested()
    }

    /// Atomically applies `writes` to keys in the coordination store **only if this lock
    /// is still held** (etcd: a transaction comparing our node's revision; ZooKeeper: a
    /// `multi` with a `check` of our node). Fails with [`Error::LockLost`], writing
    /// nothing, once the node is gone — so a holder that lost the lock without noticing
    /// cannot clobber its successor's data. Keys are validated like lock names and live
    /// under the client's prefix/chroot. `Some(value)` puts, `None` deletes.
    ///
    /// For resources outside the store, pass [`Guard::fencing_token`] instead and have
    /// the resource reject tokens lower than the highest it has seen.
    ///
    /// Cancel safety: a dropped call may or may not have applied the whole batch (never
    /// a part of it).
    pub async fn fenced_write<K, V>(
        &self,
        writes: impl IntoIterator<Item = (K, Option<V>)>,
    ) -> Result<()>
    where
        K: AsRef<str>,
        V: Into<Vec<u8>>,
    {
        let mut ops = Vec::new();
        for (key, value) in writes {
            let key = LockName::new(key.as_ref())?.as_str().to_owned();
            ops.push(match value {
                Some(v) => Op::Put {
                    key,
                    value: v.into(),
                },
                None => Op::Delete { key },
            });
        }
        self.guarded(&ops).await
    }

    /// Applies `ops` only while the lock is held; a lost lock (or its lost session) is
    /// [`Error::LockLost`].
    pub(crate) async fn guarded(&self, ops: &[Op]) -> Result<()> {
        if let Some(reason) = self.lease.loss() {
            return Err(Error::LockLost(reason));
        }
        let session = self.lease.session();
        match crate::queue::retry(&**session, || session.guarded(self.lease.node(), ops)).await {
            Err(Error::SessionExpired(_)) => Err(Error::LockLost(LossReason::SessionLost)),
            other => other,
        }
    }

    /// Reads a key of the coordination store (for data written with
    /// [`Guard::fenced_write`]).
    ///
    /// Cancel safety: safe (read only).
    pub async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = LockName::new(key)?;
        let session = self.lease.session();
        crate::queue::retry(&**session, || session.get(key.as_str())).await
    }

    /// Releases this hold and, unless a re-entrant handle still holds the lock, deletes
    /// the node so the next waiter is granted. Fails with [`Error::LockLost`] if the lock
    /// had already been lost (work done under it may have overlapped another holder's);
    /// with a connection error the deletion keeps being retried in the background until
    /// the session ends.
    ///
    /// Cancel safety: safe; once called, the release completes even if the future is
    /// dropped.
    pub async fn release(mut self) -> Result<()> {
        self.done = true;
        let last = match &self.hold {
            Hold::Single => Some(self.lease.clone()),
            Hold::Counted(m) => m.leave(),
        };
        match last {
            Some(lease) => lease.release().await,
            None => match self.lease.loss() {
                Some(r) => Err(Error::LockLost(r)),
                None => Ok(()),
            },
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match &self.hold {
            Hold::Single => self.lease.release_in_background(),
            Hold::Counted(m) => {
                if let Some(lease) = m.leave() {
                    lease.release_in_background();
                }
            }
        }
    }
}
