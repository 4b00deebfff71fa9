//! Checks of a PKI's own files against each other, before they are used: a key that belongs to
//! its certificate, and a node's certificate that the CA issued, that names the node and that is
//! valid now. (A node started with a bad certificate would say "listening" and fail every peer's
//! handshake, where only the peer's log says why.)

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::RootCertStore;

use super::{PkiError, Result};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Refuses `key` that is not the key of `cert`, naming both files, with `fix` (the command that
/// makes a matching pair again).
pub(super) fn key_matches(
    cert: &CertificateDer<'static>,
    cert_path: &Path,
    key: PrivateKeyDer<'static>,
    key_path: &Path,
    fix: &str,
) -> Result<()> {
    let bad = |detail: String| PkiError::Bad {
        path: key_path.to_path_buf(),
        detail,
    };
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(format!("not a usable private key: {e}")))?;
    let pair = rustls::sign::CertifiedKey::new(vec![cert.clone()], signing);
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(bad(format!(
            "is not the key of {} (a run that was stopped half-way, or files copied from \
             elsewhere); {fix}",
            cert_path.display()
        ))),
        Err(e) => Err(PkiError::Bad {
            path: cert_path.to_path_buf(),
            detail: format!("not a usable certificate: {e}"),
        }),
    }
}

/// Refuses `node`'s certificate unless the CA `ca` issued it, it names `node` and it is valid
/// now: what every peer checks of it in the handshake.
pub(super) fn cert_is_valid(
    ca: &CertificateDer<'static>,
    cert: &CertificateDer<'static>,
    node: &str,
    cert_path: &Path,
    ca_path: &Path,
) -> Result<()> {
    let bad = |detail: String| PkiError::Bad {
        path: cert_path.to_path_buf(),
        detail,
    };
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| PkiError::Bad {
        path: ca_path.to_path_buf(),
        detail: format!("not a usable CA certificate: {e}"),
    })?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| bad(format!("cannot be checked: {e}")))?;
    let name = ServerName::try_from(node.to_string()).map_err(|_| PkiError::BadName(node.to_string()))?;
    let fix = format!("issue it again: diskstream pki issue {node}");
    match verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(e)) => Err(bad(format!(
            "not a valid certificate of node {node} under {}: {e}; {fix}",
            ca_path.display()
        ))),
        Err(e) => Err(bad(format!("not a valid certificate of node {node}: {e}; {fix}"))),
    }
}
