//! A count-down latch: a reporter waits until 3 shard loaders have each counted down
//! once, then reads the result.
//!
//! Runs on the in-process backend by default; set `QUEUELOCK_URL` and enable that
//! backend's feature to run it against a real store. A latch is one-shot and its
//! count-downs are stored, so each run uses a fresh latch name.
//!
//! ```text
//! cargo run --example latch
//! QUEUELOCK_URL=redis://127.0.0.1:6379/0 cargo run --features redis --example latch
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use queuelock::{Client, Result};

const SHARDS: u32 = 3;

#[tokio::main]
async fn main() -> Result<()> {
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("examples/latch/run-{run}");
    let loaded = Arc::new(AtomicUsize::new(0));

    let reporter = {
        let (name, loaded) = (name.clone(), loaded.clone());
        tokio::spawn(async move {
            let client = Client::from_env().await?;
            let latch = client.count_down_latch(&name, SHARDS)?;
            println!("reporter: waiting for {} shards", latch.count().await?);
            latch.wait().await?;
            let n = loaded.load(Ordering::SeqCst);
            assert_eq!(n, SHARDS as usize, "latch opened after {n} shards");
            println!("reporter: all {n} shards loaded");
            client.close().await
        })
    };
    let mut loaders = Vec::new();
    for shard in 0..SHARDS {
        let (name, loaded) = (name.clone(), loaded.clone());
        loaders.push(tokio::spawn(async move {
            let client = Client::from_env().await?;
            tokio::time::sleep(Duration::from_millis(50 * u64::from(shard + 1))).await;
            loaded.fetch_add(1, Ordering::SeqCst);
            let left = client.count_down_latch(&name, SHARDS)?.count_down().await?;
            println!("loader {shard}: loaded, {left} to go");
            client.close().await
        }));
    }
    for l in loaders {
        l.await.expect("loader panicked")?;
    }
    reporter.await.expect("reporter panicked")?;
    Ok(())
}
