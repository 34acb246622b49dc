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
}

impl NodeSpec {
    /// A spec with a fresh random id.
    pub fn new(queue: impl Into<String>, kind: NodeKind, payload: Vec<u8>) -> Self {
        NodeSpec {
            queue: queue.into(),
            kind,
            id: Uuid::new_v4(),
            payload,
        }
    }
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

    /// The answer of a create whose node is `key` and that read this listing: our node
    /// as listed, or [`crate::Error::LockLost`] if the listing does not contain it (it
    /// was deleted between the create and the read).
    pub fn created(self, key: &str) -> crate::Result<Created> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.key == key)
            .cloned()
            .ok_or(crate::Error::LockLost(crate::LossReason::NodeDeleted))?;
        Ok(Created {
            node,
            listing: self,
        })
    }
}

/// The answer of [`crate::Session::create_sequential`]: our node and the queue as seen
/// right after creating it (in the same round trip where the backend can).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// The node we own.
    pub node: Node,
    /// The queue, including `node`.
    pub listing: Listing,
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
