//! Several workers contend for one lock with a Prometheus recorder installed; the
//! example then prints the scrape, where the wait histogram shows the contention.
//!
//! Runs on the in-process backend by default; set `QUEUELOCK_URL` (for example
//! `etcd://127.0.0.1:2379/demo` or `zk://127.0.0.1:2181/demo`) for a real cluster.
//!
//! ```text
//! cargo run --example metrics
//! ```

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use queuelock::{Client, Config, NameLabel, Result};

const WORKERS: usize = 4;
const ROUNDS: usize = 3;
const HOLD: Duration = Duration::from_millis(50);

#[tokio::main]
async fn main() -> Result<()> {
    // The application chooses the recorder; queuelock only records through the facade.
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("queuelock_queue_depth".into()),
                &[0.0, 1.0, 2.0, 4.0, 8.0],
            )
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| queuelock::Error::Config(format!("prometheus recorder: {e}")))?;
    queuelock::describe_metrics();

    let config = Config::from_env()?;
    println!("queuelock metrics example on {}", config.backend.kind());
    let name = format!("examples/metrics-{}", std::process::id());
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let client = Client::with_config(&config).await?;
        let name = name.clone();
        workers.push(tokio::spawn(async move {
            let lock = client.mutex(&name)?;
            for _ in 0..ROUNDS {
                let guard = lock.lock().await?;
                tokio::time::sleep(HOLD).await;
                guard.release().await?;
            }
            client.close().await
        }));
    }
    for w in workers {
        w.await
            .map_err(|e| queuelock::Error::Config(format!("worker panicked: {e}")))??;
    }
    // A second client labels its series with the lock name's first segment: the
    // cardinality is the application's choice (NameLabel::None is the default).
    let mut by_name = config.clone();
    by_name.name_label = NameLabel::Segments(1);
    let labelled = Client::with_config(&by_name).await?;
    labelled.mutex(&name)?.lock().await?.release().await?;
    labelled.close().await?;

    let scrape = prometheus.render();
    let ours: Vec<&str> = scrape
        .lines()
        .filter(|l| l.contains("queuelock_"))
        .collect();
    println!("{}", ours.join("\n"));
    Ok(())
}
