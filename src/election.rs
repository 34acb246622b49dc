//! [`Election`]: one leader among candidates, with a value everyone can read and watch.

use std::fmt;
use std::sync::Arc;

use futures::Stream;
use queuelock_core::{Ahead, LockName, LossReason, NodeKind, Op, Result};

use crate::guard::Guard;
use crate::queue::{self, Context, Request};

/// The current leader as others see it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The leader's node key.
    pub key: String,
    /// The value it campaigned with or last proclaimed.
    pub value: Vec<u8>,
    /// Its fencing token (grows with every new leader).
    pub fencing_token: u64,
}

/// A leader election: candidates queue FIFO and the first one leads until it resigns or
/// its session is lost; each candidate watches only the one ahead of it.
///
/// On etcd the layout is that of Go's `concurrency.Election` (`etcdctl elect NAME`): the
/// leader is the key under `NAME/` with the lowest create revision and its value is the
/// proclamation; on ZooKeeper candidates are Curator LeaderLatch-style `latch-` nodes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> queuelock::Result<()> {
/// let client = queuelock::Client::connect("memory://").await?;
/// let election = client.election("scheduler")?;
/// let leadership = election.campaign("node-a:8080").await?;
/// assert_eq!(election.leader().await?.map(|l| l.value), Some(b"node-a:8080".to_vec()));
/// leadership.proclaim("node-a:9090").await?;
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Election {
    ctx: Arc<Context>,
    name: LockName,
    label: Arc<str>,
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .finish()
    }
}

impl Election {
    pub(crate) fn new(ctx: Arc<Context>, name: LockName) -> Self {
        let label = Arc::from(name.as_str());
        Election { ctx, name, label }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Stands for election with `value` and waits until we lead.
    ///
    /// Cancel safety: safe; a dropped campaign withdraws its candidacy.
    pub async fn campaign(&self, value: impl Into<Vec<u8>>) -> Result<Leadership> {
        let req = Request {
            payload: Some(value.into()),
            ..Request::new(self.name.as_str(), NodeKind::Latch, Ahead::Predecessor)
        };
        let lease = queue::acquire(&self.ctx, req).await?;
        Ok(Leadership {
            guard: Guard::new(self.label.clone(), lease),
        })
    }

    /// The current leader, if any.
    ///
    /// Cancel safety: safe (read only).
    pub async fn leader(&self) -> Result<Option<Leader>> {
        Ok(self.read_leader().await?.0)
    }

    async fn read_leader(&self) -> Result<(Option<Leader>, u64)> {
        let session = self.ctx.session().await?;
        let listing = queue::retry(&*session, || session.list(self.name.as_str())).await?;
        let Some(head) = listing.nodes.first() else {
            return Ok((None, listing.revision));
        };
        let read = queue::retry(&*session, || session.read_node(&head.key)).await?;
        // A head gone between the two reads: the next read answers instead.
        let leader = read.map(|(value, fencing_token)| Leader {
            key: head.key.clone(),
            value,
            fencing_token,
        });
        Ok((leader, listing.revision))
    }

    /// A stream of the leader as it changes: the current leader first, then each new
    /// leader, proclamation or vacancy (`None`). Changes are reported in order; changes
    /// closer together than a round trip may be coalesced into the latest one.
    ///
    /// Cancel safety: dropping the stream cancels its watch.
    pub fn observe(&self) -> impl Stream<Item = Result<Option<Leader>>> + Send + 'static {
        let election = self.clone();
        futures::stream::unfold(
            (election, None::<Option<Leader>>, false),
            |(election, last, failed)| async move {
                if failed {
                    return None;
                }
                loop {
                    let (now, revision) = match election.read_leader().await {
                        Ok(v) => v,
                        Err(e) => return Some((Err(e), (election, last, true))),
                    };
                    if last.as_ref() != Some(&now) {
                        return Some((Ok(now.clone()), (election, Some(now), false)));
                    }
                    if let Err(e) =
                        queue::changed(&election.ctx, election.name.as_str(), revision).await
                    {
                        return Some((Err(e), (election, last, true)));
                    }
                }
            },
        )
    }
}

/// Leadership won by [`Election::campaign`]; dropping it resigns in the background.
#[must_use = "leadership is resigned when this is dropped"]
#[derive(Debug)]
pub struct Leadership {
    guard: Guard,
}

impl Leadership {
    /// Our fencing token as leader.
    pub fn fencing_token(&self) -> u64 {
        self.guard.fencing_token()
    }

    /// Replaces the value others see, only while we still lead (fails with
    /// [`crate::Error::LockLost`] otherwise, changing nothing).
    ///
    /// Cancel safety: a dropped call may or may not have proclaimed.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        let op = Op::Put {
            key: self.guard.key().to_owned(),
            value: value.into(),
        };
        self.guard.guarded(std::slice::from_ref(&op)).await
    }

    /// Why we no longer lead, if we do not.
    pub fn is_lost(&self) -> Option<LossReason> {
        self.guard.is_lost()
    }

    /// Resolves when we stop leading without having resigned.
    ///
    /// Cancel safety: safe.
    pub async fn lost(&self) -> LossReason {
        self.guard.lost().await
    }

    /// The underlying guard (for fenced writes while leading).
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Steps down; the next candidate leads.
    ///
    /// Cancel safety: safe; once called, resignation completes.
    pub async fn resign(self) -> Result<()> {
        self.guard.release().await
    }
}
