//! TLS and mutual TLS for the terminal-facing listener (rustls). The rustls config sits behind an
//! `ArcSwap`, so a reload can install re-read certificates: connections accepted after it use them,
//! established ones keep theirs.
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::accept;
use crate::config::TlsConfig;

/// A handshake that has not finished by then is dropped, so slow or silent clients cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond it, accepting waits (so a flood of silent connections cannot
/// exhaust file descriptors).
const MAX_HANDSHAKES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls: cannot read {what} from {path}: {reason}")]
    Read { what: &'static str, path: String, reason: String },
    #[error("server.tls: {0}")]
    Invalid(String),
}

fn read_certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |reason: String| TlsError::Read { what, path: path.display().to_string(), reason };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(read_error("no PEM certificate in the file".into()));
    }
    Ok(certificates)
}

/// Reads the files named by `config` and builds the rustls server config (HTTP/2 only).
pub fn load(config: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let chain = read_certificates("the certificate chain", &config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| TlsError::Read {
        what: "the private key",
        path: config.key.display().to_string(),
        reason: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates("the client CA", path)? {
                roots.add(certificate).map_err(|e| TlsError::Invalid(format!("client_ca: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid(format!("client_ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid(format!("certificate and key do not form a usable pair: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(server)
}

/// The TLS settings in force, replaceable at runtime.
pub struct TlsSettings(ArcSwap<ServerConfig>);

impl TlsSettings {
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Arc::new(Self(ArcSwap::from_pointee(config)))
    }

    /// New connections use `config` from now on.
    pub fn replace(&self, config: ServerConfig) {
        self.0.store(Arc::new(config));
    }

    /// Accepts TCP connections on `listener` and yields those that complete a TLS handshake.
    /// Handshakes run concurrently (up to a bound), so one slow client does not hold up the others.
    pub fn incoming(self: Arc<Self>, listener: TcpListener) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (ready, incoming) = mpsc::channel(64);
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            let mut pause = accept::Pause::default();
            loop {
                let (slot, (stream, peer)) = tokio::select! {
                    slot = handshakes.clone().acquire_owned() => {
                        let Ok(slot) = slot else { return };
                        tokio::select! {
                            accepted = accept::accept(&listener, &mut pause) => (slot, accepted),
                            () = ready.closed() => return,
                        }
                    }
                    () = ready.closed() => return,
                };
                let acceptor = TlsAcceptor::from(self.0.load_full());
                let ready = ready.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send(Ok(tls)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "tls: handshake refused"),
                        Err(_) => tracing::debug!(%peer, "tls: handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(incoming)
    }
}
