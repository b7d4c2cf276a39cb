//! What a server started by a benchmark says on stderr: the addresses it
//! listens on, and the lines worth showing.

use std::io::{BufRead, BufReader};
use std::process::ChildStderr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One listener a server announced.
pub struct Listening {
    /// The admin listener (`admin listening on ...`), not the public one.
    pub admin: bool,
    pub addr: String,
}

/// The public listener's address once it is announced within `timeout`
/// (a server announces it last), and the admin listener's, if it had one.
pub fn addresses(listening: &mpsc::Receiver<Listening>, timeout: Duration) -> Option<(String, Option<String>)> {
    let deadline = Instant::now() + timeout;
    let mut admin = None;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let listener = listening.recv_timeout(left).ok()?;
        match listener.admin {
            true => admin = Some(listener.addr),
            false => return Some((listener.addr, admin)),
        }
    }
}

/// Reads `stderr` on a thread of its own: every `listening on http://ADDR`
/// line is sent on the returned channel, and every line containing one of
/// `shown` is printed after `tag`.
pub fn listeners(stderr: ChildStderr, tag: String, shown: &'static [&'static str]) -> mpsc::Receiver<Listening> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .unwrap_or(rest.len());
                let admin = line.contains("admin listening");
                let _ = tx.send(Listening {
                    admin,
                    addr: rest[..end].to_string(),
                });
            } else if shown.iter().any(|s| line.contains(s)) {
                eprintln!("  {tag}: {line}");
            }
        }
    });
    rx
}
