//! A bounded HTTP/1.1 load generator: a fixed number of keep-alive connections, each sending
//! one GET after the other for a fixed time, loopback only. The same code drives the
//! gateway, the bare axum handler and kube-apiserver (over TLS), so their figures compare.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Where the requests go.
#[derive(Clone)]
pub enum Target {
    /// Plain HTTP on loopback.
    Http(SocketAddr),
    /// HTTPS on loopback, verified against a CA file.
    Https(SocketAddr, TlsConnector),
}

impl Target {
    /// HTTPS to `addr`, trusting the CA in `ca_pem`.
    pub fn https(addr: SocketAddr, ca_pem: &Path) -> Result<Target> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem).context("read CA")? {
            roots.add(cert.context("parse CA")?)?;
        }
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Target::Https(addr, TlsConnector::from(Arc::new(config))))
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Target::Http(a) | Target::Https(a, _) => *a,
        }
    }
}

/// One load run.
pub struct Run {
    pub target: Target,
    /// Request paths, used in turn by every connection.
    pub paths: Arc<Vec<String>>,
    /// `Authorization` header value, if any.
    pub authorization: Option<String>,
    pub concurrency: usize,
    /// Requests before this are not counted (connections warm, caches hot).
    pub warmup: Duration,
    pub duration: Duration,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Successful (2xx) requests in the measured interval.
    pub ok: u64,
    /// Non-2xx answers and connection failures in the measured interval.
    pub errors: u64,
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Mean response body size.
    pub body_bytes: u64,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} req/s, p50 {}, p99 {}, max {} ({} ok, {} errors, {} B/response)",
            self.rps,
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.ok,
            self.errors,
            self.body_bytes
        )
    }
}

/// `1.23 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: &Target) -> Result<Sender> {
    let tcp = TcpStream::connect(target.addr()).await?;
    tcp.set_nodelay(true)?;
    let sender = match target {
        Target::Http(_) => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender
        }
        Target::Https(addr, tls) => {
            let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
            let stream = tls.connect(name, tcp).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    Ok(sender)
}

#[derive(Default)]
struct WorkerResult {
    latencies_us: Vec<u32>,
    errors: u64,
    bytes: u64,
}

async fn worker(run: Arc<Run>, offset: usize, measure_from: Instant, end: Instant) -> WorkerResult {
    let mut out = WorkerResult { latencies_us: Vec::with_capacity(1 << 16), ..Default::default() };
    let host = run.target.addr().to_string();
    let mut i = offset;
    let mut sender: Option<Sender> = None;
    while Instant::now() < end {
        let s = match sender.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(&run.target).await {
                Ok(s) => sender.insert(s),
                Err(_) => {
                    if Instant::now() >= measure_from {
                        out.errors += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let path = &run.paths[i % run.paths.len()];
        i += 1;
        let mut req = hyper::Request::get(path.as_str()).header(hyper::header::HOST, host.as_str());
        if let Some(auth) = &run.authorization {
            req = req.header(hyper::header::AUTHORIZATION, auth.as_str());
        }
        let req = req.body(Empty::<Bytes>::new()).expect("request");
        let started = Instant::now();
        let result = async {
            if s.ready().await.is_err() {
                bail!("connection closed");
            }
            let res = s.send_request(req).await?;
            let ok = res.status().is_success();
            let body = res.into_body().collect().await?.to_bytes();
            anyhow::Ok((ok, body.len()))
        }
        .await;
        let elapsed = started.elapsed();
        if started < measure_from {
            if result.is_err() {
                sender = None;
            }
            continue;
        }
        match result {
            Ok((true, len)) => {
                out.latencies_us.push(elapsed.as_micros().min(u32::MAX as u128) as u32);
                out.bytes += len as u64;
            }
            Ok((false, _)) => out.errors += 1,
            Err(_) => {
                out.errors += 1;
                sender = None;
            }
        }
    }
    out
}

/// Runs the load; returns once `warmup + duration` has passed (requests in flight at the end
/// finish first, and are counted).
pub async fn run(run: Run) -> Outcome {
    let run = Arc::new(run);
    let start = Instant::now();
    let measure_from = start + run.warmup;
    let end = measure_from + run.duration;
    let step = (run.paths.len() / run.concurrency.max(1)).max(1);
    let workers: Vec<_> =
        (0..run.concurrency).map(|w| tokio::spawn(worker(run.clone(), w * step, measure_from, end))).collect();
    let mut all = Vec::new();
    let mut errors = 0;
    let mut bytes = 0;
    for w in workers {
        if let Ok(r) = w.await {
            all.extend(r.latencies_us);
            errors += r.errors;
            bytes += r.bytes;
        }
    }
    all.sort_unstable();
    let pct = |p: f64| -> Duration {
        if all.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p * all.len() as f64).ceil() as usize).clamp(1, all.len());
        Duration::from_micros(all[rank - 1] as u64)
    };
    Outcome {
        ok: all.len() as u64,
        errors,
        rps: all.len() as f64 / run.duration.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: all.last().map(|&u| Duration::from_micros(u as u64)).unwrap_or_default(),
        body_bytes: if all.is_empty() { 0 } else { bytes / all.len() as u64 },
    }
}
