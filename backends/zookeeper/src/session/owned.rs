//! The nodes this session created and still owns (see `ZkSession::owned`).

use super::ZkSession;

impl ZkSession {
    /// Records a node of ours.
    pub(super) fn own(&self, key: &str, token: u64) {
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), token);
    }

    /// Forgets a node of ours that is gone (only if `token` is the one recorded).
    pub(super) fn disown(&self, key: &str, token: u64) {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        if owned.get(key).is_some_and(|t| token == 0 || *t == token) {
            owned.remove(key);
        }
    }

    /// The token of our live node at `key`, if we created one there.
    pub(super) fn owned_token(&self, key: &str) -> Option<u64> {
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }
}
