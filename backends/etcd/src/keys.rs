//! Mapping contract keys (relative paths) to etcd keys, and queue node names.

use std::collections::{HashMap, HashSet};

use queuelock_core::{NodeKind, NodeSpec};

/// Key layout under the configured prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// `""` or `"/app/"`: prepended to every relative key.
    base: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        let p = prefix.trim_end_matches('/');
        Keys {
            base: if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            },
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.base
    }

    /// The etcd key of a relative key.
    pub(crate) fn abs(&self, rel: &str) -> String {
        format!("{}{rel}", self.base)
    }

    /// The relative key of an etcd key under the prefix.
    pub(crate) fn rel<'a>(&self, abs: &'a str) -> &'a str {
        abs.strip_prefix(&self.base).unwrap_or(abs)
    }

    /// The etcd prefix of a queue's nodes: `<prefix><queue>/`.
    pub(crate) fn queue_dir(&self, queue: &str) -> String {
        format!("{}{queue}/", self.base)
    }

    /// The etcd key of a queue node: the lease, the kind and the session's slot number
    /// for the attempt (see [`Slots`]).
    pub(crate) fn node(&self, lease: i64, spec: &NodeSpec, slot: u32) -> String {
        format!(
            "{}{:x}-{}-{slot}",
            self.queue_dir(&spec.queue),
            lease,
            spec.kind.tag(),
        )
    }

    /// Marks an attempt abandoned (outside every queue: `~` is not allowed in names), so
    /// a create for it still in flight cannot take effect after `abandon`.
    pub(crate) fn tombstone(&self, lease: i64, spec: &NodeSpec) -> String {
        format!(
            "{}~queuelock/abandoned/{:x}-{}",
            self.base,
            lease,
            spec.id.simple()
        )
    }
}

/// Which key each of a session's live attempts uses: the lowest slot number of its queue
/// that no other live attempt of the session holds, so a session that takes one lock
/// after another uses the same key every time.
///
/// Why reuse keys: etcd keeps every deleted key in its in-memory index until the next
/// compaction, and a range over a queue (each create and each waiter's read) visits all
/// of them. With a fresh key per attempt, a queue's reads grew with every grant since
/// the last compaction (profiled: the index walk was the largest part of the server's
/// CPU at 128 contenders, and it made a 1,000-waiter drain quadratic). Go's Mutex
/// (`etcdctl lock`) reuses one key per session for the same reason.
///
/// A slot stays taken until the session knows its node is gone: deleted by this session
/// (with the token it created), or its attempt abandoned (the tombstone, which stays per
/// attempt id, stops a create still in flight). So a retried create of the same attempt
/// finds the key of its first try, and a reused key is only ever re-created after its
/// previous node's deletion; waiters tell the two nodes apart by create revision.
///
/// That also makes this session's own deletes exact without a compare: while its slot is
/// taken, the key holds the attempt's node or nothing. A removal that may still reach
/// the server after it has been given up on (an error without an answer, a dropped
/// call) could remove a later node of a reused key, so its slot is *retired*: never
/// freed, never reused, for the rest of the session.
#[derive(Default, Debug)]
pub(crate) struct Slots {
    /// Attempt id -> (queue, slot).
    by_attempt: HashMap<uuid::Uuid, (String, u32)>,
    /// (queue, slot) -> the attempt holding it and its node's token once created.
    taken: HashMap<(String, u32), (uuid::Uuid, Option<u64>)>,
    /// Slots a removal without an answer may still reach: taken for good.
    retired: HashSet<(String, u32)>,
}

impl Slots {
    /// The slot of `spec`'s attempt, taking the lowest free one of its queue if the
    /// attempt has none yet.
    pub(crate) fn take(&mut self, spec: &NodeSpec) -> u32 {
        if let Some((_, slot)) = self.by_attempt.get(&spec.id) {
            return *slot;
        }
        let mut slot = 0;
        while self.taken.contains_key(&(spec.queue.clone(), slot)) {
            slot += 1;
        }
        self.by_attempt.insert(spec.id, (spec.queue.clone(), slot));
        self.taken
            .insert((spec.queue.clone(), slot), (spec.id, None));
        slot
    }

    /// The slot of `spec`'s attempt, if it has one.
    pub(crate) fn get(&self, spec: &NodeSpec) -> Option<u32> {
        self.by_attempt.get(&spec.id).map(|(_, s)| *s)
    }

    /// Records the token of the node created for `spec`.
    pub(crate) fn created(&mut self, spec: &NodeSpec, token: u64) {
        if let Some((queue, slot)) = self.by_attempt.get(&spec.id) {
            if let Some(entry) = self.taken.get_mut(&(queue.clone(), *slot)) {
                entry.1 = Some(token);
            }
        }
    }

    /// Frees the slot of an attempt whose node is gone (or never was).
    pub(crate) fn forget(&mut self, id: uuid::Uuid) {
        if let Some(key) = self.by_attempt.remove(&id) {
            if !self.retired.contains(&key) {
                self.taken.remove(&key);
            }
        }
    }

    /// Whether `token` is the node of a live attempt in `queue`'s `slot`: then the key
    /// holds that node or nothing, and a plain delete removes exactly it.
    pub(crate) fn holds(&self, queue: &str, slot: u32, token: u64) -> bool {
        matches!(
            self.taken.get(&(queue.to_owned(), slot)),
            Some((_, Some(t))) if *t == token
        )
    }

    /// Takes `queue`'s `slot` for good: a removal of its node may still arrive.
    pub(crate) fn retire(&mut self, queue: &str, slot: u32) {
        let key = (queue.to_owned(), slot);
        if self.taken.contains_key(&key) {
            self.retired.insert(key);
        }
    }

    /// Frees the slot whose node is `token` in `queue` (after this session deleted it).
    /// A stale token (an older node of a reused slot) frees nothing.
    pub(crate) fn deleted(&mut self, queue: &str, slot: u32, token: u64) {
        let key = (queue.to_owned(), slot);
        if let Some((id, Some(t))) = self.taken.get(&key) {
            if *t == token {
                let id = *id;
                self.by_attempt.remove(&id);
                if !self.retired.contains(&key) {
                    self.taken.remove(&key);
                }
            }
        }
    }

    /// How many slots are taken (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.taken.len()
    }
}

/// The queue and slot of a node key of `lease` (`<queue>/<lease hex>-<kind>-<slot>`),
/// if it is one of this session's.
pub(crate) fn slot_of(key: &str, lease: i64) -> Option<(&str, u32)> {
    if lease_of(key)? != lease {
        return None;
    }
    let (queue, name) = key.rsplit_once('/')?;
    let slot = name.splitn(3, '-').nth(2)?.parse().ok()?;
    Some((queue, slot))
}

impl Keys {
    /// The revocation request of the node at relative key `node`: a key beside it,
    /// outside every queue (`~` is not allowed in names), so that neither queuelock nor
    /// `etcdctl lock` (which queues behind every key under the lock's prefix) sees it.
    pub(crate) fn revoke(&self, node: &str) -> String {
        format!("{}~queuelock/revoke/{node}", self.base)
    }
}

/// The lease that owns a queue node, from its name (`<lease hex>-<kind>-<slot>`, older
/// versions' `<lease hex>-<kind>-<uuid>`, or
/// `etcdctl lock`'s `<lease hex>`).
pub(crate) fn lease_of(key: &str) -> Option<i64> {
    let name = key.rsplit('/').next()?;
    let hex = name.split('-').next()?;
    u64::from_str_radix(hex, 16).ok().map(|l| l as i64)
}

/// Whether the node at `key` is one whose key this version of queuelock writes again
/// only while it holds, and then holds exclusively (nothing older left in its queue): an
/// exclusive node in today's layout (`<lease hex>-<kind>-<slot>`). A reader holds beside
/// older readers; other tools' and older versions' nodes may be written while waiting
/// (Go's `Campaign` again with a new value). So a version above 1 of such a key, seen as
/// it is deleted, means it was held (see [`crate::session`]'s `mark_held`).
pub(crate) fn written_only_while_held(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or_default();
    let mut parts = name.splitn(3, '-');
    let (lease, tag, slot) = (parts.next(), parts.next(), parts.next());
    let ours = lease.is_some_and(|l| u64::from_str_radix(l, 16).is_ok())
        && slot.is_some_and(|s| s.parse::<u32>().is_ok());
    ours && matches!(
        tag.map(NodeKind::from_tag),
        Some(NodeKind::Lock | NodeKind::Write | NodeKind::Latch | NodeKind::Permit)
    )
}

/// The kind of a node from its name (the last path segment). Names written by other
/// tools (`etcdctl lock`: just the lease id) are `Unknown`, which recipes treat as
/// exclusive.
pub(crate) fn parse_kind(name: &str) -> NodeKind {
    let mut parts = name.splitn(3, '-');
    let (_lease, tag) = (parts.next(), parts.next());
    tag.map_or(NodeKind::Unknown, NodeKind::from_tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("/app/");
        assert_eq!(k.abs("a/b"), "/app/a/b");
        assert_eq!(k.rel("/app/a/b"), "a/b");
        assert_eq!(k.queue_dir("q"), "/app/q/");
        let spec = NodeSpec::new("q", NodeKind::Read, vec![]);
        let key = k.node(0x694d77e1b3c8f20a, &spec, 3);
        assert_eq!(key, "/app/q/694d77e1b3c8f20a-read-3");
        assert_eq!(slot_of(k.rel(&key), 0x694d77e1b3c8f20a), Some(("q", 3)));
        assert_eq!(slot_of(k.rel(&key), 0x694d77e1b3c8f20b), None);
        assert_eq!(slot_of("q/694d77e1b3c8f20a", 0x694d77e1b3c8f20a), None);
        assert_eq!(
            parse_kind(key.rsplit('/').next().unwrap_or_default()),
            NodeKind::Read
        );
        assert!(!written_only_while_held(k.rel(&key)), "a reader");
        let spec = NodeSpec::new("q", NodeKind::Write, vec![]);
        assert!(written_only_while_held(k.rel(&k.node(
            0x694d77e1b3c8f20a,
            &spec,
            3
        ))));
        assert!(
            !written_only_while_held("q/694d77e1b3c8f20a"),
            "etcdctl lock's"
        );
        assert!(
            !written_only_while_held("q/694d77e1b3c8f20a-lock-6f1b2c3d-9e8f-4a5b"),
            "an older version's"
        );
        assert_eq!(parse_kind("694d77e1b3c8f20a"), NodeKind::Unknown);
        assert_eq!(Keys::new("").abs("x"), "x");
        assert_eq!(
            k.revoke("q/1f-lock-ab"),
            "/app/~queuelock/revoke/q/1f-lock-ab"
        );
        assert_eq!(
            lease_of("q/694d77e1b3c8f20a-read-x"),
            Some(0x694d77e1b3c8f20a)
        );
        assert_eq!(lease_of("q/694d77e1b3c8f20a"), Some(0x694d77e1b3c8f20a));
        assert_eq!(lease_of("q/zz"), None);
    }

    #[test]
    fn slots_are_reused_once_free_and_kept_per_attempt() {
        let mut slots = Slots::default();
        let a = NodeSpec::new("q", NodeKind::Lock, vec![]);
        let b = NodeSpec::new("q", NodeKind::Lock, vec![]);
        let other = NodeSpec::new("r", NodeKind::Lock, vec![]);
        assert_eq!(slots.take(&a), 0);
        assert_eq!(slots.take(&a), 0, "a retry keeps its slot");
        assert_eq!(
            slots.take(&b),
            1,
            "a second live attempt gets the next slot"
        );
        assert_eq!(slots.take(&other), 0, "slots are per queue");
        slots.created(&a, 7);
        slots.deleted("q", 0, 6);
        assert_eq!(slots.get(&a), Some(0), "a stale token frees nothing");
        slots.deleted("q", 0, 7);
        assert_eq!(slots.get(&a), None);
        let c = NodeSpec::new("q", NodeKind::Lock, vec![]);
        assert_eq!(slots.take(&c), 0, "the freed slot is reused");
        slots.forget(b.id);
        slots.forget(c.id);
        slots.forget(other.id);
        assert_eq!(slots.len(), 0);
    }

    #[test]
    fn a_retired_slot_is_never_reused() {
        let mut slots = Slots::default();
        let a = NodeSpec::new("q", NodeKind::Lock, vec![]);
        assert_eq!(slots.take(&a), 0);
        slots.created(&a, 7);
        assert!(slots.holds("q", 0, 7));
        assert!(
            !slots.holds("q", 0, 6),
            "a stale token is not the slot's node"
        );
        assert!(!slots.holds("q", 1, 7));
        slots.retire("q", 0);
        slots.deleted("q", 0, 7);
        assert_eq!(slots.get(&a), None, "the attempt is done");
        let b = NodeSpec::new("q", NodeKind::Lock, vec![]);
        assert_eq!(slots.take(&b), 1, "slot 0 stays taken");
        slots.retire("q", 1);
        slots.forget(b.id);
        let c = NodeSpec::new("q", NodeKind::Lock, vec![]);
        assert_eq!(
            slots.take(&c),
            2,
            "so does an abandoned attempt's retired slot"
        );
        slots.retire("r", 0);
        let d = NodeSpec::new("r", NodeKind::Lock, vec![]);
        assert_eq!(slots.take(&d), 0, "only a taken slot can be retired");
    }
}
