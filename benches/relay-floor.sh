#!/usr/bin/env bash
# How close the sidecar is to the cheapest possible loopback proxy: CPU time per request of
# nginx, the sidecar, and two relays that only move bytes (benches/relay-floor/relay.c: one
# upstream connection per client connection, no HTTP, no admission, no timers), one on epoll and
# one on io_uring. All in front of the same trivial upstream (nginx `return 200`), two workers
# or threads each, wrk with 1 thread and 64 keep-alive connections, paths interleaved in rotating
# order. Reported: the median over rounds of each path's CPU per request divided by nginx's in the
# same round (paired, so that the machine's drift between rounds cancels), and the TCP segments
# sent per request on the whole machine (`nstat`: the proxy's, the client's and the upstream's).
#
#   benches/relay-floor.sh             # ROUNDS=9 DURATION=5s by default
#
# Needs gcc and liburing (Debian's liburing-dev, installed here when missing); the relay is built
# into the cache, keyed by the hash of its source.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${ROUNDS:-9}"
DURATION="${DURATION:-5s}"
eval "$("$root/scripts/test-deps")"
if [ ! -f /usr/include/liburing.h ]; then
    echo "installing liburing-dev" >&2
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get install -y -qq liburing-dev >&2 || { $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq liburing-dev >&2; }
fi
source_file="$root/benches/relay-floor/relay.c"
RELAY="${ASYNCPOOL_CACHE:-$HOME/.cache/asyncpool}/relay-floor-$(sha256sum "$source_file" | cut -c1-16)"
[ -x "$RELAY" ] || { mkdir -p "$(dirname "$RELAY")"; gcc -O2 -Wall -o "$RELAY" "$source_file" -luring; }
(cd "$root" && cargo build --release --quiet -p asyncpool-sidecar)
SIDECAR="$root/target/release/asyncpool-sidecar"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
LUA="$root/benches/wrk-report.lua"

work="$(mktemp -d)"
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

RET=$(free_port); NG=$(free_port); SC=$(free_port); EP=$(free_port); UR=$(free_port)
nginx_conf ret 1 "server { listen 127.0.0.1:$RET; location / { return 200 'ok'; } }"
# The same nginx proxy configuration as benches/sidecar-overhead.sh.
nginx_conf proxy 2 "
    upstream ret { server 127.0.0.1:$RET; keepalive 64; }
    server { listen 127.0.0.1:$NG; location / { proxy_pass http://ret; proxy_http_version 1.1;
        proxy_set_header Connection \"\"; proxy_buffering off;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }"
NGINX_PID=$!
ASYNCPOOL_LOG=warn "$SIDECAR" --listen "127.0.0.1:$SC" --admin-listen "127.0.0.1:$(free_port)" \
    --upstream "127.0.0.1:$RET" --concurrency 256 &
pids+=($!); SIDECAR_PID=$!
"$RELAY" epoll "$EP" "$RET" 2 & pids+=($!); EPOLL_PID=$!
"$RELAY" io_uring "$UR" "$RET" 2 & pids+=($!); URING_PID=$!
for port in "$RET" "$NG" "$SC" "$EP" "$UR"; do wait_http "127.0.0.1:$port/"; done

paths=("nginx $NG $NGINX_PID" "sidecar $SC $SIDECAR_PID" "relay-epoll $EP $EPOLL_PID" "relay-io_uring $UR $URING_PID")
for path in "${paths[@]}"; do
    read -r _ port _ <<<"$path"
    wrk -t1 -c64 -d2s "http://127.0.0.1:$port/" > /dev/null
done
results="$work/results"
: > "$results"
n=${#paths[@]}
for round in $(seq 0 $((ROUNDS - 1))); do
    for i in $(seq 0 $((n - 1))); do
        read -r name port pid <<<"${paths[$(((i + round) % n))]}"
        nstat -n > /dev/null
        before=$(cpu_ticks "$pid")
        out=$(wrk -t1 -c64 -d"$DURATION" -s "$LUA" "http://127.0.0.1:$port/")
        after=$(cpu_ticks "$pid")
        segments=$(nstat -z TcpOutSegs | awk '$1 == "TcpOutSegs" {print $2}')
        line="$name round=$round cpu_ms=$(( (after - before) * TICK_MS )) segments=$segments $(grep '^RESULT' <<<"$out" | cut -d' ' -f2-)"
        echo "$line" >> "$results"
        echo "$line" >&2
    done
done

python3 - "$results" "$ROUNDS" "$DURATION" <<'PY'
import statistics, sys
results, rounds, duration = sys.argv[1:]
runs = {}
for line in open(results):
    name, *fields = line.split()
    f = dict(kv.split("=") for kv in fields)
    runs.setdefault(name, {})[int(f["round"])] = {
        "rps": int(f["requests"]) / (int(f["duration_us"]) / 1e6),
        "cpu": int(f["cpu_ms"]) * 1000 / max(int(f["requests"]), 1),
        "errors": int(f["errors"]),
        "segments": int(f["segments"]) / max(int(f["requests"]), 1),
    }
print(f"{rounds} rounds of {duration}, paths interleaved; medians over rounds\n")
print("| path | req/s | CPU µs/req | CPU ÷ nginx's (median of rounds, quartiles) | TCP segments/req | errors |")
print("|---|---|---|---|---|---|")
nginx = runs["nginx"]
for name, by_round in runs.items():
    ratios = sorted(r["cpu"] / nginx[k]["cpu"] for k, r in by_round.items())
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    print(f"| {name} | {statistics.median(r['rps'] for r in by_round.values()):,.0f} | "
          f"{statistics.median(r['cpu'] for r in by_round.values()):.1f} | "
          f"{statistics.median(ratios):.2f}× ({q[0]:.2f}–{q[2]:.2f}) | "
          f"{statistics.median(r['segments'] for r in by_round.values()):.2f} | "
          f"{sum(r['errors'] for r in by_round.values())} |")
sidecar, floor = runs["sidecar"], runs["relay-epoll"]
over = sorted(r["cpu"] / floor[k]["cpu"] for k, r in sidecar.items())
print(f"\nsidecar ÷ relay-epoll (the floor), CPU per request: {statistics.median(over):.2f}× (median of rounds)")
PY
