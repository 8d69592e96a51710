#!/usr/bin/env bash
# Runs every test. The first run builds the control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl) and KubeVirt's virt-controller and
# virt-api from their Go modules into ~/.cache/vps-operator; later runs reuse that cache.
# Needs Rust (cargo) and Go on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/build-control-plane.sh >/dev/null
echo "[test] control-plane binaries ready after $(($(date +%s) - start)) s"
cargo test --locked "$@"
# The operator's lifecycle and fault suites once more with every simulated host step taking 300 ms,
# so that nothing depends on the simulator answering instantly.
VPS_SIM_DELAY=300ms cargo test --locked --test lifecycle --test api_lifecycle --test faults "$@"
echo "[test] all tests finished in $(($(date +%s) - start)) s"
