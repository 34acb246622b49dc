//! Holder metadata stored in every queue node, so an operator can see who holds a lock
//! and who waits.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use queuelock_core::NodeKind;

/// Who created a queue node: stored as JSON in the node's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HolderInfo {
    /// Host name of the process.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// When the node was created (joined the queue), in milliseconds since the Unix epoch.
    pub queued_at_ms: u64,
    /// The client's optional label ([`crate::ClientOptions::label`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The holder watches for revocation requests ([`crate::Mutex::revocable`]): a
    /// [`crate::Mutex::request_revoke`] reaches it. `false` for every other node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revocable: bool,
    /// When the holder saw a revocation request, in milliseconds since the Unix epoch
    /// (written back by the holder; `None`: none seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_requested_at_ms: Option<u64>,
}

impl HolderInfo {
    /// Metadata for this process, now.
    pub fn now(label: Option<&str>) -> Self {
        HolderInfo {
            host: host().to_owned(),
            pid: std::process::id(),
            queued_at_ms: now_ms(),
            label: label.map(str::to_owned),
            revocable: false,
            revoke_requested_at_ms: None,
        }
    }

    /// The same metadata, marked as watching for revocation requests.
    pub fn with_revocable(mut self, revocable: bool) -> Self {
        self.revocable = revocable;
        self
    }

    /// The same metadata, recording that a revocation request was seen now.
    pub fn with_revoke_seen(mut self) -> Self {
        self.revoke_requested_at_ms = Some(now_ms());
        self
    }

    /// The JSON payload.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a payload; `None` for nodes written by other tools (empty or foreign data).
    pub fn decode(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before it).
/// This machine's host name, read once (it is in every node's metadata).
fn host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| gethostname::gethostname().to_string_lossy().into_owned())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One node of a lock's queue, as shown by `holders()` / `waiters()`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueEntry {
    /// The node's key in the store.
    pub key: String,
    /// Its fencing token.
    pub fencing_token: u64,
    /// What it stands for (lock, read, write, permit, or a node another tool wrote).
    pub kind: NodeKind,
    /// Who created it, when the node carries queuelock metadata (`None` for nodes of
    /// other tools, a node gone before its data was read, or a ZooKeeper holder asked to
    /// let go that has not yet written its metadata back: Curator's revocation protocol
    /// overwrites the node's data with `__REVOKE__`).
    pub holder: Option<HolderInfo>,
}
