#!/usr/bin/env bash
# The operator at cluster scale (benches/scale/main.rs): 100 and 1,000 pools of about ten
# worker pods each on the local cluster's kwok nodes, one fake-sidecar listener for every pod
# address, one operator. Start-up, the cost at rest, the reaction time while a tenth of the
# pools change, and memory. The cluster's controller-manager and scheduler build the fleet at a
# higher client QPS (ASYNCPOOL_CLUSTER_API_QPS, 200 here) so that ten thousand pods are created
# in minutes rather than most of an hour, and run at their defaults while the operator is
# measured (`scripts/cluster qps`); the cluster has 30 kwok nodes (ASYNCPOOL_CLUSTER_NODES) whose
# pods have addresses the endpoints controllers accept (ASYNCPOOL_CLUSTER_POD_CIDR, local on the
# loopback link while the cluster runs), as a real cluster's: on loopback addresses the
# controller-manager's endpoint updates fail and are retried forever, some forty wasted
# requests a second at a thousand Services. A running cluster started otherwise is restarted.
# The output is kept in target/scale/run-<time>.txt.
#
#   benches/scale.sh                        # 100 and 1,000 pools
#   benches/scale.sh --pools 100 --rounds 2 # any arguments replace the defaults
#   benches/scale.sh --pools 1000 --rounds 2 --operators /tmp/a/asyncpool-operator,/tmp/b/asyncpool-operator
#                                           # builds compared side by side: measured one after
#                                           # the other on the same fleet (the rounds change
#                                           # different tenths of the pools)
#   benches/scale.sh --pools 1000 --rounds 2 --floor-rounds 2
#                                           # then, with no operator running, the control
#                                           # plane's floor: a tenth of the Deployments resized
#                                           # at once by a bare client, timed the same way
#   benches/scale.sh --pools 1000 --operators none --floor-rounds 3 --floor-modes merge/64,merge/4,scale/64
#                                           # the floor alone, the bare client's ways of writing
#                                           # taking turns: a merge patch of the Deployment or
#                                           # of its /scale, so many requests in flight
#   benches/scale.sh --pools 3000 --pods-per-pool 3
#                                           # every pool 3 pods: 3,000 pools within the open-file
#                                           # limit (the operator holds a watch stream per pod)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

export ASYNCPOOL_CLUSTER_API_QPS=${ASYNCPOOL_CLUSTER_API_QPS:-200}
# kwok nodes hold 1,000 pods each: room for 30,000 worker pods.
export ASYNCPOOL_CLUSTER_NODES=${ASYNCPOOL_CLUSTER_NODES:-30}
export ASYNCPOOL_CLUSTER_POD_CIDR=${ASYNCPOOL_CLUSTER_POD_CIDR:-10.244.0.0/16}
state=${ASYNCPOOL_CLUSTER_DIR:-/tmp/asyncpool-cluster}
if scripts/cluster status >/dev/null 2>&1 &&
    { [ "$(cat "$state/kwok-nodes" 2>/dev/null || echo 0)" -lt "$ASYNCPOOL_CLUSTER_NODES" ] ||
        [ "$(cat "$state/pod-cidr" 2>/dev/null)" != "$ASYNCPOOL_CLUSTER_POD_CIDR" ]; }; then
    echo "scale: restarting the cluster with $ASYNCPOOL_CLUSTER_NODES kwok nodes, pods in $ASYNCPOOL_CLUSTER_POD_CIDR" >&2
    scripts/cluster down
fi
scripts/cluster up
export ASYNCPOOL_TEST_KUBECONFIG="${ASYNCPOOL_TEST_KUBECONFIG:-$state/kubeconfig}"

args=("$@")
mkdir -p target/scale
out="target/scale/run-$(date +%Y%m%d-%H%M%S).txt"
{
    echo "# $(date)"
    echo "# $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), open files $(ulimit -n), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
    echo "# cargo bench --bench scale -- ${args[*]}"
} | tee "$out"
# The operator under test, in the profile the benchmark runs in.
cargo build --release --quiet --workspace --bins
cargo bench --bench scale -- "${args[@]}" 2>&1 | tee -a "$out"
echo "saved: $out"
