#!/usr/bin/env bash
# Builds the real control-plane binaries from their Go modules and caches them by the
# content of the module files (so by the pinned versions): kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl and etcd from tests/controlplane, and
# KubeVirt's virt-controller, virt-api and CRD generator from tests/kubevirt, and Helm
# (for the deploy tests' `helm lint` / `helm template`) from tests/helm, and what a real
# node runs (kubelet, kube-proxy, the CNI plugins, the pause program) from tests/node, and
# Prometheus (for servers' resource usage) from tests/prometheus.
# Nothing prebuilt is downloaded: `go` fetches module sources from the module proxy.
#
# Prints the directory that holds the binaries as its last line. Idempotent: a second run
# with the same module files builds nothing.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${VPS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vps-operator}

k8s_version=v1.35.4
kubevirt_version=v1.7.0
helm_version=v3.19.0
prometheus_version=v0.316.0

# key MODULE_DIR -> a short hash of the files that decide what is built there
key() {
	(cd "$1" && cat go.mod go.sum $(find . -name '*.go' | sort)) | sha256sum | cut -c1-16
}

log() { echo "[build-control-plane] $*" >&2; }

# One build at a time (a test run and a local run may start together on a cold cache).
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# build_module DIR OUT LDFLAGS PKG...
build_module() {
	local dir=$1 out=$2 ldflags=$3
	shift 3
	local total=$# n=0 pkg name start
	command -v go >/dev/null || { log "Go is required (https://go.dev/doc/install); none on PATH"; exit 1; }
	mkdir -p "$out.tmp"
	for pkg in "$@"; do
		n=$((n + 1))
		name=$(basename "$pkg")
		if [ -x "$out.tmp/$name" ]; then continue; fi
		start=$(date +%s)
		log "[$n/$total] building $name from $pkg (first build only; several minutes on 2 cores)"
		(cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp/$name.partial" "$pkg")
		mv "$out.tmp/$name.partial" "$out.tmp/$name"
		log "[$n/$total] built $name in $(($(date +%s) - start)) s"
	done
	mv "$out.tmp" "$out"
}

# The linker flags that stamp Kubernetes' version into its binaries, as its Makefile does.
k8s_ldflags() {
	local minor ld="-s -w" p
	minor=$(echo "$k8s_version" | cut -d. -f2)
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld="$ld -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
	done
	echo "$ld"
}

k8s_dir=$root/tests/controlplane
k8s_out=$cache/controlplane-$k8s_version-$(key "$k8s_dir")
if [ ! -d "$k8s_out" ]; then
	log "building Kubernetes $k8s_version control plane into $k8s_out"
	build_module "$k8s_dir" "$k8s_out" "$(k8s_ldflags)" \
		./etcd \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler \
		k8s.io/kubernetes/cmd/kubectl
fi

kv_dir=$root/tests/kubevirt
if [ -d "$kv_dir" ]; then
	kv_out=$cache/kubevirt-$kubevirt_version-$(key "$kv_dir")
	if [ ! -d "$kv_out" ]; then
		ld="-s -w -X kubevirt.io/client-go/version.gitVersion=$kubevirt_version -X kubevirt.io/client-go/version.gitTreeState=clean"
		log "building KubeVirt $kubevirt_version controllers into $kv_out"
		build_module "$kv_dir" "$kv_out" "$ld" \
			./kubevirt-crds \
			kubevirt.io/kubevirt/cmd/virt-controller \
			kubevirt.io/kubevirt/cmd/virt-api
	fi
	ln -sfn "$kv_out" "$cache/kubevirt-current"
fi

helm_dir=$root/tests/helm
if [ -d "$helm_dir" ]; then
	helm_out=$cache/helm-$helm_version-k8s1.34-$(key "$helm_dir")
	if [ ! -d "$helm_out" ]; then
		# As Helm's Makefile does: the version, and the Kubernetes version of its client-go
		# (v0.34 -> 1.34) as the default for `helm template` and `helm lint`.
		ld="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
		for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
			ld="$ld -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=34"
		done
		log "building Helm $helm_version into $helm_out"
		build_module "$helm_dir" "$helm_out" "$ld" helm.sh/helm/v3/cmd/helm
	fi
	ln -sfn "$helm_out" "$cache/helm-current"
fi

node_dir=$root/tests/node
if [ -d "$node_dir" ]; then
	node_out=$cache/node-$k8s_version-$(key "$node_dir")
	if [ ! -d "$node_out" ]; then
		log "building a node's binaries (Kubernetes $k8s_version kubelet and kube-proxy, CNI plugins) into $node_out"
		build_module "$node_dir" "$node_out" "$(k8s_ldflags)" \
			./pause \
			github.com/containernetworking/plugins/plugins/main/bridge \
			github.com/containernetworking/plugins/plugins/ipam/host-local \
			github.com/containernetworking/plugins/plugins/main/loopback \
			github.com/containernetworking/plugins/plugins/meta/portmap \
			k8s.io/kubernetes/cmd/kube-proxy \
			k8s.io/kubernetes/cmd/kubelet
	fi
	ln -sfn "$node_out" "$cache/node-current"
fi

prom_dir=$root/tests/prometheus
if [ -d "$prom_dir" ]; then
	prom_out=$cache/prometheus-$prometheus_version-$(key "$prom_dir")
	if [ ! -d "$prom_out" ]; then
		# Static targets only: without the tag each service discovery's cloud SDK is built in.
		ld="-s -w -X github.com/prometheus/common/version.Version=${prometheus_version#v} -X github.com/prometheus/common/version.Branch=release"
		log "building Prometheus $prometheus_version (no service discovery) into $prom_out"
		GOFLAGS="-tags=remove_all_sd" build_module "$prom_dir" "$prom_out" "$ld" github.com/prometheus/prometheus/cmd/prometheus
	fi
	ln -sfn "$prom_out" "$cache/prometheus-current"
fi

ln -sfn "$k8s_out" "$cache/controlplane-current"
echo "$k8s_out"
