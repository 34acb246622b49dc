//! Keeping a ZooKeeper session alive and knowing when it is not: the connection, the
//! state it reports, and a heartbeat that moves the client-side deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use queuelock_core::{Result, SessionState, SessionStatus};
use zookeeper_client::Client;

use crate::error::map_error;
use crate::Inner;

/// Connects a ZooKeeper client (a new session unless `session` names one to resume).
pub(crate) async fn connect(
    inner: &Inner,
    timeout: Duration,
    session: Option<zookeeper_client::SessionInfo>,
) -> Result<Client> {
    let mut c = Client::connector()
        .with_session_timeout(timeout)
        .with_connection_timeout(
            inner
                .options
                .connect_timeout
                .unwrap_or(Duration::from_secs(10)),
        );
    if let Some(d) = &inner.options.digest {
        c = c.with_auth("digest", d.as_bytes());
    }
    if let Some(s) = session {
        c = c.with_session(s);
    }
    match &inner.options.tls {
        // Every host without an explicit `tcp://` is reached over TLS.
        Some(tls) => c
            .with_tls(crate::tls_options(tls)?)
            .secure_connect(&inner.hosts)
            .await
            .map_err(map_error),
        None => c.connect(&inner.hosts).await.map_err(map_error),
    }
}

/// Maps ZooKeeper's session states; Lost too once the timeout has passed since the
/// disconnection, whatever the server has (not yet) said.
pub(super) async fn follow_state(
    mut watcher: zookeeper_client::StateWatcher,
    shared: Arc<SessionStatus>,
) {
    use zookeeper_client::SessionState as Zk;
    loop {
        // Whatever the client library reports, the session is lost once the deadline
        // (last answer + timeout) passes without a new answer.
        let next = match tokio::time::timeout_at(deadline(&shared).into(), watcher.changed()).await
        {
            Ok(s) => s,
            Err(_) => {
                if Instant::now() >= deadline(&shared) {
                    tracing::warn!(
                        "no answer from ZooKeeper within the session timeout: session lost"
                    );
                    shared.set(SessionState::Lost);
                    return;
                }
                continue;
            }
        };
        match next {
            // The deadline (last answer + timeout) is never later than Curator's
            // "disconnected + timeout".
            Zk::Disconnected => shared.set(SessionState::Suspended),
            Zk::SyncConnected | Zk::ConnectedReadOnly => shared.set(SessionState::Live),
            Zk::Expired | Zk::AuthFailed | Zk::Closed => {
                shared.set(SessionState::Lost);
                return;
            }
        }
    }
}

/// A cheap request every timeout/3: its answers move the conservative deadline.
pub(super) async fn heartbeat(client: Client, shared: Arc<SessionStatus>, timeout: Duration) {
    let period = timeout / 3;
    loop {
        let sent = Instant::now();
        if let Ok(Ok(_)) = tokio::time::timeout(period, client.check_stat("/")).await {
            shared.renew(sent + timeout);
        }
        if shared.get() == SessionState::Lost {
            return;
        }
        tokio::time::sleep_until((sent + period).into()).await;
    }
}

/// The session's deadline: a ZooKeeper session always has one (set when it is opened).
fn deadline(shared: &SessionStatus) -> Instant {
    shared.deadline().unwrap_or_else(Instant::now)
}
