//! `vps-operator check --url URL`: waits until an HTTP URL answers 200 (a Helm test hook
//! runs it: the image has no shell and no curl). Plain HTTP/1.1 over TCP, no TLS.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Flags of `vps-operator check`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// The URL to GET (`http://HOST:PORT/PATH`).
    #[arg(long)]
    pub url: String,
    /// How long to keep trying.
    #[arg(long, value_parser = crate::flags::duration, default_value = "60s")]
    pub timeout: Duration,
}

/// Host, port and path of an `http://` URL.
fn split(url: &str) -> Result<(String, u16, String)> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().context("the port")?),
        None => (authority.to_string(), 80),
    };
    Ok((host, port, path))
}

/// The status code of one GET of `url`.
pub async fn status(url: &str) -> Result<u16> {
    let (host, port, path) = split(url)?;
    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split(' ').nth(1).and_then(|code| code.parse().ok()).context("not an HTTP answer")
}

/// Runs `vps-operator check`.
pub async fn run(args: CheckArgs) -> Result<()> {
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), status(&args.url)).await {
            Ok(Ok(200)) => {
                println!("{} answered 200", args.url);
                return Ok(());
            }
            Ok(Ok(code)) => eprintln!("{} answered {code}", args.url),
            Ok(Err(e)) => eprintln!("{}: {e:#}", args.url),
            Err(_) => eprintln!("{}: no answer within 5 s", args.url),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{} did not answer 200 within {:?}", args.url, args.timeout);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_split() {
        assert_eq!(super::split("http://10.1.2.3:8080/readyz").unwrap(), ("10.1.2.3".into(), 8080, "/readyz".into()));
        assert_eq!(super::split("http://gw").unwrap(), ("gw".into(), 80, "/".into()));
        assert!(super::split("https://gw/").is_err());
    }
}
