#!/usr/bin/env bash
# The Uvicorn notes' scenario with real processes: requests that each take 3.15 s (an awaited
# LLM call), 4 worker pods, each a uvicorn process behind its own sidecar, the client spreading
# requests round-robin over the 4 sidecars as a Service would.
#   (a) the synchronous model: each sidecar admits 1 request at a time (--concurrency 1);
#   (b) the async model: each admits 100 (--concurrency 100).
# 100 concurrent requests against both; then 400 against (b), which fills its 4 × 100 slots and
# so measures its capacity, to compare with the notes' throughput claim (1.27 vs 127 req/s).
#
#   benches/uvicorn-scenario.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_REQUEST="${SECONDS_PER_REQUEST:-3.15}"
eval "$("$root/scripts/test-deps")"
(cd "$root" && cargo build --release --quiet --bin asyncpool-sidecar)
SIDECAR="$root/target/release/asyncpool-sidecar"

# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

# start_pool CONCURRENCY: starts 4 pods, sets `targets` to their serving addresses
start_pool() {
    local concurrency=$1 app sc adm
    targets=()
    for _ in 1 2 3 4; do
        app=$(free_port); sc=$(free_port); adm=$(free_port)
        "$ASYNCPOOL_PYTHON" -m uvicorn slow_app:app --app-dir "$root/tests/apps" --host 127.0.0.1 \
            --port "$app" --http httptools --loop uvloop --log-level warning --no-access-log &
        pids+=($!)
        ASYNCPOOL_LOG=warn "$SIDECAR" --listen "127.0.0.1:$sc" --admin-listen "127.0.0.1:$adm" \
            --upstream "127.0.0.1:$app" --concurrency "$concurrency" --max-queue 400 --queue-timeout 10m &
        pids+=($!)
        wait_http "127.0.0.1:$app/hello"
        wait_http "127.0.0.1:$sc/hello"
        targets+=("127.0.0.1:$sc")
    done
}

client() { "$ASYNCPOOL_PYTHON" "$root/benches/scenario_client.py" "$@"; }
path="/sleep?s=$SECONDS_PER_REQUEST"

start_pool 1
sync_pool=("${targets[@]}")
start_pool 100
async_pool=("${targets[@]}")

echo "(a) sync model, 4 × 1 slot, 100 requests:"
a=$(client 100 "$path" "${sync_pool[@]}"); echo "$a"
echo "(b) async model, 4 × 100 slots, 100 requests:"
b=$(client 100 "$path" "${async_pool[@]}"); echo "$b"
echo "(b) async model, 4 × 100 slots, 400 requests (capacity):"
c=$(client 400 "$path" "${async_pool[@]}"); echo "$c"

python3 - "$a" "$b" "$c" <<'PY'
import json, sys
a, b, c = (json.loads(x) for x in sys.argv[1:])
print()
print("| run | ok | wall time (all done) | first done | median | last done | throughput |")
print("|---|---|---|---|---|---|---|")
for name, r in (("(a) 4 × 1 slot, 100 requests", a), ("(b) 4 × 100 slots, 100 requests", b),
                ("(b) 4 × 100 slots, 400 requests", c)):
    print(f"| {name} | {r['ok']}/{r['requests']} | {r['wall_s']:.2f} s | {r['first_s']:.2f} s | "
          f"{r['median_s']:.2f} s | {r['last_s']:.2f} s | {r['throughput_rps']:.2f} req/s |")
print()
print(f"100 requests: wall time (a)/(b) = {a['wall_s'] / b['wall_s']:.1f}×, "
      f"throughput (b)/(a) = {b['throughput_rps'] / a['throughput_rps']:.1f}×")
print(f"capacity: throughput (b, 400 requests)/(a) = {c['throughput_rps'] / a['throughput_rps']:.1f}×")
PY
