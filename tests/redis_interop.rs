//! Redis-only checks on a real server (`QUEUELOCK_TEST_REDIS`, set by `scripts/test`):
//!
//! * queuelock and redis-py's `Lock` (the plain `SET <name> <token> NX PX <ttl>` lock most
//!   Redis users run) exclude each other in both directions (needs
//!   `QUEUELOCK_TEST_REDISPY_PYTHON`: a Python with PyPI `redis`, made by `scripts/test`);
//! * 100 waiters on one lock: each release publishes one message, and each waiter is
//!   woken by exactly one (counted on every waiter's own pub/sub connection);
//! * an ACL user limited to its prefix, and `rediss://` against a TLS-only server of the
//!   test's own (test CA, client certificates required).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use queuelock::{Client, ClientOptions};
use queuelock_redis::testkit::{RedisHarness, PREFIX};
use support::interop::{now_ns, read_ns};
use support::TempDir;
use tokio::time::timeout;

fn redis_py(addr: &str, key: &str, start: &Path, end: &Path, hold: &str) -> tokio::process::Child {
    let python = std::env::var("QUEUELOCK_TEST_REDISPY_PYTHON").expect(
        "QUEUELOCK_TEST_REDISPY_PYTHON is not set: run ./scripts/test, which makes a virtualenv with redis-py",
    );
    tokio::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/redis_py_lock.py"
        ))
        .args([addr, key])
        .arg(start)
        .arg(end)
        .arg(hold)
        .kill_on_drop(true)
        .spawn()
        .expect("run the redis-py peer")
}

async fn wait_file(path: &Path, what: &str) -> u128 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = read_ns(path) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn client(h: &RedisHarness) -> Client {
    Client::new(
        Arc::new(h.redis().await),
        ClientOptions::default().with_ttl(Duration::from_secs(5)),
    )
}

/// While queuelock holds (and while queuelock clients queue), redis-py's `SET NX` fails;
/// it gets the lock once the queue is empty. While redis-py holds, no queuelock waiter is
/// granted: `try_lock` says busy, and `lock` returns only after redis-py released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_lock_and_queuelock_exclude_each_other() {
    let h = RedisHarness::from_env();
    let dir = TempDir::new("queuelock-redis-py");
    let name = format!("interop/{}", uuid::Uuid::new_v4().simple());
    // The plain lock on a queuelock name lives at `<prefix>:<name>`.
    let key = format!("{PREFIX}:{name}");
    let (a, b) = (client(&h).await, client(&h).await);

    // Direction 1: queuelock holds, and b queues behind; redis-py polls SET NX.
    let ga = a.mutex(&name).expect("name").lock().await.expect("lock");
    let (start, end) = (dir.0.join("start1"), dir.0.join("end1"));
    let mut peer = redis_py(h.addr(), &key, &start, &end, "0.3");
    let name_b = name.clone();
    let waiter = tokio::spawn(async move {
        let g = b.mutex(&name_b).expect("name").lock().await.expect("lock");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let at = now_ns();
        g.release().await.expect("release");
        at
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        read_ns(&start).is_none(),
        "redis-py's SET NX succeeded while queuelock held the lock"
    );
    ga.release().await.expect("release");
    let b_released = timeout(Duration::from_secs(30), waiter)
        .await
        .expect("queued queuelock waiter hung")
        .expect("join");
    let status = timeout(Duration::from_secs(60), peer.wait())
        .await
        .expect("redis-py hung")
        .expect("peer");
    assert!(status.success(), "redis-py failed: {status}");
    assert!(
        read_ns(&start).expect("start") >= b_released,
        "redis-py took the lock while a queuelock client held it"
    );

    // Direction 2: redis-py holds for 1.5 s; queuelock must wait for its release.
    let (start, end) = (dir.0.join("start2"), dir.0.join("end2"));
    let mut peer = redis_py(h.addr(), &key, &start, &end, "1.5");
    wait_file(&start, "redis-py's acquire").await;
    assert!(
        a.mutex(&name)
            .expect("name")
            .try_lock()
            .await
            .expect("try")
            .is_none(),
        "try_lock granted while redis-py held the plain lock"
    );
    let g = timeout(
        Duration::from_secs(30),
        a.mutex(&name).expect("name").lock(),
    )
    .await
    .expect("queuelock never got the lock after redis-py released it")
    .expect("lock");
    let granted = now_ns();
    let released = read_ns(&end).expect("granted before redis-py even wrote its end time");
    assert!(
        granted >= released,
        "queuelock granted while redis-py held the lock"
    );
    g.release().await.expect("release");
    timeout(Duration::from_secs(30), peer.wait())
        .await
        .expect("redis-py hung")
        .expect("peer");
    // Nothing is left behind: no queue keys and no marker.
    let mut raw = h.raw().await;
    let left: Vec<String> = queuelock_redis::testkit::redis::cmd("KEYS")
        .arg(format!("{PREFIX}:*{name}*"))
        .query_async(&mut raw)
        .await
        .expect("KEYS");
    assert!(left.is_empty(), "keys left behind: {left:?}");
}

/// 100 waiters queue on one lock, each through its own backend (its own pub/sub
/// connection); the holder releases and the lock passes down the line. Every release
/// publishes one message (counted by a pattern subscriber), and each waiter is woken by
/// exactly one message: its predecessor's release. A herd would deliver ~100²/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_waiters_each_woken_by_one_message() {
    use futures::StreamExt;
    const WAITERS: usize = 100;
    let h = RedisHarness::from_env();
    let name = h_name();
    let counter = queuelock_redis::testkit::redis::Client::open(format!("redis://{}/", h.addr()))
        .expect("client");
    let mut pubsub = counter.get_async_pubsub().await.expect("pubsub");
    pubsub
        .psubscribe(format!("{PREFIX}:{{{name}}}:d:*"))
        .await
        .expect("psubscribe");
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p = published.clone();
    let counting = tokio::spawn(async move {
        let mut s = pubsub.into_on_message();
        while s.next().await.is_some() {
            p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let holder = client(&h).await;
    let first = holder
        .mutex(&name)
        .expect("name")
        .lock()
        .await
        .expect("lock");
    let mut backends = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..WAITERS {
        let b = h.redis().await;
        backends.push(b.clone());
        let c = Client::new(
            Arc::new(b),
            ClientOptions::default().with_ttl(Duration::from_secs(5)),
        );
        let n = name.clone();
        tasks.push(tokio::spawn(async move {
            let g = c.mutex(&n).expect("name").lock().await.expect("lock");
            g.release().await.expect("release");
        }));
    }
    let observer = client(&h).await;
    support::await_queue_len(&observer, &name, WAITERS + 1).await;
    let before: Vec<u64> = backends.iter().map(|b| b.messages_delivered()).collect();
    assert!(
        before.iter().all(|&n| n == 0),
        "messages before any release: {before:?}"
    );
    first.release().await.expect("release");
    for t in tasks {
        timeout(Duration::from_secs(120), t)
            .await
            .expect("a waiter hung")
            .expect("a waiter panicked");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        published.load(std::sync::atomic::Ordering::SeqCst),
        WAITERS as u64 + 1,
        "one message per release"
    );
    let woken: Vec<u64> = backends.iter().map(|b| b.wakeups_by_message()).collect();
    assert!(
        woken.iter().all(|&n| n == 1),
        "each waiter must be woken by exactly one message: {woken:?}"
    );
    // Its own release may reach a waiter too (it watches its own node), nothing more.
    let delivered: Vec<u64> = backends.iter().map(|b| b.messages_delivered()).collect();
    assert!(
        delivered.iter().all(|&n| (1..=2).contains(&n)),
        "messages delivered per waiter: {delivered:?}"
    );
    counting.abort();
}

fn h_name() -> String {
    format!("t/herd-{}", uuid::Uuid::new_v4().simple())
}

/// The ACL user queuelock needs (README, Security): its key and channel prefix, and the
/// read, write, scripting, pub/sub and connection commands, nothing `@dangerous`. It
/// locks; a prefix outside its keys is `Error::Auth`; another user, limited to its own
/// prefix, can neither delete nor overwrite the held lock's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_limited_to_its_prefix() {
    use queuelock_redis::testkit::redis;
    let h = RedisHarness::from_env();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (app, other) = (format!("acl{}", &tag[..8]), format!("oth{}", &tag[..8]));
    let mut admin = h.raw().await;
    for (user, prefix) in [(&app, &app), (&other, &other)] {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg("on")
            .arg(">pw-secret")
            .arg("resetkeys")
            .arg(format!("~{prefix}:*"))
            .arg("resetchannels")
            .arg(format!("&{prefix}:*"))
            .arg("-@all")
            .arg("+@read")
            .arg("+@write")
            .arg("+@scripting")
            .arg("+@pubsub")
            .arg("+@connection")
            .arg("-@dangerous")
            .query_async(&mut admin)
            .await
            .expect("ACL SETUSER");
    }
    let url = |user: &str, prefix: &str| {
        format!(
            "redis://{user}:pw-secret@{}/0?prefix={prefix}&ttl=5s",
            h.addr()
        )
    };
    let c = Client::connect(&url(&app, &app))
        .await
        .expect("connect as the ACL user");
    let g = c.mutex("job").expect("name").lock().await.expect("lock");
    let token = g.fencing_token();

    let outside = Client::connect(&url(&app, &other)).await.expect("connect");
    let err = outside
        .mutex("job")
        .expect("name")
        .try_lock()
        .await
        .expect_err("keys outside the user's prefix");
    assert!(matches!(err, queuelock::Error::Auth { .. }), "{err:?}");
    assert!(!format!("{err:?}").contains("pw-secret"));

    let mut intruder = redis::Client::open(format!("redis://{other}:pw-secret@{}/", h.addr()))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect as the other user");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{app}:*"))
        .query_async(&mut admin)
        .await
        .expect("KEYS");
    assert!(keys.len() >= 3, "{keys:?}");
    for k in &keys {
        let del: redis::RedisResult<i64> =
            redis::cmd("DEL").arg(k).query_async(&mut intruder).await;
        assert!(del.is_err(), "the other user deleted {k}");
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(k)
            .arg("x")
            .query_async(&mut intruder)
            .await;
        assert!(set.is_err(), "the other user overwrote {k}");
    }
    assert_eq!(g.is_lost(), None, "the lock was lost");
    assert_eq!(g.fencing_token(), token);
    g.release().await.expect("release");
    for user in [&app, &other] {
        let _: () = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(user)
            .query_async(&mut admin)
            .await
            .expect("ACL DELUSER");
    }
}

/// `rediss://` against a TLS-only server (the test's own, with the test CA's certificate
/// and client certificates required): verified with `ca=` and a client certificate it
/// locks; a certificate from another CA, no client certificate, or plain `redis://` to the
/// TLS port are refused promptly with `Error::Connection`, naming no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_test_ca() {
    use queuelock::Error;
    use support::redis::RedisServer;
    use support::secure::{lock_works, refused, Pki};
    let pki = Pki::new();
    let server = tokio::task::block_in_place(|| RedisServer::start_tls(&pki));
    let base = format!("rediss://{}/0?prefix=tls&ttl=5s", server.addr());
    lock_works(&format!("{base}&{}", pki.query(&pki.ca, true))).await;
    let conn = |e: &Error| matches!(e, Error::Connection { .. });
    // The server's certificate does not chain to this CA: the handshake fails.
    refused(&format!("{base}&{}", pki.query(&pki.other_ca, true)), conn).await;
    // The server requires a client certificate.
    refused(&format!("{base}&{}", pki.query(&pki.ca, false)), conn).await;
    // Plain text to the TLS port.
    refused(
        &format!("redis://{}/0?prefix=tls&ttl=5s", server.addr()),
        conn,
    )
    .await;
}
