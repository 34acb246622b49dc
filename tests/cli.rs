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
            &["run", "--url", "redis://h:1", "x", "--", "true"],
            "unknown scheme \"redis\"",
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
