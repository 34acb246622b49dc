//! Three candidates; the leader announces itself, steps down after a while, and an
//! observer follows every change of leader.
//!
//! `cargo run --example election` (set `QUEUELOCK_URL` and enable its backend, e.g.
//! `--features etcd`, for a real cluster).

use std::time::Duration;

use futures::StreamExt;
use queuelock::{Client, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let watcher = Client::from_env().await?;
    let mut changes = Box::pin(watcher.election("examples/scheduler")?.observe());
    let observer = tokio::spawn(async move {
        let mut leaders = 0;
        while let Some(change) = changes.next().await {
            match change? {
                Some(l) => {
                    leaders += 1;
                    println!("observer: leader is {}", String::from_utf8_lossy(&l.value));
                }
                None if leaders == 3 => break, // all three led and stepped down
                None => println!("observer: no leader"),
            }
        }
        println!("observer: no leader");
        Ok::<_, queuelock::Error>(())
    });
    let mut candidates = Vec::new();
    for id in 0..3 {
        candidates.push(tokio::spawn(async move {
            let client = Client::from_env().await?;
            let leadership = client
                .election("examples/scheduler")?
                .campaign(format!("node-{id}"))
                .await?;
            println!(
                "node-{id}: leading with fencing token {}",
                leadership.fencing_token()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            leadership.resign().await?;
            client.close().await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in candidates {
        c.await.expect("candidate panicked")?;
    }
    observer.await.expect("observer panicked")?;
    Ok(())
}
