//! `starling cert init | issue | bootstrap`.

use std::path::Path;

use anyhow::{Context, Result};
use starling_node::cert::{self, CertError, CA_CERT_FILE, NODE_CERT_FILE};

/// Creates the cluster CA in `out`. With `if_missing`, an existing CA is kept.
pub fn init(out: &Path, if_missing: bool) -> Result<()> {
    match cert::init_ca(out) {
        Ok(p) => {
            println!("created the cluster CA in {} (keep ca.key secret)", p.display());
            Ok(())
        }
        Err(CertError::AlreadyExists { .. }) if if_missing => {
            println!("cluster CA already in {}: kept", out.display());
            Ok(())
        }
        Err(e) => Err(e).context("cert init"),
    }
}

/// Issues a node or client certificate into `out`. With `if_missing`, existing ones are kept.
pub fn issue(ca: &Path, name: &str, out: &Path, sans: &[String], if_missing: bool) -> Result<()> {
    if if_missing && out.join(NODE_CERT_FILE).exists() {
        println!("certificate for {name} already in {}: kept", out.display());
        return Ok(());
    }
    let p = cert::issue(ca, name, out, sans).with_context(|| format!("cert issue {name}"))?;
    println!("issued a certificate for {name} in {}", p.display());
    Ok(())
}

/// Idempotent: `dir/ca` plus `dir/<name>` for every name (a complete `--certs` dir each).
pub fn bootstrap(dir: &Path, names: &[String]) -> Result<()> {
    let ca = dir.join("ca");
    if !ca.join(CA_CERT_FILE).exists() {
        init(&ca, true)?;
    }
    for name in names {
        issue(&ca, name, &dir.join(name), &[], true)?;
    }
    Ok(())
}
