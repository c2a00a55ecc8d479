//! Downloading a checkpoint into the cache: `<file>.part` grows (resumed with an HTTP `Range`
//! request when a connection is cut), is checked against the spec's hash, size and format,
//! then renamed to `<file>`. A lock file in `<cache>/.locks/` serialises processes fetching the
//! same file. On any failure the partial file is removed, so the cache holds only complete,
//! verified files (a `.part` survives only a killed process, and the next fetch resumes it).

use super::{check_file, sha256_file, Hub};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tlc_compiler::checkpoint::Checkpoint;

/// Fetches `ck` from the first of `urls` that works, into `hub.cache`.
pub(super) fn fetch(hub: &Hub, ck: &Checkpoint, urls: &[String]) -> Result<PathBuf> {
    std::fs::create_dir_all(hub.cache.join(".locks")).with_context(|| format!("cannot create the weights cache {}", hub.cache.display()))?;
    let _lock = lock(&hub.cache.join(".locks").join(format!("{}.lock", ck.file)), &ck.file)?;
    let dest = hub.cache.join(&ck.file);
    if dest.is_file() {
        return Ok(dest); // another process finished it while we waited
    }
    let part = hub.cache.join(format!("{}.part", ck.file));
    // A `.part` left by a killed process is resumed; if the result fails its check, the old
    // bytes may be from another upload: start once more from scratch.
    let leftover = part.is_file();
    let mut result = download_and_check(hub, ck, urls, &part);
    if result.is_err() && leftover {
        let _ = std::fs::remove_file(&part);
        result = download_and_check(hub, ck, urls, &part);
    }
    let result = result.and_then(|digest| {
        std::fs::rename(&part, &dest).with_context(|| format!("cannot move {} to {}", part.display(), dest.display()))?;
        sync_dir(&hub.cache);
        eprintln!("saved {} (sha256 {digest})", dest.display());
        Ok(dest)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result.with_context(|| format!("cannot fetch weights `{}`", ck.file))
}

/// Holds an exclusive lock on `path` until dropped, waiting (with a note) if another process has it.
fn lock(path: &Path, file: &str) -> Result<File> {
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(path).with_context(|| format!("cannot create lock file {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!("waiting for another tlc process that is downloading {file}");
            f.lock().with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
    Ok(f)
}

/// Downloads into `part` and checks it; returns its sha256.
fn download_and_check(hub: &Hub, ck: &Checkpoint, urls: &[String], part: &Path) -> Result<String> {
    download_any(hub, urls, part)?;
    let digest = sha256_file(part)?;
    check_file(ck, part, &digest)?;
    Ok(digest)
}

fn download_any(hub: &Hub, urls: &[String], part: &Path) -> Result<()> {
    let mut errors = Vec::new();
    for url in urls {
        eprintln!("downloading {url}");
        match download(hub, url, part) {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(part);
                errors.push(format!("{e:#}"));
            }
        }
    }
    bail!("{}", errors.join("; "))
}

/// Why one request did not finish the file.
enum Stop {
    /// The connection broke after some progress: resume.
    Cut(String),
    /// Retrying will not help (HTTP error, timeout, refused connection, disk error).
    Fatal(anyhow::Error),
}

/// Downloads `url` into `part`, resuming up to `hub.retries` times after cut connections.
fn download(hub: &Hub, url: &str, part: &Path) -> Result<()> {
    let agent = agent(hub);
    let mut cuts = 0;
    loop {
        match request(hub, &agent, url, part) {
            Ok(()) => return Ok(()),
            Err(Stop::Fatal(e)) => return Err(e),
            Err(Stop::Cut(why)) => {
                cuts += 1;
                let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
                if cuts > hub.retries {
                    bail!("{url}: the connection was cut {cuts} times (last: {why})");
                }
                eprintln!("connection cut ({why}); resuming at byte {have}");
                std::thread::sleep(Duration::from_millis(200 * cuts as u64));
            }
        }
    }
}

fn agent(hub: &Hub) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(hub.timeout))
        .timeout_recv_response(Some(hub.timeout))
        .timeout_per_read(Some(hub.timeout))
        .user_agent(concat!("tlc/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::new_with_config(config)
}

/// One GET, appending to `part` from its current length.
fn request(hub: &Hub, agent: &ureq::Agent, url: &str, part: &Path) -> Result<(), Stop> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| request_error(hub, url, e))?;
    let status = resp.status().as_u16();
    let length: Option<u64> = resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let (start, total) = match status {
        206 => (have, length.map(|l| have + l)),
        200 => (0, length),
        416 if have > 0 => {
            let _ = std::fs::remove_file(part);
            return Err(Stop::Cut("the server refused to resume".into()));
        }
        _ => return Err(Stop::Fatal(anyhow!("{url}: HTTP {status} {}", resp.status().canonical_reason().unwrap_or("")))),
    };
    let mut out = open_part(part, start).map_err(Stop::Fatal)?;
    let mut body = resp.into_body().into_reader();
    let written = copy(hub, url, &mut body, &mut out, start, total)?;
    out.sync_all().map_err(|e| Stop::Fatal(anyhow!("cannot write {}: {e}", part.display())))?;
    match total {
        Some(t) if written != t => Err(Stop::Cut(format!("got {written} of {t} bytes"))),
        _ => Ok(()),
    }
}

fn request_error(hub: &Hub, url: &str, e: ureq::Error) -> Stop {
    match e {
        ureq::Error::Timeout(_) => Stop::Fatal(anyhow!("{url}: no answer within {} s (TLC_TIMEOUT)", hub.timeout.as_secs())),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => Stop::Fatal(anyhow!("{url}: connection refused")),
        ureq::Error::Io(io) => Stop::Cut(io.to_string()),
        other => Stop::Fatal(anyhow!("{url}: {other}")),
    }
}

fn open_part(part: &Path, start: u64) -> Result<File> {
    let f = if start == 0 { File::create(part) } else { OpenOptions::new().append(true).open(part) };
    f.with_context(|| format!("cannot write {}", part.display()))
}

/// Copies the body to the file; returns the file's length so far. A read error is a cut
/// connection unless it is a timeout.
fn copy(hub: &Hub, url: &str, body: &mut impl Read, out: &mut File, start: u64, total: Option<u64>) -> Result<u64, Stop> {
    let mut buf = vec![0u8; 1 << 16];
    let mut written = start;
    let mut bar = Progress::new(hub.progress && std::io::stderr().is_terminal(), start, total);
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(Stop::Fatal(anyhow!("{url}: no data for {} s (TLC_TIMEOUT)", hub.timeout.as_secs())))
            }
            Err(e) => {
                bar.finish();
                return Err(Stop::Cut(e.to_string()));
            }
        };
        out.write_all(&buf[..n]).map_err(|e| Stop::Fatal(anyhow!("cannot write the download: {e}")))?;
        written += n as u64;
        bar.update(written);
    }
    bar.finish();
    Ok(written)
}

/// A one-line progress bar on stderr, redrawn at most four times a second.
struct Progress {
    shown: bool,
    total: Option<u64>,
    start: Instant,
    from: u64,
    last: Option<Instant>,
}

impl Progress {
    fn new(shown: bool, from: u64, total: Option<u64>) -> Progress {
        Progress { shown, total, start: Instant::now(), from, last: None }
    }

    fn update(&mut self, done: u64) {
        if !self.shown || self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) {
            return;
        }
        self.last = Some(Instant::now());
        let mb = |b: u64| b as f64 / 1e6;
        let rate = mb(done - self.from) / self.start.elapsed().as_secs_f64().max(1e-3);
        let line = match self.total {
            Some(t) if t > 0 => {
                let frac = done as f64 / t as f64;
                let bar: String = (0..30).map(|i| if (i as f64) < frac * 30.0 { '#' } else { '.' }).collect();
                format!("[{bar}] {:5.1}% {:.1}/{:.1} MB {rate:.1} MB/s", frac * 100.0, mb(done), mb(t))
            }
            _ => format!("{:.1} MB {rate:.1} MB/s", mb(done)),
        };
        eprint!("\r{line}   ");
    }

    fn finish(&mut self) {
        if self.shown && self.last.is_some() {
            eprintln!();
        }
        self.last = None;
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
