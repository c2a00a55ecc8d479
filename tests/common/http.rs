//! A small HTTP/1.1 file server on 127.0.0.1 (ephemeral port) standing in for upstream weight
//! hosts through `TLC_MIRROR`: serves a folder by file name, honours `Range`, and can cut the
//! first response halfway, stall without answering, or trickle bytes slowly.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server misbehaves.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Close the first full response after half of its body (Content-Length still the whole file).
    pub cut_first: bool,
    /// Accept connections and never answer.
    pub stall: bool,
    /// Pause between 64 KiB chunks.
    pub trickle: Option<Duration>,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Request path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

/// A running server; it stops with the test process.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    /// Serves the files of `root` by name.
    pub fn start(root: PathBuf, behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cut_done = Arc::new(Mutex::new(false));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, b, log, cut_done) = (root.clone(), behaviour.clone(), log.clone(), cut_done.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &b, &log, &cut_done);
                });
            }
        });
        Server { url, seen }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(mut stream: TcpStream, root: &std::path::Path, b: &Behaviour, log: &Mutex<Vec<Seen>>, cut_done: &Mutex<bool>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    log.lock().unwrap().push(Seen { path: path.clone(), range: range.clone() });
    if b.stall {
        std::thread::sleep(Duration::from_secs(30));
        return Ok(());
    }
    let file = root.join(path.trim_start_matches('/'));
    let Ok(data) = std::fs::read(&file) else {
        return stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let start: usize = range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.trim_end_matches('-').parse().ok()).unwrap_or(0).min(data.len());
    let body = &data[start..];
    let status = if range.is_some() { format!("206 Partial Content\r\nContent-Range: bytes {start}-{}/{}", data.len() - 1, data.len()) } else { "200 OK".to_string() };
    write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    let cut = b.cut_first && range.is_none() && !std::mem::replace(&mut *cut_done.lock().unwrap(), true);
    let body = if cut { &body[..body.len() / 2] } else { body };
    for chunk in body.chunks(64 * 1024) {
        stream.write_all(chunk)?;
        if let Some(d) = b.trickle {
            std::thread::sleep(d);
        }
    }
    stream.flush()
}
