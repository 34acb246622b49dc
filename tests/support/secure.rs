//! Servers with TLS and authentication for the security tests, each the test's own (the
//! shared servers of `scripts/test` stay plain and open): a test CA and certificates
//! made with `rcgen`, an etcd with TLS (client certificates required), an etcd with
//! users and roles, and a ZooKeeper with a TLS port next to its plain one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use queuelock::{Client, Error};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::zookeeper::{four_letter, CLASSPATH};

/// Netty (the TLS port needs NettyServerCnxnFactory): zookeeper.jar's manifest names
/// netty-handler and netty-transport, not the codec and resolver jars they need
/// (Debian's libnetty-java, a dependency of the zookeeper package).
const NETTY: &str = ":/usr/share/java/netty-codec.jar:/usr/share/java/netty-resolver.jar";
use super::{free_port, require_binary, TempDir};

/// A test PKI on disk: a CA, a server certificate for 127.0.0.1/localhost, a client
/// certificate, and an unrelated CA that trusts nothing of it.
pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Key and certificate in one file (ZooKeeper's PEM key store).
    pub server_keystore: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("CA key")).expect("CA cert")
}

impl Pki {
    pub fn new() -> Self {
        let dir = TempDir::new("queuelock-pki");
        let write = |name: &str, text: &str| {
            let p = dir.0.join(name);
            std::fs::write(&p, text).expect("write PEM");
            p
        };
        let issuer = ca("queuelock test CA");
        let other = ca("some other CA");
        let server_key = KeyPair::generate().expect("key");
        let mut sp = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
        sp.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let server = sp.signed_by(&server_key, &issuer).expect("server cert");
        let client_key = KeyPair::generate().expect("key");
        let mut cp = CertificateParams::new(vec!["localhost".to_owned()]).expect("client params");
        cp.distinguished_name
            .push(DnType::CommonName, "queuelock-client");
        let client = cp.signed_by(&client_key, &issuer).expect("client cert");
        Pki {
            ca: write("ca.pem", &issuer.pem()),
            other_ca: write("other-ca.pem", &other.pem()),
            server_cert: write("server.pem", &server.pem()),
            server_key: write("server-key.pem", &server_key.serialize_pem()),
            server_keystore: write(
                "server-keystore.pem",
                &format!("{}{}", server_key.serialize_pem(), server.pem()),
            ),
            client_cert: write("client.pem", &client.pem()),
            client_key: write("client-key.pem", &client_key.serialize_pem()),
            dir,
        }
    }

    /// URL query options `ca=...&cert=...&key=...` (client certificate optional).
    pub fn query(&self, ca: &Path, with_cert: bool) -> String {
        let mut q = format!("ca={}", ca.display());
        if with_cert {
            q.push_str(&format!(
                "&cert={}&key={}",
                self.client_cert.display(),
                self.client_key.display()
            ));
        }
        q
    }
}

/// One etcd member on 127.0.0.1, killed on drop.
pub struct Etcd {
    dir: TempDir,
    pub port: u16,
    process: Child,
    /// etcdctl flags that reach it (TLS flags, root credentials).
    ctl: Vec<String>,
}

impl Etcd {
    fn spawn(scheme: &str, extra: &[String]) -> (TempDir, u16, Child) {
        require_binary("etcd", "apt-get install etcd-server");
        require_binary("etcdctl", "apt-get install etcd-client");
        let dir = TempDir::new("queuelock-etcd-sec");
        let (port, peer) = (free_port(), free_port());
        let client = format!("{scheme}://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.0.join("etcd.log")).expect("log");
        let child = super::etcd::member_command(
            Command::new("etcd"),
            "sec",
            &dir.0.join("data"),
            &client,
            &peer,
            &format!("sec={peer}"),
        )
        .args(extra)
        .stderr(log)
        .spawn()
        .expect("start etcd");
        (dir, port, child)
    }

    /// etcd serving clients over TLS only, requiring a client certificate signed by the
    /// test CA.
    pub fn tls(pki: &Pki) -> Self {
        let extra = vec![
            format!("--cert-file={}", pki.server_cert.display()),
            format!("--key-file={}", pki.server_key.display()),
            format!("--trusted-ca-file={}", pki.ca.display()),
            "--client-cert-auth".to_owned(),
        ];
        let (dir, port, process) = Self::spawn("https", &extra);
        let e = Etcd {
            dir,
            port,
            process,
            ctl: vec![
                format!("--cacert={}", pki.ca.display()),
                format!("--cert={}", pki.client_cert.display()),
                format!("--key={}", pki.client_key.display()),
            ],
        };
        e.wait_healthy();
        e
    }

    /// Plain-text etcd with authentication on: `root` (password `rootpw`), and for each
    /// `(user, password, prefix)` a user whose only role may read and write keys under
    /// `prefix` (as `/prefix/`).
    pub fn with_auth(users: &[(&str, &str, &str)]) -> Self {
        let (dir, port, process) = Self::spawn("http", &[]);
        Self::enable_auth(
            Etcd {
                dir,
                port,
                process,
                ctl: Vec::new(),
            },
            users,
        )
    }

    /// Like [`Etcd::with_auth`], over TLS (server certificate only; clients authenticate
    /// with user and password).
    pub fn tls_with_auth(pki: &Pki, users: &[(&str, &str, &str)]) -> Self {
        let extra = vec![
            format!("--cert-file={}", pki.server_cert.display()),
            format!("--key-file={}", pki.server_key.display()),
        ];
        let (dir, port, process) = Self::spawn("https", &extra);
        Self::enable_auth(
            Etcd {
                dir,
                port,
                process,
                ctl: vec![format!("--cacert={}", pki.ca.display())],
            },
            users,
        )
    }

    fn enable_auth(mut e: Etcd, users: &[(&str, &str, &str)]) -> Self {
        e.wait_healthy();
        e.ctl_ok(&["user", "add", "root", "--new-user-password=rootpw"]);
        e.ctl_ok(&["user", "grant-role", "root", "root"]);
        for (user, password, prefix) in users {
            let role = format!("role-{user}");
            e.ctl_ok(&[
                "user",
                "add",
                user,
                &format!("--new-user-password={password}"),
            ]);
            e.ctl_ok(&["role", "add", &role]);
            e.ctl_ok(&[
                "role",
                "grant-permission",
                &role,
                "--prefix=true",
                "readwrite",
                &format!("/{prefix}/"),
            ]);
            e.ctl_ok(&["user", "grant-role", user, &role]);
        }
        e.ctl_ok(&["auth", "enable"]);
        e.ctl.push("--user=root:rootpw".to_owned());
        e
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs etcdctl against this server (root when auth is on); `None` on failure.
    pub fn ctl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(["--command-timeout=5s", "--dial-timeout=2s"])
            .args(&self.ctl)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        self.ctl(args)
            .unwrap_or_else(|| panic!("etcdctl {args:?} failed; log in {}", self.dir.0.display()))
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ctl(&["endpoint", "health"]).is_none() {
            assert!(
                Instant::now() < deadline,
                "etcd not healthy in 60 s; log in {}",
                self.dir.0.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A standalone ZooKeeper with a plain client port and a TLS port (Netty; client
/// certificates wanted, not required), killed on drop.
pub struct SecureZk {
    dir: TempDir,
    pub port: u16,
    pub secure_port: u16,
    process: Child,
}

impl SecureZk {
    pub fn start(pki: &Pki) -> Self {
        require_binary("java", "apt-get install default-jre-headless");
        assert!(
            std::path::Path::new("/usr/share/java/zookeeper.jar").is_file(),
            "ZooKeeper is not installed: apt-get install zookeeper (./scripts/test does it)"
        );
        for jar in NETTY.split(':').filter(|j| !j.is_empty()) {
            assert!(
                std::path::Path::new(jar).is_file(),
                "{jar} is missing: apt-get install libnetty-java (a dependency of zookeeper)"
            );
        }
        let dir = TempDir::new("queuelock-zk-sec");
        let (port, secure_port) = (free_port(), free_port());
        std::fs::create_dir_all(dir.0.join("data")).expect("data dir");
        let cfg = format!(
            "tickTime=200\ninitLimit=20\nsyncLimit=10\ndataDir={data}\nclientPort={port}\n\
             secureClientPort={secure_port}\nclientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr\n\
             minSessionTimeout=400\nmaxSessionTimeout=60000\n\
             serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
             ssl.keyStore.location={ks}\nssl.keyStore.type=PEM\n\
             ssl.trustStore.location={ca}\nssl.trustStore.type=PEM\nssl.clientAuth=want\n",
            data = dir.0.join("data").display(),
            ks = pki.server_keystore.display(),
            ca = pki.ca.display(),
        );
        std::fs::write(dir.0.join("zoo.cfg"), cfg).expect("zoo.cfg");
        let log = std::fs::File::create(dir.0.join("server.log")).expect("log");
        let process = Command::new("java")
            .args(["-Xmx256m", "-cp", &format!("{CLASSPATH}{NETTY}")])
            .arg(format!("-Dzookeeper.log.dir={}", dir.0.display()))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(dir.0.join("zoo.cfg"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ZooKeeper");
        let z = SecureZk {
            dir,
            port,
            secure_port,
            process,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let plain = four_letter(port, "srvr").is_some();
            let tls = std::net::TcpStream::connect(("127.0.0.1", secure_port)).is_ok();
            if plain && tls {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ZooKeeper (TLS) not serving in 60 s; log in {}",
                z.dir.0.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        z
    }

    /// `127.0.0.1:PORT` of the plain port.
    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT` of the TLS port.
    pub fn secure_hosts(&self) -> String {
        format!("127.0.0.1:{}", self.secure_port)
    }
}

impl Drop for SecureZk {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Generous bound for "promptly, not a hang": the URLs set connect_timeout=3s.
pub const PROMPT: Duration = Duration::from_secs(20);

/// Connecting fails, promptly, with an error `check` accepts.
pub async fn refused(url: &str, check: impl Fn(&Error) -> bool) -> Error {
    let start = Instant::now();
    let r = tokio::time::timeout(PROMPT, Client::connect(url))
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} hangs"));
    let e = match r {
        Ok(_) => panic!("connecting to {url} succeeded"),
        Err(e) => e,
    };
    assert!(check(&e), "{url}: unexpected error {e:?}");
    assert!(start.elapsed() < PROMPT);
    e
}

/// A lock taken and released through `url` works and has a token.
pub async fn lock_works(url: &str) {
    let c = Client::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let g = c
        .mutex("tls/works")
        .expect("name")
        .lock()
        .await
        .expect("lock");
    assert!(g.fencing_token() > 0);
    g.release().await.expect("release");
    c.close().await.expect("close");
}
