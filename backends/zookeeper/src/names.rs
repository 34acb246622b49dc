//! Node names: Curator's protected naming (or kazoo's default naming) for ours, tolerant
//! parsing for everyone's.

use queuelock_core::{NodeKind, NodeSpec};

use crate::Naming;

/// The name prefix of our node for `spec` (ZooKeeper appends the 10-digit sequence):
/// Curator's protected form `_c_<uuid>-<kind>`, or kazoo's `<uuid hex><kind>` (kazoo
/// counts a child as a contender when it matches `(__lock__|__rlock__)(-?\d{10})$`).
pub(crate) fn prefix(spec: &NodeSpec, naming: Naming) -> String {
    // Written with `encode_lower` rather than `format!`: a create builds this on every
    // acquire, and the formatting machinery cost more than the rest of the name.
    let mut buf = uuid::Uuid::encode_buffer();
    let (head, id, tail) = match (naming, spec.kind) {
        (Naming::Kazoo, NodeKind::Read) => {
            ("", &*spec.id.simple().encode_lower(&mut buf), "__rlock__")
        }
        // kazoo's semaphore has another layout: permits keep queuelock's own names.
        (Naming::Kazoo, kind) if kind != NodeKind::Permit => {
            ("", &*spec.id.simple().encode_lower(&mut buf), "__lock__")
        }
        (_, kind) => {
            let tail = match kind {
                NodeKind::Read => "-__READ__",
                NodeKind::Write => "-__WRIT__",
                NodeKind::Latch => "-latch-",
                NodeKind::Permit => "-permit-",
                _ => "-lock-",
            };
            ("_c_", &*spec.id.hyphenated().encode_lower(&mut buf), tail)
        }
    };
    let mut out = String::with_capacity(head.len() + id.len() + tail.len());
    out.push_str(head);
    out.push_str(id);
    out.push_str(tail);
    out
}

/// The marker of `spec`'s nodes (a prefix no other attempt's name has), for finding them
/// after a connection loss.
pub(crate) fn marker(spec: &NodeSpec, naming: Naming) -> String {
    match prefix(spec, naming) {
        p if p.starts_with("_c_") => format!("_c_{}-", spec.id.hyphenated()),
        p => p,
    }
}

/// Sequence and kind of a child, or `None` when it has no 10-digit sequence suffix.
pub(crate) fn parse(name: &str) -> Option<(u64, NodeKind)> {
    if name.len() < 10 || !name.is_char_boundary(name.len() - 10) {
        return None;
    }
    let (stem, digits) = name.split_at(name.len() - 10);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq = digits.parse().ok()?;
    let kind = if stem.ends_with("__READ__") || stem.ends_with("__rlock__") {
        NodeKind::Read
    } else if stem.ends_with("__WRIT__") {
        NodeKind::Write
    } else if stem.ends_with("lock-") || stem.ends_with("__lock__") {
        NodeKind::Lock
    } else if stem.ends_with("latch-") {
        NodeKind::Latch
    } else if stem.ends_with("permit-") {
        NodeKind::Permit
    } else {
        NodeKind::Unknown
    };
    Some((seq, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let spec = NodeSpec::new("q", NodeKind::Write, vec![]);
        let p = prefix(&spec, Naming::Curator);
        assert!(p.starts_with("_c_") && p.ends_with("-__WRIT__"));
        assert!(p.starts_with(&marker(&spec, Naming::Curator)));
        // kazoo: `uuid4().hex + "__lock__"` (WriteLock and Lock alike), `__rlock__` readers.
        let hex = spec.id.simple().to_string();
        assert_eq!(prefix(&spec, Naming::Kazoo), format!("{hex}__lock__"));
        assert_eq!(marker(&spec, Naming::Kazoo), format!("{hex}__lock__"));
        for (kind, tail) in [
            (NodeKind::Lock, "__lock__"),
            (NodeKind::Latch, "__lock__"),
            (NodeKind::Read, "__rlock__"),
        ] {
            let s = NodeSpec::new("q", kind, vec![]);
            assert_eq!(
                prefix(&s, Naming::Kazoo),
                format!("{}{tail}", s.id.simple())
            );
            let name = format!("{}0000000042", prefix(&s, Naming::Kazoo));
            let parsed = if kind == NodeKind::Read {
                NodeKind::Read
            } else {
                NodeKind::Lock
            };
            assert_eq!(parse(&name), Some((42, parsed)));
        }
        let permit = NodeSpec::new("q", NodeKind::Permit, vec![]);
        assert_eq!(
            prefix(&permit, Naming::Kazoo),
            prefix(&permit, Naming::Curator)
        );
        assert_eq!(
            parse("_c_1b4e28ba-2fa1-11d2-883f-0016d3cca427-lock-0000000042"),
            Some((42, NodeKind::Lock))
        );
        assert_eq!(
            parse("1b4e28ba2fa111d2883f0016d3cca427__lock__0000000007"),
            Some((7, NodeKind::Lock))
        );
        assert_eq!(parse("abc__rlock__0000000008"), Some((8, NodeKind::Read)));
        assert_eq!(parse("lock-0000000009"), Some((9, NodeKind::Lock)));
        assert_eq!(parse("_c_x-__READ__0000000010"), Some((10, NodeKind::Read)));
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse("lock-00000000x9"), None);
        assert_eq!(parse("ünïcødé-0000000001").map(|p| p.0), Some(1));
        assert_eq!(parse("é"), None);
    }
}
