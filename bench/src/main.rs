//! `queuelock-bench`: queuelock against its peers and the raw backend floor, on the same
//! server in the same run (issue #7). `scripts/bench` starts the servers and calls this.
//!
//! * `queuelock-bench run --backend etcd --endpoint 127.0.0.1:2379 --peer NAME=CMD ...`
//!   runs every scenario for every implementation, each scenario in its own process, and
//!   writes `<out>/<date>-<backend>.{json,md,svg}`.
//! * `queuelock-bench harness IMPL BACKEND ENDPOINT SCENARIO ARGS...` is one scenario of a
//!   Rust implementation, with the same command line and JSON output as the Go, Java,
//!   Python and node harnesses under `bench/peers/`.

mod driver;
mod impls;
mod report;
mod scenario;
mod server;
mod stores;

use clap::{Parser, Subcommand};

use crate::scenario::BResult;

#[derive(Parser)]
#[command(about = "queuelock benchmarks against its peers and the backend floor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every scenario for every implementation and writes the results.
    Run(driver::RunArgs),
    /// One scenario of a Rust implementation; prints JSON lines.
    Harness {
        /// `queuelock`, `etcd-client` (etcd), `zookeeper-client` (ZooKeeper),
        /// `pg-advisory` (PostgreSQL) or `floor`.
        implementation: String,
        /// `etcd`, `zookeeper`, `postgres` or `redis`.
        backend: String,
        /// `host:port`.
        endpoint: String,
        /// `floor`, `uncontended`, `contended`, `herd`, `footprint` or `per-entity`.
        scenario: String,
        /// Iterations, contenders, waiters or locks; `contended` also takes seconds;
        /// `herd` also `shared` (default) or `own`; `per-entity` takes
        /// `NAMES TASKS CLIENTS SECONDS` (also for the `floor` implementation).
        args: Vec<String>,
    },
}

/// With feature `dhat-heap` every allocation goes through dhat, so that the herd can
/// report heap bytes per waiter (scripts/profile).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() -> BResult<()> {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::builder()
        .file_name(format!("dhat-heap-{}.json", std::process::id()))
        .build();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => rt.block_on(driver::run(args)),
        Command::Harness {
            implementation,
            backend,
            endpoint,
            scenario,
            args,
        } => {
            let out = rt.block_on(harness(
                &implementation,
                &backend,
                &endpoint,
                &scenario,
                &args,
            ))?;
            println!("{out}");
            // Background tasks (keep-alives, watch streams) must not delay the exit.
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            Ok(())
        }
    }
}

async fn harness(
    implementation: &str,
    backend: &str,
    endpoint: &str,
    scenario: &str,
    args: &[String],
) -> BResult<serde_json::Value> {
    if scenario == "per-entity" {
        let shape = scenario::PerEntity::parse(args)?;
        if implementation == "floorq" {
            return match backend {
                "etcd" => impls::etcd_floor_queue_concurrent(endpoint, shape).await,
                "zookeeper" => impls::zk_floor_queue_concurrent(endpoint, shape).await,
                other => Err(format!("floorq: no raw queue requests for {other}").into()),
            };
        }
        if implementation == "floor" {
            return match backend {
                "etcd" => impls::etcd_floor_concurrent(endpoint, shape).await,
                "postgres" => stores::pg_floor_concurrent(endpoint, shape).await,
                "redis" => stores::redis_floor_concurrent(endpoint, shape).await,
                _ => impls::zk_floor_concurrent(endpoint, shape).await,
            };
        }
        let factory = factory(implementation, backend, endpoint).await?;
        return scenario::per_entity(factory.as_ref(), shape).await;
    }
    let n: usize = args
        .first()
        .ok_or("missing count argument")?
        .parse()
        .map_err(|e| format!("bad count: {e}"))?;
    if implementation == "floorq" {
        return match backend {
            "etcd" => impls::etcd_floor_queue(endpoint, n).await,
            "zookeeper" => impls::zk_floor_queue(endpoint, n).await,
            other => Err(format!("floorq: no raw queue requests for {other}").into()),
        };
    }
    if implementation == "floor" {
        return match backend {
            "etcd" => impls::etcd_floor(endpoint, n).await,
            "postgres" => stores::pg_floor(endpoint, n).await,
            "redis" => stores::redis_floor(endpoint, n).await,
            _ => impls::zk_floor(endpoint, n).await,
        };
    }
    let factory = factory(implementation, backend, endpoint).await?;
    let f = factory.as_ref();
    match scenario {
        "uncontended" => scenario::uncontended(f, n).await,
        "contended" => {
            let secs: f64 = args.get(1).map_or(Ok(3.0), |s| s.parse())?;
            scenario::contended(f, n, secs).await
        }
        "herd" => {
            let own = match args.get(1).map(String::as_str) {
                None | Some("shared") => false,
                Some("own") => true,
                Some(other) => {
                    return Err(format!("herd: expected shared or own, got {other:?}").into())
                }
            };
            scenario::herd(f, n, own).await
        }
        "footprint" => scenario::footprint(f, n).await,
        other => Err(format!("unknown scenario {other}").into()),
    }
}

async fn factory(
    implementation: &str,
    backend: &str,
    endpoint: &str,
) -> BResult<Box<dyn scenario::Factory>> {
    Ok(match (implementation, backend) {
        ("queuelock", _) => Box::new(impls::QueueLock::new(backend, endpoint).await?),
        ("queuelock-drop", _) => Box::new(impls::QueueLock::new_by_drop(backend, endpoint).await?),
        ("etcd-client", "etcd") => Box::new(impls::EtcdClientLock::new(endpoint).await?),
        ("zookeeper-client", "zookeeper") => Box::new(impls::ZkClientLock::new(endpoint)),
        ("pg-advisory", "postgres") => Box::new(stores::PgAdvisory::new(endpoint)),
        _ => return Err(format!("no implementation {implementation} on {backend}").into()),
    })
}
