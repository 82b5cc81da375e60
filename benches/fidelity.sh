#!/usr/bin/env bash
# The simulator against the real thing (benches/fidelity/): one flash crowd replayed on the
# local cluster (real operator, sidecars and uvicorn workers; pods that take --start-delay to
# start and drain on their way out) and in the simulator; prints both side by side and writes a
# plot. The output is kept in target/fidelity/. Needs a cluster started with this checkout's
# scripts/cluster (the kwok stages for start-up delays and graceful stops).
#
#   benches/fidelity.sh                                  # the default flash crowd, ~6 minutes
#   benches/fidelity.sh --start-delay 10s --seed 2       # any arguments go to the benchmark
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
eval "$(scripts/test-deps)"
scripts/cluster up
export ASYNCPOOL_TEST_KUBECONFIG="${ASYNCPOOL_TEST_KUBECONFIG:-${ASYNCPOOL_CLUSTER_DIR:-/tmp/asyncpool-cluster}/kubeconfig}"
# The benchmark starts the sidecar too, a binary of another crate: built first, in its profile.
cargo build --release --quiet --workspace --bins
cargo bench --bench fidelity -- "$@"
