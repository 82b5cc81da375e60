# shellcheck shell=bash
# Shared by the benchmark scripts (sourced): the processes they start are killed on exit, and
# helpers for loopback ports, readiness, nginx instances and CPU time. A script may set `work` to a
# directory removed on exit.

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${work:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http HOST:PORT/PATH: until it answers 2xx, at most 20 s.
wait_http() {
    for _ in $(seq 400); do
        curl -fsS -o /dev/null "http://$1" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "not up: $1" >&2
    exit 1
}

# nginx_conf NAME WORKERS SERVER-BLOCKS: an nginx of its own under $work/NAME (temp paths there, no
# access log) in the foreground, one of `pids`; its master's pid also in $work/NAME/master.
# Needs NGINX and work set.
nginx_conf() {
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

# CPU ticks (user + system) of a process and its children (nginx's or a relay's workers).
cpu_ticks() {
    local total=0 pid
    for pid in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
TICK_MS=$((1000 / $(getconf CLK_TCK)))
