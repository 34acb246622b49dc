//! Lock-delay: a holder that is lost (here: its process "crashes" by closing its session
//! without releasing) leaves the lock free only after the delay; a release hands off at
//! once.
//!
//! `cargo run --example lockdelay` (set `QUEUELOCK_URL` and enable its backend, e.g.
//! `--features etcd`, for a real cluster; a `lock_delay=` in the URL is used, else 1 s).

use std::time::Duration;

use queuelock::{Client, Config, Result};
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<()> {
    let mut config = Config::from_env()?;
    if config.lock_delay.is_zero() {
        config.lock_delay = Duration::from_secs(1);
    }
    let delay = config.lock_delay;
    let name = format!("examples/lockdelay-{}", std::process::id());
    let (holder, waiter) = (
        Client::with_config(&config).await?,
        Client::with_config(&config).await?,
    );

    for crash in [false, true] {
        let held = holder.mutex(&name)?.lock().await?;
        let lock = waiter.mutex(&name)?;
        let queued = tokio::spawn(async move {
            let g = lock.lock().await?;
            Ok::<_, queuelock::Error>((g, Instant::now()))
        });
        // Let the waiter queue up behind the holder.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let gone = Instant::now();
        if crash {
            // The holder's session ends with the lock still held: a loss, not a release.
            holder.close().await?;
        } else {
            held.release().await?;
        }
        let (next, granted) = queued.await.expect("waiter panicked")?;
        let waited = granted - gone;
        println!(
            "holder {}: next holder (token {}) granted after {waited:.2?}",
            if crash { "lost" } else { "released" },
            next.fencing_token()
        );
        if crash && waited < delay {
            panic!("granted {waited:?} after a loss, before the lock-delay of {delay:?}");
        }
        next.release().await?;
    }
    waiter.close().await
}
