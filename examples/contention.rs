//! A small contention benchmark: N contenders (separate clients, so separate sessions)
//! take one lock in a loop for a fixed time. Prints grants per second and fairness, and
//! writes them as JSON. Not a test: nothing is asserted about speed.
//!
//! ```text
//! QUEUELOCK_URL=etcd://127.0.0.1:2379/bench cargo run --release --example contention -- 8 3s out.json
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use queuelock::{Client, Config, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let contenders: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let duration = args
        .next()
        .and_then(|a| humantime::parse_duration(&a).ok())
        .unwrap_or(Duration::from_secs(3));
    let out = args.next();
    let config = Config::from_env()?;
    let backend = match &config.backend {
        queuelock::BackendConfig::Etcd { .. } => "etcd",
        queuelock::BackendConfig::ZooKeeper { .. } => "zookeeper",
        _ => "memory",
    };
    let name = format!("bench/contention-{}", std::process::id());
    let mut clients = Vec::new();
    for _ in 0..contenders {
        clients.push(Client::with_config(&config).await?);
    }
    // Open every session before the clock starts.
    for c in &clients {
        c.mutex(&name)?.lock().await?.release().await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for c in &clients {
        let (c, name, stop) = (c.clone(), name.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let m = c.mutex(&name)?;
            let mut grants = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let g = m.lock().await?;
                grants += 1;
                g.release().await?;
            }
            Ok::<_, queuelock::Error>(grants)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut per = Vec::new();
    for t in tasks {
        per.push(t.await.expect("contender panicked")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = per.iter().sum();
    let (max, min) = (
        per.iter().max().copied().unwrap_or(0),
        per.iter().min().copied().unwrap_or(0),
    );
    let rate = total as f64 / elapsed;
    let fairness = if min == 0 {
        f64::INFINITY
    } else {
        max as f64 / min as f64
    };
    println!(
        "{backend}: {contenders} contenders, {total} grants in {elapsed:.1}s = {rate:.0} grants/s; fairness max/min = {fairness:.2}"
    );
    if let Some(path) = out {
        let json = serde_json::json!({
            "backend": backend,
            "contenders": contenders,
            "seconds": elapsed,
            "grants": total,
            "grants_per_second": rate,
            "per_contender": per,
            "fairness_max_over_min": if fairness.is_finite() { serde_json::json!(fairness) } else { serde_json::Value::Null },
        });
        std::fs::write(&path, format!("{json:#}\n")).expect("write results");
        println!("results written to {path}");
    }
    for c in &clients {
        c.close().await?;
    }
    Ok(())
}
