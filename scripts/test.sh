#!/usr/bin/env bash
# Runs every test. The first run builds the control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl) and KubeVirt's virt-controller and
# virt-api from their Go modules into ~/.cache/vps-operator; later runs reuse that cache.
# Needs Rust (cargo) and Go on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# The formatter and the linter first: CI holds every commit to them.
cargo fmt --check
cargo clippy --locked --all-targets --quiet -- -D warnings
echo "[test] cargo fmt and clippy clean after $(($(date +%s) - start)) s"
bash scripts/build-control-plane.sh >/dev/null
echo "[test] control-plane binaries ready after $(($(date +%s) - start)) s"
# A real node's container runtime, from Debian's packages (tests/real_node.rs; it skips,
# saying why, where they cannot be installed).
if ! command -v containerd >/dev/null || ! command -v runc >/dev/null || ! command -v iptables >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "[test] installing containerd, runc and iptables (Debian's packages)"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd runc iptables iproute2 >/dev/null
	else
		echo "[test] containerd, runc or iptables missing and not installable here: the real-node suite will skip"
	fi
fi
# The real Debian 12 disk of the real-guest test (Debian's packages: mmdebstrap, qemu), cached.
bash scripts/build-guest-image.sh >/dev/null
echo "[test] guest image ready after $(($(date +%s) - start)) s"
cargo test --locked "$@"
# The benchmark's smoke mode: a short run on a control plane of its own that fails when
# something does not work; it judges no timing (those belong in the bench's table).
cargo test --locked --bench vps -- --bench --smoke
# The operator's lifecycle and fault suites once more with every simulated host step taking 300 ms,
# so that nothing depends on the simulator answering instantly.
VPS_SIM_DELAY=300ms cargo test --locked --test lifecycle --test api_lifecycle --test faults "$@"

# The suites on an existing cluster (VPS_TEST_CLUSTER=existing, what scripts/kind-e2e.sh runs
# on kind), once, on a cluster started apart from them: `vps-operator local --cluster-only`,
# with a real node where the machine allows one.
existing=$(mktemp -d)
node=()
if [ "$(id -u)" = 0 ] && command -v containerd >/dev/null && command -v runc >/dev/null; then node=(--real-node); fi
"${CARGO_TARGET_DIR:-target}/debug/vps-operator" local --cluster-only "${node[@]}" --data-dir "$existing/state" --env-file "$existing/env" \
	>"$existing/local.log" 2>&1 &
local_pid=$!
trap 'kill -TERM $local_pid 2>/dev/null; wait $local_pid 2>/dev/null; rm -rf "$existing"' EXIT
for _ in $(seq 600); do
	[ -s "$existing/env" ] && break
	kill -0 $local_pid 2>/dev/null || { cat "$existing/local.log"; exit 1; }
	sleep 0.5
done
[ -s "$existing/env" ] || { echo "[test] the cluster for the existing-cluster run did not start"; cat "$existing/local.log"; exit 1; }
echo "[test] the suites on an existing cluster ($(cat "$existing/env"))"
env VPS_TEST_CLUSTER=existing "$(cat "$existing/env")" \
	cargo test --locked --test api_lifecycle --test gateway --test faults --test lifecycle --test controlplane "$@"
# The gateway against its own OpenAPI document (schemathesis, 60 s of cases).
bash scripts/fuzz-api.sh
echo "[test] all tests finished in $(($(date +%s) - start)) s"
