# Three local starlingd processes for the disk fault scripts (test-disk-full, test-disk-stall).
# Source it after setting: name (the script's name, for messages), dir (a scratch directory) and
# data_dir N (a function: node N's data directory). It sets base (the first QUIC port) and pids.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -x $BIN/starlingd && -x $BIN/starling ]] || { echo "$name: build first: cargo build --release -p starling-node -p starling-cli" >&2; exit 1; }
base=$(free_base_port)
pids=(0 0 0)
fail() { echo "$name: FAILED: $*" >&2; for i in 0 1 2; do echo "--- node $i log (tail)" >&2; tail -5 "$dir/n$i.log" >&2; done; exit 1; }
kill_nodes() { for p in "${pids[@]}"; do [[ $p != 0 ]] && kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
start() {
  "$BIN/starlingd" --data-dir "$(data_dir "$1")" --listen "127.0.0.1:$((base + $1))" \
    --http "127.0.0.1:$((base + 100 + $1))" --seeds "127.0.0.1:$base" --zone "z$1" --insecure \
    >>"$dir/n$1.log" 2>&1 &
  pids[$1]=$!
}
status() { curl -sf --max-time 2 "127.0.0.1:$((base + 100 + $1))/status"; }
ready() {
  for _ in $(seq 1 150); do
    local n=0
    for i in 0 1 2; do
      status "$i" | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["converged"] and s["ring"]["nodes"]==3 and s["ring"]["status"]=="normal" and all(m["state"]=="alive" for m in s["members"]) and not (s.get("kv") or {}).get("recovering") else 1)' 2>/dev/null && n=$((n + 1))
    done
    [[ $n == 3 ]] && return 0
    sleep 0.2
  done
  fail "the cluster did not converge"
}
# bench NODES [ARGS...]: a KV benchmark over 300,000 keys.
bench() { "$BIN/starling" --insecure bench kv --nodes "$1" --ops 300000 --keys 300000 --quiet "${@:2}"; }
# count FIELD OUTPUT: the number before FIELD in a bench report ("0 errors").
count() { sed -n "s/.* \([0-9]*\) $1.*/\1/p" <<<"$2" | head -1; }
