//! Barriers: workers wait at a gate until a coordinator opens it (a `Barrier`), then
//! meet in a `DoubleBarrier`: nobody starts the batch before all 4 have arrived, and
//! nobody moves on before all 4 have finished.
//!
//! Runs on the in-process backend by default; set `QUEUELOCK_URL` (for example
//! `etcd://127.0.0.1:2379/demo`) and enable that backend's feature to run the same code
//! against a real store.
//!
//! ```text
//! cargo run --example barrier
//! QUEUELOCK_URL=zk://127.0.0.1:2181/demo cargo run --features zookeeper --example barrier
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use queuelock::{Client, Result};

const WORKERS: u32 = 4;

#[tokio::main]
async fn main() -> Result<()> {
    let coordinator = Client::from_env().await?;
    let gate = coordinator.barrier("examples/barrier/gate")?;
    gate.set().await?;
    println!("coordinator: gate is up");

    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for id in 0..WORKERS {
        let (started, finished) = (started.clone(), finished.clone());
        workers.push(tokio::spawn(async move {
            // One client per worker: each behaves like a separate process.
            let client = Client::from_env().await?;
            client.barrier("examples/barrier/gate")?.wait().await?;
            println!("worker {id}: through the gate");
            let batch = client.double_barrier("examples/barrier/batch", WORKERS)?;
            started.fetch_add(1, Ordering::SeqCst);
            let inside = batch.enter().await?;
            // Everyone has arrived: nobody was let in early.
            let arrived = started.load(Ordering::SeqCst);
            assert_eq!(arrived, WORKERS as usize, "in with {arrived} arrived");
            println!("worker {id}: all {WORKERS} in, working");
            tokio::time::sleep(Duration::from_millis(20 * u64::from(id + 1))).await;
            finished.fetch_add(1, Ordering::SeqCst);
            inside.leave().await?;
            // Everyone has finished before anyone gets out of leave.
            let done = finished.load(Ordering::SeqCst);
            assert_eq!(done, WORKERS as usize, "out of leave with {done} finished");
            println!("worker {id}: all {WORKERS} out");
            client.close().await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        started.load(Ordering::SeqCst),
        0,
        "a worker passed the gate early"
    );
    println!("coordinator: opening the gate");
    gate.remove().await?;
    for w in workers {
        w.await.expect("worker panicked")?;
    }
    coordinator.close().await?;
    println!("done: {WORKERS} workers met at both barriers");
    Ok(())
}
