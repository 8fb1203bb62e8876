# Shared helpers for Starling's scripts. Source it: `. "$(dirname "$0")/lib.sh"`.

# Build output outside the checkout, so clean clones (CI) reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/starling/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
BIN="$CARGO_TARGET_DIR/release"
# The simulators `scripts/test` runs, built with the quicker-to-link `sim` profile (Cargo.toml).
SIM_BIN="$CARGO_TARGET_DIR/sim"

step() { printf '\n== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# apt_install PKG... installs missing Debian packages (as root), or explains what to install.
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    die "missing packages: ${missing[*]} (install them: sudo apt-get install ${missing[*]})"
  fi
  echo "installing ${missing[*]} ..."
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# What building Starling needs on Debian.
install_build_deps() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
  # RocksDB: Debian's librocksdb-dev is linked (see .cargo/config.toml); bindgen needs clang.
  apt_install gcc g++ libc6-dev pkg-config curl python3 ca-certificates clang libclang-dev librocksdb-dev
}

# kafka_venv: a virtualenv with the Kafka clients the tests and benches drive (confluent-kafka,
# which bundles librdkafka, and kafka-python), pinned, from PyPI; made once under
# ~/.cache/starling. Prints its python.
kafka_venv() {
  local venv="${STARLING_KAFKA_VENV:-$HOME/.cache/starling/kafka-venv}"
  local packages=("confluent-kafka==2.16.1" "kafka-python==3.0.12")
  if ! "$venv/bin/python" -c 'import confluent_kafka, kafka' 2>/dev/null; then
    step "Kafka clients: a virtualenv with ${packages[*]} (from PyPI)" >&2
    if ! python3 -m venv "$venv" 2>/dev/null; then
      apt_install python3-venv >&2
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}" >&2
  fi
  echo "$venv/bin/python"
}

# free_base_port [N]: a first port P such that P .. P+N-1 (default 300: the QUIC, HTTP and Kafka
# listeners of a local cluster at P+i, P+100+i, P+200+i) are below the kernel's ephemeral range,
# so no outgoing connection (or one lingering in TIME_WAIT) can hold one of them, and none is
# bound right now.
free_base_port() {
  local n=${1:-300} low=32768 base hex p
  local -A used=()
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  # Every local port bound now (column 2 of /proc/net/{tcp,udp}{,6} is ADDR:PORT in hex).
  for hex in $(awk 'FNR > 1 { n = split($2, a, ":"); print a[n] }' \
    /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null | sort -u); do
    used[$((16#$hex))]=1
  done
  for _ in $(seq 50); do
    base=$(( 10000 + RANDOM % (low - 10000 - n) ))
    for ((p = base; p < base + n; p++)); do [ -n "${used[$p]:-}" ] && continue 2; done
    echo "$base"; return 0
  done
  die "no free range of $n ports below $low"
}

# cluster_ready BASE [TRIES] [PAUSE]: waits until the 3 local nodes whose HTTP ports are
# BASE+100..BASE+102 each report a converged ring of 3 nodes in state normal; false if they do
# not within TRIES polls PAUSE seconds apart (150, 0.2).
cluster_ready() {
  local base=$1 tries=${2:-150} pause=${3:-0.2} n i
  for _ in $(seq 1 "$tries"); do
    n=0
    for i in 0 1 2; do
      curl -sf -m 2 "127.0.0.1:$((base + 100 + i))/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["converged"] and s["ring"]["nodes"]==3 and s["ring"]["status"]=="normal" else 1)' 2>/dev/null && n=$((n + 1))
    done
    [[ $n == 3 ]] && return 0
    sleep "$pause"
  done
  return 1
}

build_release() {
  step "build (release): starlingd and starling"
  cargo build --release --locked -p starling-node -p starling-cli
}
