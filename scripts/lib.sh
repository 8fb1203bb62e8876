# Shared helpers for Starling's scripts. Source it: `. "$(dirname "$0")/lib.sh"`.

# Build output outside the checkout, so clean clones (CI) reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/starling/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
BIN="$CARGO_TARGET_DIR/release"

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

build_release() {
  step "build (release): starlingd and starling"
  cargo build --release --locked -p starling-node -p starling-cli
}
