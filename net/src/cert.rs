//! The cluster CA and the certificates it issues (`starling cert init|issue`).
//!
//! Layout of a certificates directory, the one `--certs DIR` reads:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem` | the cluster CA certificate (public; every node and client has a copy) |
//! | `ca.key` | the CA key (only in the directory where `init_ca` ran; keep it off the nodes) |
//! | `node.pem`, `node.key` | this node's (or client's) certificate and key |
//!
//! [`issue`] writes `node.pem`/`node.key` (fixed names, not `<name>.pem`) plus a copy of `ca.pem`
//! into its output directory, so each output directory is a complete `--certs` directory.
//!
//! ## Roles
//!
//! Every issued certificate has a [`Role`], written into it by the CA as a DNS name:
//!
//! | role | DNS names | extended key usage | may |
//! |---|---|---|---|
//! | `node` | [`NODE_ROLE_SAN`], [`CLUSTER_SAN`], `localhost`, `127.0.0.1`, `::1`, the name, `--san`s | server and client auth | run `starlingd`; send peer RPCs (replica reads and writes, hints, scans, gossip, clock probes, leave) |
//! | `client` | [`CLIENT_ROLE_SAN`], the name | client auth only | send client requests (`kv`, `status`, `echo`) |
//!
//! [`CLUSTER_SAN`] is the server name peers verify (peers are dialled by IP address from gossip,
//! and a fixed name is what makes that verifiable), so a client certificate, which lacks it and
//! lacks server authentication, cannot pose as a node to anyone. A node serves a connection with
//! the role its peer's certificate carries ([`Role::of_der`]); a certificate without
//! [`NODE_ROLE_SAN`] (a client one, or one issued before roles existed) is a client. A node
//! refuses to start with a certificate that is not a node's.
//!
//! rcgen 0.13 cannot parse an existing certificate without its `x509-parser` feature, so issuing
//! re-creates the CA's signer from `ca.key` and the fixed CA name [`CA_COMMON_NAME`]; it checks
//! first that `ca.pem` holds that key and that name, so a foreign `ca.pem` is refused.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;

/// File name of the CA certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of an issued certificate.
pub const NODE_CERT_FILE: &str = "node.pem";
/// File name of an issued private key.
pub const NODE_KEY_FILE: &str = "node.key";
/// DNS name carried by every node certificate and verified by every client.
pub const CLUSTER_SAN: &str = "starling";
/// DNS name that marks a certificate's role as [`Role::Node`].
pub const NODE_ROLE_SAN: &str = "node.role.starling";
/// DNS name that marks a certificate's role as [`Role::Client`].
pub const CLIENT_ROLE_SAN: &str = "client.role.starling";

/// What the holder of a certificate may do (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A cluster member: peer RPCs and client requests.
    Node,
    /// An application or operator: client requests only.
    Client,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Node => "node",
            Role::Client => "client",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "node" => Ok(Role::Node),
            "client" => Ok(Role::Client),
            other => Err(format!("unknown role {other:?}: expected node or client")),
        }
    }
}

impl Role {
    /// The role a DER certificate carries: [`Role::Node`] only if it names [`NODE_ROLE_SAN`]
    /// (anything else, unparsable bytes included, is a client: the least privilege). The
    /// certificate's signature and validity are checked by TLS, not here.
    pub fn of_der(der: &[u8]) -> Role {
        let names = CertInfo::of_der(der).map(|i| i.dns_names).unwrap_or_default();
        if names.iter().any(|n| n == NODE_ROLE_SAN) {
            Role::Node
        } else {
            Role::Client
        }
    }
}

/// What a certificate says about itself, read without verifying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Its DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// Valid from (Unix seconds).
    pub not_before: i64,
    /// Valid until (Unix seconds).
    pub not_after: i64,
}

impl CertInfo {
    /// Parses a DER certificate (`None`: not one).
    pub fn of_der(der: &[u8]) -> Option<CertInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                    dns_names.push((*n).to_string());
                }
            }
        }
        let validity = cert.validity();
        Some(CertInfo {
            dns_names,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }
}

/// When an issued certificate is valid: from `not_before` until `not_after` (Unix days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First valid day, in days since 1970-01-01.
    pub not_before_day: i64,
    /// Last valid day, in days since 1970-01-01.
    pub not_after_day: i64,
}

impl Validity {
    /// From yesterday (so clocks a little behind accept a fresh certificate) for `days`.
    pub fn days_from_now(days: i64) -> Validity {
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| (d.as_secs() / 86_400) as i64)
            .unwrap_or(0);
        Validity { not_before_day: today - BACKDATE_DAYS, not_after_day: today + days }
    }
}
/// Common name of every cluster CA; see the module doc for why it is fixed.
pub const CA_COMMON_NAME: &str = "Starling cluster CA";

/// How long a CA is valid.
const CA_VALIDITY_DAYS: i64 = 10 * 365;
/// How long an issued certificate is valid unless `--days` says otherwise.
pub const LEAF_VALIDITY_DAYS: i64 = 2 * 365;
/// Backdating of `not_before`, so clocks a little behind still accept a fresh certificate.
const BACKDATE_DAYS: i64 = 1;

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file that must not be overwritten exists.
    #[error("{path} already exists; refusing to overwrite it (delete it first to replace it)")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file could not be read, written or created.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rcgen refused the parameters (for example a name that is not a valid DNS name).
    #[error("cannot generate the certificate for {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
}

/// A certificate and its key, PEM-encoded.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// An in-memory cluster CA: what [`init_ca`] writes and [`issue`] loads. Tests and the transport
/// benchmark use it directly, without files.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Generates a new CA (ECDSA P-256).
    pub fn generate() -> Result<Self, CertError> {
        let key = KeyPair::generate().map_err(|source| gen_err("the CA key", source))?;
        Self::from_key(key)
    }

    /// Re-creates the signer of an existing CA from its PEM files.
    pub fn from_pem(cert_pem: &str, key_pem: &str, origin: &Path) -> Result<Self, CertError> {
        let key_path = origin.join(CA_KEY_FILE);
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| invalid(&key_path, format!("not a PEM private key: {e}")))?;
        let cert_path = origin.join(CA_CERT_FILE);
        let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid(&cert_path, format!("not a PEM certificate: {e}")))?;
        if !contains(&der, &key.public_key_der()) {
            return Err(invalid(&cert_path, format!("does not match the key in {CA_KEY_FILE}")));
        }
        if !contains(&der, CA_COMMON_NAME.as_bytes()) {
            return Err(invalid(
                &cert_path,
                format!("not a CA made by `starling cert init` (no \"{CA_COMMON_NAME}\" name)"),
            ));
        }
        Self::from_key(key)
    }

    fn from_key(key: KeyPair) -> Result<Self, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name.push(DnType::OrganizationName, "Starling");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Validity::days_from_now(CA_VALIDITY_DAYS));
        let cert = params.self_signed(&key).map_err(|source| gen_err("the CA", source))?;
        Ok(Ca { cert, key })
    }

    /// The CA certificate, PEM-encoded.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA key, PEM-encoded.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate named `name` (its common name) with `role`, valid for `validity`.
    /// A node certificate is for both server and client authentication, with the DNS names
    /// [`NODE_ROLE_SAN`], [`CLUSTER_SAN`], `localhost`, `127.0.0.1`, `::1`, `name`, then `sans`
    /// (IP addresses become IP SANs, the rest DNS names); a client certificate is for client
    /// authentication only, with [`CLIENT_ROLE_SAN`] and `name`. Duplicates are dropped.
    pub fn issue(
        &self,
        name: &str,
        sans: &[String],
        role: Role,
        validity: Validity,
    ) -> Result<Issued, CertError> {
        let base: &[&str] = match role {
            Role::Node => &[NODE_ROLE_SAN, CLUSTER_SAN, "localhost", "127.0.0.1", "::1"],
            Role::Client => &[CLIENT_ROLE_SAN],
        };
        let mut all: Vec<String> = Vec::new();
        for s in base.iter().copied().chain([name]).chain(sans.iter().map(String::as_str)) {
            if !s.is_empty() && !all.iter().any(|a| a == s) {
                all.push(s.to_string());
            }
        }
        let what = format!("\"{name}\"");
        let mut params = CertificateParams::new(all).map_err(|source| gen_err(&what, source))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            Role::Node => {
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
            }
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let key = KeyPair::generate().map_err(|source| gen_err(&what, source))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|source| gen_err(&what, source))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Creates a cluster CA in `dir` (created if missing): `ca.pem` and `ca.key` (mode 0600).
/// Refuses if either file exists, so a CA is never replaced by accident (that would cut every
/// node issued by it off the cluster). Returns the path of `ca.pem`.
pub fn init_ca(dir: &Path) -> Result<PathBuf, CertError> {
    create_dir(dir)?;
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(CertError::AlreadyExists { path: p.clone() });
        }
    }
    let ca = Ca::generate()?;
    write_new(&key_path, &ca.key_pem(), 0o600)?;
    write_new(&cert_path, &ca.cert_pem(), 0o644)?;
    Ok(cert_path)
}

/// Issues a certificate for `name` with the CA in `ca_dir` and writes `node.pem`, `node.key`
/// (mode 0600) and a copy of `ca.pem` into `out_dir` (created if missing). Refuses to overwrite
/// an existing `node.pem`/`node.key`, or a `ca.pem` of another CA. Returns `out_dir`.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    out_dir: &Path,
    sans: &[String],
    role: Role,
    days: i64,
) -> Result<PathBuf, CertError> {
    let ca_pem = read(&ca_dir.join(CA_CERT_FILE))?;
    let ca = Ca::from_pem(&ca_pem, &read(&ca_dir.join(CA_KEY_FILE))?, ca_dir)?;
    create_dir(out_dir)?;
    let (cert_path, key_path) = (out_dir.join(NODE_CERT_FILE), out_dir.join(NODE_KEY_FILE));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(CertError::AlreadyExists { path: p.clone() });
        }
    }
    let out_ca = out_dir.join(CA_CERT_FILE);
    let copy_ca = match fs::read_to_string(&out_ca) {
        Ok(existing) if existing == ca_pem => false,
        Ok(_) => {
            return Err(invalid(&out_ca, format!("is not the CA in {}", ca_dir.display())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(source) => return Err(CertError::Io { path: out_ca, source }),
    };
    let issued = ca.issue(name, sans, role, Validity::days_from_now(days))?;
    write_new(&key_path, &issued.key_pem, 0o600)?;
    write_new(&cert_path, &issued.cert_pem, 0o644)?;
    if copy_ca {
        write_new(&out_ca, &ca_pem, 0o644)?;
    }
    Ok(out_dir.to_path_buf())
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io { path: path.to_path_buf(), source })
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.to_path_buf(), source })
}

/// Writes a new file; `create_new` makes the no-overwrite rule hold even against a race.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.to_path_buf(), source };
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(
        |e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                CertError::AlreadyExists { path: path.to_path_buf() }
            }
            _ => io(e),
        },
    )?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn invalid(path: &Path, reason: String) -> CertError {
    CertError::Invalid { path: path.to_path_buf(), reason }
}

fn gen_err(what: &str, source: rcgen::Error) -> CertError {
    CertError::Generate { what: what.to_string(), source }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let (y, m, d) = civil_from_days(validity.not_before_day);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(validity.not_after_day);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// `(year, month, day)` of the date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    ((yoe + era * 400 + i64::from(month <= 2)) as i32, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }
}
