#!/usr/bin/env bash
# The fault suite at full length (tests/faults.rs with ASYNCPOOL_FAULTS=full: sidecars silent and
# then garbage for 20 s each, the pod network cut for 20 s, kube-apiserver and etcd stopped for
# 30 s each, the leader SIGKILLed mid-scale-up and mid-scale-down, a crash-looping template for
# 60 s, max-requests recycling for 60 s), 20 scale cycles and 5 runs of a crash-looping worker
# (tests/real_nodes.rs), on the local
# cluster with real nodes (started, or reused, by scripts/cluster up). The test command runs the
# same tests with short faults and 3 cycles. Prints the table that docs/reliability.md quotes;
# the output is kept in target/faults/run-<time>.txt.
#
#   benches/faults.sh            # about 15 minutes
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

eval "$(scripts/test-deps)"
scripts/images build
export ASYNCPOOL_REAL_NODES=${ASYNCPOOL_REAL_NODES:-2}
scripts/cluster up
export ASYNCPOOL_TEST_KUBECONFIG="${ASYNCPOOL_TEST_KUBECONFIG:-${ASYNCPOOL_CLUSTER_DIR:-/tmp/asyncpool-cluster}/kubeconfig}"
export ASYNCPOOL_IMAGES_BUILT=1 ASYNCPOOL_FAULTS=full ASYNCPOOL_SCALE_CYCLES=${ASYNCPOOL_SCALE_CYCLES:-20}

mkdir -p target/faults
out="target/faults/run-$(date +%Y%m%d-%H%M%S).txt"
{
    echo "# $(date)"
    echo "# $(nproc) cores, kernel $(uname -r), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "# ASYNCPOOL_FAULTS=full ASYNCPOOL_SCALE_CYCLES=$ASYNCPOOL_SCALE_CYCLES"
} | tee "$out"
# The tests start the operator's and the sidecar's binaries: built first.
cargo build --quiet --workspace --bins
cargo test --features system-tests --test faults -- --nocapture 2>&1 | tee -a "$out"
cargo test --features system-tests --test real_nodes scale_cycles -- --nocapture 2>&1 | tee -a "$out"
# A worker whose app is SIGKILLed whenever it runs, until the operator has replaced it: each run
# prints its kills, the Degraded reasons seen and the load's outcomes.
for run in $(seq "${ASYNCPOOL_CRASH_RUNS:-5}"); do
    echo "# crash-looping worker, run $run" | tee -a "$out"
    cargo test --features system-tests --test real_nodes crash_loops -- --nocapture 2>&1 | tee -a "$out"
done
echo "saved: $out"
