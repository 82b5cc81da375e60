#!/usr/bin/env bash
# The sidecar's overhead on loopback, side by side with nginx as a reverse proxy, paths
# interleaved round by round (the order rotates each round), medians reported.
#
#   benches/sidecar-overhead.sh            # ROUNDS=3 DURATION=8s by default
#
# Part 1, the production case: a real uvicorn app (tests/apps/slow_app.py, httptools + uvloop,
#   one process) as upstream: direct vs through the sidecar vs through nginx.
#   a) throughput: wrk, 1 thread, 32 connections, closed loop;
#   b) latency at a fixed moderate rate: 10 connections each pausing 10 ms between requests
#      (~1,000 requests/s); p50 added latency = p50(path) - p50(direct).
# Part 2, the proxy as the bottleneck: nginx `return 200` as upstream (answers instantly):
#   requests/s and CPU time per request of the proxy process(es), sidecar vs nginx.
# Plus the sidecar's RSS at idle and under load.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8s}"
eval "$("$root/scripts/test-deps")"
(cd "$root" && cargo build --release --quiet --bin asyncpool-sidecar)
SIDECAR="$root/target/release/asyncpool-sidecar"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
LUA="$root/benches/wrk-report.lua"

work="$(mktemp -d)"
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

APP=$(free_port); RET=$(free_port); NG1=$(free_port); NG2=$(free_port); SC1=$(free_port); SC2=$(free_port)
ADM1=$(free_port); ADM2=$(free_port)

# The app: uvicorn with its production settings (httptools, uvloop), one worker process.
"$ASYNCPOOL_PYTHON" -m uvicorn slow_app:app --app-dir "$root/tests/apps" --host 127.0.0.1 --port "$APP" \
    --http httptools --loop uvloop --log-level warning --no-access-log &
pids+=($!)

nginx_conf() { # name workers server-blocks
    mkdir -p "$work/$1/logs"
    cat > "$work/$1/nginx.conf" <<CONF
worker_processes $2;
pid $work/$1/nginx.pid;
error_log $work/$1/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/$1/body;
    proxy_temp_path $work/$1/proxy;
    fastcgi_temp_path $work/$1/fastcgi;
    uwsgi_temp_path $work/$1/uwsgi;
    scgi_temp_path $work/$1/scgi;
    $3
}
CONF
    "$NGINX" -p "$work/$1" -c "$work/$1/nginx.conf" -g 'daemon off;' &
    pids+=($!)
    echo $! > "$work/$1/master"
}
# The trivial upstream: answers at once, one worker.
nginx_conf ret 1 "server { listen 127.0.0.1:$RET; location / { return 200 'ok'; } }"
# nginx as a reverse proxy, configured as for a streaming app (no buffering), keep-alive to the
# upstream, as many workers as the sidecar has threads (2).
proxy_location='proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;'
nginx_conf proxy 2 "
    upstream app { server 127.0.0.1:$APP; keepalive 64; }
    upstream ret { server 127.0.0.1:$RET; keepalive 64; }
    server { listen 127.0.0.1:$NG1; location / { proxy_pass http://app; $proxy_location } }
    server { listen 127.0.0.1:$NG2; location / { proxy_pass http://ret; $proxy_location } }"

ASYNCPOOL_LOG=warn "$SIDECAR" --listen "127.0.0.1:$SC1" --admin-listen "127.0.0.1:$ADM1" \
    --upstream "127.0.0.1:$APP" --concurrency 256 &
pids+=($!); SIDECAR1_PID=$!
ASYNCPOOL_LOG=warn "$SIDECAR" --listen "127.0.0.1:$SC2" --admin-listen "127.0.0.1:$ADM2" \
    --upstream "127.0.0.1:$RET" --concurrency 256 &
pids+=($!); SIDECAR2_PID=$!

for addr in "127.0.0.1:$APP/hello" "127.0.0.1:$RET/" "127.0.0.1:$NG1/hello" "127.0.0.1:$NG2/" \
    "127.0.0.1:$SC1/hello" "127.0.0.1:$SC2/"; do
    wait_http "$addr"
done
sleep 1
rss() { awk -v f="$2" '$1 == f {print $2}' "/proc/$1/status"; }
IDLE_RSS=$(rss "$SIDECAR1_PID" VmRSS:)

# CPU ticks (user + system) of a process and its children (nginx workers).
cpu_ticks() {
    local total=0 pid
    for pid in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
TICK_MS=$((1000 / $(getconf CLK_TCK)))
results="$work/results"

# run PART METRIC PATH URL CONNS DELAY_MS CPU_PID
run() {
    local before after out line
    before=$( [ -n "$7" ] && cpu_ticks "$7" || echo 0)
    out=$(WRK_DELAY_MS="$6" wrk -t1 -c"$5" -d"$DURATION" --timeout 5s -s "$LUA" "http://$4")
    after=$( [ -n "$7" ] && cpu_ticks "$7" || echo 0)
    line=$(grep '^RESULT' <<<"$out")
    echo "$1 $2 $3 $line cpu_ms=$(( (after - before) * TICK_MS ))" >> "$results"
    echo "$1 $2 $3 $line cpu_ms=$(( (after - before) * TICK_MS ))" >&2
}

# Warm-up: connections, pools and caches on every path.
for url in "127.0.0.1:$APP/hello" "127.0.0.1:$SC1/hello" "127.0.0.1:$NG1/hello" \
    "127.0.0.1:$RET/" "127.0.0.1:$SC2/" "127.0.0.1:$NG2/"; do
    wrk -t1 -c32 -d2s "http://$url" > /dev/null
done
: > "$results"

NGINX_PID=$(cat "$work/proxy/master")
paths1=("direct 127.0.0.1:$APP/hello" "sidecar 127.0.0.1:$SC1/hello $SIDECAR1_PID" "nginx 127.0.0.1:$NG1/hello $NGINX_PID")
paths2=("direct 127.0.0.1:$RET/" "sidecar 127.0.0.1:$SC2/ $SIDECAR2_PID" "nginx 127.0.0.1:$NG2/ $NGINX_PID")
for round in $(seq 0 $((ROUNDS - 1))); do
    for i in 0 1 2; do
        read -r name url pid <<<"${paths1[$(((i + round) % 3))]}"
        run uvicorn throughput "$name" "$url" 32 0 "${pid:-}"
    done
    for i in 0 1 2; do
        read -r name url pid <<<"${paths1[$(((i + round) % 3))]}"
        run uvicorn latency "$name" "$url" 10 10 "${pid:-}"
    done
    for i in 0 1 2; do
        read -r name url pid <<<"${paths2[$(((i + round) % 3))]}"
        run trivial throughput "$name" "$url" 64 0 "${pid:-}"
    done
done
LOAD_RSS=$(rss "$SIDECAR1_PID" VmRSS:)
PEAK_RSS=$(rss "$SIDECAR1_PID" VmHWM:)
PEAK_RSS2=$(rss "$SIDECAR2_PID" VmHWM:)

python3 - "$results" "$IDLE_RSS" "$LOAD_RSS" "$PEAK_RSS" "$PEAK_RSS2" "$ROUNDS" "$DURATION" <<'PY'
import statistics, sys
results, idle, load, peak, peak2, rounds, duration = sys.argv[1:]
rows = {}
for line in open(results):
    part, metric, path, _, *fields = line.split()
    f = dict(kv.split("=") for kv in fields)
    secs = int(f["duration_us"]) / 1e6
    rec = {"rps": int(f["requests"]) / secs, "p50": float(f["p50_us"]), "p90": float(f["p90_us"]),
           "p99": float(f["p99_us"]), "errors": int(f["errors"]),
           "cpu_us_per_req": int(f["cpu_ms"]) * 1000 / max(int(f["requests"]), 1)}
    rows.setdefault((part, metric, path), []).append(rec)
med = lambda key, part, metric, path: statistics.median(r[key] for r in rows[(part, metric, path)])
errs = lambda part, metric, path: sum(r["errors"] for r in rows[(part, metric, path)])
print(f"rounds: {rounds}, {duration} per run, paths interleaved; medians over rounds\n")
print("### 1. uvicorn app upstream (production case)\n")
print("| path | req/s (32 conns) | vs direct | p50 µs @~1k req/s | p50 added µs | p90 µs | p99 µs | proxy CPU µs/req | errors |")
print("|---|---|---|---|---|---|---|---|---|")
base_rps = med("rps", "uvicorn", "throughput", "direct")
base_p50 = med("p50", "uvicorn", "latency", "direct")
for path in ("direct", "sidecar", "nginx"):
    rps = med("rps", "uvicorn", "throughput", path)
    p50 = med("p50", "uvicorn", "latency", path)
    cpu = "-" if path == "direct" else f"{med('cpu_us_per_req', 'uvicorn', 'throughput', path):.1f}"
    print(f"| {path} | {rps:,.0f} | {rps / base_rps:.1%} | {p50:.0f} | {p50 - base_p50:+.0f} | "
          f"{med('p90', 'uvicorn', 'latency', path):.0f} | {med('p99', 'uvicorn', 'latency', path):.0f} | {cpu} | "
          f"{errs('uvicorn', 'throughput', path) + errs('uvicorn', 'latency', path)} |")
lat_rate = med("rps", "uvicorn", "latency", "direct")
print(f"\n(latency runs: ~{lat_rate:,.0f} req/s on the direct path)\n")
print("### 2. trivial upstream (nginx `return 200`): the proxy is the bottleneck\n")
print("| path | req/s (64 conns) | proxy CPU µs/req | p50 µs | p99 µs | errors |")
print("|---|---|---|---|---|---|")
for path in ("direct", "sidecar", "nginx"):
    cpu = "-" if path == "direct" else f"{med('cpu_us_per_req', 'trivial', 'throughput', path):.1f}"
    print(f"| {path} | {med('rps', 'trivial', 'throughput', path):,.0f} | {cpu} | "
          f"{med('p50', 'trivial', 'throughput', path):.0f} | {med('p99', 'trivial', 'throughput', path):.0f} | "
          f"{errs('trivial', 'throughput', path)} |")
s, n = med("rps", "trivial", "throughput", "sidecar"), med("rps", "trivial", "throughput", "nginx")
sc, nc = med("cpu_us_per_req", "trivial", "throughput", "sidecar"), med("cpu_us_per_req", "trivial", "throughput", "nginx")
print(f"\nsidecar / nginx: {s / n:.2f}× the requests/s, {sc / nc:.2f}× the CPU time per request\n")
print("### Sidecar memory\n")
print(f"RSS at idle {int(idle) / 1024:.1f} MiB; after the load {int(load) / 1024:.1f} MiB; "
      f"peak under load {int(peak) / 1024:.1f} MiB (uvicorn path), {int(peak2) / 1024:.1f} MiB (trivial path)")
PY
