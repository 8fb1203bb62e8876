//! Real `starlingd` processes for the multi-process tests (`cluster.rs`, `kv_cluster.rs` and
//! `kv_history.rs` through `kv_process.rs`, and the CLI's `kv_cli.rs`, which includes this file
//! by path): start one on a data dir, kill -9 it, restart it on the same address, read its log
//! and its status page.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use starling_node::cert;
use starling_node::datadir::{Addresses, DataDir};
use starling_node::status::Status;

/// How long a process may take to write its addresses file.
const START_LIMIT: Duration = Duration::from_secs(30);

/// One `starlingd` process (or none, after `kill9`), logging to `<data>.log`.
pub struct Node {
    pub child: Option<Child>,
    pub bin: PathBuf,
    pub data: PathBuf,
    pub certs: PathBuf,
    pub addrs: Addresses,
    /// Extra environment it was started with, and restarts with.
    pub env: Vec<(String, String)>,
}

impl Node {
    /// Starts `bin` on `data` with the certificates in `certs`, listening on `listen` (port 0:
    /// any), seeded with `seeds`; returns once it has written its addresses.
    pub fn start(
        bin: &Path,
        data: &Path,
        certs: &Path,
        listen: &str,
        seeds: &[SocketAddr],
    ) -> Node {
        Node::start_with_env(bin, data, certs, listen, seeds, &[])
    }

    /// [`Node::start`] with extra environment variables (e.g. libfaketime's, to skew its clock).
    pub fn start_with_env(
        bin: &Path,
        data: &Path,
        certs: &Path,
        listen: &str,
        seeds: &[SocketAddr],
        env: &[(String, String)],
    ) -> Node {
        let _ = std::fs::remove_file(data.join("addresses.json"));
        let seeds: Vec<String> = seeds.iter().map(|s| s.to_string()).collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .expect("log file");
        let mut cmd = Command::new(bin);
        cmd.arg("--data-dir")
            .arg(data)
            .args(["--listen", listen, "--http", "127.0.0.1:0"])
            .arg("--certs")
            .arg(certs)
            .env("STARLING_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if !seeds.is_empty() {
            cmd.args(["--seeds", &seeds.join(",")]);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().expect("spawn starlingd");
        let pid = child.id();
        let addrs =
            wait_for(START_LIMIT, || DataDir::read_addresses(data).ok().filter(|a| a.pid == pid))
                .unwrap_or_else(|| panic!("starlingd did not start; log:\n{}", tail(data, 60)));
        Node {
            child: Some(child),
            bin: bin.to_owned(),
            data: data.to_owned(),
            certs: certs.to_owned(),
            addrs,
            env: env.to_vec(),
        }
    }

    /// Its status page (`None` if it does not answer).
    pub fn status(&self) -> Option<Status> {
        http_status(self.addrs.http)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }

    /// kill -9 (if running), then the same binary, data dir, listen address and environment
    /// again.
    pub fn restart(&mut self, seeds: &[SocketAddr]) {
        self.kill9();
        let listen = self.addrs.listen.to_string();
        *self = Node::start_with_env(&self.bin, &self.data, &self.certs, &listen, seeds, &self.env);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The node id it stored in its data dir.
    pub fn id(&self) -> starling_wire::NodeId {
        let id = std::fs::read_to_string(self.data.join("node-id")).ok();
        id.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("node id of {}", self.data.display()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last `lines` lines of the log of the node on `data`.
pub fn tail(data: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `f` every 100 ms until it returns a value, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET /status with a plain HTTP/1.0 request (no client library needed).
pub fn http_status(addr: SocketAddr) -> Option<Status> {
    serde_json::from_str(&http_get(addr, "/status")?).ok()
}

/// The body of `GET path` from a node's HTTP port.
#[allow(dead_code)]
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8(buf).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_owned())
}

/// A cluster CA in `dir/ca` and one certificate dir per name, `dir/<name>`; returns `dir`.
pub fn certs(dir: &Path, names: &[&str]) -> PathBuf {
    let ca = dir.join("ca");
    cert::init_ca(&ca).expect("ca");
    for n in names {
        let role = if n.starts_with("client") { cert::Role::Client } else { cert::Role::Node };
        cert::issue(&ca, n, &dir.join(n), &[], role, 30).expect("issue");
    }
    dir.to_owned()
}
