use uuid::Uuid;

/// A store revision (etcd revision, ZooKeeper zxid, memory counter): the point in the
/// store's history at which something was read.
pub type Revision = u64;

/// What a queue node stands for. Backends encode it in the node's name in their own
/// interoperable way (Curator's `-lock-`, `__READ__`, `__WRIT__`, `latch-`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodeKind {
    /// An exclusive lock node (mutex).
    Lock,
    /// A shared (reader) node of a read-write lock.
    Read,
    /// An exclusive (writer) node of a read-write lock.
    Write,
    /// A leader-election candidate.
    Latch,
    /// A semaphore permit request.
    Permit,
    /// A node whose kind the backend could not tell (written by another tool). Recipes
    /// treat it as exclusive, which is the safe reading.
    Unknown,
}

impl NodeKind {
    /// A short tag naming the kind in backends that spell it out in node names
    /// (`lock`, `read`, `write`, `latch`, `permit`; `node` for `Unknown`).
    pub fn tag(self) -> &'static str {
        match self {
            NodeKind::Lock => "lock",
            NodeKind::Read => "read",
            NodeKind::Write => "write",
            NodeKind::Latch => "latch",
            NodeKind::Permit => "permit",
            NodeKind::Unknown => "node",
        }
    }

    /// The kind a [`NodeKind::tag`] names; `Unknown` for anything else.
    pub fn from_tag(tag: &str) -> NodeKind {
        [
            NodeKind::Lock,
            NodeKind::Read,
            NodeKind::Write,
            NodeKind::Latch,
            NodeKind::Permit,
        ]
        .into_iter()
        .find(|k| k.tag() == tag)
        .unwrap_or(NodeKind::Unknown)
    }
}

/// What to create: the caller chooses a unique `id` per acquire attempt, which makes
/// [`crate::Session::create_sequential`] idempotent and lets an abandoned attempt be found
/// and removed ([`crate::Session::abandon`]) even if the create's answer was never seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// The queue (a validated name) the node joins.
    pub queue: String,
    /// The node's kind.
    pub kind: NodeKind,
    /// Unique per attempt.
    pub id: Uuid,
    /// Data stored in the node (holder metadata).
    pub payload: Vec<u8>,
    /// Which earlier node the creator will wait for: what the create's answer reads
    /// ([`Created::turn`]).
    pub ahead: Ahead,
}

impl NodeSpec {
    /// A spec with a fresh random id, waiting as [`Ahead::for_kind`] says for `kind`.
    pub fn new(queue: impl Into<String>, kind: NodeKind, payload: Vec<u8>) -> Self {
        NodeSpec {
            queue: queue.into(),
            kind,
            id: Uuid::new_v4(),
            payload,
            ahead: Ahead::for_kind(kind),
        }
    }

    /// The same spec waiting for what `ahead` selects.
    pub fn with_ahead(mut self, ahead: Ahead) -> Self {
        self.ahead = ahead;
        self
    }
}

/// Which earlier node of its queue a waiter waits for: the part of a recipe's rule a
/// store needs, so that a waiter's read returns that one node instead of the whole queue
/// ([`crate::Session::turn`]). A release then wakes one waiter, and a handoff costs the
/// same at any queue length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ahead {
    /// The nearest earlier node, whatever its kind (mutex, writer, candidate, the
    /// semaphore's waiting line).
    #[default]
    Predecessor,
    /// The nearest earlier node that is not a [`NodeKind::Read`] (a reader of a
    /// read-write lock: readers share until the next queued writer).
    NearestNonReader,
    /// No node: every node holds (a semaphore's holders directory).
    Nothing,
}

impl Ahead {
    /// The rule of a node of `kind` in a read-write queue (readers share, anything else
    /// is exclusive), which is also the rule of every other recipe's queue.
    pub fn for_kind(kind: NodeKind) -> Ahead {
        match kind {
            NodeKind::Read => Ahead::NearestNonReader,
            _ => Ahead::Predecessor,
        }
    }

    /// Whether a node of `kind` earlier in the queue is one this rule waits for.
    pub fn selects(self, kind: NodeKind) -> bool {
        match self {
            Ahead::Predecessor => true,
            Ahead::NearestNonReader => kind != NodeKind::Read,
            Ahead::Nothing => false,
        }
    }

    /// Given a queue in order and our index in it, the index of the node we wait for.
    pub fn find(self, nodes: &[Node], me: usize) -> Option<usize> {
        nodes[..me.min(nodes.len())]
            .iter()
            .rposition(|n| self.selects(n.kind))
    }
}

/// The waiter's read ([`crate::Session::turn`]): the one node a waiter waits for, read
/// together with the waiter's own node (which existed at `revision`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    /// The node to wait for; `None`: nothing ahead that the rule selects (our turn).
    pub blocker: Option<Node>,
    /// The store revision of the read: pass it to [`crate::Session::deleted`] as `since`.
    pub revision: Revision,
}

/// A node in a queue, as created or listed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    /// The node's key, relative to the backend root (opaque to recipes; pass it back).
    pub key: String,
    /// Position in the queue's total order (etcd `create_revision`, ZooKeeper's sequence
    /// suffix). Smaller is earlier.
    pub sequence: u64,
    /// Fencing token: grows monotonically across the store's whole history (etcd
    /// `create_revision`, ZooKeeper `czxid`), so a later holder always has a larger token.
    /// Exact for a node returned by [`crate::Session::create_sequential`] and by
    /// [`crate::Session::read_node`]; in a [`Listing`] a backend may report 0 for nodes
    /// where reading it would cost extra round trips (ZooKeeper).
    pub token: u64,
    /// What the node stands for.
    pub kind: NodeKind,
}

/// A queue's nodes in order, as of `revision`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Nodes sorted by [`Node::sequence`], earliest first. Entries that are not queue
    /// nodes are left out by the backend.
    pub nodes: Vec<Node>,
    /// The store revision the listing was read at.
    pub revision: Revision,
}

impl Listing {
    /// Index of the node with `key`, if present.
    pub fn position(&self, key: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.key == key)
    }

    /// The answer of a create whose node is `key` and that read this listing, for a
    /// waiter that waits as `ahead` says: our node as listed, or
    /// [`crate::Error::LockLost`] if the listing does not contain it (it was deleted
    /// between the create and the read).
    pub fn created(&self, key: &str, ahead: Ahead) -> crate::Result<Created> {
        let me = self
            .position(key)
            .ok_or(crate::Error::LockLost(crate::LossReason::NodeDeleted))?;
        Ok(Created {
            node: self.nodes[me].clone(),
            turn: self.turn_at(me, ahead),
            ahead: Some(me),
        })
    }

    /// The waiter's read answered from this listing: the node the waiter with `key` waits
    /// for as `ahead` says, or [`crate::Error::LockLost`] if `key` is not listed.
    pub fn turn(&self, key: &str, ahead: Ahead) -> crate::Result<Turn> {
        let me = self
            .position(key)
            .ok_or(crate::Error::LockLost(crate::LossReason::NodeDeleted))?;
        Ok(self.turn_at(me, ahead))
    }

    fn turn_at(&self, me: usize, ahead: Ahead) -> Turn {
        Turn {
            blocker: ahead.find(&self.nodes, me).map(|i| self.nodes[i].clone()),
            revision: self.revision,
        }
    }
}

/// The answer of [`crate::Session::create_sequential`]: our node and the waiter's read
/// for it, as seen right after creating it (in the same round trip where the backend
/// can).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// The node we own, with its exact token.
    pub node: Node,
    /// What the spec's [`Ahead`] selects ahead of our node, right after the create.
    pub turn: Turn,
    /// How many nodes were ahead of ours right after the create (contention), where the
    /// backend knows it without extra cost.
    pub ahead: Option<usize>,
}

/// One write of a guarded batch ([`crate::Session::guarded`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Create or overwrite a persistent key.
    Put {
        /// Key relative to the backend root.
        key: String,
        /// New value.
        value: Vec<u8>,
    },
    /// Delete a key if it exists.
    Delete {
        /// Key relative to the backend root.
        key: String,
    },
}
