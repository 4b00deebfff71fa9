//! The cluster's PKI: one CA per cluster and one certificate per node, naming the node, used for
//! both ends of every mutual-TLS connection between the master and the node agents.
//!
//! Layout of a PKI directory (mode 0700; keys 0600, written under a temporary name, fsynced and
//! renamed, so a key file is never readable by others, not even for a moment, and never half
//! written):
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

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

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
    #[error("{0} already exists; refusing to replace it (pass --force to issue a new CA and new node certificates)")]
    Exists(PathBuf),
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
            let mut ours = vec![self.ca_key(), self.ca_cert()];
            ours.extend(nodes.iter().flat_map(|n| [self.node_key(n), self.node_cert(n)]));
            if let Some(there) = ours.into_iter().find(|p| p.symlink_metadata().is_ok()) {
                return Err(PkiError::Exists(there));
            }
        }
        make_private_dir(&self.root)?;
        make_private_dir(&self.root.join("nodes"))?;
        let key = generate_key(&format!("the key of the CA of cluster {cluster}"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| gen_err("CA parameters", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("diskstream cluster CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key).map_err(|e| gen_err("the CA certificate", e))?;
        write_private(&self.ca_key(), key.serialize_pem().as_bytes())?;
        write_public(&self.ca_cert(), cert.pem().as_bytes())?;
        for n in nodes {
            self.issue(n)?;
        }
        Ok(())
    }

    /// Issues (or renews) NODE's certificate with the CA's key.
    pub fn issue(&self, node: &str) -> Result<()> {
        check_name(node)?;
        let ca_pem = read_text(&self.ca_cert())?;
        let ca_key = KeyPair::from_pem(&read_key_text(&self.ca_key())?).map_err(|e| PkiError::Bad {
            path: self.ca_key(),
            detail: format!("not a key: {e}"),
        })?;
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
        make_private_dir(&self.root.join("nodes"))?;
        write_private(&self.node_key(node), key.serialize_pem().as_bytes())?;
        write_public(&self.node_cert(node), cert.pem().as_bytes())?;
        Ok(())
    }

    /// The CA certificate, the only trust anchor of the cluster's connections.
    pub fn load_ca(&self) -> Result<CertificateDer<'static>> {
        let path = self.ca_cert();
        let pem = read_text(&path)?;
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Bad {
            path,
            detail: format!("no PEM certificate: {e}"),
        })
    }

    /// NODE's certificate and key. The key must not be readable by group or others.
    pub fn load_identity(&self, node: &str) -> Result<Identity> {
        check_name(node)?;
        let cert_path = self.node_cert(node);
        let cert = CertificateDer::from_pem_slice(read_text(&cert_path)?.as_bytes()).map_err(|e| PkiError::Bad {
            path: cert_path,
            detail: format!("no PEM certificate: {e}"),
        })?;
        let key_path = self.node_key(node);
        let key = PrivateKeyDer::from_pem_slice(read_key_text(&key_path)?.as_bytes()).map_err(|e| PkiError::Bad {
            path: key_path,
            detail: format!("no PEM private key: {e}"),
        })?;
        Ok(Identity {
            node: node.to_string(),
            cert,
            key,
        })
    }
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

/// Creates `dir` with mode 0700, or accepts an existing one only if no one else could have
/// changed what is in it: owned by this user and writable by no group or other user. (Anyone
/// who can write there can swap the CA certificate or a node's key and so defeat the mutual
/// TLS.)
fn make_private_dir(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => check_private_dir(dir),
        Err(source) => Err(PkiError::Io {
            op: "create",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn check_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(dir).map_err(io("stat", dir))?;
    let me = rustix::process::geteuid().as_raw();
    let bad = |detail: String| {
        Err(PkiError::Bad {
            path: dir.to_path_buf(),
            detail,
        })
    };
    if m.uid() != me {
        return bad(format!(
            "the PKI directory is owned by uid {}, not by this user (uid {me}); refusing to use it",
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return bad(format!(
            "the PKI directory is mode {:o}: others could replace its certificates and keys; \
             refusing to use it (chmod 700 it, or remove it and run pki init again)",
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` with `mode`: created exclusively under a temporary name with the
/// final mode from the first byte, fsynced, renamed over `path`.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    let res = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io("write", &tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io("rename", path)));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, bytes, 0o644)
}

/// The longest PEM file we read: certificates and keys are a few KiB.
const MAX_PEM: u64 = 64 << 10;

fn read_text(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).map_err(io("read", path))?;
    if !meta.is_file() || meta.len() > MAX_PEM {
        return Err(PkiError::Bad {
            path: path.to_path_buf(),
            detail: format!("not a PEM file (a regular file of at most {MAX_PEM} bytes)"),
        });
    }
    fs::read_to_string(path).map_err(io("read", path))
}

/// Reads a key file, refusing one that group or others can read, or that another user owns
/// (who can read it whatever its mode, and so act as that node), as ssh does.
fn read_key_text(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let text = read_text(path)?;
    let m = fs::metadata(path).map_err(io("read", path))?;
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != me && m.uid() != 0 {
        return Err(PkiError::Bad {
            path: path.to_path_buf(),
            detail: format!(
                "key is owned by uid {}, not by this user (uid {me}) or root: that user can read it \
                 and act as this node; chown it",
                m.uid()
            ),
        });
    }
    let mode = m.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(PkiError::Bad {
            path: path.to_path_buf(),
            detail: format!(
                "key is accessible to group or others (mode {:04o}); chmod 600 it",
                mode & 0o7777
            ),
        });
    }
    Ok(text)
}
