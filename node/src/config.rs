//! `starlingd` configuration: flags, `STARLING_*` environment variables and a TOML file, in that
//! order of precedence, validated into a [`NodeConfig`] before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;

/// Default QUIC (UDP) port peers and clients use.
pub const DEFAULT_PORT: u16 = 7400;
/// Default HTTP status port.
pub const DEFAULT_HTTP_PORT: u16 = 7480;

/// Flags of `starlingd`. Every flag can also come from the environment (`STARLING_<FLAG>`) or
/// from the `--config` TOML file (same names, with `_` for `-`).
#[derive(Parser, Debug, Default, Clone)]
#[command(name = "starlingd", version, about = "The Starling node daemon")]
pub struct Args {
    /// TOML file with any of the settings below.
    #[arg(long, env = "STARLING_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the node keeps its identity and data.
    #[arg(long, env = "STARLING_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// QUIC (UDP) address to listen on [default: 127.0.0.1:7400].
    #[arg(long, env = "STARLING_LISTEN")]
    pub listen: Option<String>,
    /// Address peers reach this node at (DNS names allowed) [default: the listen address].
    #[arg(long, env = "STARLING_ADVERTISE")]
    pub advertise: Option<String>,
    /// HTTP status address [default: 127.0.0.1:7480].
    #[arg(long, env = "STARLING_HTTP")]
    pub http: Option<String>,
    /// Serve Kafka's wire protocol on this TCP address (Kafka clients use any node as a
    /// bootstrap server); off when not given. TLS with the cluster's CA unless --insecure.
    #[arg(long, env = "STARLING_KAFKA")]
    pub kafka: Option<String>,
    /// The address Kafka clients reach this node's Kafka listener at [default: --kafka, or
    /// the --advertise host with --kafka's port when --kafka is a wildcard address].
    #[arg(long, env = "STARLING_KAFKA_ADVERTISE")]
    pub kafka_advertise: Option<String>,
    /// Kafka connections served at once; more are closed as they come [default: 1024].
    #[arg(long, env = "STARLING_KAFKA_MAX_CONNECTIONS")]
    pub kafka_max_connections: Option<usize>,
    /// A Kafka connection that sends nothing for this long is closed, e.g. 10m [default: 10m].
    #[arg(long, env = "STARLING_KAFKA_IDLE_TIMEOUT")]
    pub kafka_idle_timeout: Option<String>,
    /// Seed peers, comma-separated host:port (DNS names allowed).
    #[arg(long, env = "STARLING_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// The metadata service's voters (ZAB), as `host:port` QUIC addresses, comma-separated
    /// (default: the seeds; a node with no seeds is a one-voter ensemble of its own). Every node
    /// of a cluster must be given the same list; the others are observers.
    #[arg(long, env = "STARLING_META_VOTERS", value_delimiter = ',')]
    pub meta_voters: Option<Vec<String>>,
    /// Committed metadata transactions between snapshots of the metadata tree (ZooKeeper's
    /// `snapCount`); fewer keep a shorter log, more write snapshots less often; a snapshot also
    /// comes after about 64 MiB of transactions, whichever is first [default: 100000].
    #[arg(long, env = "STARLING_META_SNAPSHOT_EVERY")]
    pub meta_snapshot_every: Option<u64>,
    /// Failure zone (rack, availability zone).
    #[arg(long, env = "STARLING_ZONE")]
    pub zone: Option<String>,
    /// Directory with ca.pem, node.pem and node.key (from `starling cert issue`).
    #[arg(long, env = "STARLING_CERTS", conflicts_with = "insecure")]
    pub certs: Option<PathBuf>,
    /// Run WITHOUT authentication or peer verification: for throwaway local runs only.
    #[arg(long, env = "STARLING_INSECURE")]
    pub insecure: bool,
    /// Log format: text or json.
    #[arg(long, env = "STARLING_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Replicas per key, N (the same on every node) [default: 3].
    #[arg(long, env = "STARLING_REPLICATION")]
    pub replication: Option<usize>,
    /// Virtual nodes (tokens) this node takes when it first joins [default: 16].
    #[arg(long, env = "STARLING_VNODES")]
    pub vnodes: Option<usize>,
    /// When writes reach the disk: `periodic` (WAL written at once, fsynced every
    /// --sync-interval) or `always` (fsynced before each acknowledgement) [default: periodic].
    #[arg(long, env = "STARLING_SYNC")]
    pub sync: Option<String>,
    /// Background WAL fsync interval for --sync periodic, e.g. 10ms [default: 10ms].
    #[arg(long, env = "STARLING_SYNC_INTERVAL")]
    pub sync_interval: Option<String>,
    /// How long deletes (tombstones) are kept before compaction drops them, e.g. 10d [default: 10d].
    #[arg(long, env = "STARLING_TOMBSTONE_GRACE")]
    pub tombstone_grace: Option<String>,
    /// Hints are kept for a replica that is down at most this long, e.g. 3h [default: 3h].
    #[arg(long, env = "STARLING_HINT_WINDOW")]
    pub hint_window: Option<String>,
    /// Anti-entropy: every range this node leads is compared with its replicas within this
    /// period, paced evenly over it, e.g. 1h; `off` leaves repair to `starling repair`
    /// [default: 1h].
    #[arg(long, env = "STARLING_REPAIR_INTERVAL")]
    pub repair_interval: Option<String>,
    /// Anti-entropy grain: 2^bits segments, 10 to 20; every node of a cluster must use the same
    /// [default: 16].
    #[arg(long, env = "STARLING_REPAIR_SEGMENT_BITS")]
    pub repair_segment_bits: Option<u8>,
    /// Once the ring has stayed the same this long, this node drops the records of ranges it no
    /// longer replicates (they moved to other nodes), and again each such period while the ring
    /// stays so, e.g. 10m; `off` leaves it to `starling cleanup` [default: 10m].
    #[arg(long, env = "STARLING_CLEANUP_AFTER")]
    pub cleanup_after: Option<String>,
    /// Keys whose stored version is kept in memory (about 26 bytes each) so digest reads and
    /// overwrites skip the disk; 0 turns the cache off [default: 1000000].
    #[arg(long, env = "STARLING_VERSION_CACHE")]
    pub version_cache: Option<usize>,
    /// `sloppy`: a write whose replicas are down is also handed to the next healthy nodes on the
    /// ring, which keep it as a hint and count toward its quorum; `strict`: only the replicas
    /// count [default: sloppy].
    #[arg(long, env = "STARLING_QUORUM")]
    pub quorum: Option<String>,
    /// How far this node's clock may be from the cluster's (the median of its peers) before it
    /// refuses to coordinate writes, and how far ahead of this node's clock a version it stores
    /// may be, e.g. 500ms [default: 500ms].
    #[arg(long, env = "STARLING_MAX_CLOCK_OFFSET")]
    pub max_clock_offset: Option<String>,
    /// Bytes of hints kept for one replica that is down, e.g. 256MiB [default: 256MiB]; past it
    /// writes for that replica are left to read repair and anti-entropy.
    #[arg(long, env = "STARLING_MAX_HINTS_PER_NODE")]
    pub max_hints_per_node: Option<String>,
    /// Bytes of hints kept for all replicas together, e.g. 1GiB [default: 1GiB].
    #[arg(long, env = "STARLING_MAX_HINTS")]
    pub max_hints: Option<String>,
    /// Bytes per second this node, as partition leader, sends to the replicas a partition move
    /// adds (after a join, a leave or a removal), all partitions together, e.g. 32MiB; `off`:
    /// no limit [default: 64MiB]. Followers already in the ISR are never held back.
    #[arg(long, env = "STARLING_TOPIC_MOVE_RATE")]
    pub topic_move_rate: Option<String>,
}

/// The same settings as read from a TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    advertise: Option<String>,
    http: Option<String>,
    kafka: Option<String>,
    kafka_advertise: Option<String>,
    kafka_max_connections: Option<usize>,
    kafka_idle_timeout: Option<String>,
    seeds: Option<Vec<String>>,
    meta_voters: Option<Vec<String>>,
    zone: Option<String>,
    certs: Option<PathBuf>,
    insecure: Option<bool>,
    log_format: Option<String>,
    replication: Option<usize>,
    vnodes: Option<usize>,
    sync: Option<String>,
    sync_interval: Option<String>,
    tombstone_grace: Option<String>,
    hint_window: Option<String>,
    repair_interval: Option<String>,
    repair_segment_bits: Option<u8>,
    cleanup_after: Option<String>,
    version_cache: Option<usize>,
    meta_snapshot_every: Option<u64>,
    quorum: Option<String>,
    max_clock_offset: Option<String>,
    max_hints_per_node: Option<String>,
    max_hints: Option<String>,
    topic_move_rate: Option<String>,
}

/// How the node authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    Certs(PathBuf),
    Insecure,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `host:port` as given; resolved when the node starts.
    pub advertise: Option<String>,
    pub http: SocketAddr,
    /// The Kafka listener's address (`None`: no Kafka listener).
    pub kafka: Option<SocketAddr>,
    /// `host:port` Kafka clients are told to use, as given (default worked out at start).
    pub kafka_advertise: Option<String>,
    /// Kafka connections served at once.
    pub kafka_max_connections: usize,
    /// An idle Kafka connection is closed after this.
    pub kafka_idle_timeout: Duration,
    pub seeds: Vec<String>,
    /// The metadata service's voters as given (resolved to node ids through gossip).
    pub meta_voters: Vec<String>,
    /// Metadata transactions between snapshots.
    pub meta_snapshot_every: u64,
    pub zone: Option<String>,
    pub security: Security,
    pub log_json: bool,
    /// Replicas per key.
    pub replication: usize,
    /// Tokens taken on first join.
    pub vnodes: usize,
    pub sync: crate::storage::rocks::SyncMode,
    pub tombstone_grace: Duration,
    pub hint_window: Duration,
    /// Continuous anti-entropy period (`None`: off).
    pub repair_interval: Option<Duration>,
    /// Anti-entropy grain (`2^bits` segments).
    pub repair_segment_bits: u8,
    /// Automatic cleanup once the ring is stable this long (`None`: off).
    pub cleanup_after: Option<Duration>,
    /// Keys in the version cache.
    pub version_cache: usize,
    /// Fallback nodes count toward write quorums (`--quorum sloppy`).
    pub sloppy_quorum: bool,
    /// The clock bound (`--max-clock-offset`).
    pub max_clock_offset: Duration,
    /// Hint store caps in bytes: per replica, and in all (`--max-hints-per-node`, `--max-hints`).
    pub max_hints_per_node: u64,
    pub max_hints: u64,
    /// Bytes per second for partition moves (`None`: no limit).
    pub topic_move_rate: Option<u64>,
}

impl NodeConfig {
    /// Merges flags/env over the TOML file and validates. Errors name the setting at fault.
    pub fn from_args(args: Args) -> Result<NodeConfig> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .context("--data-dir is required (or STARLING_DATA_DIR, or data_dir in --config)")?;
        let listen_s = args.listen.or(file.listen).unwrap_or(format!("127.0.0.1:{DEFAULT_PORT}"));
        let listen = parse_socket_addr("--listen", &listen_s)?;
        let http_s = args.http.or(file.http).unwrap_or(format!("127.0.0.1:{DEFAULT_HTTP_PORT}"));
        let http = parse_socket_addr("--http", &http_s)?;
        let kafka = match args.kafka.or(file.kafka) {
            Some(k) => Some(parse_socket_addr("--kafka", &k)?),
            None => None,
        };
        let kafka_advertise = args.kafka_advertise.or(file.kafka_advertise);
        if let Some(a) = &kafka_advertise {
            if kafka.is_none() {
                bail!("--kafka-advertise {a} needs --kafka HOST:PORT (the listener it advertises)");
            }
            check_host_port("--kafka-advertise", a)?;
        }
        let kafka_max_connections = args
            .kafka_max_connections
            .or(file.kafka_max_connections)
            .unwrap_or(crate::kafka::MAX_CONNECTIONS);
        if kafka_max_connections == 0 {
            bail!("--kafka-max-connections must be at least 1");
        }
        let kafka_idle_timeout = match args.kafka_idle_timeout.or(file.kafka_idle_timeout) {
            Some(s) => parse_duration("--kafka-idle-timeout", &s)?,
            None => crate::kafka::IDLE_TIMEOUT,
        };
        if kafka_idle_timeout < Duration::from_secs(1) {
            bail!("--kafka-idle-timeout must be at least 1s");
        }
        let advertise = args.advertise.or(file.advertise);
        if let Some(a) = &advertise {
            check_host_port("--advertise", a)?;
        } else if listen.ip().is_unspecified() {
            bail!("--listen {listen} is a wildcard address: say which address peers should use with --advertise HOST:PORT");
        }
        let seeds: Vec<String> = args
            .seeds
            .or(file.seeds)
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        for s in &seeds {
            check_host_port("--seeds", s)?;
        }
        let meta_voters: Vec<String> = match args.meta_voters.or(file.meta_voters) {
            Some(v) => {
                v.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
            }
            None => seeds.clone(),
        };
        for s in &meta_voters {
            check_host_port("--meta-voters", s)?;
        }
        let insecure = args.insecure || file.insecure.unwrap_or(false);
        let certs = args.certs.or(file.certs);
        let security = match (certs, insecure) {
            (Some(_), true) => bail!("--certs and --insecure exclude each other"),
            (Some(dir), false) => Security::Certs(dir),
            (None, true) => Security::Insecure,
            (None, false) => bail!(
                "no --certs DIR given: create certificates with `starling cert init` and `starling cert issue`, or pass --insecure for a throwaway run"
            ),
        };
        let log_json = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => bail!("--log-format {other:?}: expected text or json"),
        };
        let replication = args.replication.or(file.replication).unwrap_or(3);
        if !(1..=7).contains(&replication) {
            bail!("--replication {replication}: expected 1 to 7");
        }
        let vnodes = args.vnodes.or(file.vnodes).unwrap_or(starling_ring::DEFAULT_VNODES);
        if !(1..=256).contains(&vnodes) {
            bail!("--vnodes {vnodes}: expected 1 to 256");
        }
        let interval = match args.sync_interval.or(file.sync_interval) {
            Some(s) => parse_duration("--sync-interval", &s)?,
            None => Duration::from_millis(10),
        };
        if interval.is_zero() || interval > Duration::from_secs(10) {
            bail!("--sync-interval {interval:?}: expected 1ms to 10s");
        }
        let sync = match args.sync.or(file.sync).as_deref() {
            None | Some("periodic") => crate::storage::rocks::SyncMode::Periodic(interval),
            Some("always") => crate::storage::rocks::SyncMode::Always,
            Some(other) => bail!("--sync {other:?}: expected periodic or always"),
        };
        let tombstone_grace = match args.tombstone_grace.or(file.tombstone_grace) {
            Some(s) => parse_duration("--tombstone-grace", &s)?,
            None => Duration::from_secs(10 * 86400),
        };
        let hint_window = match args.hint_window.or(file.hint_window) {
            Some(s) => parse_duration("--hint-window", &s)?,
            None => Duration::from_secs(3 * 3600),
        };
        let repair_interval = match args.repair_interval.or(file.repair_interval).as_deref() {
            Some("off") => None,
            Some(s) => Some(parse_duration("--repair-interval", s)?),
            None => Some(Duration::from_secs(3600)),
        };
        if repair_interval.is_some_and(|d| d < Duration::from_secs(1)) {
            bail!("--repair-interval must be at least 1s (or `off`)");
        }
        let repair_segment_bits = args
            .repair_segment_bits
            .or(file.repair_segment_bits)
            .unwrap_or(starling_merkle::DEFAULT_SEGMENT_BITS);
        if !(10..=starling_merkle::MAX_SEGMENT_BITS).contains(&repair_segment_bits) {
            bail!(
                "--repair-segment-bits {repair_segment_bits}: expected 10 to {}",
                starling_merkle::MAX_SEGMENT_BITS
            );
        }
        let cleanup_after = match args.cleanup_after.or(file.cleanup_after).as_deref() {
            Some("off") => None,
            Some(s) => Some(parse_duration("--cleanup-after", s)?),
            None => Some(Duration::from_secs(600)),
        };
        let version_cache = args
            .version_cache
            .or(file.version_cache)
            .unwrap_or(crate::storage::rocks::DEFAULT_VERSION_CACHE);
        if version_cache > 1 << 30 {
            bail!("--version-cache {version_cache}: expected at most {} keys", 1u64 << 30);
        }
        let meta_snapshot_every = args
            .meta_snapshot_every
            .or(file.meta_snapshot_every)
            .unwrap_or(starling_zab::Config::default().snapshot_every);
        if !(10..=10_000_000).contains(&meta_snapshot_every) {
            bail!(
                "--meta-snapshot-every {meta_snapshot_every}: expected 10 to 10000000 transactions"
            );
        }
        let sloppy_quorum = match args.quorum.or(file.quorum).as_deref() {
            None | Some("sloppy") => true,
            Some("strict") => false,
            Some(other) => bail!("--quorum {other:?}: expected sloppy or strict"),
        };
        let max_clock_offset = match args.max_clock_offset.or(file.max_clock_offset) {
            Some(s) => parse_duration("--max-clock-offset", &s)?,
            None => Duration::from_millis(500),
        };
        if max_clock_offset.is_zero() {
            bail!("--max-clock-offset must be above zero");
        }
        let max_hints_per_node = match args.max_hints_per_node.or(file.max_hints_per_node) {
            Some(s) => parse_size("--max-hints-per-node", &s)?,
            None => 256 << 20,
        };
        let max_hints = match args.max_hints.or(file.max_hints) {
            Some(s) => parse_size("--max-hints", &s)?,
            None => 1 << 30,
        };
        let topic_move_rate = match args.topic_move_rate.or(file.topic_move_rate).as_deref() {
            Some("off") => None,
            Some(s) => Some(parse_size("--topic-move-rate", s)?),
            None => Some(64 << 20),
        };
        if topic_move_rate.is_some_and(|r| r < 64 << 10) {
            bail!("--topic-move-rate must be at least 64KiB (or `off`)");
        }
        Ok(NodeConfig {
            topic_move_rate,
            max_hints_per_node,
            max_hints,
            max_clock_offset,
            sloppy_quorum,
            version_cache,
            replication,
            vnodes,
            sync,
            tombstone_grace,
            hint_window,
            repair_interval,
            repair_segment_bits,
            cleanup_after,
            data_dir,
            listen,
            advertise,
            http,
            kafka,
            kafka_advertise,
            kafka_max_connections,
            kafka_idle_timeout,
            seeds,
            meta_voters,
            meta_snapshot_every,
            zone: args.zone.or(file.zone),
            security,
            log_json,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// `10ms`, `90s`, `15m`, `3h`, `10d` (a bare number is seconds).
pub fn parse_duration(flag: &str, s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().with_context(|| {
        format!("{flag} {s:?}: expected a number with a unit, e.g. 10ms, 90s, 3h, 10d")
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86400)),
        _ => bail!("{flag} {s:?}: unknown unit {unit:?} (ms, s, m, h, d)"),
    };
    Ok(d)
}

/// A size with a unit: `B`, `KiB`, `MiB`, `GiB` (e.g. `256MiB`).
pub fn parse_size(flag: &str, s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("{flag} {s:?}: expected a number with a unit, e.g. 256MiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => bail!("{flag} {s:?}: unknown unit {other:?} (B, KiB, MiB, GiB)"),
    };
    n.checked_mul(1 << shift).with_context(|| format!("{flag} {s:?}: too large"))
}

fn parse_socket_addr(flag: &str, s: &str) -> Result<SocketAddr> {
    s.parse().with_context(|| format!("{flag} {s:?}: expected IP:PORT, e.g. 127.0.0.1:7400"))
}

/// `host:port` with a non-empty host and a numeric port (the host may be a DNS name).
pub fn check_host_port(flag: &str, s: &str) -> Result<()> {
    let Some((host, port)) = s.rsplit_once(':') else {
        bail!("{flag} {s:?}: expected HOST:PORT");
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        bail!("{flag} {s:?}: expected HOST:PORT with a port from 0 to 65535");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["starlingd"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("flags parse")
    }

    #[test]
    fn flags_win_over_file_and_defaults_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("starling.toml");
        std::fs::write(
            &f,
            "data_dir = \"/tmp/x\"\nlisten = \"127.0.0.1:9000\"\nzone = \"a\"\ninsecure = true\n",
        )
        .expect("write");
        let c =
            NodeConfig::from_args(args(&["--config", f.to_str().expect("utf8"), "--zone", "b"]))
                .expect("valid");
        assert_eq!(c.listen, "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(c.zone.as_deref(), Some("b"));
        assert_eq!(c.http.port(), DEFAULT_HTTP_PORT);
        assert_eq!(c.security, Security::Insecure);
    }

    #[test]
    fn bad_settings_are_named() {
        let e = NodeConfig::from_args(args(&["--insecure"])).unwrap_err().to_string();
        assert!(e.contains("--data-dir"), "{e}");
        let e = NodeConfig::from_args(args(&["--data-dir", "d", "--insecure", "--listen", "nope"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--listen"), "{e}");
        let e = NodeConfig::from_args(args(&["--data-dir", "d"])).unwrap_err().to_string();
        assert!(e.contains("--certs"), "{e}");
        let e = NodeConfig::from_args(args(&["--data-dir", "d", "--insecure", "--seeds", "a:1,b"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--seeds"), "{e}");
        let e = NodeConfig::from_args(args(&[
            "--data-dir",
            "d",
            "--insecure",
            "--listen",
            "0.0.0.0:1",
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("--advertise"), "{e}");
    }

    #[test]
    fn kv_settings_parse_and_bad_ones_are_named() {
        let c = NodeConfig::from_args(args(&[
            "--data-dir",
            "d",
            "--insecure",
            "--replication",
            "2",
            "--sync",
            "always",
            "--tombstone-grace",
            "2h",
            "--quorum",
            "strict",
            "--version-cache",
            "0",
        ]))
        .expect("valid");
        assert!(!c.sloppy_quorum);
        assert_eq!(c.version_cache, 0);
        assert_eq!(c.replication, 2);
        assert_eq!(c.sync, crate::storage::rocks::SyncMode::Always);
        assert_eq!(c.tombstone_grace, Duration::from_secs(7200));
        assert_eq!(c.hint_window, Duration::from_secs(3 * 3600));
        let d = NodeConfig::from_args(args(&["--data-dir", "d", "--insecure"])).expect("defaults");
        assert!(d.sloppy_quorum);
        assert_eq!(d.version_cache, crate::storage::rocks::DEFAULT_VERSION_CACHE);
        for (flag, value) in [
            ("--replication", "0"),
            ("--vnodes", "1000"),
            ("--sync", "sometimes"),
            ("--hint-window", "3 weeks"),
            ("--sync-interval", "0ms"),
            ("--quorum", "loose"),
            ("--version-cache", "99999999999"),
        ] {
            let e = NodeConfig::from_args(args(&["--data-dir", "d", "--insecure", flag, value]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag), "{flag}: {e}");
        }
    }

    #[test]
    fn the_topic_move_rate_parses_defaults_and_refuses_what_is_too_small() {
        let rate = |v: &[&str]| {
            let mut a = vec!["--data-dir", "d", "--insecure"];
            a.extend_from_slice(v);
            NodeConfig::from_args(args(&a)).map(|c| c.topic_move_rate)
        };
        assert_eq!(rate(&[]).unwrap(), Some(64 << 20));
        assert_eq!(rate(&["--topic-move-rate", "32MiB"]).unwrap(), Some(32 << 20));
        assert_eq!(rate(&["--topic-move-rate", "off"]).unwrap(), None);
        for bad in ["1KiB", "fast"] {
            let e = rate(&["--topic-move-rate", bad]).unwrap_err().to_string();
            assert!(e.contains("--topic-move-rate"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "data_dri = \"x\"\n").expect("write");
        let e = NodeConfig::from_args(args(&["--config", f.to_str().expect("utf8")])).unwrap_err();
        assert!(format!("{e:#}").contains("data_dri"), "{e:#}");
    }
}
