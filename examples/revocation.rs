//! Cooperative revocation: a batch job holds a lock revocably and works in steps; an
//! urgent job asks it to let go (`request_revoke`), and the batch job finishes its current
//! step, checkpoints and releases — it decides, nothing is taken away from it. On
//! ZooKeeper this is Curator's protocol, so a Curator `InterProcessMutex` made revocable
//! could be either side.
//!
//! ```text
//! cargo run --example revocation
//! QUEUELOCK_URL=etcd://127.0.0.1:2379/demo cargo run --features etcd --example revocation
//! ```

use std::time::Duration;

use queuelock::{Client, Result, Revocation};

const NAME: &str = "examples/revocation/nightly-report";

#[tokio::main]
async fn main() -> Result<()> {
    let batch = Client::from_env().await?;
    let urgent = Client::from_env().await?;

    let lock = batch.mutex(NAME)?.revocable();
    let guard = lock.lock().await?;
    println!(
        "batch: holding {NAME} (fencing token {})",
        guard.fencing_token()
    );
    let worker = tokio::spawn(async move {
        let mut step = 0u32;
        loop {
            tokio::select! {
                // Cancel safe: polled again every step, resolves once a request came.
                _ = guard.revoke_requested() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    step += 1;
                    println!("batch: finished step {step}");
                }
            }
        }
        println!("batch: revocation requested after step {step}; checkpointing and letting go");
        guard.release().await
    });

    tokio::time::sleep(Duration::from_millis(350)).await;
    let mine = urgent.mutex(NAME)?;
    match mine.request_revoke().await? {
        Revocation::Requested { holder } => println!(
            "urgent: asked the holder (token {}) to let go",
            holder.fencing_token
        ),
        other => println!("urgent: could not ask: {other:?}"),
    }
    let g = tokio::time::timeout(Duration::from_secs(30), mine.lock())
        .await
        .map_err(|_| queuelock::Error::Timeout(Duration::from_secs(30)))??;
    worker.await.expect("batch worker panicked")?;
    println!("urgent: got the lock (fencing token {})", g.fencing_token());
    g.release().await?;
    batch.close().await?;
    urgent.close().await
}
