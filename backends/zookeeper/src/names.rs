//! Node names: Curator's protected naming for ours, tolerant parsing for everyone's.

use queuelock_core::{NodeKind, NodeSpec};

/// The name prefix of our node for `spec` (ZooKeeper appends the 10-digit sequence):
/// Curator's protected form `_c_<uuid>-<kind>`.
pub(crate) fn prefix(spec: &NodeSpec) -> String {
    let kind = match spec.kind {
        NodeKind::Read => "__READ__",
        NodeKind::Write => "__WRIT__",
        NodeKind::Latch => "latch-",
        NodeKind::Permit => "permit-",
        _ => "lock-",
    };
    format!("_c_{}-{kind}", spec.id.hyphenated())
}

/// The protected marker of `spec`'s nodes, for finding them after a connection loss.
pub(crate) fn marker(spec: &NodeSpec) -> String {
    format!("_c_{}-", spec.id.hyphenated())
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
        assert!(prefix(&spec).starts_with("_c_") && prefix(&spec).ends_with("-__WRIT__"));
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
