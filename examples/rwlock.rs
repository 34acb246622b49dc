//! Readers share a catalogue while a writer updates it alone.
//!
//! `cargo run --example rwlock` (set `QUEUELOCK_URL` and enable its backend, e.g.
//! `--features etcd`, for a real cluster).

use std::time::Duration;

use queuelock::{Client, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let mut tasks = Vec::new();
    for id in 0..4 {
        tasks.push(tokio::spawn(async move {
            let client = Client::from_env().await?;
            let lock = client.rwlock("examples/catalog")?;
            for round in 0..3 {
                if (id + round) % 4 == 0 {
                    let w = lock.write().await?;
                    println!("task {id}: WRITING alone  (token {})", w.fencing_token());
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    w.release().await?;
                } else {
                    let r = lock.read().await?;
                    println!("task {id}: reading shared (token {})", r.fencing_token());
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    r.release().await?;
                }
            }
            client.close().await
        }));
    }
    for t in tasks {
        t.await.expect("task panicked")?;
    }
    println!("done");
    Ok(())
}
