//! Cluster members in network namespaces of their own, so that tests can partition
//! members from each other for real (not only a client's links).
//!
//! Layout: a hub namespace holds a bridge; each member namespace has an `eth0` on it
//! with address `10.a.b.(i+1)/24`; the test process reaches the bridge through a veth
//! of its own in the root namespace (`10.a.b.254`), so clients connect to members at
//! their addresses as they would on a real network. Nothing leaves this machine.
//!
//! A partition is made with permanent neighbour entries that point a peer's address at
//! a MAC nobody has: frames go nowhere and TCP sees silence (no reset, no "unreachable"),
//! which is what a real partition looks like. The kernel here has no tc actions and no
//! netfilter tools, and a blackhole route would fail sends at once (EINVAL) instead.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use rand::Rng;

/// A MAC address no interface has (locally administered).
const NOWHERE: &str = "02:00:5e:00:00:99";

/// The namespaces, bridge and veths of one cluster; removed on drop.
pub struct Net {
    hub: String,
    members: Vec<String>,
    /// The root-namespace end of the test process's veth.
    host_if: String,
    prefix: String,
    /// Pairs cut right now (`usize::MAX` stands for the test process's side).
    cut: Mutex<BTreeSet<(usize, usize)>>,
}

/// The index that stands for the test process (its clients) in [`Net::cut`].
pub const CLIENTS: usize = usize::MAX;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `ip` ({e}): apt-get install iproute2 (./scripts/test does it)")
        });
    assert!(
        out.status.success(),
        "`ip {}` failed: {} (network namespaces need root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn ip_ok(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ip_out(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Removes the namespaces of test processes that died without cleaning up.
fn remove_stale() {
    for line in ip_out(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix("ql-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            ip_ok(&["netns", "del", name]);
        }
    }
}

impl Net {
    /// Creates the hub and `n` member namespaces, wired and up.
    ///
    /// # Panics
    /// When namespaces cannot be made (not root, no iproute2): tests that need them fail.
    pub fn new(n: usize) -> Net {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let pid = std::process::id();
        let k = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = format!("ql-{pid}-{k}");
        let used = ip_out(&["-4", "-o", "addr", "show"]) + &ip_out(&["-4", "route", "show"]);
        let mut rng = rand::rng();
        let prefix = loop {
            let p = format!(
                "10.{}.{}.",
                rng.random_range(200..250),
                rng.random_range(0..=255)
            );
            if !used.contains(&p) {
                break p;
            }
        };
        let net = Net {
            hub: format!("{tag}-hub"),
            members: (0..n).map(|i| format!("{tag}-m{i}")).collect(),
            // Interface names have 15 bytes at most.
            host_if: format!("ql{}", (pid as u64) * 100 + k as u64 % 100),
            prefix,
            cut: Mutex::default(),
        };
        ip(&["netns", "add", &net.hub]);
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &net.hub, "link", "set", "br0", "up"]);
        for (i, ns) in net.members.iter().enumerate() {
            ip(&["netns", "add", ns]);
            let port = format!("m{i}");
            ip(&[
                "-n", &net.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ]);
            ip(&["-n", &net.hub, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "host",
            "netns",
            &net.hub,
        ]);
        ip(&["-n", &net.hub, "link", "set", "host", "master", "br0", "up"]);
        ip(&[
            "addr",
            "add",
            &format!("{}254/24", net.prefix),
            "dev",
            &net.host_if,
        ]);
        ip(&["link", "set", &net.host_if, "up"]);
        net
    }

    /// Member `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("{}{}", self.prefix, i + 1)
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// A command that runs `program` inside member `i`'s namespace (`ip netns exec`
    /// execs it: the child's pid is the program's).
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.members[i], program]);
        c
    }

    fn neighbour(&self, side: usize, of: usize, cut: bool) {
        let addr = if of == CLIENTS {
            format!("{}254", self.prefix)
        } else {
            self.addr(of)
        };
        let (ns, dev): (Vec<&str>, &str) = if side == CLIENTS {
            (vec![], self.host_if.as_str())
        } else {
            (vec!["-n", self.members[side].as_str()], "eth0")
        };
        let mut args = ns;
        if cut {
            args.extend([
                "neigh",
                "replace",
                &addr,
                "lladdr",
                NOWHERE,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
            ip(&args);
        } else {
            args.extend(["neigh", "del", &addr, "dev", dev]);
            ip_ok(&args);
        }
    }

    /// Cuts every pair in `pairs` both ways (members by index, or [`CLIENTS`]), on top
    /// of what is cut already.
    pub fn cut(&self, pairs: &[(usize, usize)]) {
        let mut cut = self.cut.lock().expect("cut");
        for &(a, b) in pairs {
            self.neighbour(a, b, true);
            self.neighbour(b, a, true);
            cut.insert((a.min(b), a.max(b)));
        }
    }

    /// Heals every cut.
    pub fn heal(&self) {
        let mut cut = self.cut.lock().expect("cut");
        for &(a, b) in cut.iter() {
            self.neighbour(a, b, false);
            self.neighbour(b, a, false);
        }
        cut.clear();
    }

    /// Pairs cut right now.
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        self.cut.lock().expect("cut").iter().copied().collect()
    }
}

/// Member `i`'s address in `net`, or 127.0.0.1 for a cluster without namespaces.
pub fn addr_or_loopback(net: Option<&Net>, i: usize) -> String {
    net.map_or_else(|| "127.0.0.1".into(), |n| n.addr(i))
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veths in it, and with them their peers.
        for ns in &self.members {
            ip_ok(&["netns", "del", ns]);
        }
        ip_ok(&["netns", "del", &self.hub]);
        ip_ok(&["link", "del", &self.host_if]);
    }
}
