//! `--wait`: following a server with a GET every second until it settles or is gone, its
//! progress on standard error.

use std::io::IsTerminal as _;
use std::time::Duration;

use super::http::{Api, Reply, Request};
use super::plan::server_path;
use super::{Failure, api_error, render};

/// What `--wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// A steady status: this one (any other, also `error`, fails the command).
    Settled(&'static str),
    /// 404.
    Gone,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Wait {
    /// The server's id (`None`: the created server's, from the answer).
    pub(super) id: Option<u64>,
    pub(super) until: Until,
    pub(super) timeout: Duration,
}

/// Statuses a server stays in by itself.
const STEADY: [&str; 4] = ["active", "stopped", "suspended", "error"];

/// Follows a server with a GET every second until `wait.until`; the last answer (`None`:
/// it is gone). Answers of an overloaded or restarting gateway (429, 5xx, none) are waited
/// through; other errors end the wait.
pub(super) async fn follow(api: &Api, id: u64, wait: &Wait) -> Result<Option<Reply>, Failure> {
    let started = tokio::time::Instant::now();
    let mut progress = Progress::new(id);
    let request = Request::get(server_path(id));
    let mut last = String::from("?");
    loop {
        let seen = match api.send(&request).await {
            Ok(reply) if reply.status == 404 && wait.until == Until::Gone => {
                progress.done("deleted");
                return Ok(None);
            }
            Ok(reply) if reply.ok() => {
                let status = reply.json()["status"].as_str().unwrap_or("?").to_string();
                if matches!(wait.until, Until::Settled(_)) && STEADY.contains(&status.as_str()) {
                    progress.done(&status);
                    return Ok(Some(reply));
                }
                last = status.clone();
                status
            }
            Ok(reply) if reply.status == 429 || reply.status >= 500 => {
                format!("{last} (the gateway answered {})", reply.status)
            }
            Ok(reply) => {
                progress.done(&last);
                return Err(api_error(&reply));
            }
            Err(e) => format!("{last} (no answer: {})", render::clean(&format!("{e:#}"))),
        };
        let elapsed = started.elapsed();
        if elapsed >= wait.timeout {
            progress.done(&last);
            let what =
                if wait.until == Until::Gone { format!("still there ({last})") } else { format!("still {last}") };
            return Err(Failure(vec![format!("error: server {id} is {what} after {}", seconds(wait.timeout))]));
        }
        progress.show(&seen, elapsed);
        tokio::time::sleep(Duration::from_secs(1).min(wait.timeout - elapsed)).await;
    }
}

fn seconds(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        0 => format!("{}ms", d.as_millis()),
        s => format!("{s}s"),
    }
}

/// The progress line of a wait on standard error: rewritten in place on a terminal, a new
/// line per change of status otherwise.
struct Progress {
    id: u64,
    tty: bool,
    shown: Option<String>,
}

impl Progress {
    fn new(id: u64) -> Progress {
        Progress { id, tty: std::io::stderr().is_terminal(), shown: None }
    }

    fn show(&mut self, status: &str, elapsed: Duration) {
        if self.tty {
            eprint!("\r\x1b[2Kwaiting for server {}: {status} ({} s)", self.id, elapsed.as_secs());
        } else if self.shown.as_deref() != Some(status) {
            eprintln!("waiting for server {}: {status}", self.id);
        }
        self.shown = Some(status.to_string());
    }

    fn done(&mut self, status: &str) {
        if self.tty {
            if self.shown.is_some() {
                eprint!("\r\x1b[2K");
            }
        } else if self.shown.is_none() {
            return;
        }
        eprintln!("server {}: {status}", self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(seconds(Duration::from_secs(600)), "10m");
        assert_eq!(seconds(Duration::from_secs(90)), "90s");
        assert_eq!(seconds(Duration::from_millis(300)), "300ms");
    }
}
