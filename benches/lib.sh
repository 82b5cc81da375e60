# Shared by the benchmark scripts (sourced): the processes they start are killed on exit, and
# helpers for loopback ports and readiness. A script may set `work` to a directory removed on exit.

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
