//! Mapping contract keys (relative paths) to etcd keys, and queue node names.

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

    /// The etcd key of an attempt: derived from the lease and the attempt id, so a
    /// retried create finds the key of the first try.
    pub(crate) fn node(&self, lease: i64, spec: &NodeSpec) -> String {
        format!(
            "{}{:x}-{}-{}",
            self.queue_dir(&spec.queue),
            lease,
            spec.kind.tag(),
            spec.id.simple()
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

impl Keys {
    /// The revocation request of the node at relative key `node`: a key beside it,
    /// outside every queue (`~` is not allowed in names), so that neither queuelock nor
    /// `etcdctl lock` (which queues behind every key under the lock's prefix) sees it.
    pub(crate) fn revoke(&self, node: &str) -> String {
        format!("{}~queuelock/revoke/{node}", self.base)
    }
}

/// The lease that owns a queue node, from its name (`<lease hex>-<kind>-<uuid>`, or
/// `etcdctl lock`'s `<lease hex>`).
pub(crate) fn lease_of(key: &str) -> Option<i64> {
    let name = key.rsplit('/').next()?;
    let hex = name.split('-').next()?;
    u64::from_str_radix(hex, 16).ok().map(|l| l as i64)
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
        let key = k.node(0x694d77e1b3c8f20a, &spec);
        assert!(key.starts_with("/app/q/694d77e1b3c8f20a-read-"), "{key}");
        assert_eq!(
            parse_kind(key.rsplit('/').next().unwrap_or_default()),
            NodeKind::Read
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
}
