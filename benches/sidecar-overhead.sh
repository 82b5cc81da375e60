#!/usr/bin/env bash
# The sidecar's overhead on loopback, side by side with nginx as a reverse proxy and with
# Knative's queue-proxy (the peer that does the sidecar's job), paths interleaved round by round
# (the order rotates each round), medians reported.
#
#   benches/sidecar-overhead.sh            # ROUNDS=3 DURATION=8s by default
#   BASELINE_SIDECAR=/path/to/asyncpool-sidecar benches/sidecar-overhead.sh
#                                          # adds "sidecar-base": another build, e.g. main's
#
# Part 1, the production case: a real uvicorn app (tests/apps/slow_app.py, httptools + uvloop,
#   one process) as upstream: direct vs through the sidecar vs nginx vs Knative's queue-proxy.
#   a) throughput: wrk, 1 thread, 32 connections, closed loop;
#   b) latency at a fixed moderate rate: 10 connections each pausing 10 ms between requests
#      (~1,000 requests/s), LAT_ROUNDS (12) rounds of LAT_DURATION (3s) per path, interleaved;
#      p50 added latency = the median over rounds of p50(path) - p50(direct) in the same round
#      (paired, so that the machine's drift between rounds cancels).
# Part 2, the proxy as the bottleneck: nginx `return 200` as upstream (answers instantly):
#   requests/s and CPU time per request of the proxy process(es), sidecar vs nginx vs queue-proxy.
# Part 3, what watching costs: the trivial path through the sidecar again while the operator's
#   view of it runs (two `GET /queue?watch=true` streams open and `/metrics` scraped every second),
#   and the sidecar's CPU time at idle over 10 s with a watch stream open.
# Plus the sidecar's RSS at idle and under load, and each proxy's peak RSS.
#
# Knative's queue-proxy v0.42.2 is built from Go modules by `scripts/tool` (about a minute, once)
# and runs outside a cluster with the environment Knative's reconciler would give it, at the
# sidecar's concurrency. Its admin (8022) and metrics (9090) ports are fixed, so one instance runs
# at a time, restarted in front of whichever upstream the next run needs.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8s}"
LAT_ROUNDS="${LAT_ROUNDS:-12}"
LAT_DURATION="${LAT_DURATION:-3s}"
eval "$("$root/scripts/test-deps")"
(cd "$root" && cargo build --release --quiet --bin asyncpool-sidecar)
SIDECAR="$root/target/release/asyncpool-sidecar"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
LUA="$root/benches/wrk-report.lua"
QUEUE_PROXY=$("$root/scripts/tool" path queue-proxy)

work="$(mktemp -d)"
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

APP=$(free_port); RET=$(free_port); NG1=$(free_port); NG2=$(free_port); SC1=$(free_port); SC2=$(free_port)
ADM1=$(free_port); ADM2=$(free_port); QP=$(free_port); QP_TLS=$(free_port)

# The app: uvicorn with its production settings (httptools, uvloop), one worker process.
"$ASYNCPOOL_PYTHON" -m uvicorn slow_app:app --app-dir "$root/tests/apps" --host 127.0.0.1 --port "$APP" \
    --http httptools --loop uvloop --log-level warning --no-access-log &
pids+=($!)

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
if [ -n "${BASELINE_SIDECAR:-}" ]; then
    SC3=$(free_port); SC4=$(free_port)
    ASYNCPOOL_LOG=warn "$BASELINE_SIDECAR" --listen "127.0.0.1:$SC3" --admin-listen "127.0.0.1:$(free_port)" \
        --upstream "127.0.0.1:$APP" --concurrency 256 &
    pids+=($!); BASE1_PID=$!
    ASYNCPOOL_LOG=warn "$BASELINE_SIDECAR" --listen "127.0.0.1:$SC4" --admin-listen "127.0.0.1:$(free_port)" \
        --upstream "127.0.0.1:$RET" --concurrency 256 &
    pids+=($!); BASE2_PID=$!
    wait_http "127.0.0.1:$SC3/hello"; wait_http "127.0.0.1:$SC4/"
fi

for addr in "127.0.0.1:$APP/hello" "127.0.0.1:$RET/" "127.0.0.1:$NG1/hello" "127.0.0.1:$NG2/" \
    "127.0.0.1:$SC1/hello" "127.0.0.1:$SC2/"; do
    wait_http "$addr"
done

# Knative's queue-proxy in front of port $1, as its reconciler configures it (the sidecar's
# concurrency, no TLS, no request log, errors-only logging). One at a time (fixed admin and
# metrics ports): a call for another upstream stops the running one first, keeping its peak RSS.
QP_PID=""; QP_UPSTREAM=""; QP_PEAK_KB=0
qp_stop() {
    [ -n "$QP_PID" ] || return 0
    local peak
    peak=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$QP_PID/status" 2>/dev/null || echo 0)
    [ "${peak:-0}" -gt "$QP_PEAK_KB" ] && QP_PEAK_KB=$peak
    kill "$QP_PID" 2>/dev/null || true
    wait "$QP_PID" 2>/dev/null || true
    QP_PID=""; QP_UPSTREAM=""
}
qp_front() { # UPSTREAM_PORT PATH
    [ "$QP_UPSTREAM" = "$1" ] && return 0
    qp_stop
    CONTAINER_CONCURRENCY=256 QUEUE_SERVING_PORT=$QP QUEUE_SERVING_TLS_PORT=$QP_TLS USER_PORT=$1 \
    REVISION_TIMEOUT_SECONDS=300 SERVING_LOGGING_CONFIG='' SERVING_LOGGING_LEVEL=error \
    SERVING_NAMESPACE=bench SERVING_CONFIGURATION=bench SERVING_REVISION=bench-00001 \
    SERVING_POD=bench-00001-deployment SERVING_POD_IP=127.0.0.1 "$QUEUE_PROXY" >"$work/queue-proxy.log" 2>&1 &
    QP_PID=$!; QP_UPSTREAM=$1
    pids+=("$QP_PID")
    wait_http "127.0.0.1:$QP$2"
    # The same warm-up as every other path got.
    wrk -t1 -c32 -d2s "http://127.0.0.1:$QP$2" > /dev/null
}
sleep 1
rss() { awk -v f="$2" '$1 == f {print $2}' "/proc/$1/status"; }
IDLE_RSS=$(rss "$SIDECAR1_PID" VmRSS:)

results="$work/results"

# run PART METRIC PATH URL CONNS DELAY_MS CPU_PID [DURATION [ROUND]]
run() {
    local before after out line
    local observers=()
    if [ "$3" = sidecar+observed ]; then
        # What the operator and Prometheus do to every worker: watch its queue, scrape its metrics.
        for _ in 1 2; do
            curl -sN "http://127.0.0.1:$ADM2/queue?watch=true" > /dev/null & observers+=($!)
        done
        (while :; do curl -s "http://127.0.0.1:$ADM2/metrics" > /dev/null; sleep 1; done) & observers+=($!)
    fi
    if [ "$3" = knative ]; then
        # The path names its upstream by the URL's suffix; the pid is the instance started now.
        case "$4" in */hello) qp_front "$APP" /hello ;; *) qp_front "$RET" / ;; esac
        set -- "$1" "$2" "$3" "$4" "$5" "$6" "$QP_PID" "${8:-}" "${9:-}"
    fi
    before=$( [ -n "$7" ] && cpu_ticks "$7" || echo 0)
    out=$(WRK_DELAY_MS="$6" wrk -t1 -c"$5" -d"${8:-$DURATION}" --timeout 5s -s "$LUA" "http://$4")
    after=$( [ -n "$7" ] && cpu_ticks "$7" || echo 0)
    if [ ${#observers[@]} -gt 0 ]; then kill "${observers[@]}" 2>/dev/null || true; wait "${observers[@]}" 2>/dev/null || true; fi
    line=$(grep '^RESULT' <<<"$out")
    line="$1 $2 $3 $line cpu_ms=$(( (after - before) * TICK_MS )) round=${9:-0}"
    echo "$line" >> "$results"
    echo "$line" >&2
}

# Warm-up: connections, pools and caches on every path.
for url in "127.0.0.1:$APP/hello" "127.0.0.1:$SC1/hello" "127.0.0.1:$NG1/hello" \
    "127.0.0.1:$RET/" "127.0.0.1:$SC2/" "127.0.0.1:$NG2/"; do
    wrk -t1 -c32 -d2s "http://$url" > /dev/null
done
: > "$results"

NGINX_PID=$(cat "$work/proxy/master")
paths1=("direct 127.0.0.1:$APP/hello" "sidecar 127.0.0.1:$SC1/hello $SIDECAR1_PID" "nginx 127.0.0.1:$NG1/hello $NGINX_PID" "knative 127.0.0.1:$QP/hello")
paths2=("direct 127.0.0.1:$RET/" "sidecar 127.0.0.1:$SC2/ $SIDECAR2_PID" "nginx 127.0.0.1:$NG2/ $NGINX_PID" "knative 127.0.0.1:$QP/" "sidecar+observed 127.0.0.1:$SC2/ $SIDECAR2_PID")
if [ -n "${BASELINE_SIDECAR:-}" ]; then
    paths1+=("sidecar-base 127.0.0.1:$SC3/hello $BASE1_PID")
    paths2+=("sidecar-base 127.0.0.1:$SC4/ $BASE2_PID")
fi
n=${#paths1[@]}
n2=${#paths2[@]}
for round in $(seq 0 $((ROUNDS - 1))); do
    for i in $(seq 0 $((n - 1))); do
        read -r name url pid <<<"${paths1[$(((i + round) % n))]}"
        run uvicorn throughput "$name" "$url" 32 0 "${pid:-}"
    done
    for i in $(seq 0 $((n2 - 1))); do
        read -r name url pid <<<"${paths2[$(((i + round) % n2))]}"
        run trivial throughput "$name" "$url" 64 0 "${pid:-}"
    done
done
for round in $(seq 0 $((LAT_ROUNDS - 1))); do
    for i in $(seq 0 $((n - 1))); do
        read -r name url pid <<<"${paths1[$(((i + round) % n))]}"
        run uvicorn latency "$name" "$url" 10 10 "${pid:-}" "$LAT_DURATION" "$round"
    done
done
# Idle: no traffic, one watch stream open (the operator's), for 10 s.
curl -sN "http://127.0.0.1:$ADM1/queue?watch=true" > /dev/null & watcher=$!
sleep 1
idle_before=$(cpu_ticks "$SIDECAR1_PID")
sleep 10
IDLE_CPU_MS=$(( ($(cpu_ticks "$SIDECAR1_PID") - idle_before) * TICK_MS ))
kill "$watcher" 2>/dev/null || true
LOAD_RSS=$(rss "$SIDECAR1_PID" VmRSS:)
PEAK_RSS=$(rss "$SIDECAR1_PID" VmHWM:)
PEAK_RSS2=$(rss "$SIDECAR2_PID" VmHWM:)
NGINX_PEAK=0
for pid in $(pgrep -P "$NGINX_PID"); do
    peak=$(rss "$pid" VmHWM:); [ "$peak" -gt "$NGINX_PEAK" ] && NGINX_PEAK=$peak
done
qp_stop

python3 - "$results" "$IDLE_RSS" "$LOAD_RSS" "$PEAK_RSS" "$PEAK_RSS2" "$ROUNDS" "$DURATION" "$NGINX_PEAK" "$QP_PEAK_KB" "$IDLE_CPU_MS" "$LAT_ROUNDS" "$LAT_DURATION" <<'PY'
import statistics, sys
results, idle, load, peak, peak2, rounds, duration, nginx_peak, qp_peak, idle_cpu, lat_rounds, lat_duration = sys.argv[1:]
PATHS = ["direct", "sidecar", "nginx", "knative"]
rows = {}
for line in open(results):
    part, metric, path, _, *fields = line.split()
    f = dict(kv.split("=") for kv in fields)
    secs = int(f["duration_us"]) / 1e6
    rec = {"rps": int(f["requests"]) / secs, "p50": float(f["p50_us"]), "p90": float(f["p90_us"]),
           "p99": float(f["p99_us"]), "errors": int(f["errors"]),
           "cpu_us_per_req": int(f["cpu_ms"]) * 1000 / max(int(f["requests"]), 1),
           "round": int(f["round"])}
    rows.setdefault((part, metric, path), []).append(rec)
if ("trivial", "throughput", "sidecar-base") in rows:
    PATHS.append("sidecar-base")
med = lambda key, part, metric, path: statistics.median(r[key] for r in rows[(part, metric, path)])
errs = lambda part, metric, path: sum(r["errors"] for r in rows[(part, metric, path)])
print(f"rounds: {rounds}, {duration} per run (latency: {lat_rounds} rounds of {lat_duration}), "
      "paths interleaved; medians over rounds\n")

def added(path):
    """Median and quartiles over rounds of p50(path) - p50(direct), paired by round."""
    direct = {r["round"]: r["p50"] for r in rows[("uvicorn", "latency", "direct")]}
    diffs = sorted(r["p50"] - direct[r["round"]] for r in rows[("uvicorn", "latency", path)]
                   if r["round"] in direct)
    q = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else [diffs[0]] * 3
    return statistics.median(diffs), q[0], q[2]
print("### 1. uvicorn app upstream (production case)\n")
print("| path | req/s (32 conns) | vs direct | p50 µs @~1k req/s | p50 added µs (median, quartiles) | p90 µs | p99 µs | proxy CPU µs/req | errors |")
print("|---|---|---|---|---|---|---|---|---|")
base_rps = med("rps", "uvicorn", "throughput", "direct")
for path in PATHS:
    rps = med("rps", "uvicorn", "throughput", path)
    p50 = med("p50", "uvicorn", "latency", path)
    cpu = "-" if path == "direct" else f"{med('cpu_us_per_req', 'uvicorn', 'throughput', path):.1f}"
    mid, low, high = added(path) if path != "direct" else (0, 0, 0)
    print(f"| {path} | {rps:,.0f} | {rps / base_rps:.1%} | {p50:.0f} | {mid:+.0f} ({low:+.0f} to {high:+.0f}) | "
          f"{med('p90', 'uvicorn', 'latency', path):.0f} | {med('p99', 'uvicorn', 'latency', path):.0f} | {cpu} | "
          f"{errs('uvicorn', 'throughput', path) + errs('uvicorn', 'latency', path)} |")
lat_rate = med("rps", "uvicorn", "latency", "direct")
print(f"\n(latency runs: ~{lat_rate:,.0f} req/s on the direct path)\n")
print("### 2. trivial upstream (nginx `return 200`): the proxy is the bottleneck\n")
print("| path | req/s (64 conns) | proxy CPU µs/req | p50 µs | p99 µs | errors |")
print("|---|---|---|---|---|---|")
for path in PATHS:
    cpu = "-" if path == "direct" else f"{med('cpu_us_per_req', 'trivial', 'throughput', path):.1f}"
    print(f"| {path} | {med('rps', 'trivial', 'throughput', path):,.0f} | {cpu} | "
          f"{med('p50', 'trivial', 'throughput', path):.0f} | {med('p99', 'trivial', 'throughput', path):.0f} | "
          f"{errs('trivial', 'throughput', path)} |")
s, n = med("rps", "trivial", "throughput", "sidecar"), med("rps", "trivial", "throughput", "nginx")
sc, nc = med("cpu_us_per_req", "trivial", "throughput", "sidecar"), med("cpu_us_per_req", "trivial", "throughput", "nginx")
print(f"\nsidecar / nginx: {s / n:.2f}× the requests/s, {sc / nc:.2f}× the CPU time per request")
k, kc = med("rps", "trivial", "throughput", "knative"), med("cpu_us_per_req", "trivial", "throughput", "knative")
print(f"sidecar / queue-proxy: {s / k:.2f}× the requests/s, {sc / kc:.2f}× the CPU time per request")
if "sidecar-base" in PATHS:
    b, bc = med("rps", "trivial", "throughput", "sidecar-base"), med("cpu_us_per_req", "trivial", "throughput", "sidecar-base")
    print(f"sidecar / sidecar-base: {s / b:.2f}× the requests/s, {sc / bc:.2f}× the CPU time per request")
print()
print("### 3. What watching costs\n")
o, oc = med("rps", "trivial", "throughput", "sidecar+observed"), med("cpu_us_per_req", "trivial", "throughput", "sidecar+observed")
print(f"trivial path through the sidecar with two watch streams and a /metrics scrape every second: "
      f"{o:,.0f} req/s, {oc:.1f} CPU µs/req (unwatched: {s:,.0f} req/s, {sc:.1f} µs/req; "
      f"ratio {oc / sc:.2f}×)")
print(f"idle with one watch stream open: {int(idle_cpu) / 10:.1f} ms of CPU per second "
      f"(resolution: one clock tick in 10 s; 0 means less)\n")
print("### Sidecar memory\n")
print(f"RSS at idle {int(idle) / 1024:.1f} MiB; after the load {int(load) / 1024:.1f} MiB; "
      f"peak under load {int(peak) / 1024:.1f} MiB (uvicorn path), {int(peak2) / 1024:.1f} MiB (trivial path)")
print(f"Peak RSS of the others: an nginx worker {int(nginx_peak) / 1024:.1f} MiB, "
      f"queue-proxy {int(qp_peak) / 1024:.1f} MiB")
PY
