//! The simulated hosts' HTTPS endpoints (virt-handler's, kubelet's): TLS that checks its
//! clients' certificates, and HTTP/1 (with upgrades, for consoles) on each connection.

use std::future::Future;
use std::sync::Arc;

use anyhow::Result;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// A server with `certs` and `key` that accepts only clients the CAs in `client_ca` (PEM) signed.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: &[u8],
) -> Result<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?)
}

/// Serves `answer` on every connection `listener` accepts, over `tls`, until the future is
/// dropped; `who` names the endpoint in the log.
pub async fn serve<F, R>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    who: &'static str,
    answer: F,
) -> Result<()>
where
    F: Fn(Request<hyper::body::Incoming>) -> R + Clone + Send + Sync + 'static,
    R: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, _) = listener.accept().await?;
        let (acceptor, answer) = (acceptor.clone(), answer.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => return tracing::debug!("Simulated {who}: a TLS handshake failed: {e}"),
            };
            let service = hyper::service::service_fn(move |req| {
                let answer = answer.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades();
            if let Err(e) = connection.await {
                tracing::debug!("Simulated {who}: a connection ended: {e}");
            }
        });
    }
}
