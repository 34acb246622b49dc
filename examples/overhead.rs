//! What recording costs on the uncontended path: lock + release latency with no
//! recorder installed (the library's default) and with a Prometheus recorder, measured
//! in interleaved blocks on one client so drift hits both alike.
//!
//! ```text
//! cargo run --release --example overhead -- [ITERATIONS]    # QUEUELOCK_URL picks the store
//! ```
//!
//! The recorder is set as this thread's default (`metrics::set_default_local_recorder`)
//! on a current-thread runtime, so everything the acquire and release spawn records
//! through it too, and the "none" blocks really run with no recorder.

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use queuelock::{Client, Result};

const BLOCKS: usize = 20;

async fn cycle(client: &Client, samples: &mut Vec<Duration>, n: usize) -> Result<()> {
    let mutex = client.mutex("bench/overhead")?;
    for _ in 0..n {
        let t = Instant::now();
        mutex.lock().await?.release().await?;
        samples.push(t.elapsed());
    }
    Ok(())
}

fn summary(name: &str, samples: &mut [Duration]) -> String {
    samples.sort();
    let q = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64;
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        samples.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        mean * 1e6
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let iterations: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .map_err(|e| queuelock::Error::Config(format!("ITERATIONS: {e}")))?
        .unwrap_or(20_000);
    let client = Client::from_env().await?;
    let recorder = PrometheusBuilder::new().build_recorder();
    let (mut none, mut recorded) = (Vec::new(), Vec::new());
    cycle(&client, &mut Vec::new(), iterations / 10).await?; // warm-up
    let block = (iterations / BLOCKS).max(1);
    for _ in 0..BLOCKS {
        cycle(&client, &mut none, block).await?;
        let _local = metrics::set_default_local_recorder(&recorder);
        cycle(&client, &mut recorded, block).await?;
    }
    println!("backend: {}", client.backend().name());
    println!("| recorder | samples | p50 µs | p90 µs | p99 µs | mean µs |");
    println!("|---|---|---|---|---|---|");
    println!("{}", summary("none (default)", &mut none));
    println!("{}", summary("prometheus", &mut recorded));
    client.close().await
}
