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
//! into its output directory, so each output directory is a complete `--certs` directory. Every
//! issued certificate is valid for both TLS server and client authentication and carries the
//! [`CLUSTER_SAN`] DNS name, which is the server name peers verify: peers are dialled by IP
//! address from gossip, and a fixed name is what makes that verifiable.
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
/// DNS name carried by every issued certificate and verified by every client.
pub const CLUSTER_SAN: &str = "starling";
/// Common name of every cluster CA; see the module doc for why it is fixed.
pub const CA_COMMON_NAME: &str = "Starling cluster CA";

/// How long a CA is valid.
const CA_VALIDITY_DAYS: i64 = 10 * 365;
/// How long an issued certificate is valid.
const LEAF_VALIDITY_DAYS: i64 = 2 * 365;
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
        set_validity(&mut params, CA_VALIDITY_DAYS);
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

    /// Issues a certificate named `name` (its common name and a DNS SAN) for both server and
    /// client authentication. SANs: [`CLUSTER_SAN`], `localhost`, `127.0.0.1`, `::1`, `name`,
    /// then `sans` (IP addresses become IP SANs, the rest DNS names); duplicates are dropped.
    pub fn issue(&self, name: &str, sans: &[String]) -> Result<Issued, CertError> {
        let mut all: Vec<String> = Vec::new();
        for s in [CLUSTER_SAN, "localhost", "127.0.0.1", "::1", name]
            .into_iter()
            .chain(sans.iter().map(String::as_str))
        {
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
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_VALIDITY_DAYS);
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
    let issued = ca.issue(name, sans)?;
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

/// Valid from yesterday, for `days`.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(today - BACKDATE_DAYS);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today + days);
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
