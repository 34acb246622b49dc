//! Several workers contend for one lock and update a shared value under it.
//!
//! Runs on the in-process backend by default; set `QUEUELOCK_URL` (for example
//! `etcd://127.0.0.1:2379/demo` or `zk://127.0.0.1:2181/demo`) and enable that backend's
//! feature to run the same code against a real cluster.
//!
//! ```text
//! cargo run --example quickstart
//! QUEUELOCK_URL=zk://127.0.0.1:2181/demo cargo run --features zookeeper --example quickstart
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use queuelock::{Client, Result};

const WORKERS: usize = 4;
const ROUNDS: u64 = 5;

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("QUEUELOCK_URL").unwrap_or_else(|_| "memory://".into());
    // Never print credentials (`scheme://user:pass@host/...`).
    let shown = match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) if !rest[..rest.find('/').unwrap_or(rest.len())].is_empty() => {
                format!("{scheme}://***@{host}")
            }
            _ => url.clone(),
        },
        None => url.clone(),
    };
    println!("queuelock quickstart on {shown}");
    // The "resource" the lock protects: a value updated with a read, a pause, a write —
    // which would lose updates if two workers ever held the lock at once.
    let shared = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for id in 0..WORKERS {
        let shared = shared.clone();
        workers.push(tokio::spawn(async move {
            // One client per worker: each behaves like a separate process.
            let client = Client::from_env().await?;
            let lock = client.mutex("quickstart/counter")?;
            for _ in 0..ROUNDS {
                let guard = lock.lock().await?;
                let seen = shared.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                shared.store(seen + 1, Ordering::SeqCst);
                println!(
                    "worker {id}: acquired with fencing token {:>6}, counter {seen} -> {}",
                    guard.fencing_token(),
                    seen + 1
                );
                guard.release().await?;
            }
            client.close().await
        }));
    }
    for w in workers {
        w.await.expect("worker panicked")?;
    }
    let total = shared.load(Ordering::SeqCst);
    let expected = WORKERS as u64 * ROUNDS;
    if total == expected {
        println!(
            "consistency check passed: counter = {total} = {WORKERS} workers x {ROUNDS} rounds"
        );
        Ok(())
    } else {
        eprintln!("consistency check FAILED: counter = {total}, expected {expected}");
        std::process::exit(1);
    }
}
