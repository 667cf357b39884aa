//! TLS for the REST port (Patroni's `restapi.certfile`, `keyfile`, `cafile`, `verify_client`),
//! with rustls on ring. The same files make the client side used to ask peers (`GET /patroni`
//! over https): peers' certificates are checked against `cafile`, and our certificate is
//! presented, since a peer with `verify_client = "required"` asks for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// `verify_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyClient {
    /// No client certificate asked for.
    None,
    /// Asked for and checked if sent; unsafe endpoints need one.
    Optional,
    /// The handshake fails without a valid client certificate.
    Required,
}

/// The validated TLS settings of `[restapi]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub cafile: Option<PathBuf>,
    pub verify_client: VerifyClient,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("read private key from {}", path.display()))
}

fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots.add(c).with_context(|| format!("add CA certificate from {}", path.display()))?;
    }
    Ok(roots)
}

/// The server side.
pub fn server_config(t: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (t.verify_client, &t.cafile) {
        (VerifyClient::None, _) => builder.with_no_client_auth(),
        (v, Some(ca)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
            let verifier = if v == VerifyClient::Optional { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().context("client certificate verifier")?)
        }
        (_, None) => anyhow::bail!("restapi.verify_client needs restapi.cafile"),
    };
    let mut cfg = builder.with_single_cert(certs(&t.certfile)?, key(&t.keyfile)?).context("certificate and key")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The client side, for peer probes.
pub fn client_config(t: &TlsFiles) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let ca = t.cafile.as_ref().context("restapi.cafile is needed to check peers' certificates")?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots(ca)?);
    let cfg = builder.with_client_auth_cert(certs(&t.certfile)?, key(&t.keyfile)?).context("client certificate")?;
    Ok(Arc::new(cfg))
}
