#!/usr/bin/env bash
# Instructions and system calls per proxied request, counted rather than timed, so that the
# figures repeat on a noisy machine. Each proxy runs in front of a trivial upstream (nginx
# `return 200`) on one thread, first under valgrind's callgrind (instructions executed in user
# space), then under strace -c (system calls, where most of a proxy's CPU time goes), each time
# driven twice by wrk with keep-alive for different durations: the difference in counts over the
# difference in requests cancels start-up and shutdown.
#
#   benches/sidecar-instructions.sh                 # the sidecar and nginx
#   BASELINE_SIDECAR=/path/to/asyncpool-sidecar benches/sidecar-instructions.sh   # and another build
#
# Needs valgrind and strace (installed here when missing).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
eval "$("$root/scripts/test-deps")"
for tool in valgrind strace; do
    command -v "$tool" >/dev/null || {
        echo "installing $tool" >&2
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo apt-get install -y -qq "$tool" >&2
    }
done
(cd "$root" && cargo build --release --quiet -p asyncpool-sidecar)
SIDECAR="$root/target/release/asyncpool-sidecar"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
LUA="$root/benches/wrk-report.lua"

work="$(mktemp -d)"
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

RET=$(free_port)
mkdir -p "$work/ret/logs"
cat > "$work/ret/nginx.conf" <<CONF
worker_processes 1;
pid $work/ret/nginx.pid;
error_log $work/ret/logs/error.log warn;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$RET; location / { return 200 'ok'; } } }
CONF
"$NGINX" -p "$work/ret" -c "$work/ret/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_http "127.0.0.1:$RET/"

# The proxy under test as a command for PORT: nginx as one process, the sidecar on one thread.
proxy_command() { # NAME PORT
    case "$1" in
        nginx)
            mkdir -p "$work/proxy/logs"
            cat > "$work/proxy/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/proxy/nginx.pid;
error_log $work/proxy/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    upstream ret { server 127.0.0.1:$RET; keepalive 64; }
    server { listen 127.0.0.1:$2; location / { proxy_pass http://ret; proxy_http_version 1.1;
        proxy_set_header Connection ""; proxy_buffering off;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }
}
CONF
            echo "$NGINX -p $work/proxy -c $work/proxy/nginx.conf"
            ;;
        sidecar) echo "$SIDECAR --drain-grace 0s --threads 1 --concurrency 256 --listen 127.0.0.1:$2 --admin-listen 127.0.0.1:$(free_port) --upstream 127.0.0.1:$RET" ;;
        sidecar-base) echo "$BASELINE_SIDECAR --drain-grace 0s --threads 1 --concurrency 256 --listen 127.0.0.1:$2 --admin-listen 127.0.0.1:$(free_port) --upstream 127.0.0.1:$RET" ;;
    esac
}

# count TOOL NAME SECONDS: runs the proxy under TOOL with SECONDS of load; prints "requests count".
count() {
    local tool=$1 name=$2 seconds=$3 port out pid requests
    port=$(free_port)
    out="$work/$tool-$name-$seconds"
    # shellcheck disable=SC2046 # the command's words are meant to split
    case "$tool" in
        callgrind) ASYNCPOOL_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
            $(proxy_command "$name" "$port") 2>/dev/null & ;;
        strace) ASYNCPOOL_LOG=warn strace -f -c -o "$out" $(proxy_command "$name" "$port") & ;;
    esac
    pid=$!
    wait_http "127.0.0.1:$port/"
    requests=$(wrk -t1 -c8 -d"${seconds}s" --timeout 10s -s "$LUA" "http://127.0.0.1:$port/" \
        | sed -n 's/^RESULT requests=\([0-9]*\) .*/\1/p')
    # Graceful stops: the sidecar drains on SIGTERM, nginx finishes on SIGQUIT. Under strace the
    # proxy is strace's child; under valgrind it is the process itself.
    local target
    target=$(pgrep -P "$pid" || echo "$pid")
    if [ "$name" = nginx ]; then kill -QUIT "$target"; else kill -TERM "$target"; fi
    wait "$pid" 2>/dev/null || true
    case "$tool" in
        callgrind) echo "$requests $(sed -n 's/^summary: //p' "$out"* | awk '{s += $1} END {print s}')" ;;
        strace) echo "$requests $(awk '$NF == "total" {print $4}' "$out")" ;;
    esac
}

names=(sidecar nginx)
[ -n "${BASELINE_SIDECAR:-}" ] && names+=(sidecar-base)
printf '| proxy | instructions per request (user space) | system calls per request |\n|---|---|---|\n'
for name in "${names[@]}"; do
    read -r r1 i1 <<<"$(count callgrind "$name" 3)"
    read -r r2 i2 <<<"$(count callgrind "$name" 9)"
    read -r s1 c1 <<<"$(count strace "$name" 3)"
    read -r s2 c2 <<<"$(count strace "$name" 9)"
    python3 -c "
import sys
r1, i1, r2, i2, s1, c1, s2, c2 = map(int, sys.argv[2:])
print(f'| {sys.argv[1]} | {(i2 - i1) / (r2 - r1):,.0f} | {(c2 - c1) / (s2 - s1):.2f} |')
" "$name" "$r1" "$i1" "$r2" "$i2" "$s1" "$c1" "$s2" "$c2"
done
