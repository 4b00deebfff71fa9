//! diskstream's node agent layer: the cluster PKI ([`pki`]: a CA per cluster, a certificate per
//! node) and mutual-TLS connections that trust that CA alone and check the peer's node name
//! ([`tls`]). The agent daemon and its protocol build on these two.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod pki;
pub mod rate;
pub mod tls;
