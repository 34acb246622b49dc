//! The waiting rules, written once. A waiter names the one node it waits for with an
//! [`Ahead`] (queuelock-core's: the nearest earlier node, or the nearest earlier non-reader),
//! which the store reads for it ([`queuelock_core::Session::turn`]); the same rules
//! over a whole listing tell holders from waiters (`status`). Each waiter watches one
//! node, so a release wakes one waiter.

use queuelock_core::{Ahead, Node, NodeKind};

/// Given the queue in order and an index in it, the index of the node that node waits
/// for (`None`: it holds). For reading a whole queue; waiters use an [`Ahead`].
pub(crate) type WaitRule = fn(&[Node], usize) -> Option<usize>;

/// Mutex, writer, candidate, semaphore waiting line: the immediate predecessor.
pub(crate) fn predecessor(nodes: &[Node], me: usize) -> Option<usize> {
    Ahead::Predecessor.find(nodes, me)
}

/// What a read-write queue's node of `kind` waits for: a reader only for the nearest
/// earlier node that is not a reader (a writer, a mutex holder, or a node some other tool
/// wrote), so readers share until the next queued writer and writers never starve;
/// anything else for its predecessor.
pub(crate) fn shared_or_exclusive(kind: NodeKind) -> Ahead {
    Ahead::for_kind(kind)
}

/// A read-write queue seen whole: each node follows the rule of its own kind.
pub(crate) fn by_kind(nodes: &[Node], me: usize) -> Option<usize> {
    shared_or_exclusive(nodes[me].kind).find(nodes, me)
}

/// A holders directory: every node in it holds.
pub(crate) fn everyone_holds(nodes: &[Node], me: usize) -> Option<usize> {
    Ahead::Nothing.find(nodes, me)
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
        let reader = |me| shared_or_exclusive(Read).find(&q, me);
        assert_eq!(reader(0), None);
        assert_eq!(reader(2), Some(1));
        assert_eq!(reader(3), Some(1));
        assert_eq!(reader(5), Some(4));
        assert_eq!(reader(7), Some(6), "unknown nodes are exclusive");
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
