//! The gateway's connections, served by hyper directly (`axum::serve` sets no timer, so a
//! client that dribbles its request head, or never sends one, would hold a connection
//! forever): every connection must deliver a whole request head within the header timeout,
//! whether it is new or idle between requests, and at most `max_connections` are served at
//! once (more are closed as soon as they are accepted). Shutdown stops accepting and lets the
//! requests in flight finish. A request may upgrade its connection (a console's websocket).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// How long open requests may take to finish after a shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// What a connection may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let capacity = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(capacity));
    // hyper-util's graceful shutdown does not take connections that may upgrade: each
    // connection watches this itself, and the permits tell when all are done.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!("Accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "Too many connections: closing a new one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            async move {
                Ok::<_, Infallible>(app.oneshot(req.map(axum::body::Body::new)).await.unwrap_or_else(|e| match e {}))
            }
        });
        // With upgrades: the consoles' websockets (once upgraded, a connection no longer
        // counts against the cap: its permit goes with the HTTP connection).
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = async { drop(stop.wait_for(|s| *s).await) } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "Connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    stopping.send_replace(true);
    let all_done = permits.acquire_many(u32::try_from(capacity).unwrap_or(u32::MAX));
    if tokio::time::timeout(DRAIN, all_done).await.is_err() {
        tracing::warn!("Requests still open {} s after the shutdown began", DRAIN.as_secs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::testing::{self, TOKEN};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn started(limits: Limits) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let app = testing::app(vec![], vec![]).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, tokio::spawn(serve(listener, app, limits, std::future::pending())))
    }

    /// One GET of the plans on a fresh connection; its status line.
    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /api/v1/plans/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.lines().next().unwrap_or_default().to_string()
    }

    /// Whether the server closed `s` (a read gives end of file or an error) within `within`.
    async fn closed(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn slow_and_idle_clients_are_cut_off_while_others_are_served() {
        let (addr, server) = started(Limits { header_timeout: Duration::from_secs(1), max_connections: 100 }).await;
        // 40 clients dribble a request head, a byte every 200 ms; one connects and says nothing.
        let mut dribblers = Vec::new();
        for _ in 0..40 {
            dribblers.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let dribble = async {
            for byte in b"GET /api/v1/plans/ HTTP/1.1\r\nHost: x\r\n" {
                for s in &mut dribblers {
                    if s.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        // Meanwhile everyone else is served at once.
        let others = async {
            for _ in 0..5 {
                let t = Instant::now();
                assert_eq!(get(addr).await, "HTTP/1.1 200 OK");
                assert!(t.elapsed() < Duration::from_millis(500), "a normal request waited {:?}", t.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::join!(dribble, others);
        assert!(closed(&mut idle, Duration::from_secs(2)).await, "the idle connection is closed");
        for s in &mut dribblers {
            assert!(closed(s, Duration::from_secs(2)).await, "a dribbling connection is closed");
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        server.abort();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let (addr, server) = started(Limits { header_timeout: Duration::from_secs(5), max_connections: 2 }).await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut third, Duration::from_secs(1)).await, "the third connection is closed");
        drop((_a, _b));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get(addr).await, "HTTP/1.1 200 OK", "room again once the others are gone");
        server.abort();
    }
}
