//! Security (issue #9), on servers each test starts for itself (the shared test servers
//! stay plain and open): TLS to etcd and ZooKeeper with a test CA, etcd users and roles,
//! ZooKeeper digest ACLs on every node queuelock creates, and credentials kept out of
//! `Debug`, errors, logs and `queuelock status`.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::Duration;

use queuelock::{Client, Error};
use queuelock_etcd::testkit::etcd_client;
use queuelock_zookeeper::testkit::zookeeper_client;
use support::secure::{lock_works, refused, Etcd, Pki, SecureZk, PROMPT};

/// Everything every test logs (TRACE, all targets), for the leak check.
fn logs() -> Arc<StdMutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<StdMutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(StdMutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
    .clone()
}

struct Sink(Arc<StdMutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `c` holds lock `name` and leads election `leader`, having proclaimed `alice-says`.
async fn hold_and_lead(c: &Client, name: &str) -> (queuelock::Guard, queuelock::Leadership) {
    let held = c.mutex(name).expect("name").lock().await.expect("lock");
    let leadership = c
        .election("leader")
        .expect("name")
        .campaign("alice")
        .await
        .expect("campaign");
    leadership.proclaim("alice-says").await.expect("proclaim");
    (held, leadership)
}

/// The current leader of election `leader`.
async fn leader_of(c: &Client) -> queuelock::Leader {
    c.election("leader")
        .expect("name")
        .leader()
        .await
        .expect("leader")
        .expect("a leader")
}

fn is_auth(e: &Error) -> bool {
    matches!(e, Error::Auth { .. })
}

fn is_conn(e: &Error) -> bool {
    matches!(e, Error::Connection { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates() {
    logs();
    let pki = Pki::new();
    let etcd = Etcd::tls(&pki);
    let base = format!("etcd://{}/tls?connect_timeout=3s", etcd.endpoint());
    lock_works(&format!("{base}&{}", pki.query(&pki.ca, true))).await;
    // The same through a TOML Config's `tls` table.
    let toml = format!(
        "connect_timeout = \"3s\"\n[backend]\nkind = \"etcd\"\nendpoints = [\"{}\"]\n\
         prefix = \"/tls\"\ntls = {{ ca = {:?}, cert = {:?}, key = {:?} }}\n",
        etcd.endpoint(),
        pki.ca,
        pki.client_cert,
        pki.client_key
    );
    let config: queuelock::Config = toml::from_str(&toml).expect("TOML config");
    let c = Client::with_config(&config)
        .await
        .expect("connect with TOML config");
    c.mutex("tls/toml")
        .expect("name")
        .try_lock()
        .await
        .expect("try_lock")
        .expect("free")
        .release()
        .await
        .expect("release");
    // The server requires a client certificate.
    // The server refuses our missing client certificate: Error::Auth when its TLS alert
    // reaches us, a connection error when TLS 1.3 lets the client write first and the
    // server just closes (both happen).
    refused(&format!("{base}&{}", pki.query(&pki.ca, false)), |e| {
        is_conn(e) || is_auth(e)
    })
    .await;
    // A server certificate from a CA we do not trust is refused.
    refused(
        &format!("{base}&{}", pki.query(&pki.other_ca, true)),
        is_conn,
    )
    .await;
    // Plain text to a TLS port fails promptly.
    refused(&base, is_conn).await;
    // Files that are missing or not PEM are configuration errors naming the file.
    let e = refused(&format!("{base}&ca=/nonexistent/ca.pem"), |e| {
        matches!(e, Error::Config(_))
    })
    .await;
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    // ZooKeeper digest credentials must be user:password.
    refused("zk://127.0.0.1:1/x?digest=no-colon", |e| {
        matches!(e, Error::Config(_))
    })
    .await;
    let e = refused(
        &format!(
            "{base}&ca={}&cert={}",
            pki.ca.display(),
            pki.client_cert.display()
        ),
        |e| matches!(e, Error::Config(_)),
    )
    .await;
    assert!(e.to_string().contains("key"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_over_tls() {
    logs();
    let pki = Pki::new();
    let zk = SecureZk::start(&pki);
    let base = format!("zk://{}/tls?connect_timeout=3s", zk.secure_hosts());
    lock_works(&format!("{base}&{}", pki.query(&pki.ca, false))).await;
    lock_works(&format!("{base}&{}", pki.query(&pki.ca, true))).await;
    let e = refused(
        &format!("{base}&{}", pki.query(&pki.other_ca, false)),
        is_conn,
    )
    .await;
    assert!(e.to_string().contains("TLS"), "no hint at TLS: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_users_and_roles() {
    logs();
    let etcd = Etcd::with_auth(&[
        ("alice", "alicePW-s3cr3t", "a"),
        ("bob", "bobPW-s3cr3t", "b"),
    ]);
    let ep = etcd.endpoint();
    let alice_url = format!("etcd://alice:alicePW-s3cr3t@{ep}/a?connect_timeout=3s");
    let alice = Client::connect(&alice_url).await.expect("alice connects");
    let (held, leadership) = hold_and_lead(&alice, "held").await;

    // No credentials, wrong password, or a role for another prefix: Error::Auth, promptly.
    refused(&format!("etcd://{ep}/a?connect_timeout=3s"), is_auth).await;
    refused(
        &format!("etcd://alice:wrong@{ep}/a?connect_timeout=3s"),
        is_auth,
    )
    .await;
    refused(
        &format!("etcd://bob:bobPW-s3cr3t@{ep}/a?connect_timeout=3s"),
        is_auth,
    )
    .await;
    // bob works in his own prefix.
    lock_works(&format!(
        "etcd://bob:bobPW-s3cr3t@{ep}/b?connect_timeout=3s"
    ))
    .await;

    // bob, bypassing queuelock, can neither delete alice's lock nor forge her proclamation.
    let opts = etcd_client::ConnectOptions::new().with_user("bob", "bobPW-s3cr3t");
    let mut bob = etcd_client::Client::connect([&ep], Some(opts))
        .await
        .expect("raw bob");
    // Guard and leader keys are relative to the prefix.
    let lock_key = format!("/a/{}", held.key());
    let stored = etcd
        .ctl(&["get", &lock_key, "--keys-only"])
        .expect("root reads");
    assert!(stored.contains(&lock_key), "{lock_key} not in {stored}");
    assert!(bob.delete(lock_key.as_str(), None).await.is_err());
    let leader = leader_of(&alice).await;
    let leader_key = format!("/a/{}", leader.key);
    assert!(bob.put(leader_key.as_str(), "forged", None).await.is_err());
    assert!(bob.put("/a/held/forged-waiter", "x", None).await.is_err());
    let after = leader_of(&alice).await;
    assert_eq!(after.value, b"alice-says");
    assert!(held.is_lost().is_none(), "bob took alice's lock");
    held.release().await.expect("release");
    leadership.resign().await.expect("resign");
    alice.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_tls_and_users_together() {
    logs();
    let pki = Pki::new();
    let etcd = Etcd::tls_with_auth(&pki, &[("erin", "erinPW-s3cr3t", "e")]);
    let ep = etcd.endpoint();
    let ca = format!("ca={}", pki.ca.display());
    lock_works(&format!(
        "etcd://erin:erinPW-s3cr3t@{ep}/e?connect_timeout=3s&{ca}"
    ))
    .await;
    refused(&format!("etcd://{ep}/e?connect_timeout=3s&{ca}"), is_auth).await;
    refused(
        &format!("etcd://erin:wrong@{ep}/e?connect_timeout=3s&{ca}"),
        is_auth,
    )
    .await;
    refused(
        &format!("etcd://erin:erinPW-s3cr3t@{ep}/other?connect_timeout=3s&{ca}"),
        is_auth,
    )
    .await;
}

/// Every node under `path` (and `path` itself) carries exactly the owner-all +
/// world-read ACL.
async fn assert_acls(zk: &zookeeper_client::Client, path: &str, owner: &str) {
    use zookeeper_client::Permission;
    let mut todo = vec![path.to_owned()];
    let mut seen = 0;
    while let Some(p) = todo.pop() {
        let (acls, _) = zk
            .get_acl(&p)
            .await
            .unwrap_or_else(|e| panic!("acl {p}: {e}"));
        let ok = acls.len() == 2
            && acls.iter().any(|a| {
                a.scheme() == "digest"
                    && a.id().starts_with(&format!("{owner}:"))
                    && a.permission() == Permission::ALL
            })
            && acls.iter().any(|a| {
                a.scheme() == "world" && a.id() == "anyone" && a.permission() == Permission::READ
            });
        assert!(ok, "{p} has ACL {acls:?}");
        seen += 1;
        if let Ok(children) = zk.list_children(&p).await {
            todo.extend(children.into_iter().map(|c| format!("{p}/{c}")));
        }
    }
    assert!(seen >= 12, "only {seen} nodes checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_digest_acls() {
    logs();
    let pki = Pki::new();
    let zk = SecureZk::start(&pki);
    let hosts = zk.hosts();
    let url = |digest: Option<&str>| {
        let d = digest.map(|d| format!("&digest={d}")).unwrap_or_default();
        format!("zk://{hosts}/acl/app?connect_timeout=3s{d}")
    };
    let alice = Client::connect(&url(Some("alice:alicePW-s3cr3t")))
        .await
        .expect("alice connects");
    let (held, leadership) = hold_and_lead(&alice, "team/held").await;

    // Without credentials, with another identity, or with a wrong password (a different
    // digest identity in ZooKeeper): acquiring is refused with Error::Auth, promptly.
    for digest in [None, Some("mallory:pw"), Some("alice:wrong")] {
        let c = Client::connect(&url(digest)).await.expect("connect");
        for name in ["team/held", "fresh"] {
            let r = tokio::time::timeout(PROMPT, c.mutex(name).expect("name").try_lock())
                .await
                .expect("try_lock hangs");
            match r {
                Err(e) => assert!(is_auth(&e), "{digest:?} {name}: {e:?}"),
                Ok(g) => panic!("{digest:?} acquired {name}: {:?}", g.is_some()),
            }
        }
        c.close().await.expect("close");
    }

    // Mallory, bypassing queuelock, can neither delete nor overwrite alice's nodes.
    let mallory = zookeeper_client::Client::connector()
        .with_auth("digest", b"mallory:pw")
        .connect(&hosts)
        .await
        .expect("raw mallory");
    for dir in ["/acl/app/team/held", "/acl/app/leader"] {
        let children = mallory.list_children(dir).await.expect("children readable");
        assert!(!children.is_empty(), "{dir} is empty");
        for c in children {
            let p = format!("{dir}/{c}");
            let del = mallory.delete(&p, None).await;
            assert!(
                matches!(del, Err(zookeeper_client::Error::NoAuth)),
                "{p}: {del:?}"
            );
            let set = mallory.set_data(&p, b"forged", None).await;
            assert!(
                matches!(set, Err(zookeeper_client::Error::NoAuth)),
                "{p}: {set:?}"
            );
        }
        let fake = mallory
            .create(
                &format!("{dir}/_c_00000000-0000-0000-0000-000000000000-lock-"),
                b"",
                &zookeeper_client::CreateMode::EphemeralSequential
                    .with_acls(zookeeper_client::Acls::anyone_all()),
            )
            .await;
        assert!(
            matches!(fake, Err(zookeeper_client::Error::NoAuth)),
            "{dir}: {fake:?}"
        );
    }
    let leader = leader_of(&alice).await;
    assert_eq!(leader.value, b"alice-says");
    assert!(held.is_lost().is_none(), "mallory took alice's lock");

    // Other recipes and stored values: a semaphore (its count node and two queues), a
    // read lock, and a fenced write to a nested key.
    let permit = alice
        .semaphore("pool/sem", 2)
        .expect("name")
        .acquire()
        .await
        .expect("permit");
    let read = alice
        .rwlock("rw")
        .expect("name")
        .read()
        .await
        .expect("read");
    held.fenced_write([("data/deep/value", Some("v"))])
        .await
        .expect("fenced write");
    // Every node queuelock created, from the chroot down, is alice's.
    let root = zookeeper_client::Client::connector()
        .with_auth("digest", b"alice:alicePW-s3cr3t")
        .connect(&hosts)
        .await
        .expect("raw alice");
    assert_acls(&root, "/acl/app", "alice").await;

    // A chroot that anyone may write to is reported when connecting with credentials.
    mallory
        .create(
            "/open",
            b"",
            &zookeeper_client::CreateMode::Persistent
                .with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .expect("open chroot");
    let c = Client::connect(&format!("zk://{hosts}/open?digest=alice:alicePW-s3cr3t"))
        .await
        .expect("connect");
    c.close().await.expect("close");
    let logs = String::from_utf8_lossy(&logs().lock().expect("logs")).into_owned();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("lets anyone create or delete")),
        "no warning about the world-writable chroot"
    );
    permit.release().await.expect("release");
    read.release().await.expect("release");
    held.release().await.expect("release");
    leadership.resign().await.expect("resign");
    alice.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_stay_out_of_logs_errors_and_status() {
    let logs = logs();
    let etcd = Etcd::with_auth(&[("carol", "carolPW-l3ak", "c")]);
    let ep = etcd.endpoint();
    let pki = Pki::new();
    let zk = SecureZk::start(&pki);
    let secrets = ["carolPW-l3ak", "daveDIGEST-l3ak", "wrongPW-l3ak"];
    let urls = [
        format!("etcd://carol:carolPW-l3ak@{ep}/c?connect_timeout=3s"),
        format!("etcd://{ep}/c?user=carol&password=carolPW-l3ak&connect_timeout=3s"),
        format!(
            "zk://{}/leak?digest=dave:daveDIGEST-l3ak&connect_timeout=3s",
            zk.hosts()
        ),
    ];
    let mut texts = Vec::new();
    for url in &urls {
        let c = Client::connect(url).await.expect("connect");
        texts.push(format!("{c:?}"));
        let m = c.mutex("leak").expect("name");
        let g = m.lock().await.expect("lock");
        texts.push(format!("{:?}", m.holders().await.expect("holders")));
        g.release().await.expect("release");
        c.close().await.expect("close");
        let cfg = queuelock::Config::from_url(url).expect("config");
        texts.push(format!("{cfg:?}"));

        // `queuelock status` with the credentials in the URL.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_queuelock"))
            .args(["status", "--url", url, "leak"])
            .env("QUEUELOCK_LOG", "trace")
            .output()
            .expect("run queuelock status");
        assert!(out.status.success(), "status failed: {out:?}");
        texts.push(String::from_utf8_lossy(&out.stdout).into_owned());
        texts.push(String::from_utf8_lossy(&out.stderr).into_owned());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_queuelock"))
            .args(["status", "--json", "--url", url, "leak"])
            .output()
            .expect("run queuelock status");
        texts.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    // Errors: a wrong password, and a refused connection.
    for url in [
        format!("etcd://carol:wrongPW-l3ak@{ep}/c?connect_timeout=3s"),
        "etcd://carol:wrongPW-l3ak@127.0.0.1:1/c?connect_timeout=1s".to_owned(),
        "zk://127.0.0.1:1/x?digest=dave:wrongPW-l3ak&connect_timeout=1s".to_owned(),
    ] {
        let e = Client::connect(&url).await.expect_err("refused");
        texts.push(format!("{e} {e:?}"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_queuelock"))
            .args(["status", "--url", &url, "leak"])
            .env("QUEUELOCK_LOG", "trace")
            .output()
            .expect("run queuelock status");
        assert!(!out.status.success());
        texts.push(String::from_utf8_lossy(&out.stdout).into_owned());
        texts.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    texts.push(String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned());
    assert!(
        texts.last().is_some_and(|l| !l.is_empty()),
        "nothing was logged"
    );
    for t in &texts {
        for s in secrets {
            assert!(!t.contains(s), "{s} leaked in: {t}");
        }
    }
}

/// Locks `name` in a task; the receiver fires once it holds the lock (it then holds it
/// until the returned sender fires).
fn waiter(
    c: Client,
    name: &str,
) -> (
    tokio::sync::oneshot::Receiver<u64>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (got_tx, got) = tokio::sync::oneshot::channel();
    let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
    let name = name.to_owned();
    tokio::spawn(async move {
        let g = c.mutex(&name).expect("name").lock().await.expect("lock");
        let _ = got_tx.send(g.fencing_token());
        let _ = release_rx.await;
        g.release().await.expect("release");
    });
    (got, release)
}

/// Holders and waiters of a queue with foreign nodes in it can still be read; the one
/// holder is `holder` (when given).
async fn views_work(c: &Client, name: &str, holder: Option<&str>) {
    let m = c.mutex(name).expect("name");
    let holders = m.holders().await.expect("holders with garbage nodes");
    let waiters = m.waiters().await.expect("waiters with garbage nodes");
    if let Some(key) = holder {
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert_eq!(holders[0].key, key);
        assert!(holders[0].holder.is_some(), "our holder's metadata");
    }
    assert!(!waiters.is_empty(), "the queued waiter is listed");
}

/// With foreign nodes queued between our holder `held` and a new waiter (`queue_len`
/// nodes in all): holders and waiters can be read, the waiter does not jump ahead when
/// `held` lets go, and it gets the lock once `remove` has deleted the foreign nodes.
async fn waits_behind_foreign_nodes(
    url: &str,
    name: &str,
    held: queuelock::Guard,
    queue_len: usize,
    remove: impl std::future::Future<Output = ()>,
) {
    let b = Client::connect(url).await.expect("connect");
    let (mut got, release) = waiter(b, name);
    let observer = Client::connect(url).await.expect("connect");
    support::await_queue_len(&observer, name, queue_len).await;
    views_work(&observer, name, Some(held.key())).await;
    held.release().await.expect("release");
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut got)
            .await
            .is_err(),
        "the waiter jumped ahead of foreign nodes queued before it"
    );
    views_work(&observer, name, None).await;
    remove.await;
    let token = tokio::time::timeout(PROMPT, got)
        .await
        .expect("the waiter never got the lock once the foreign nodes were gone")
        .expect("waiter task");
    assert!(token > 0);
    let _ = release.send(());
}

/// The shared test server named by `var` (set by scripts/test); fails when unset.
fn shared(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run ./scripts/test"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_foreign_garbage_keys_are_ordered_by_revision() {
    logs();
    let ep = shared("QUEUELOCK_TEST_ETCD");
    let url = format!("etcd://{ep}/queuelock-garbage");
    let name = format!("g-{}", uuid::Uuid::new_v4().simple());
    let dir = format!("/queuelock-garbage/{name}/");
    let a = Client::connect(&url).await.expect("connect");
    let held = a.mutex(&name).expect("name").lock().await.expect("lock");
    // Someone else writes keys with garbage names and payloads into the lock's directory.
    let mut raw = etcd_client::Client::connect([&ep], None)
        .await
        .expect("raw");
    let garbage: Vec<(String, Vec<u8>)> = vec![
        (format!("{dir}garbage"), vec![0xff, 0x00, 0xfe]),
        (format!("{dir}zz-not-ours-\u{1F512}"), b"{not json".to_vec()),
        (format!("{dir}0-lock-"), Vec::new()),
    ];
    for (k, v) in &garbage {
        raw.put(k.as_str(), v.clone(), None).await.expect("raw put");
    }
    // Ignored: keys of a nested queue, and keys that are not UTF-8 (with a warning).
    let mut ignored = vec![format!("{dir}nested/deeper/key").into_bytes()];
    ignored.push([dir.as_bytes(), &[0xff, 0xfe, b'x']].concat());
    for k in &ignored {
        raw.put(k.clone(), vec![0; 4096], None)
            .await
            .expect("raw put");
    }
    // The foreign keys came first (by create_revision): after our holder lets go, the
    // waiter still waits for them, as etcd's Go mutex would.
    let remove = async {
        for (k, _) in &garbage {
            raw.delete(k.as_str(), None).await.expect("raw delete");
        }
        for k in &ignored {
            raw.delete(k.clone(), None).await.expect("raw delete");
        }
    };
    waits_behind_foreign_nodes(&url, &name, held, 2 + garbage.len(), remove).await;

    // A semaphore whose stored permit count someone overwrote with garbage: a clear
    // conflict, with the foreign bytes escaped.
    let sem = format!("{name}-sem");
    raw.put(
        format!("/queuelock-garbage/{sem}/meta/permits"),
        b"\x1b[31m9\xff".to_vec(),
        None,
    )
    .await
    .expect("raw put");
    match a.semaphore(&sem, 2).expect("name").try_acquire().await {
        Err(e @ Error::Conflict { .. }) => assert!(!e.to_string().contains('\x1b'), "{e}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    raw.delete(format!("/queuelock-garbage/{sem}/meta/permits"), None)
        .await
        .expect("raw delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_foreign_garbage_children_are_ordered_or_ignored() {
    logs();
    let hosts = shared("QUEUELOCK_TEST_ZK");
    let url = format!("zk://{hosts}/queuelock-garbage");
    let name = format!("g-{}", uuid::Uuid::new_v4().simple());
    let dir = format!("/queuelock-garbage/{name}");
    let a = Client::connect(&url).await.expect("connect");
    let held = a.mutex(&name).expect("name").lock().await.expect("lock");
    let raw = zookeeper_client::Client::connect(&hosts)
        .await
        .expect("raw");
    let open = zookeeper_client::Acls::anyone_all();
    let persistent = zookeeper_client::CreateMode::Persistent.with_acls(open);
    // Ignored (no sequence suffix), with a warning.
    for child in [
        "garbage",
        "x-y-z",
        "lock-12",
        "lock-abcdefghij",
        "x-0000000001x",
    ] {
        raw.create(&format!("{dir}/{child}"), &[0xff, 0x00], &persistent)
            .await
            .unwrap_or_else(|e| panic!("create {child}: {e}"));
    }
    // Ordered by its sequence: after our holder, before the next waiter.
    let sequential = zookeeper_client::CreateMode::PersistentSequential.with_acls(open);
    raw.create(&format!("{dir}/junk-"), b"{garbage payload", &sequential)
        .await
        .expect("create junk-");
    let remove = async {
        let children = raw.list_children(&dir).await.expect("children");
        let junk = children
            .iter()
            .find(|c| c.starts_with("junk-"))
            .expect("junk node");
        raw.delete(&format!("{dir}/{junk}"), None)
            .await
            .expect("delete junk");
    };
    waits_behind_foreign_nodes(&url, &name, held, 3, remove).await;
    // The ignored children were warned about.
    let logs = String::from_utf8_lossy(&logs().lock().expect("logs")).into_owned();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("garbage")),
        "no warning about the ignored child"
    );
}

#[test]
fn cli_refuses_a_bad_name_before_connecting() {
    // 127.0.0.1:1 refuses connections: an error about the name, not the connection,
    // proves the name was checked first.
    for args in [
        vec!["status", "--url", "etcd://127.0.0.1:1/p", "../escape"],
        vec![
            "run",
            "--url",
            "zk://127.0.0.1:1/p",
            "a\u{1b}b",
            "--",
            "true",
        ],
        vec![
            "elect",
            "--url",
            "etcd://127.0.0.1:1/p",
            "zookeeper/x",
            "v",
            "--",
            "true",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_queuelock"))
            .args(&args)
            .output()
            .expect("run queuelock");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains("invalid name"), "{args:?}: {err}");
    }
}
