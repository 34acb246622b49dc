//! The `queuelock` binary as a user runs it, against the real etcd and ZooKeeper that
//! `scripts/test` starts (`QUEUELOCK_TEST_ETCD`, `QUEUELOCK_TEST_ZK`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use queuelock::Client;
use tokio::time::timeout;

const BIN: &str = env!("CARGO_BIN_EXE_queuelock");

fn urls() -> Vec<String> {
    let etcd = std::env::var("QUEUELOCK_TEST_ETCD")
        .expect("QUEUELOCK_TEST_ETCD is not set: run ./scripts/test");
    let zk = std::env::var("QUEUELOCK_TEST_ZK")
        .expect("QUEUELOCK_TEST_ZK is not set: run ./scripts/test");
    vec![format!("etcd://{etcd}/cli"), format!("zk://{zk}/cli")]
}

fn unique(base: &str) -> String {
    format!("{base}-{}", uuid::Uuid::new_v4().simple())
}

fn temp() -> PathBuf {
    let d = std::env::temp_dir().join(unique("queuelock-cli"));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run queuelock")
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn wait_for_line(p: &Path, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !lines(p).iter().any(|l| l == line) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line:?} never appeared in {}",
            p.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn two_runs_never_overlap() {
    for url in urls() {
        let dir = temp();
        let log = dir.join("log");
        let name = unique("overlap");
        let script = format!(
            "echo start >> {l}; sleep 0.2; echo end >> {l}",
            l = log.display()
        );
        let children: Vec<_> = (0..4)
            .map(|_| {
                Command::new(BIN)
                    .args(["run", "--url", &url, &name, "--", "sh", "-c", &script])
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().expect("wait").success());
        }
        let got = lines(&log);
        let expected: Vec<String> = (0..4)
            .flat_map(|_| ["start".to_owned(), "end".to_owned()])
            .collect();
        assert_eq!(got, expected, "{url}: runs overlapped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_exits_124_and_child_gets_the_token() {
    for url in urls() {
        let name = unique("timeout");
        let c = Client::connect(&url).await.expect("connect");
        let g = c.mutex(&name).expect("name").lock().await.expect("lock");
        let out = run(&[
            "run",
            "--url",
            &url,
            "--timeout",
            "500ms",
            &name,
            "--",
            "true",
        ]);
        assert_eq!(out.status.code(), Some(124), "{url}: {out:?}");
        let held = g.fencing_token();
        g.release().await.expect("release");
        let out = run(&[
            "run",
            "--url",
            &url,
            &name,
            "--",
            "sh",
            "-c",
            "echo $QUEUELOCK_FENCING_TOKEN; exit 3",
        ]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{url}: the child's status is passed on"
        );
        let token: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("token");
        assert!(token > held, "{url}: token {token} after {held}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_forwarded_and_the_lock_released() {
    for url in urls() {
        let dir = temp();
        let f = dir.join("f");
        let name = unique("signal");
        let script = format!(
            "trap 'echo got-term >> {f}; exit 7' TERM; echo up >> {f}; while true; do sleep 0.05; done",
            f = f.display()
        );
        let mut child = tokio::process::Command::new(BIN)
            .args(["run", "--url", &url, &name, "--", "sh", "-c", &script])
            .spawn()
            .expect("spawn");
        wait_for_line(&f, "up").await;
        kill(
            Pid::from_raw(child.id().expect("pid") as i32),
            Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let status = timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("hung")
            .expect("wait");
        assert_eq!(status.code(), Some(7), "{url}: child status not passed on");
        assert!(
            lines(&f).contains(&"got-term".to_owned()),
            "{url}: SIGTERM not forwarded"
        );
        let c = Client::connect(&url).await.expect("connect");
        let g = timeout(
            Duration::from_secs(20),
            c.mutex(&name).expect("name").lock(),
        )
        .await
        .expect("lock not released")
        .expect("lock");
        g.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lock_stops_the_child_and_exits_75() {
    for url in urls() {
        let dir = temp();
        let f = dir.join("f");
        let name = unique("lost");
        let sep = if url.contains('?') { '&' } else { '?' };
        let short = format!("{url}{sep}ttl=2s");
        let script = format!(
            "trap 'echo got-term >> {f}; exit 0' TERM; echo up >> {f}; while true; do sleep 0.05; done",
            f = f.display()
        );
        let cli = tokio::process::Command::new(BIN)
            .args([
                "run", "--url", &short, "--grace", "2s", &name, "--", "sh", "-c", &script,
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        wait_for_line(&f, "up").await;
        let pid = Pid::from_raw(cli.id().expect("pid") as i32);
        // Freeze queuelock: its session goes unrenewed and the lock passes on.
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
        let c = Client::connect(&url).await.expect("connect");
        let g = timeout(
            Duration::from_secs(30),
            c.mutex(&name).expect("name").lock(),
        )
        .await
        .expect("the frozen holder's lock never passed on")
        .expect("lock");
        kill(pid, Signal::SIGCONT).expect("SIGCONT");
        let out = timeout(Duration::from_secs(30), cli.wait_with_output())
            .await
            .expect("queuelock did not stop")
            .expect("wait");
        assert_eq!(
            out.status.code(),
            Some(75),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            lines(&f).contains(&"got-term".to_owned()),
            "{url}: child not told to stop"
        );
        g.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_holder_and_waiters() {
    for url in urls() {
        let name = unique("status");
        let dir = temp();
        let f = dir.join("f");
        let script = format!("echo up >> {}; sleep 3", f.display());
        let mut holder = tokio::process::Command::new(BIN)
            .args([
                "run",
                "--url",
                &url,
                "--label",
                "nightly-job",
                &name,
                "--",
                "sh",
                "-c",
                &script,
            ])
            .spawn()
            .expect("spawn");
        wait_for_line(&f, "up").await;
        let out = run(&["status", "--url", &url, "--json", &name]);
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["holders"][0]["label"], "nightly-job", "{v}");
        assert_eq!(
            v["holders"][0]["pid"].as_u64().map(|p| p > 0),
            Some(true),
            "{v}"
        );
        assert_eq!(v["waiters"].as_array().map(Vec::len), Some(0));
        let out = run(&["status", "--url", &url, &name]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("1 holding, 0 waiting") && text.contains("nightly-job"),
            "{text}"
        );
        assert!(holder.wait().await.expect("wait").success());
    }
}

#[test]
fn bad_input_exits_125_naming_the_problem() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["run", "--url", "consul://h:1", "x", "--", "true"],
            "unknown scheme \"consul\"",
        ),
        (
            &["run", "--url", "etcd://h/x", "x", "--", "true"],
            "not host:port",
        ),
        (
            &[
                "run",
                "--url",
                "etcd://127.0.0.1:1/?bogus=1",
                "x",
                "--",
                "true",
            ],
            "unknown option \"bogus\"",
        ),
        (
            &["run", "--url", "memory://?ttl=soon", "x", "--", "true"],
            "ttl=\"soon\"",
        ),
        (
            &["run", "--url", "memory://", "bad name", "--", "true"],
            "invalid name",
        ),
    ];
    for (args, expect) in cases {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    let out = run(&[
        "run",
        "--url",
        "etcd://u:hunter2@127.0.0.1:1/?connect_timeout=1s&tll=1",
        "x",
        "--",
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125));
    assert!(!err.contains("hunter2"), "password leaked: {err}");
    let out = run(&[
        "run",
        "--url",
        "etcd://127.0.0.1:1/?connect_timeout=1s",
        "x",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125), "unreachable server");
    let out = run(&["run", "--url", "memory://", "x", "--", "/nonexistent/cmd"]);
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn permits_allow_n_at_once_never_more() {
    for url in urls() {
        let dir = temp();
        let log = dir.join("log");
        let name = unique("permits");
        let script = format!(
            "echo start >> {l}; sleep 0.3; echo end >> {l}",
            l = log.display()
        );
        let children: Vec<_> = (0..5)
            .map(|_| {
                Command::new(BIN)
                    .args([
                        "run",
                        "--url",
                        &url,
                        "--permits",
                        "2",
                        &name,
                        "--",
                        "sh",
                        "-c",
                        &script,
                    ])
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().expect("wait").success());
        }
        let mut inside = 0i32;
        for l in lines(&log) {
            inside += if l == "start" { 1 } else { -1 };
            assert!(inside <= 2, "{url}: more than 2 permit holders");
        }
        assert_eq!(lines(&log).len(), 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_runs_the_command_while_leader() {
    for url in urls() {
        let dir = temp();
        let f = dir.join("f");
        let name = unique("elect");
        let script = format!("echo up >> {}; sleep 2", f.display());
        let mut leader = tokio::process::Command::new(BIN)
            .args([
                "elect", "--url", &url, &name, "node-a", "--", "sh", "-c", &script,
            ])
            .spawn()
            .expect("spawn");
        wait_for_line(&f, "up").await;
        let c = Client::connect(&url).await.expect("connect");
        let seen = c
            .election(&name)
            .expect("name")
            .leader()
            .await
            .expect("leader")
            .expect("a leader");
        assert_eq!(seen.value, b"node-a", "{url}");
        assert!(leader.wait().await.expect("wait").success());
        assert_eq!(
            c.election(&name)
                .expect("name")
                .leader()
                .await
                .expect("leader"),
            None,
            "{url}: not resigned"
        );
    }
}

#[test]
fn a_command_that_cannot_run_exits_126() {
    let dir = temp();
    let f = dir.join("not-executable");
    std::fs::write(&f, "#!/bin/sh\n").expect("write");
    let out = run(&[
        "run",
        "--url",
        "memory://",
        "x",
        "--",
        f.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
}

/// A free loopback port (bound and let go: the exporter binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// One HTTP GET of `/metrics` on `port`: the body, or `None` while nothing listens.
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.1 200").then_some(text)
}

/// Scrapes until `ok` accepts the text (liveness, not timing: 30 s).
async fn scrape_until(port: u16, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = tokio::task::spawn_blocking(move || scrape(port))
            .await
            .expect("join");
        match text {
            Some(t) if ok(&t) => return t,
            last => assert!(
                tokio::time::Instant::now() < deadline,
                "{what} never appeared on :{port}; last scrape: {last:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `run --metrics-addr` serves Prometheus text over HTTP while it waits (the waiting
/// gauge is 1) and while the command runs (the grant and the wait histogram are there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_metrics_while_waiting_and_running() {
    for url in urls() {
        let name = unique("metrics");
        let dir = temp();
        let (held, ran) = (dir.join("held"), dir.join("ran"));
        let mut holder = tokio::process::Command::new(BIN)
            .args(["run", "--url", &url, &name, "--", "sh", "-c"])
            .arg(format!("echo up >> {}; sleep 2", held.display()))
            .spawn()
            .expect("spawn");
        wait_for_line(&held, "up").await;
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut waiter = tokio::process::Command::new(BIN)
            .args(["run", "--url", &url, "--metrics-addr", &addr, &name])
            .args(["--", "sh", "-c"])
            .arg(format!("echo up >> {}; sleep 3", ran.display()))
            .spawn()
            .expect("spawn");
        let waiting = scrape_until(port, "queuelock_waiting 1", |t| {
            t.lines()
                .any(|l| l.starts_with("queuelock_waiting{") && l.ends_with(" 1"))
        })
        .await;
        assert!(waiting.contains("recipe=\"mutex\""), "{waiting}");
        wait_for_line(&ran, "up").await;
        let running = scrape_until(port, "queuelock_grants_total", |t| {
            t.contains("queuelock_grants_total{")
        })
        .await;
        assert!(
            running.contains("queuelock_acquire_wait_seconds_bucket{")
                && running.contains("outcome=\"granted\"")
                && running.contains("queuelock_queue_depth_bucket{"),
            "{running}"
        );
        assert!(
            running
                .lines()
                .any(|l| l.starts_with("queuelock_waiting{") && l.ends_with(" 0")),
            "{running}"
        );
        assert!(holder.wait().await.expect("wait").success());
        assert!(waiter.wait().await.expect("wait").success());
    }
}

/// `status` finds out which recipe stored what is under a name, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_recipe_it_finds() {
    for url in urls() {
        let c = Client::connect(&url).await.expect("connect");
        let recipe = |name: &str| {
            let out = run(&["status", "--url", &url, "--json", name]);
            assert!(out.status.success(), "{out:?}");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            (v["recipe"].as_str().map(str::to_owned), v)
        };
        let (m, rw, sem, el) = (
            unique("st-mutex"),
            unique("st-rwlock"),
            unique("st-sem"),
            unique("st-elect"),
        );
        let g1 = c.mutex(&m).expect("name").lock().await.expect("lock");
        let g2 = c.rwlock(&rw).expect("name").read().await.expect("read");
        let g3 = c
            .semaphore(&sem, 3)
            .expect("name")
            .acquire()
            .await
            .expect("permit");
        let g4 = c
            .election(&el)
            .expect("name")
            .campaign("me")
            .await
            .expect("lead");
        for (name, want, holders) in [
            (&m, "mutex", 1),
            (&rw, "rwlock", 1),
            (&sem, "semaphore", 1),
            (&el, "election", 1),
        ] {
            let (found, v) = recipe(name);
            assert_eq!(found.as_deref(), Some(want), "{url}: {v}");
            assert_eq!(v["holders"].as_array().map(Vec::len), Some(holders), "{v}");
        }
        assert_eq!(recipe(&sem).1["permits"], 3);
        let text = run(&["status", "--url", &url, &sem]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("(semaphore, 3 permits): 1 holding"), "{text}");
        let (none, v) = recipe(&unique("st-nothing"));
        assert_eq!(none, None, "{v}");
        g1.release().await.expect("release");
        g2.release().await.expect("release");
        g3.release().await.expect("release");
        g4.resign().await.expect("resign");
        c.close().await.ok();
    }
}

/// A tmux pane (a real pty) shows `status --watch` redrawing: a waiter appears with its
/// waiting time, then disappears once it has had its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_shows_a_waiter_come_and_go() {
    for url in urls() {
        let name = unique("watch");
        let socket = unique("ql-tmux");
        let tmux = |args: &[&str]| {
            Command::new("tmux")
                .args(["-L", &socket])
                .args(args)
                .env_remove("TMUX")
                .output()
                .expect("tmux (installed by scripts/test)")
        };
        let watch = format!("{BIN} status --watch --interval 200ms --url '{url}' {name}");
        let out = tmux(&[
            "new-session",
            "-d",
            "-x",
            "200",
            "-y",
            "30",
            "-s",
            "w",
            &watch,
        ]);
        assert!(out.status.success(), "{out:?}");
        let pane = || {
            String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "w"]).stdout).into_owned()
        };
        let until = |what: &'static str, ok: &dyn Fn(&str) -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let p = pane();
                if ok(&p) {
                    return p;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what} never showed:\n{p}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        let dir = temp();
        let held = dir.join("held");
        let mut holder = Command::new(BIN)
            .args([
                "run",
                "--url",
                &url,
                "--label",
                "the-holder",
                &name,
                "--",
                "sh",
                "-c",
            ])
            .arg(format!("echo up >> {}; sleep 2", held.display()))
            .spawn()
            .expect("spawn");
        wait_for_line(&held, "up").await;
        let mut waiter = Command::new(BIN)
            .args([
                "run",
                "--url",
                &url,
                "--label",
                "the-waiter",
                &name,
                "--",
                "true",
            ])
            .spawn()
            .expect("spawn");
        let shown = until("the waiter", &|p| {
            p.contains("1 holding, 1 waiting") && p.contains("the-waiter")
        });
        assert!(
            shown.contains("(mutex)") && shown.contains("waiting "),
            "{shown}"
        );
        assert!(
            shown.contains("the-holder") && shown.contains("held "),
            "{shown}"
        );
        assert!(holder.wait().expect("wait").success());
        assert!(waiter.wait().expect("wait").success());
        let gone = until("the waiter gone", &|p| !p.contains("the-waiter"));
        assert!(!gone.contains("waiting "), "{gone}");
        tmux(&["kill-server"]);
    }
}

/// `run --revocable --revoke-signal USR1`: `queuelock revoke NAME` reaches the command as
/// SIGUSR1, and the lock stays held until the command exits (with its own status);
/// `revoke` says when nobody holds the lock (3) or the holder is not revocable (4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_reaches_a_revocable_run_as_a_signal() {
    for url in urls() {
        let dir = temp();
        let (f, go) = (dir.join("f"), dir.join("go"));
        let name = unique("revoke");
        let script = format!(
            "trap 'echo got-usr1 >> {f}; while [ ! -e {go} ]; do sleep 0.05; done; exit 5' USR1; \
             echo up >> {f}; while true; do sleep 0.05; done",
            f = f.display(),
            go = go.display()
        );
        assert_eq!(
            run(&["revoke", "--url", &url, &name]).status.code(),
            Some(3),
            "{url}: revoke of a free lock"
        );
        let mut child = tokio::process::Command::new(BIN)
            .args([
                "run",
                "--url",
                &url,
                "--revocable",
                "--revoke-signal",
                "usr1",
                &name,
                "--",
                "sh",
                "-c",
                &script,
            ])
            .spawn()
            .expect("spawn");
        wait_for_line(&f, "up").await;
        let asked = run(&["revoke", "--url", &url, &name]);
        assert!(
            asked.status.success(),
            "{url}: revoke: {}",
            String::from_utf8_lossy(&asked.stderr)
        );
        wait_for_line(&f, "got-usr1").await;
        // The command got the request and has not exited yet: the lock is still held.
        let c = Client::connect(&url).await.expect("connect");
        let m = c.mutex(&name).expect("name");
        assert!(
            m.try_lock().await.expect("try_lock").is_none(),
            "{url}: the lock went before the command exited"
        );
        std::fs::write(&go, b"").expect("go");
        let status = timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("hung")
            .expect("wait");
        assert_eq!(status.code(), Some(5), "{url}: child status not passed on");
        let g = timeout(Duration::from_secs(20), m.lock())
            .await
            .expect("lock not released")
            .expect("lock");
        let not_revocable = run(&["revoke", "--url", &url, &name]);
        assert_eq!(
            not_revocable.status.code(),
            Some(4),
            "{url}: {}",
            String::from_utf8_lossy(&not_revocable.stderr)
        );
        g.release().await.expect("release");
    }
    // A bad signal name is refused before anything runs.
    let out = run(&[
        "run",
        "--revocable",
        "--revoke-signal",
        "NOPE",
        "x",
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOPE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
