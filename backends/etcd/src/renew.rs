//! Keeping leases alive: one task per backend renews every session's lease at a third of
//! its TTL.
//!
//! Each renewal opens a keep-alive stream, sends one request, reads one answer and closes
//! the stream. A stream kept open per session, as before, cost about 26 KiB of client
//! memory per session (a task of its own, tonic's encode and decode buffers) for one
//! request every few seconds: most of what a waiting contender held (dhat, 1,000-waiter
//! herd). `etcd-client`'s keep-alive handle is bound to one lease, so the streams cannot
//! be shared; opening one per renewal costs about what a unary call does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use queuelock_core::{SessionState, SessionStatus};
use tokio::sync::mpsc;

/// A lease to keep alive while its session's status lives.
struct Lease {
    id: i64,
    ttl: Duration,
    status: Weak<SessionStatus>,
}

/// Handle to the backend's renewal task.
pub(crate) struct Renewer {
    tx: mpsc::UnboundedSender<Lease>,
}

/// What one renewal learnt.
enum Renewed {
    /// The server extended the lease (by its TTL, from the send time).
    Alive(Instant),
    /// The server no longer knows the lease.
    Expired,
    /// No answer (connection trouble): try again soon.
    Failed,
}

impl Renewer {
    pub(crate) fn new(client: etcd_client::Client) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, rx));
        Renewer { tx }
    }

    /// Keeps lease `id` alive at `ttl / 3` until `status` is dropped or lost, recording
    /// each renewal in it (deadline, Live / Suspended / Lost).
    pub(crate) fn keep(&self, id: i64, ttl: Duration, status: &Arc<SessionStatus>) {
        let _ = self.tx.send(Lease {
            id,
            ttl,
            status: Arc::downgrade(status),
        });
    }
}

/// How soon a failed renewal is tried again.
const RETRY: Duration = Duration::from_millis(200);

async fn run(client: etcd_client::Client, mut rx: mpsc::UnboundedReceiver<Lease>) {
    // Due renewals, soonest first, by index into `leases`.
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut leases: Vec<Option<Lease>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    loop {
        let next = due.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            reg = rx.recv(), if open => match reg {
                Some(lease) => {
                    let first = Instant::now() + lease.ttl / 3;
                    let slot = match free.pop() {
                        Some(i) => {
                            leases[i] = Some(lease);
                            i
                        }
                        None => {
                            leases.push(Some(lease));
                            leases.len() - 1
                        }
                    };
                    due.push(Reverse((first, slot)));
                }
                None => open = false,
            },
            _ = sleep_until(next), if next.is_some() => {
                let now = Instant::now();
                while let Some(Reverse((at, slot))) = due.peek().copied() {
                    if at > now {
                        break;
                    }
                    due.pop();
                    match live(&leases[slot]) {
                        Some((id, ttl, _)) => inflight.push(renew(client.clone(), slot, id, ttl)),
                        None => {
                            if leases[slot].take().is_some() {
                                free.push(slot);
                            }
                        }
                    }
                }
            },
            Some((slot, outcome)) = inflight.next(), if !inflight.is_empty() => {
                let Some((id, ttl, status)) = live(&leases[slot]) else {
                    if leases[slot].take().is_some() {
                        free.push(slot);
                    }
                    continue;
                };
                let again = match outcome {
                    Renewed::Expired => {
                        tracing::warn!(lease = format_args!("{id:x}"), "etcd lease expired");
                        status.set(SessionState::Lost);
                        leases[slot] = None;
                        free.push(slot);
                        continue;
                    }
                    Renewed::Alive(sent) => {
                        status.renew(sent + ttl);
                        status.set(SessionState::Live);
                        sent + ttl / 3
                    }
                    Renewed::Failed => {
                        status.set(SessionState::Suspended);
                        Instant::now() + RETRY
                    }
                };
                due.push(Reverse((again, slot)));
            },
            else => return,
        }
    }
}

/// The lease's id, TTL and status, if its session is neither dropped nor lost.
fn live(lease: &Option<Lease>) -> Option<(i64, Duration, Arc<SessionStatus>)> {
    let lease = lease.as_ref()?;
    let status = lease.status.upgrade()?;
    (status.get() != SessionState::Lost).then_some((lease.id, lease.ttl, status))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One renewal of lease `id`: a keep-alive stream opened with one request, its answer
/// awaited for at most a third of the TTL, the stream closed.
async fn renew(
    mut client: etcd_client::Client,
    slot: usize,
    id: i64,
    ttl: Duration,
) -> (usize, Renewed) {
    let sent = Instant::now();
    let outcome = match tokio::time::timeout(ttl / 3, client.lease_keep_alive(id)).await {
        Ok(Ok(_)) => Renewed::Alive(sent),
        // etcd-client's own words for an answer with TTL 0 (or a NotFound status).
        Ok(Err(e)) if e.to_string().contains("lease not found") => Renewed::Expired,
        Ok(Err(e)) => {
            tracing::debug!(lease = format_args!("{id:x}"), error = %e, "etcd keep-alive failed");
            Renewed::Failed
        }
        Err(_) => {
            tracing::debug!(lease = format_args!("{id:x}"), "etcd keep-alive timed out");
            Renewed::Failed
        }
    };
    (slot, outcome)
}
