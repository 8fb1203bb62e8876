//! `starling cert init | issue | bootstrap`.

use std::path::Path;

use anyhow::{Context, Result};
use starling_net::cert::{self, CertError, Role, CA_CERT_FILE, NODE_CERT_FILE};

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

/// What `starling cert issue` makes.
#[derive(Debug, Clone)]
pub struct IssueOptions<'a> {
    pub ca: &'a Path,
    pub name: &'a str,
    pub out: &'a Path,
    pub sans: &'a [String],
    pub role: Role,
    pub days: i64,
    /// Keep an existing certificate in `out` instead of failing.
    pub if_missing: bool,
}

/// Issues a node or client certificate into `out`. With `if_missing`, existing ones are kept.
pub fn issue(o: &IssueOptions<'_>) -> Result<()> {
    let (name, out) = (o.name, o.out);
    if o.days < 1 {
        anyhow::bail!("--days {}: expected at least 1", o.days);
    }
    if o.if_missing && out.join(NODE_CERT_FILE).exists() {
        println!("certificate for {name} already in {}: kept", out.display());
        return Ok(());
    }
    let p = cert::issue(o.ca, name, out, o.sans, o.role, o.days)
        .with_context(|| format!("cert issue {name}"))?;
    println!(
        "issued a {} certificate for {name} in {}, valid for {} days",
        o.role,
        p.display(),
        o.days
    );
    Ok(())
}

/// Idempotent: `dir/ca` plus `dir/<name>` for every node name and every client name (a complete
/// `--certs` dir each, with the node or client role).
pub fn bootstrap(dir: &Path, nodes: &[String], clients: &[String]) -> Result<()> {
    let ca = dir.join("ca");
    if !ca.join(CA_CERT_FILE).exists() {
        init(&ca, true)?;
    }
    let all =
        nodes.iter().map(|n| (n, Role::Node)).chain(clients.iter().map(|n| (n, Role::Client)));
    for (name, role) in all {
        let out = dir.join(name);
        issue(&IssueOptions {
            ca: &ca,
            name,
            out: &out,
            sans: &[],
            role,
            days: cert::LEAF_VALIDITY_DAYS,
            if_missing: true,
        })?;
    }
    Ok(())
}
