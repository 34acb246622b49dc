//! Idempotent create: a node per attempt, found again by the attempt's uuid after a lost
//! answer and adopted only if this session owns it.

use std::collections::{HashSet, VecDeque};

use queuelock_core::{Ahead, Created, Error, LossReason, Node, NodeSpec, Result};
use zookeeper_client::{Client, CreateMode, Error as ZkError};

use super::{ZkSession, MAX_RACES};
use crate::names;

/// The ids of recent create attempts, bounded: a retry follows its first try closely, and
/// forgetting a very old id only costs idempotence for an attempt nobody retries.
#[derive(Default)]
pub(super) struct Attempts {
    set: HashSet<uuid::Uuid>,
    order: VecDeque<uuid::Uuid>,
}

impl Attempts {
    const MAX: usize = 16_384;

    /// Records `id`; true if it was already there (this is a retry).
    pub(super) fn note(&mut self, id: uuid::Uuid) -> bool {
        if !self.set.insert(id) {
            return true;
        }
        self.order.push_back(id);
        if self.order.len() > Self::MAX {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        false
    }
}

impl ZkSession {
    /// Our node for `spec` if one exists and our session owns it (after a lost answer):
    /// found by the attempt's uuid among the children, adopted only if its
    /// `ephemeral_owner` is this session.
    pub(super) async fn find_own(
        &self,
        client: &Client,
        spec: &NodeSpec,
    ) -> Result<Option<(String, u64)>> {
        let dir = self.path(&spec.queue);
        let children = match client.list_children(&dir).await {
            Ok(c) => c,
            Err(ZkError::NoNode) => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        let marker = names::marker(spec, self.inner.options.naming);
        for name in children.into_iter().filter(|c| c.starts_with(&marker)) {
            let path = format!("{dir}/{name}");
            match client.check_stat(&path).await {
                Ok(Some(stat)) if stat.ephemeral_owner == self.id => {
                    return Ok(Some((format!("{}/{name}", spec.queue), stat.czxid as u64)))
                }
                Ok(Some(stat)) => tracing::warn!(
                    node = %path,
                    owner = format_args!("{:x}", stat.ephemeral_owner),
                    "a node carries our attempt's id but another session owns it: not adopted"
                ),
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(None)
    }

    /// Our node `key` (with `token`) and its turn from a fresh listing of its queue, after
    /// `find_own`.
    async fn adopt(
        &self,
        client: &Client,
        spec: &NodeSpec,
        key: String,
        token: u64,
    ) -> Result<Created> {
        let queue = spec.queue.as_str();
        let (children, stat) = client
            .get_children(&self.path(queue))
            .await
            .map_err(|e| self.fail(e))?;
        let created = answer(key, token, &children, stat.pzxid, spec.ahead)?;
        self.own(&created.node.key, created.node.token);
        Ok(created)
    }

    pub(super) async fn create_inner(&self, client: &Client, spec: &NodeSpec) -> Result<Created> {
        let dir = self.path(&spec.queue);
        let retry = self
            .attempted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(spec.id);
        if retry {
            if let Some((key, token)) = self.find_own(client, spec).await? {
                return self.adopt(client, spec, key, token).await;
            }
        }
        // Built once: the create's path and, with the sequence, our node's name.
        let stem = names::prefix(spec, self.inner.options.naming);
        let mut prefix = String::with_capacity(dir.len() + 1 + stem.len());
        prefix.push_str(&dir);
        prefix.push('/');
        prefix.push_str(&stem);
        let opts = CreateMode::EphemeralSequential.with_acls(self.inner.acls());
        let dir_opts = CreateMode::Container.with_acls(self.inner.acls());
        // Whether the parent was just found missing: then its create goes first, in the
        // same round trip.
        let mut missing = false;
        for _ in 0..MAX_RACES {
            // The requests are sent now, in this order (zookeeper-client sends when the
            // method is called, not when the future is polled), and awaited together:
            // one round trip, and the children read sees our node. A parent found
            // missing (an empty container the server reaped) is created in front of
            // them, still one round trip, rather than in one of its own.
            let parent =
                (missing && dir != self.inner.chroot).then(|| client.create(&dir, &[], &dir_opts));
            let create = client.create(&prefix, &spec.payload, &opts);
            let children = client.get_children(&dir);
            let parent = async {
                match parent {
                    Some(p) => p.await.map(|_| ()),
                    None => Ok(()),
                }
            };
            let (parent, created, children) = tokio::join!(parent, create, children);
            match parent {
                Ok(()) | Err(ZkError::NodeExists) => {}
                // Its own parent is missing too: the create below failed as well.
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(self.fail(e)),
            }
            match created {
                Ok((stat, seq)) => {
                    let key = format!("{}/{stem}{seq}", spec.queue);
                    let token = stat.czxid as u64;
                    self.own(&key, token);
                    let (children, parent) = children.map_err(|e| self.fail(e))?;
                    return answer(key, token, &children, parent.pzxid, spec.ahead);
                }
                Err(ZkError::NoNode) if !missing => {
                    // Parent missing (reaped as an empty container): create it in front
                    // of the next try.
                    missing = true;
                }
                Err(ZkError::NoNode) => {
                    // Still missing: an ancestor too, or the container was reaped again
                    // between its create and ours. Create the whole path, try again.
                    self.mkdirs(client, &dir).await?;
                }
                Err(ZkError::ConnectionLoss) => {
                    // The create may or may not have happened: look for it by its uuid.
                    if let Some((key, token)) = self.find_own(client, spec).await? {
                        return self.adopt(client, spec, key, token).await;
                    }
                    return Err(Error::connection("ZooKeeper connection lost during create"));
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        Err(Error::Backend {
            backend: "zookeeper",
            message: format!("parent {dir} keeps disappearing"),
            source: None,
        })
    }
}

/// The answer of a create whose node is `key` (with `token`), from the children read
/// behind it: [`Error::LockLost`] if the read does not show our node (it was deleted in
/// between).
fn answer(
    key: String,
    token: u64,
    children: &[String],
    pzxid: i64,
    ahead: Ahead,
) -> Result<Created> {
    let lost = || Error::LockLost(LossReason::NodeDeleted);
    let (queue, name) = key.rsplit_once('/').ok_or_else(lost)?;
    let (sequence, kind) = names::parse(name).ok_or_else(lost)?;
    let scan = super::scan(children, name, sequence, ahead).ok_or_else(lost)?;
    let turn = scan.turn(queue, children, pzxid);
    Ok(Created {
        node: Node {
            key,
            sequence,
            token,
            kind,
        },
        turn,
        ahead: Some(scan.before),
    })
}

#[cfg(test)]
mod tests {
    use super::Attempts;

    #[test]
    fn attempts_are_bounded_and_remember_recent_ids() {
        let mut a = Attempts::default();
        let first = uuid::Uuid::new_v4();
        assert!(!a.note(first));
        assert!(a.note(first), "a retry is recognised");
        for _ in 0..Attempts::MAX {
            a.note(uuid::Uuid::new_v4());
        }
        assert_eq!(a.set.len(), Attempts::MAX);
        assert_eq!(a.order.len(), Attempts::MAX);
        assert!(!a.note(first), "the oldest id is forgotten");
    }
}
