//! The waiting rules, written once: given the queue in order and our index in it, the
//! index of the one node we must wait for (`None`: ours). Each waiter watches one node,
//! so a release wakes one waiter.

use queuelock_core::{Node, NodeKind};

/// Given the queue in order and our index in it, the index of the node we must wait for
/// (`None`: the lock is ours).
pub(crate) type WaitRule = fn(&[Node], usize) -> Option<usize>;

/// Mutex, writer, candidate, semaphore waiting line: the immediate predecessor.
pub(crate) fn predecessor(_nodes: &[Node], me: usize) -> Option<usize> {
    me.checked_sub(1)
}

/// A reader waits only on the nearest earlier node that is not a reader (a writer, a
/// mutex holder, or a node some other tool wrote): readers share until the next queued
/// writer, and every reader queued behind that writer waits for it, so writers never
/// starve.
pub(crate) fn nearest_earlier_writer(nodes: &[Node], me: usize) -> Option<usize> {
    nodes[..me].iter().rposition(|n| n.kind != NodeKind::Read)
}

/// The rule of a read-write queue's node of `kind`: readers share, anything else is
/// exclusive.
pub(crate) fn shared_or_exclusive(kind: NodeKind) -> WaitRule {
    match kind {
        NodeKind::Read => nearest_earlier_writer,
        _ => predecessor,
    }
}

/// A read-write queue seen whole: each node follows the rule of its own kind.
pub(crate) fn by_kind(nodes: &[Node], me: usize) -> Option<usize> {
    shared_or_exclusive(nodes[me].kind)(nodes, me)
}

/// A holders directory: every node in it holds.
pub(crate) fn everyone_holds(_nodes: &[Node], _me: usize) -> Option<usize> {
    None
}

/// The semaphore's admission rule: the head of the waiting line enters while fewer than
/// `permits` hold.
pub(crate) fn admits(holders: usize, permits: u32) -> bool {
    holders < permits as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: NodeKind, seq: u64) -> Node {
        Node {
            key: format!("k{seq}"),
            sequence: seq,
            token: seq,
            kind,
        }
    }

    #[test]
    fn reader_waits_on_nearest_earlier_writer_only() {
        use NodeKind::*;
        let q: Vec<Node> = [Read, Write, Read, Read, Write, Read, Unknown, Read]
            .iter()
            .enumerate()
            .map(|(i, k)| node(*k, i as u64))
            .collect();
        assert_eq!(nearest_earlier_writer(&q, 0), None);
        assert_eq!(nearest_earlier_writer(&q, 2), Some(1));
        assert_eq!(nearest_earlier_writer(&q, 3), Some(1));
        assert_eq!(nearest_earlier_writer(&q, 5), Some(4));
        assert_eq!(
            nearest_earlier_writer(&q, 7),
            Some(6),
            "unknown nodes are exclusive"
        );
        assert_eq!(predecessor(&q, 4), Some(3));
        assert_eq!(predecessor(&q, 0), None);
    }

    #[test]
    fn each_node_follows_its_kind_and_holders_all_hold() {
        use NodeKind::*;
        let q: Vec<Node> = [Read, Read, Write, Read, Lock]
            .iter()
            .enumerate()
            .map(|(i, k)| node(*k, i as u64))
            .collect();
        let holding: Vec<bool> = (0..q.len()).map(|i| by_kind(&q, i).is_none()).collect();
        assert_eq!(holding, [true, true, false, false, false]);
        assert_eq!(
            by_kind(&q, 3),
            Some(2),
            "a reader behind a writer waits for it"
        );
        assert_eq!(by_kind(&q, 4), Some(3), "a lock waits on its predecessor");
        assert!((0..q.len()).all(|i| everyone_holds(&q, i).is_none()));
    }

    #[test]
    fn admission_counts_holders_against_permits() {
        assert!(admits(0, 1));
        assert!(!admits(1, 1));
        assert!(admits(2, 3));
        assert!(!admits(3, 3));
        assert!(
            !admits(4, 3),
            "more holders than permits (a shrunk count) admit nobody"
        );
    }
}
