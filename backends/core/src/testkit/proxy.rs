//! A TCP proxy between a client and one server, listening on 127.0.0.1 only, whose
//! links a test can break:
//! * `Drop`: every open connection is closed at once and new ones are closed on accept
//!   (a crashed middlebox, or a partition long enough for TCP to give up);
//! * `Blackhole`: nothing moves either way, connections stay open (a partition that
//!   heals before TCP gives up: the bytes arrive late, intact, in order);
//! * `Delay(d)`: every chunk is held back `d` before it is passed on.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with its links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Close every link now and every new one on accept.
    Drop,
    /// Move nothing either way; links stay open and resume intact.
    Blackhole,
    /// Hold every chunk back this long.
    Delay(Duration),
}

/// The proxy; dropping it closes every link.
#[derive(Debug)]
pub struct Proxy {
    /// `127.0.0.1:port` to connect to instead of the server.
    pub addr: String,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding a new port on 127.0.0.1 to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let (mode, rx) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *rx.borrow() == Mode::Drop {
                    continue; // dropping `client` closes it
                }
                tokio::spawn(link(client, upstream.clone(), rx.clone()));
            }
        });
        Proxy { addr, mode, task }
    }

    /// Switches every link, open or future, to `m`.
    pub fn set(&self, m: Mode) {
        self.mode.send_replace(m);
    }
}

impl super::Link for Proxy {
    fn stall(&self) {
        self.set(Mode::Blackhole);
    }
    fn cut(&self) {
        self.set(Mode::Drop);
    }
    fn heal(&self) {
        self.set(Mode::Pass);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::Drop);
    }
}

async fn link(client: TcpStream, upstream: String, mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Either direction ending (or a Drop) ends both: the halves are dropped together.
    tokio::select! {
        _ = pump(cr, sw, mode.clone()) => {}
        _ = pump(sr, cw, mode) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Blackhole: stop reading (the bytes wait in the kernel) until the mode changes.
        let m = match mode.wait_for(|m| *m != Mode::Blackhole).await {
            Ok(m) => *m,
            Err(_) => return,
        };
        if m == Mode::Drop {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // A mode change while idle: re-check it (Drop must close idle links too).
            r = mode.changed() => { if r.is_err() { return; } continue; }
        };
        loop {
            let m = match mode.wait_for(|m| *m != Mode::Blackhole).await {
                Ok(m) => *m,
                Err(_) => return,
            };
            match m {
                Mode::Drop => return,
                Mode::Delay(d) => tokio::time::sleep(d).await,
                _ => {}
            }
            // Blackholed again during the delay: wait once more before sending.
            if *mode.borrow() != Mode::Blackhole {
                break;
            }
        }
        if *mode.borrow() == Mode::Drop || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
