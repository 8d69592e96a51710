//! virt-handler's console endpoints, what virt-api connects a client's `console` and `vnc`
//! subresource to: a websocket (subprotocol `plain.kubevirt.io`) per connection, whose frames
//! virt-api relays unchanged between the client and here. The serial console answers like a
//! booting Linux guest (its boot lines, a login prompt, the typed input echoed); the VNC
//! endpoint completes the RFB 3.8 handshake (no authentication) and announces a screen. The
//! connection closes when the instance stops running.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use kube::api::{Api, DynamicObject};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::Sim;
use super::handler::text;

/// KubeVirt's subprotocol of its raw streams.
pub const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";

/// Which console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Serial,
    Vnc,
}

type Socket = WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Answers a websocket upgrade for the console of the running instance `name` in `ns` with
/// 101, and serves it on the upgraded connection.
pub async fn accept(
    sim: Arc<Sim>,
    req: Request<hyper::body::Incoming>,
    ns: String,
    name: String,
    kind: Kind,
) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes().to_vec()) else {
        return text(StatusCode::BAD_REQUEST, "not a websocket upgrade");
    };
    let vmi = match running(&sim, &ns, &name).await {
        Ok(Some(vmi)) => vmi,
        Ok(None) => return text(StatusCode::BAD_REQUEST, "the VirtualMachineInstance does not run on this node"),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let offered = req
        .headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|p| p.to_str().ok())
        .is_some_and(|p| p.split(',').any(|p| p.trim() == PLAIN_PROTOCOL));
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let host = super::serial::hostname(&vmi).unwrap_or_else(|| name.clone());
    let boot = super::serial::boot_of(&vmi);
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!("Simulated console: the upgrade failed: {e}"),
        };
        let socket = WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(upgraded), Role::Server, None).await;
        let guest = sim.guests.get(&format!("{ns}/{name}"));
        let session = async {
            match (kind, guest) {
                // A real guest's serial console: relayed to qemu's.
                (Kind::Serial, Some(guest)) => relay(socket, &guest.console_socket()).await,
                (Kind::Serial, None) => serial(socket, &sim, &uid, &host, &boot).await,
                (Kind::Vnc, _) => vnc(socket, &name).await,
            }
        };
        tokio::select! {
            _ = session => {}
            _ = stopped(&sim, &ns, &name) => tracing::debug!(namespace = %ns, vmi = %name, "Simulated console: the instance stopped"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("Upgrade"));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept.parse().expect("base64 is a header value"));
    if offered {
        headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, http::HeaderValue::from_static(PLAIN_PROTOCOL));
    }
    response
}

/// The instance, if it runs on one of the simulated nodes.
async fn running(sim: &Sim, ns: &str, name: &str) -> Result<Option<DynamicObject>, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(sim.client.clone(), ns, &super::vmis::resource());
    Ok(api.get_opt(name).await?.filter(|vmi| {
        sim.is_our_node(vmi.data["status"]["nodeName"].as_str()) && vmi.data["status"]["phase"] == "Running"
    }))
}

/// Resolves once the instance has stopped ([`super::vmis::stopped`], looked at every second).
async fn stopped(sim: &Sim, ns: &str, name: &str) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if super::vmis::stopped(sim, ns, name).await.unwrap_or(false) {
            return;
        }
    }
}

/// Relays a console between the websocket and a real guest's serial port (qemu's socket).
async fn relay(socket: Socket, path: &std::path::Path) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(port) = tokio::net::UnixStream::connect(path).await else {
        return tracing::debug!("The guest's serial port is not there");
    };
    let (mut from_guest, mut to_guest) = port.into_split();
    let (mut to_client, mut from_client) = socket.split();
    let inbound = async {
        while let Some(Ok(message)) = from_client.next().await {
            let bytes = match message {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if to_guest.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    let outbound = async {
        let mut buffer = vec![0; 4096];
        while let Ok(n) = from_guest.read(&mut buffer).await {
            if n == 0 || to_client.send(Message::binary(buffer[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
}

/// A booted Debian guest's serial console: the last lines it printed (its boot, then what
/// consoles showed since), a login prompt, and the typed input echoed (a line typed is
/// answered as a failed login). What it shows is kept in the instance's transcript, the log
/// the simulated kubelet serves.
async fn serial(mut socket: Socket, sim: &Sim, uid: &str, host: &str, boot: &str) {
    let prompt = super::serial::prompt(host);
    let mut shown = boot.as_bytes().to_vec();
    shown.extend_from_slice(&sim.serial.of(uid));
    let last = super::serial::tail(&shown, Some(6)).to_vec();
    if socket.send(Message::binary(last)).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = socket.next().await {
        let input: Vec<u8> = match message {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Close(_) => break,
            _ => continue,
        };
        let mut echo = Vec::with_capacity(input.len());
        for byte in input {
            match byte {
                b'\r' | b'\n' => echo.extend_from_slice(format!("\r\n\r\nLogin incorrect\r\n{prompt}").as_bytes()),
                b => echo.push(b),
            }
        }
        sim.serial.record(uid, &echo);
        if socket.send(Message::binary(echo)).await.is_err() {
            break;
        }
    }
}

/// Reads exactly `n` bytes from the client's frames into `buffer` (what is left stays there).
async fn read_exact(socket: &mut Socket, buffer: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buffer.len() < n {
        match socket.next().await? {
            Ok(Message::Binary(b)) => buffer.extend_from_slice(&b),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    Some(buffer.drain(..n).collect())
}

/// The screen the VNC endpoint announces.
pub const VNC_SIZE: (u16, u16) = (1024, 768);

/// RFB 3.8 without authentication, up to the server's init message; then the client's
/// messages are read and dropped.
async fn vnc(mut socket: Socket, name: &str) {
    let mut buffer = Vec::new();
    let handshake = async {
        socket.send(Message::binary(b"RFB 003.008\n".to_vec())).await.ok()?;
        let version = read_exact(&mut socket, &mut buffer, 12).await?;
        if !version.starts_with(b"RFB 003.") {
            return None;
        }
        // One security type: None.
        socket.send(Message::binary(vec![1u8, 1])).await.ok()?;
        let chosen = read_exact(&mut socket, &mut buffer, 1).await?;
        let result: u32 = if chosen == [1] { 0 } else { 1 };
        socket.send(Message::binary(result.to_be_bytes().to_vec())).await.ok()?;
        if result != 0 {
            return None;
        }
        let _shared = read_exact(&mut socket, &mut buffer, 1).await?;
        let mut init = Vec::new();
        init.extend_from_slice(&VNC_SIZE.0.to_be_bytes());
        init.extend_from_slice(&VNC_SIZE.1.to_be_bytes());
        // 32 bits per pixel, depth 24, little-endian, true colour, 255 per channel, shifts 16/8/0.
        init.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        init.extend_from_slice(&(name.len() as u32).to_be_bytes());
        init.extend_from_slice(name.as_bytes());
        socket.send(Message::binary(init)).await.ok()
    };
    if handshake.await.is_none() {
        return;
    }
    while let Some(Ok(message)) = socket.next().await {
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
}
