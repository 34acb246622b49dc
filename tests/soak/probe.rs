//! What the driver measures: client processes from /proc, and each store's own view of
//! the soak's sessions, leases, nodes, watches and keys.

use crate::support::etcd::EtcdCluster;
use crate::support::postgres::PgServer;
use crate::support::redis::RedisServer;
use crate::support::zookeeper::{four_letter, ZkEnsemble};
use crate::support::Cluster;

/// A client process's RSS (KiB), open fds and threads, or `None` once it is gone.
pub fn proc_stats(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    // A zombie (exited, not yet reaped) has no VmRSS: count it as gone.
    let rss = field("VmRSS:")?;
    let threads = field("Threads:")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds, threads))
}

/// The 1-minute load average of the machine.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// One store, started for one backend's soak.
pub enum Server {
    Etcd(EtcdCluster),
    Zk(ZkEnsemble),
    Pg(PgServer),
    Redis(RedisServer),
}

/// A server-side count: its name, and whether it must be back to 0 after the clients exit.
pub struct Count {
    pub name: &'static str,
    pub value: Option<f64>,
    pub zero_after: bool,
}

fn count(name: &'static str, value: Option<f64>, zero_after: bool) -> Count {
    Count {
        name,
        value,
        zero_after,
    }
}

impl Server {
    pub fn start(backend: &str) -> Server {
        match backend {
            "etcd" => Server::Etcd(EtcdCluster::start(1)),
            "zookeeper" => Server::Zk(ZkEnsemble::start(1)),
            "postgres" => Server::Pg(PgServer::start()),
            "redis" => Server::Redis(RedisServer::start("always")),
            other => panic!("unknown backend {other}"),
        }
    }

    fn cluster(&self) -> &dyn Cluster {
        match self {
            Server::Etcd(c) => c,
            Server::Zk(c) => c,
            Server::Pg(c) => c,
            Server::Redis(c) => c,
        }
    }

    /// The URL of the soak's clients: under `root`, with session TTL `ttl_ms`.
    pub fn url(&self, root: &str, ttl_ms: u128) -> String {
        let c = self.cluster();
        c.url(root, &format!("{}={ttl_ms}ms", c.ttl_option()))
    }

    /// The store's counts for the soak under `root`, in a fixed order (a failed probe
    /// gives `None`). Persistent records a recipe keeps by design (a semaphore's stored
    /// permit count, one per name) are counted apart and need not return to 0.
    pub fn counts(&self, root: &str) -> Vec<Count> {
        match self {
            Server::Etcd(c) => {
                // Serializable reads with a long timeout: under a load average of 70 a
                // linearizable read (a round of the raft log) missed etcdctl's 2 s
                // every time; a count of the member's own state is what is wanted.
                let ctl = |args: &[&str]| {
                    let mut a = vec!["--command-timeout=30s"];
                    a.extend_from_slice(args);
                    c.etcdctl(&c.endpoints(), &a)
                };
                // "found N leases".
                let leases = ctl(&["lease", "list"]).and_then(|s| {
                    s.lines()
                        .next()?
                        .split_whitespace()
                        .nth(1)?
                        .parse::<f64>()
                        .ok()
                });
                // The URL path is the key prefix: `/<root>/`.
                let prefix = format!("/{root}/");
                let keys = ctl(&["get", "--consistency=s", "--prefix", "--keys-only", &prefix])
                    .map(|s| {
                        s.lines()
                            .filter(|l| !l.is_empty())
                            .fold((0.0, 0.0), |(k, p), l| {
                                if l.ends_with("/meta/permits") {
                                    (k, p + 1.0)
                                } else {
                                    (k + 1.0, p)
                                }
                            })
                    });
                vec![
                    count("etcd_leases", leases, true),
                    count("etcd_keys", keys.map(|k| k.0), true),
                    count("etcd_permit_records", keys.map(|k| k.1), false),
                ]
            }
            Server::Zk(z) => {
                let port: u16 = z
                    .hosts()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("zk port");
                let mntr = four_letter(port, "mntr");
                let field = |name: &str| -> Option<f64> {
                    mntr.as_deref()?.lines().find_map(|l| {
                        let (k, v) = l.split_once('\t')?;
                        (k == name).then(|| v.trim().parse().ok())?
                    })
                };
                vec![
                    count("zk_ephemerals", field("zk_ephemerals_count"), true),
                    count("zk_watches", field("zk_watch_count"), true),
                    count("zk_znodes", field("zk_znode_count"), false),
                    // The soak's clients only (the probe's own connection excluded).
                    count(
                        "zk_connections",
                        field("zk_num_alive_connections").map(|n| (n - 1.0).max(0.0)),
                        true,
                    ),
                ]
            }
            Server::Pg(p) => {
                let s = root.replace('-', "_");
                let sql = format!(
                    "SELECT (SELECT count(*) FROM {s}.sessions WHERE expires_at > clock_timestamp()), \
                     (SELECT count(*) FROM {s}.sessions WHERE expires_at <= clock_timestamp()), \
                     (SELECT count(*) FROM {s}.nodes), \
                     (SELECT count(*) FROM {s}.abandoned), (SELECT count(*) FROM {s}.kv), \
                     (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
                      AND pid <> pg_backend_pid())"
                );
                let row: Option<Vec<f64>> = p.psql(&sql).ok().and_then(|out| {
                    out.split('|')
                        .map(|v| v.trim().parse().ok())
                        .collect::<Option<Vec<f64>>>()
                        .filter(|v| v.len() == 6)
                });
                let at = |i: usize| row.as_ref().map(|r| r[i]);
                vec![
                    count("pg_sessions", at(0), true),
                    // Rows of sessions past their expiry: dead (no lock is held through
                    // them) and deleted by the next client's sweep (`reap`), so with every
                    // client gone they stay until one connects again. Trend-checked.
                    count("pg_sessions_expired", at(1), false),
                    count("pg_nodes", at(2), true),
                    count("pg_abandoned", at(3), true),
                    count("pg_kv_rows", at(4), false),
                    count("pg_connections", at(5), true),
                ]
            }
            Server::Redis(r) => {
                // Counted by the server (KEYS in a script: one round trip, however many
                // keys; this is a test server): the soak's keys, and those kept by design
                // (the token counter, a semaphore's stored permit count).
                let keys = r
                    .cli(&[
                        "EVAL",
                        COUNT_KEYS,
                        "0",
                        &format!("{root}:*"),
                        &format!("{root}::token"),
                    ])
                    .and_then(|out| {
                        let v: Vec<f64> =
                            out.lines().filter_map(|l| l.trim().parse().ok()).collect();
                        (v.len() == 2).then(|| (v[0], v[1]))
                    });
                let clients = r.cli(&["INFO", "clients"]).and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("connected_clients:")
                            .and_then(|v| v.trim().parse::<f64>().ok())
                    })
                });
                vec![
                    count("redis_keys", keys.map(|k| k.0), true),
                    count("redis_kept_records", keys.map(|k| k.1), false),
                    // Minus redis-cli's own connection.
                    count("redis_clients", clients.map(|n| (n - 1.0).max(0.0)), true),
                ]
            }
        }
    }
}

/// `ARGV` = pattern, token key: `{keys, kept}` where kept are the token counter and the
/// stored permit counts (`.../meta/permits`).
const COUNT_KEYS: &str = "local n, k = 0, 0 \
     for _, key in ipairs(redis.call('KEYS', ARGV[1])) do \
       if key == ARGV[2] or string.sub(key, -13) == '/meta/permits' then k = k + 1 \
       else n = n + 1 end \
     end return {n, k}";
