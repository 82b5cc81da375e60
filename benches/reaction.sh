#!/usr/bin/env bash
# The operator's reaction time (benches/reaction.rs): from a sidecar's load change to the
# Deployment's new spec.replicas, with sidecar watch streams and with polling, at 1 and at 100
# pools, on the local cluster (started, or reused, by scripts/cluster up). Also counts the API
# writes at rest. The output is kept in target/reaction/run-<time>.txt.
#
#   benches/reaction.sh                          # the default matrix (about half an hour)
#   benches/reaction.sh --pools 1 --trials 10    # any arguments replace the default matrix
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/cluster up
export ASYNCPOOL_TEST_KUBECONFIG="${ASYNCPOOL_TEST_KUBECONFIG:-${ASYNCPOOL_CLUSTER_DIR:-/tmp/asyncpool-cluster}/kubeconfig}"

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
    args=(--pools 1,100 --modes watch,poll --trials 30)
fi

mkdir -p target/reaction
out="target/reaction/run-$(date +%Y%m%d-%H%M%S).txt"
{
    echo "# $(date)"
    echo "# $(nproc) cores, kernel $(uname -r), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
    echo "# cargo bench --bench reaction -- ${args[*]}"
} | tee "$out"
# The benchmark starts the sidecar too, a binary of another crate: built first, in its profile.
cargo build --release --quiet --workspace --bins
cargo bench --bench reaction -- "${args[@]}" 2>&1 | tee -a "$out"
echo "saved: $out"
