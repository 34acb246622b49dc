//! Transfers between accounts lock both accounts, in one global order, so transfers in
//! opposite directions never deadlock. Balances live in the store, written with fenced
//! writes that only apply while the locks are held.
//!
//! `cargo run --example multilock` (set `QUEUELOCK_URL` and enable its backend, e.g.
//! `--features etcd`, for a real cluster).

use queuelock::{Client, Result};

async fn balance(g: &queuelock::Guard, key: &str) -> Result<i64> {
    Ok(g.read(key)
        .await?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(100))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut tasks = Vec::new();
    for (from, to) in [
        ("alice", "bob"),
        ("bob", "alice"),
        ("alice", "bob"),
        ("bob", "alice"),
    ] {
        tasks.push(tokio::spawn(async move {
            let client = Client::from_env().await?;
            let both = client
                .multilock()
                .mutex(&format!("examples/accounts/{from}"))?
                .mutex(&format!("examples/accounts/{to}"))?;
            let held = both.lock().await?;
            let g = &held.guards()[0];
            let (kf, kt) = (
                format!("examples/balances/{from}"),
                format!("examples/balances/{to}"),
            );
            let (bf, bt) = (balance(g, &kf).await?, balance(g, &kt).await?);
            // Written through one member's guard: refused if that lock was lost.
            g.fenced_write([
                (kf.as_str(), Some((bf - 10).to_string())),
                (kt.as_str(), Some((bt + 10).to_string())),
            ])
            .await?;
            println!(
                "moved 10 from {from} to {to} (tokens {:?})",
                held.fencing_tokens()
            );
            held.release().await?;
            client.close().await
        }));
    }
    for t in tasks {
        t.await.expect("task panicked")?;
    }
    let client = Client::from_env().await?;
    let g = client
        .multilock()
        .mutex("examples/accounts/alice")?
        .mutex("examples/accounts/bob")?
        .lock()
        .await?;
    let total = balance(&g.guards()[0], "examples/balances/alice").await?
        + balance(&g.guards()[0], "examples/balances/bob").await?;
    println!("total {total} (conserved: {})", total == 200);
    // Reset for the next run.
    g.guards()[0]
        .fenced_write([
            ("examples/balances/alice", None::<&str>),
            ("examples/balances/bob", None),
        ])
        .await?;
    g.release().await?;
    if total != 200 {
        std::process::exit(1);
    }
    Ok(())
}
