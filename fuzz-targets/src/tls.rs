//! The cluster's PEM files and the certificates in them, through `starling-net`'s public
//! functions: what a node or client loads from its certificate directory, and what a node reads
//! of a peer's certificate.

use std::path::Path;

use starling_net::cert::{Ca, CertInfo, Role, NODE_ROLE_SAN};
use starling_net::tls::{mutual, TlsMaterial};

use crate::input::chunks;

/// Fuzz target `tls_pem`: `data` is chunks (`len (u16) ‖ bytes`): `ca.pem`, `node.pem`,
/// `node.key`, `ca.key` (as text), then a DER certificate as a peer presents it.
///
/// Checks: nothing panics; a refused file gets an error that says something; the role read from
/// a certificate is the node role exactly when its DNS names include the node-role name (anything
/// unreadable is a client, the least privilege); material that loads builds the TLS
/// configurations or refuses them with an error.
pub fn tls_pem(data: &[u8]) {
    let parts = chunks(data);
    let text = |i: usize| parts.get(i).map(|b| String::from_utf8_lossy(b)).unwrap_or_default();
    let (ca, cert, key, ca_key) = (text(0), text(1), text(2), text(3));
    match TlsMaterial::from_pem(&ca, &cert, &key) {
        Ok(material) => {
            check_der(&material.ca);
            for c in &material.chain {
                check_der(c);
            }
            if let Err(e) = mutual(&material) {
                assert!(!e.to_string().is_empty());
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Err(e) = Ca::from_pem(&ca, &ca_key, Path::new("certs")) {
        assert!(!e.to_string().is_empty());
    }
    if let Some(der) = parts.get(4) {
        check_der(der);
    }
}

/// What a node reads of a peer's certificate: its role and its names and validity.
fn check_der(der: &[u8]) {
    let info = CertInfo::of_der(der);
    let node = info.as_ref().is_some_and(|i| i.dns_names.iter().any(|n| n == NODE_ROLE_SAN));
    assert_eq!(Role::of_der(der) == Role::Node, node, "the role disagrees with the names");
}
