//! The door's certificate: read at start, read again on SIGHUP (a renewed
//! certificate without a restart). A connection keeps the configuration it
//! was accepted with, so a reload drops none; a certificate that does not
//! load on reload is logged and the running one kept.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::state::Shared;

pub struct Reloadable {
    current: RwLock<Arc<ServerConfig>>,
}

/// The ring provider: the one rustls already runs on in this binary (the
/// S3 client's, through ureq).
fn load(cert: &str, key: &str) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(Path::new(cert))
        .with_context(|| format!("http.tls_cert {cert}"))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("http.tls_cert {cert}: not PEM certificates"))?;
    if certs.is_empty() {
        bail!("http.tls_cert {cert}: no certificate in it");
    }
    let key = PrivateKeyDer::from_pem_file(Path::new(key)).with_context(|| format!("http.tls_key {key}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("http.tls_cert {cert} and http.tls_key do not make a pair"))?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

impl Reloadable {
    pub fn new(cert: &str, key: &str) -> Result<Reloadable> {
        Ok(Reloadable { current: RwLock::new(load(cert, key)?) })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        let c = self.current.read().map(|c| c.clone()).unwrap_or_else(|p| p.into_inner().clone());
        TlsAcceptor::from(c)
    }

    /// On SIGHUP, after the daemon has read its config again: the files
    /// that config names.
    pub fn reload_on_sighup(self: Arc<Self>, shared: Arc<Shared>) {
        let Ok(mut signals) = signal_hook_tokio::Signals::new([signal_hook::consts::SIGHUP]) else {
            warn!("cannot watch SIGHUP: the certificate is read at start only");
            return;
        };
        tokio::spawn(async move {
            while signals.next().await.is_some() {
                // The config reload runs on the same signal.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let cfg = shared.config();
                if !cfg.http.tls() {
                    continue;
                }
                let (c, k) = (cfg.http.tls_cert.clone(), cfg.http.tls_key.clone());
                match tokio::task::spawn_blocking(move || load(&c, &k)).await {
                    Ok(Ok(new)) => {
                        if let Ok(mut w) = self.current.write() {
                            *w = new;
                        }
                        info!(cert = %cfg.http.tls_cert, "TLS certificate reloaded");
                    }
                    Ok(Err(e)) => {
                        warn!(error = %format!("{e:#}"), "TLS certificate not reloaded; keeping the running one")
                    }
                    Err(e) => warn!(error = %e, "TLS reload failed"),
                }
            }
        });
    }
}
