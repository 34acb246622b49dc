//! At most 2 of 6 workers use a scarce resource at once.
//!
//! `cargo run --example semaphore` (set `QUEUELOCK_URL` and enable its backend, e.g.
//! `--features etcd`, for a real cluster).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use queuelock::{Client, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let busy = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for id in 0..6 {
        let busy = busy.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::from_env().await?;
            let slots = client.semaphore("examples/gpu-slots", 2)?;
            let permit = slots.acquire().await?;
            let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
            println!(
                "worker {id}: got a permit (token {}), {now} in use",
                permit.fencing_token()
            );
            assert!(now <= 2, "more holders than permits");
            tokio::time::sleep(Duration::from_millis(40)).await;
            busy.fetch_sub(1, Ordering::SeqCst);
            permit.release().await?;
            client.close().await
        }));
    }
    for t in tasks {
        t.await.expect("task panicked")?;
    }
    println!("done: never more than 2 at once");
    Ok(())
}
