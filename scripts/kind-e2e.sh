#!/usr/bin/env bash
# End-to-end run on real KubeVirt, for machines with Docker (it cannot run on the project's
# own build machines, which have no Docker and reach no container registry):
#
#   1. creates a kind cluster,
#   2. installs KubeVirt (emulation mode: no /dev/kvm needed), CDI and the CSI snapshot CRDs,
#   3. imports the two golden images of the demo catalog (Ubuntu 22.04, Debian 12),
#   4. builds the vps-operator image (Dockerfile), loads it into kind and installs the Helm
#      chart (simulator off: real KubeVirt runs the VMs),
#   5. runs the end-to-end smoke through the REST API: create -> active with an IP,
#      stop -> stopped, start -> active, reboot, delete -> gone,
#   6. uninstalls the chart and runs the cargo suites on this cluster
#      (VPS_TEST_CLUSTER=existing: they run their own operator and gateway, and skip, saying
#      why, the tests that need the node simulator), as scripts/test.sh does on a cluster of
#      its own.
#
# Needs: docker, kind, kubectl, curl, cargo; helm on PATH or built by
# scripts/build-control-plane.sh. Environment: CLUSTER (default vps-e2e), KEEP=1 to keep the
# cluster afterwards, KUBEVIRT_VERSION, CDI_VERSION, SNAPSHOTTER_VERSION.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cluster=${CLUSTER:-vps-e2e}
kubevirt_version=${KUBEVIRT_VERSION:-v1.7.0}
cdi_version=${CDI_VERSION:-v1.63.1}
snapshotter_version=${SNAPSHOTTER_VERSION:-v8.2.0}
image=vps-operator:e2e
ns=vps-system

log() { echo "[kind-e2e] $*" >&2; }
for tool in docker kind kubectl curl cargo; do
	command -v "$tool" >/dev/null || { log "$tool is required"; exit 1; }
done
helm=$(command -v helm || echo "${VPS_CACHE_DIR:-$HOME/.cache/vps-operator}/helm-current/helm")
[ -x "$helm" ] || { log "helm is required (or run scripts/build-control-plane.sh)"; exit 1; }

export KUBECONFIG=${KUBECONFIG_OUT:-$root/.local/kind-$cluster.kubeconfig}
mkdir -p "$(dirname "$KUBECONFIG")"
cleanup() {
	[ "${KEEP:-0}" = 1 ] && { log "keeping cluster $cluster (KUBECONFIG=$KUBECONFIG)"; return; }
	kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
	[ -n "${forward_pid:-}" ] && kill "$forward_pid" 2>/dev/null || true
}
trap cleanup EXIT

log "creating kind cluster $cluster"
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --kubeconfig "$KUBECONFIG" --wait 120s
# The demo catalog's locations select nodes by region.
kubectl label nodes --all topology.kubernetes.io/region=us-west --overwrite

log "installing the CSI snapshot CRDs $snapshotter_version"
base=https://raw.githubusercontent.com/kubernetes-csi/external-snapshotter/$snapshotter_version/client/config/crd
for crd in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
	kubectl apply -f "$base/snapshot.storage.k8s.io_$crd.yaml"
done

log "installing KubeVirt $kubevirt_version (emulation mode)"
kv=https://github.com/kubevirt/kubevirt/releases/download/$kubevirt_version
kubectl apply -f "$kv/kubevirt-operator.yaml"
kubectl apply -f "$kv/kubevirt-cr.yaml"
kubectl -n kubevirt patch kubevirt kubevirt --type merge \
	-p '{"spec":{"configuration":{"developerConfiguration":{"useEmulation":true,"featureGates":["Snapshot"]}}}}'

log "installing CDI $cdi_version"
cdi=https://github.com/kubevirt/containerized-data-importer/releases/download/$cdi_version
kubectl apply -f "$cdi/cdi-operator.yaml"
kubectl apply -f "$cdi/cdi-cr.yaml"

kubectl -n kubevirt wait kubevirt/kubevirt --for condition=Available --timeout=15m
kubectl wait cdi/cdi --for condition=Available --timeout=15m

log "building and loading the image $image"
docker build -t "$image" "$root"
kind load docker-image "$image" --name "$cluster"

log "installing the chart"
"$helm" upgrade --install vps "$root/charts/vps-operator" --namespace "$ns" --create-namespace \
	--set image.tag=e2e --set image.pullPolicy=Never --set gateway.replicas=1 --set catalog.enabled=true --wait --timeout 10m

log "importing the golden images into vps-images (containerdisks)"
for pair in ubuntu-22-04=quay.io/containerdisks/ubuntu:22.04 debian-12=quay.io/containerdisks/debian:12; do
	name=${pair%%=*}
	kubectl apply -f - <<YAML
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: $name-golden
  namespace: vps-images
  annotations: {cdi.kubevirt.io/storage.bind.immediate.requested: "true"}
spec:
  source: {registry: {url: "docker://${pair#*=}"}}
  storage: {resources: {requests: {storage: 10Gi}}}
YAML
done
kubectl -n vps-images wait dv --all --for condition=Ready --timeout=30m

log "creating an account and a token"
kubectl apply -f "$root/deploy/samples/account.yaml"
token=$(cd "$root" && cargo run -q --release -- token create --account acme --system-namespace "$ns")
kubectl -n "$ns" port-forward svc/vps-gateway 18080:80 >/dev/null 2>&1 &
forward_pid=$!
sleep 3
api=http://127.0.0.1:18080/api/v1
call() { curl -sS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' "$@"; }
# The first (top-level) value of a JSON field: field id, field status.
field() { grep -o "\"$1\":\"\{0,1\}[^\",}]*" | head -1 | sed 's/^[^:]*://; s/"//g'; }
wait_status() {
	local want=$1 deadline=$((SECONDS + 900)) got
	while :; do
		got=$(call "$api/servers/$id/" | field status)
		[ "$got" = "$want" ] && return 0
		[ $SECONDS -gt $deadline ] && { log "server $id is $got, not $want, after 15 min"; exit 1; }
		sleep 5
	done
}

log "end-to-end: create, active, stop, start, reboot, delete"
id=$(call -X POST "$api/servers/" -d '{"name":"e2e-01","plan_id":1,"os_id":5,"location":"us-west","hostname":"e2e01.example.com"}' | field id)
[ -n "$id" ] || { log "create failed"; exit 1; }
wait_status active
call "$api/servers/$id/" | grep -q '"ip_address":"[0-9]' || { log "no IP address"; exit 1; }
call -X POST "$api/servers/$id/stop/" >/dev/null && wait_status stopped
call -X POST "$api/servers/$id/start/" >/dev/null && wait_status active
call -X POST "$api/servers/$id/reboot/" >/dev/null && wait_status active
[ "$(call -o /dev/null -w '%{http_code}' -X DELETE "$api/servers/$id/")" = 204 ] || { log "delete failed"; exit 1; }
for _ in $(seq 180); do
	[ -z "$(kubectl get vps -n acme -o name)" ] && break
	sleep 5
done
[ -z "$(kubectl get vps -n acme -o name)" ] || { log "the server was never torn down"; exit 1; }
log "end-to-end smoke passed"

log "the cargo suites on this cluster (VPS_TEST_CLUSTER=existing)"
"$helm" uninstall vps --namespace "$ns" --wait --timeout 5m
(cd "$root" && VPS_TEST_CLUSTER=existing cargo test --locked \
	--test api_lifecycle --test gateway --test faults --test lifecycle --test controlplane)
