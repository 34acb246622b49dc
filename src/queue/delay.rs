//! Lock-delay after a lost holder (Chubby's, Consul's): when the node a waiter waited for
//! is gone and the waiter would be granted, it is granted at once only if that node was
//! **released**; otherwise (its holder was lost: session expired or revoked, or the queue
//! cannot tell) the grant waits until the delay has passed since the waiter saw the node
//! go. This module is only used when the delay is not zero.
//!
//! How "released" is told from "lost", through the contract alone, on every store: a
//! holder whose client has a lock-delay writes a **release marker** before it deletes its
//! node on release — `guarded(node, Put(marker(queue) = node.key))`, applied only while
//! the node still exists, so a lost holder (whose node is gone) cannot write it. The
//! waiter reads the marker after its blocker's deletion: the blocker's key there means
//! released; anything else (no marker, another key, a read error, a holder without
//! lock-delay or another tool's holder) counts as lost. A writer waits for one reader,
//! but shares the wait with every reader ahead of it; when its read showed other nodes
//! ahead of that reader which have gone unseen by the next read, it cannot tell how they
//! went, and takes the delay. So the delay is never skipped for a lost holder, and may be
//! taken after a release only when the queue cannot tell (a releaser without
//! lock-delay; readers releasing at the same moment).
//!
//! When the delay counts from: the instant the waiter's watch reported the deletion (or,
//! after a broken watch, the instant of the read that found the node gone). Both come no
//! earlier than the store's deletion of the node, which itself comes no earlier than the
//! end of the lost holder's session on the server, and no earlier than the holder's own
//! client-side deadline (`valid_until`: send time of its last acknowledged keep-alive +
//! TTL), after which it no longer trusts its lock. So the time between the lost holder's
//! last moment of holding and the next grant is never shorter than the delay; it is later
//! than necessary only by the notification's latency. The marker read runs inside the
//! delay, not before it.
//!
//! What the delay does not cover: a newcomer that finds the queue empty after a loss
//! (nothing of the lost holder is left in the store to see), `try_lock`, and semaphores
//! (many holders share one directory; one marker cannot tell whose release it was).

use std::sync::Arc;

use queuelock_core::{Node, NodeKind, Op, Session};

use super::retry;

/// The key of `queue`'s release marker: outside every queue (`~` is not allowed in lock
/// names), so no recipe or peer tool lists it as a queue node. One small persistent key
/// per lock name used with a lock-delay.
pub(super) fn marker(queue: &str) -> String {
    format!("~queuelock/released/{queue}")
}

/// The holder's half: records that `node` is being released (only while it still exists;
/// a lost node writes nothing). Errors are ignored: without the marker the next waiter
/// takes the delay, which is the safe side.
///
/// Cancel safety: safe; a dropped call may or may not have written the marker.
pub(super) async fn mark_released(session: &Arc<dyn Session>, node: &Node, marker: &str) {
    let ops = [Op::Put {
        key: marker.to_owned(),
        value: node.key.as_bytes().to_vec(),
    }];
    if let Err(e) = retry(&**session, || session.guarded(node, &ops)).await {
        tracing::debug!(key = %node.key, error = %e, "no release marker written");
    }
}

/// The waiter's half: whether `gone` (the node it waited for, now deleted) was released,
/// as its release marker says, and whether that covers every holder that was ahead. For
/// an exclusive node it does: nothing ahead of a holder holds, and a holder was granted
/// only after any lost holder ahead of it (with its own delay). A reader (`gone.kind` is
/// `Read`: a writer waiting behind readers) shared the lock with any readers ahead of it,
/// which left unseen: its marker covers them only if it was the `last` node ahead. Anything
/// else is "not known released".
///
/// Cancel safety: safe (read only).
pub(super) async fn was_released(
    session: &dyn Session,
    queue: &str,
    gone: &Node,
    last: bool,
) -> bool {
    if gone.kind == NodeKind::Read && !last {
        return false;
    }
    let key = marker(queue);
    matches!(
        retry(session, || session.get(&key)).await,
        Ok(Some(v)) if v == gone.key.as_bytes()
    )
}
