//! `starling leave --wait --if-scaled-down`: the `preStop` hook of a StatefulSet pod, which
//! leaves the cluster only when the pod is going away for good.
//!
//! Kubernetes runs a `preStop` hook on every stop of a pod: rolling updates, drains, evictions
//! and scale-downs alike, and a node that has left the cluster never rejoins on its data. A
//! StatefulSet scales down by lowering `spec.replicas` first and then stopping the pods whose
//! ordinal is at or above it, highest first; any other stop leaves `spec.replicas` above the
//! pod's ordinal. So the hook asks the API server for the StatefulSet (with the pod's service
//! account) and leaves only if this pod's ordinal is `>= spec.replicas`. Whatever goes wrong on
//! the way (no service account, API server unreachable or refusing, an answer it cannot read)
//! means no leave: a node that stops without leaving stays in the ring and comes back, while one
//! that leaves by mistake cannot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

/// Where Kubernetes mounts a pod's service-account token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How long the StatefulSet lookup may take, connecting included.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes read of the API server's answer (a StatefulSet is a few KiB).
const MAX_ANSWER: u64 = 1 << 20;

/// Where to find the API server, the credentials and this pod's name (read only with
/// `--if-scaled-down`).
#[derive(Args, Debug, Clone)]
pub struct K8sArgs {
    /// The API server's base URL. Default: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
    /// as Kubernetes sets them in every pod.
    #[arg(long, env = "STARLING_K8S_API")]
    pub k8s_api: Option<String>,
    /// The service-account dir: `token`, `ca.crt` (the API server's CA) and `namespace`.
    #[arg(long, env = "STARLING_K8S_SERVICE_ACCOUNT", default_value = SERVICE_ACCOUNT_DIR)]
    pub k8s_service_account: PathBuf,
    /// This pod's name, `<statefulset>-<ordinal>`. Default: the host name, which Kubernetes
    /// sets to the pod's name.
    #[arg(long, env = "STARLING_POD_NAME")]
    pub pod: Option<String>,
}

/// Why this pod leaves: the StatefulSet no longer counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaledDown {
    pub pod: String,
    pub statefulset: String,
    pub namespace: String,
    pub ordinal: u64,
    pub replicas: u64,
}

/// Asks the API server whether this pod was scaled away. `Err` says why it stays: it was not
/// scaled away, or that could not be found out. Blocking (a few HTTP round trips at most).
pub fn scaled_down(args: &K8sArgs) -> Result<ScaledDown, String> {
    let pod = match &args.pod {
        Some(p) => p.trim().to_owned(),
        None => hostname().ok_or("cannot tell this pod's name: no --pod and no host name")?,
    };
    let (statefulset, ordinal) = split_pod_name(&pod).ok_or_else(|| {
        format!("pod name {pod:?} is not <statefulset>-<ordinal>: not a StatefulSet pod")
    })?;
    let statefulset = statefulset.to_owned();
    let dir = &args.k8s_service_account;
    let token = read_trimmed(&dir.join("token"))?;
    let namespace = read_trimmed(&dir.join("namespace"))?;
    let ca = std::fs::read(dir.join("ca.crt"))
        .map_err(|e| format!("cannot read {}: {e}", dir.join("ca.crt").display()))?;
    let base = match &args.k8s_api {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => api_from_env(
            std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref(),
            std::env::var("KUBERNETES_SERVICE_PORT").ok().as_deref(),
        )?,
    };
    let url = format!("{base}/apis/apps/v1/namespaces/{namespace}/statefulsets/{statefulset}");
    let body = get(&url, &token, &ca)?;
    let replicas = replicas_of(&body).map_err(|e| format!("{url}: {e}"))?;
    if ordinal < replicas {
        return Err(format!(
            "pod {pod} has ordinal {ordinal} and statefulset {namespace}/{statefulset} wants {replicas} replicas: \
             not scaled down (a restart, an update or a drain), staying in the cluster"
        ));
    }
    Ok(ScaledDown { pod, statefulset, namespace, ordinal, replicas })
}

/// `starling-3` → (`starling`, 3).
fn split_pod_name(pod: &str) -> Option<(&str, u64)> {
    let (name, ordinal) = pod.rsplit_once('-')?;
    if name.is_empty() || ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, ordinal.parse().ok()?))
}

/// The API server's URL from the variables Kubernetes sets in every pod.
fn api_from_env(host: Option<&str>, port: Option<&str>) -> Result<String, String> {
    let host = host
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or("KUBERNETES_SERVICE_HOST is not set (not in a pod?) and no --k8s-api given")?;
    let port = port.map(str::trim).filter(|p| !p.is_empty()).unwrap_or("443");
    if port.parse::<u16>().is_err() {
        return Err(format!("KUBERNETES_SERVICE_PORT {port:?} is not a port"));
    }
    // An IPv6 address goes in brackets.
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Ok(format!("https://{host}:{port}"))
}

fn read_trimmed(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text.to_owned())
}

fn hostname() -> Option<String> {
    let from_env = std::env::var("HOSTNAME").ok();
    let from_kernel = || std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let name = from_env.filter(|h| !h.trim().is_empty()).or_else(from_kernel)?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// `GET url` with the bearer token, trusting only the certificates in `ca_pem`; the body of a
/// 200.
fn get(url: &str, token: &str, ca_pem: &[u8]) -> Result<String, String> {
    let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(ca_pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if roots.is_empty() {
        return Err("ca.crt holds no certificate".to_owned());
    }
    // ureq takes rustls's process-wide provider; the workspace builds rustls with ring. An
    // error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        // The API server is inside the cluster: no proxy from the environment.
        .proxy(None)
        .timeout_global(Some(API_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Accept", "application/json")
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .lossy_utf8(true)
        .read_to_string()
        .map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
    if status != 200 {
        // The API server's Status object says why (e.g. RBAC's "forbidden").
        let why = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(200).collect());
        return Err(format!("GET {url}: {status}: {why}"));
    }
    Ok(body)
}

/// `spec.replicas` of a StatefulSet's JSON.
fn replicas_of(body: &str) -> Result<u64, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not a JSON answer: {e}"))?;
    if v.get("kind").and_then(|k| k.as_str()) != Some("StatefulSet") {
        return Err("the answer is not a StatefulSet".to_owned());
    }
    v.get("spec")
        .and_then(|s| s.get("replicas"))
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| "the StatefulSet has no spec.replicas".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_split_into_statefulset_and_ordinal() {
        assert_eq!(split_pod_name("starling-3"), Some(("starling", 3)));
        assert_eq!(split_pod_name("my-db-starling-12"), Some(("my-db-starling", 12)));
        for bad in ["starling", "starling-", "-3", "starling-x", "starling-+3", "starling-3a", ""] {
            assert_eq!(split_pod_name(bad), None, "{bad}");
        }
        assert_eq!(split_pod_name("s-99999999999999999999999"), None, "too large");
    }

    #[test]
    fn api_url_comes_from_the_service_variables() {
        assert_eq!(api_from_env(Some("10.96.0.1"), Some("443")).unwrap(), "https://10.96.0.1:443");
        assert_eq!(api_from_env(Some("fd00::1"), None).unwrap(), "https://[fd00::1]:443");
        assert!(api_from_env(None, Some("443")).is_err());
        assert!(api_from_env(Some(" "), None).is_err());
        assert!(api_from_env(Some("10.96.0.1"), Some("https")).is_err());
    }

    #[test]
    fn replicas_are_read_from_the_statefulset() {
        let sts = r#"{"kind":"StatefulSet","metadata":{"name":"starling"},"spec":{"replicas":3}}"#;
        assert_eq!(replicas_of(sts), Ok(3));
        for bad in [
            "",
            "not json",
            r#"{"kind":"Status","spec":{"replicas":3}}"#,
            r#"{"kind":"StatefulSet","spec":{}}"#,
            r#"{"kind":"StatefulSet","spec":{"replicas":-1}}"#,
            r#"{"kind":"StatefulSet","spec":{"replicas":"3"}}"#,
            r#"[1,2]"#,
        ] {
            assert!(replicas_of(bad).is_err(), "{bad}");
        }
    }

    /// Every failure on the way is a reason to stay, never a panic or a leave.
    #[test]
    fn missing_credentials_mean_staying() {
        let dir = tempfile::tempdir().unwrap();
        let args = |pod: &str| K8sArgs {
            k8s_api: Some("https://127.0.0.1:1".into()),
            k8s_service_account: dir.path().to_owned(),
            pod: Some(pod.into()),
        };
        let why = scaled_down(&args("starling")).unwrap_err();
        assert!(why.contains("not a StatefulSet pod"), "{why}");
        let why = scaled_down(&args("starling-3")).unwrap_err();
        assert!(why.contains("token"), "{why}");
        std::fs::write(dir.path().join("token"), "t\n").unwrap();
        std::fs::write(dir.path().join("namespace"), "ns").unwrap();
        std::fs::write(dir.path().join("ca.crt"), "no certificate here").unwrap();
        let why = scaled_down(&args("starling-3")).unwrap_err();
        assert!(why.contains("no certificate"), "{why}");
    }
}
