//! The cluster's PKI: one CA per cluster and one certificate per node, naming the node, used for
//! both ends of every mutual-TLS connection between the master and the node agents.
//!
//! Layout of a PKI directory (mode 0700; keys 0600, written under a temporary name, fsynced and
//! renamed, so a key file is never readable by others, not even for a moment, and never half
//! written; `init` and `issue` lock the directory, one at a time, and remove the temporary files
//! of runs that were killed):
//!
//! ```text
//! DIR/ca.crt            the cluster CA certificate (PEM); every node trusts it alone
//! DIR/ca.key            the CA's key: needed only to issue node certificates (keep it on the master)
//! DIR/nodes/NODE.crt    NODE's certificate: subjectAltName DNS:NODE, serverAuth + clientAuth
//! DIR/nodes/NODE.key    NODE's key
//! ```
//!
//! Keys are ECDSA P-256. The CA is valid for 10 years, node certificates for 2 (`issue` again to
//! renew one). Ganeti uses one self-signed `server.pem` shared by every node; here a node's
//! certificate names that node, so one node's stolen key cannot impersonate another node or the
//! master.

mod files;
mod verify;

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use files::Staged;

/// How long the CA is valid.
const CA_DAYS: i64 = 3650;
/// How long a node certificate is valid.
const NODE_DAYS: i64 = 730;

/// What went wrong with the PKI files, naming the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Reading, writing or creating a file or directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("create", "read", "write", "rename").
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file exists that this operation would replace.
    #[error("{0} already exists; refusing to replace it (pass --force to issue a new CA and new node certificates{hint})", hint = if *.1 { ", or issue a missing node's certificate with this CA: diskstream pki issue NODE" } else { "" })]
    Exists(PathBuf, bool),
    /// A file is not what it should be (not PEM, not a certificate, a key readable by others).
    #[error("{path}: {detail}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A node name that cannot be a certificate's DNS name.
    #[error("node name {0:?} cannot be named in a certificate (it must be a DNS name such as node1.example.com)")]
    BadName(String),
    /// Certificate generation failed.
    #[error("generating {what}: {source}")]
    Generate {
        /// The certificate or key.
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
}

/// Result of PKI operations.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

/// A node's identity: its certificate chain and key, loaded from a PKI directory.
pub struct Identity {
    /// The node this identity names.
    pub node: String,
    /// The node's certificate.
    pub cert: CertificateDer<'static>,
    /// The node's key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Paths of a PKI directory.
#[derive(Debug, Clone)]
pub struct PkiDir {
    root: PathBuf,
}

impl PkiDir {
    /// The PKI directory at `root` (nothing is read or created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ca.crt`.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    /// `ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    /// `nodes/NODE.crt`.
    pub fn node_cert(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(format!("{node}.crt"))
    }

    /// `nodes/NODE.key`.
    pub fn node_key(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(format!("{node}.key"))
    }

    /// Creates the cluster CA and one certificate per node. Refuses when any of them exists (the
    /// CA's key or certificate, a node's key or certificate: a node where the CA's key was never
    /// copied must not get a new CA by a second `init`), unless `force` (then a new CA replaces
    /// the old one and every listed node gets a new certificate; nodes not listed keep
    /// certificates that no longer verify).
    pub fn init(&self, cluster: &str, nodes: &[&str], force: bool) -> Result<()> {
        for n in nodes {
            check_name(n)?;
        }
        if !force {
            self.refuse_existing(nodes)?;
        }
        files::make_private_dir(&self.root)?;
        files::make_private_dir(&self.root.join("nodes"))?;
        let _lock = files::lock(&self.root)?;
        if !force {
            // Again under the lock: another init may have made them meanwhile.
            self.refuse_existing(nodes)?;
        }
        let key = generate_key(&format!("the key of the CA of cluster {cluster}"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| gen_err("CA parameters", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("diskstream cluster CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key).map_err(|e| gen_err("the CA certificate", e))?;
        // Both written before either is installed: a kill can only fall between two renames,
        // which `issue` and every start-up then say (the key does not match the certificate).
        files::install(vec![
            Staged::write(&self.ca_key(), key.serialize_pem().as_bytes(), 0o600)?,
            Staged::write(&self.ca_cert(), cert.pem().as_bytes(), 0o644)?,
        ])?;
        for n in nodes {
            self.issue_locked(n)?;
        }
        Ok(())
    }

    /// [`PkiError::Exists`] for the first of the CA's and `nodes`' files that exists.
    fn refuse_existing(&self, nodes: &[&str]) -> Result<()> {
        let mut ours = vec![self.ca_key(), self.ca_cert()];
        ours.extend(nodes.iter().flat_map(|n| [self.node_key(n), self.node_cert(n)]));
        match ours.into_iter().find(|p| p.symlink_metadata().is_ok()) {
            Some(there) => {
                let ca_whole = self.ca_key().is_file() && self.ca_cert().is_file();
                let is_node = there.parent().is_some_and(|d| d.ends_with("nodes"));
                Err(PkiError::Exists(there, ca_whole && is_node))
            }
            None => Ok(()),
        }
    }

    /// Issues (or renews) NODE's certificate with the CA's key.
    pub fn issue(&self, node: &str) -> Result<()> {
        check_name(node)?;
        files::check_private_dir(&self.root)?;
        files::make_private_dir(&self.root.join("nodes"))?;
        let _lock = files::lock(&self.root)?;
        self.issue_locked(node)
    }

    /// [`Self::issue`] with the directory locked.
    fn issue_locked(&self, node: &str) -> Result<()> {
        let ca_pem = files::read_cert_text(&self.ca_cert())?;
        let ca_key_pem = files::read_key_text(&self.ca_key())?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| PkiError::Bad {
            path: self.ca_key(),
            detail: format!("not a key: {e}"),
        })?;
        // A CA key that does not sign for this CA certificate would issue certificates that
        // no node accepts.
        let ca_der = pem_cert(&self.ca_cert(), &ca_pem)?;
        verify::key_matches(
            &ca_der,
            &self.ca_cert(),
            PrivateKeyDer::Pkcs8(ca_key.serialize_der().into()),
            &self.ca_key(),
            "make a new CA (diskstream pki init --force) or put back the pair that belongs together",
        )?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| PkiError::Bad {
            path: self.ca_cert(),
            detail: format!("not a CA certificate: {e}"),
        })?;
        let key = generate_key(&format!("the key of node {node}"))?;
        let mut params = CertificateParams::new(vec![node.to_string()]).map_err(|e| gen_err(node, e))?;
        params.distinguished_name.push(DnType::CommonName, node);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_DAYS);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| gen_err(&format!("the certificate of node {node}"), e))?;
        files::install(vec![
            Staged::write(&self.node_key(node), key.serialize_pem().as_bytes(), 0o600)?,
            Staged::write(&self.node_cert(node), cert.pem().as_bytes(), 0o644)?,
        ])
    }

    /// The CA certificate, the only trust anchor of the cluster's connections. The directory
    /// and the file must be such that no one but this user or root could have replaced it.
    pub fn load_ca(&self) -> Result<CertificateDer<'static>> {
        files::check_private_dir(&self.root)?;
        let path = self.ca_cert();
        pem_cert(&path, &files::read_cert_text(&path)?)
    }

    /// NODE's certificate and key. The key must not be readable by group or others; the
    /// directories and the certificate must not be writable by them.
    pub fn load_identity(&self, node: &str) -> Result<Identity> {
        check_name(node)?;
        files::check_private_dir(&self.root)?;
        files::check_private_dir(&self.root.join("nodes"))?;
        let cert_path = self.node_cert(node);
        let cert = pem_cert(&cert_path, &files::read_cert_text(&cert_path)?)?;
        let key_path = self.node_key(node);
        let key =
            PrivateKeyDer::from_pem_slice(files::read_key_text(&key_path)?.as_bytes()).map_err(|e| PkiError::Bad {
                path: key_path,
                detail: format!("no PEM private key: {e}"),
            })?;
        Ok(Identity {
            node: node.to_string(),
            cert,
            key,
        })
    }

    /// The CA and NODE's identity, checked as a peer would check them before they are used:
    /// the key is the certificate's, and the certificate was issued by the CA, names NODE and
    /// is valid now. What an agent and the master start with.
    pub fn load_checked(&self, node: &str) -> Result<(CertificateDer<'static>, Identity)> {
        let ca = self.load_ca()?;
        let id = self.load_identity(node)?;
        verify::key_matches(
            &id.cert,
            &self.node_cert(node),
            id.key.clone_key(),
            &self.node_key(node),
            &format!("issue a new pair: diskstream pki issue {node}"),
        )?;
        verify::cert_is_valid(&ca, &id.cert, node, &self.node_cert(node), &self.ca_cert())?;
        Ok((ca, id))
    }
}

/// The first PEM certificate of `text` (read from `path`).
fn pem_cert(path: &Path, text: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(text.as_bytes()).map_err(|e| PkiError::Bad {
        path: path.to_path_buf(),
        detail: format!("no PEM certificate: {e}"),
    })
}

fn gen_err(what: &str, source: rcgen::Error) -> PkiError {
    PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

fn generate_key(what: &str) -> Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| gen_err(what, e))
}

/// A node name must be usable as the DNS name the peer is checked against.
fn check_name(node: &str) -> Result<()> {
    let ok = !node.is_empty()
        && !node.contains('/')
        && !node.starts_with('.')
        && matches!(ServerName::try_from(node), Ok(ServerName::DnsName(_)));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(node.to_string()))
    }
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that are slightly behind the issuer's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}
