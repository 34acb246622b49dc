//! The fenced resource: a register in the test driver's process that admits an access
//! only if its token is at least the highest it has seen (and then raises that mark).
//! Reads are fenced too: a holder with a newer token that has *read* the value already
//! shuts out every older holder, so a stale read-modify-write cannot slip in between.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::history::{now_us, RegisterOp};

#[derive(Default)]
struct State {
    value: u64,
    highest: u64,
    log: Vec<RegisterOp>,
}

/// The register server; listens on 127.0.0.1 only.
pub struct Register {
    pub addr: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Register {
    pub async fn start() -> Register {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind register");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, st.clone()));
            }
        });
        Register { addr, state, task }
    }

    /// The worker that last accessed the register (likely the holder), how long ago in
    /// microseconds, and whether it wrote (a holder releases right after its write).
    pub fn last_access(&self) -> Option<(usize, u64, bool)> {
        let s = self.state.lock().expect("register");
        s.log
            .last()
            .map(|r| (r.w, now_us().saturating_sub(r.t), r.write))
    }

    /// Every access decided so far, in order, and the final value.
    pub fn log(&self) -> (Vec<RegisterOp>, u64) {
        let s = self.state.lock().expect("register");
        (s.log.clone(), s.value)
    }
}

impl Drop for Register {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(sock: TcpStream, state: Arc<Mutex<State>>) {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = decide(&line, &state);
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn decide(line: &str, state: &Mutex<State>) -> String {
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let write = line.starts_with('W');
    let (Some(&w), Some(&token)) = (f.first(), f.get(1)) else {
        return "ERR bad request\n".into();
    };
    let mut s = state.lock().expect("register");
    let admitted = token >= s.highest;
    let value = if write {
        f.get(2).copied().unwrap_or(0)
    } else {
        s.value
    };
    s.log.push(RegisterOp {
        t: now_us(),
        w: w as usize,
        write,
        token,
        value,
        admitted,
    });
    if !admitted {
        return format!("FENCED {}\n", s.highest);
    }
    s.highest = token;
    if write {
        s.value = value;
        "OK\n".into()
    } else {
        format!("OK {value}\n")
    }
}

/// A worker's connection to the register (reconnects after an error).
pub struct RegisterClient {
    addr: String,
    w: usize,
    busy: bool,
    conn: Option<(
        BufReader<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    )>,
}

/// What the register answered.
pub enum Reply {
    Ok(Option<u64>),
    Fenced(u64),
}

impl RegisterClient {
    pub fn new(addr: String, w: usize) -> Self {
        RegisterClient {
            addr,
            w,
            busy: false,
            conn: None,
        }
    }

    pub async fn read(&mut self, token: u64) -> std::io::Result<Reply> {
        self.call(format!("R {} {token}\n", self.w)).await
    }

    pub async fn write(&mut self, token: u64, value: u64) -> std::io::Result<Reply> {
        self.call(format!("W {} {token} {value}\n", self.w)).await
    }

    /// Cancel safety: a dropped call leaves the connection marked busy, and the next
    /// call opens a fresh one instead of reading a stale reply.
    async fn call(&mut self, req: String) -> std::io::Result<Reply> {
        if self.busy {
            self.conn = None;
        }
        self.busy = true;
        let r = self.try_call(&req).await;
        self.busy = false;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn try_call(&mut self, req: &str) -> std::io::Result<Reply> {
        if self.conn.is_none() {
            let (r, w) = TcpStream::connect(&self.addr).await?.into_split();
            self.conn = Some((BufReader::new(r), w));
        }
        let (r, w) = self.conn.as_mut().expect("connected");
        w.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut f = line.split_whitespace();
        match (f.next(), f.next().and_then(|x| x.parse().ok())) {
            (Some("OK"), v) => Ok(Reply::Ok(v)),
            (Some("FENCED"), Some(h)) => Ok(Reply::Fenced(h)),
            _ => Err(std::io::Error::other(format!("register said {line:?}"))),
        }
    }
}
