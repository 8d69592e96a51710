#!/usr/bin/env bash
# A probe, not a test (issue 20, part 5): KubeVirt's own virt-handler and virt-launcher on the
# project's real node, with emulation (`useEmulation`), instead of the node simulator. It
# reports how far a VirtualMachineInstance gets on that node and the first error on the way.
#
#   scripts/probe-kubevirt-node.sh [--keep]   # root; about 10 minutes the first time
#
# 1. Builds virt-handler, virt-chroot, virt-launcher (cgo: libvirt's headers from Debian's
#    libvirt-dev), virt-launcher-monitor, virt-probe, virt-tail, virt-freezer and the C helper
#    container-disk (gcc, static) from
#    kubevirt.io/kubevirt v1.7.0 (tests/kubevirt-node), cached by a hash of their inputs like
#    the control plane.
# 2. Assembles one image for both from Debian's packages (mmdebstrap, Debian 13: libvirt 11.3,
#    near KubeVirt's own), with KubeVirt's own qemu.conf, virtqemud.conf, nsswitch.conf,
#    node-labeller.sh and qemu user (107). Debian builds libvirt without the modular daemons,
#    so /usr/sbin/virtqemud, which the launcher and node-labeller.sh run, is a wrapper that
#    runs libvirtd with the same arguments and links virtqemud-sock to its socket.
# 3. Starts `vps-operator local --cluster-only --real-node` (control plane, KubeVirt's
#    controllers, the simulator for the simulated nodes, the real node), imports the image into
#    the real node's containerd, installs virt-handler as virt-operator would (KubeVirt's own
#    DaemonSet and RBAC generators) with the client certificates it mounts, and creates a VMI
#    pinned to the real node: the demo Debian disk's kernel booted directly, no disk.
# 4. Prints what ran: the handler pod, the node's KubeVirt labels, the launcher pod, the VMI's
#    phase and conditions, and the first error lines of each log. With --keep the cluster stays
#    up until Ctrl-C (its kubeconfig is printed) for a closer look.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
keep=${1:-}
cache="${VPS_CACHE_DIR:-$HOME/.cache/vps-operator}"
mod=$root/tests/kubevirt-node
log() { echo "[probe] $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "needs root (the real node)"; exit 1; }

need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -f /usr/include/libvirt/libvirt.h ] || need+=(libvirt-dev)
command -v openssl >/dev/null || need+=(openssl)
if [ "${#need[@]}" -gt 0 ]; then
	log "installing ${need[*]} from Debian's packages"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# 1. KubeVirt's node binaries.
key=$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-16)
bin=$cache/kubevirt-node-v1.7.0-$key
if [ ! -d "$bin" ]; then
	mkdir -p "$bin.tmp"
	ld="-s -w -X kubevirt.io/client-go/version.gitVersion=v1.7.0 -X kubevirt.io/client-go/version.gitTreeState=clean"
	for pkg in virt-handler virt-chroot virt-launcher virt-launcher-monitor virt-probe virt-tail virt-freezer; do
		[ -x "$bin.tmp/$pkg" ] && continue
		log "building $pkg"
		(cd "$mod" && CGO_ENABLED=1 go build -trimpath -ldflags "$ld" -o "$bin.tmp/$pkg" "kubevirt.io/kubevirt/cmd/$pkg")
	done
	mv "$bin.tmp" "$bin"
fi
src=$(cd "$mod" && go list -m -f '{{.Dir}}' kubevirt.io/kubevirt)
# KubeVirt's one C helper: what a container disk's (and kernel boot's) container runs.
[ -x "$bin/container-disk" ] || gcc -static -O2 -o "$bin/container-disk" "$src/cmd/container-disk-v2alpha/main.c"

# 2. The image (virt-handler and virt-launcher in one).
packages=libvirt-daemon,libvirt-daemon-driver-qemu,libvirt-clients,qemu-system-x86,qemu-utils,ovmf,iproute2,procps,util-linux,xorriso,passt,psmisc,iptables,nftables,ca-certificates
image_rev=3 # raise when the hooks below change
image_key=$( (echo "$packages $image_rev"; cat "$mod/virtqemud") | sha256sum | cut -c1-16)-$key
image=$cache/kubevirt-node-image-$image_key.tar
if [ ! -f "$image" ]; then
	rootfs=$(mktemp -d)/rootfs
	log "building the image's root filesystem (Debian 13: $packages)"
	mmdebstrap --variant=apt --include="$packages" \
		--customize-hook="cp $bin/virt-* $bin/container-disk \"\$1/usr/bin/\"" \
		--customize-hook="install -m 0755 $src/cmd/virt-launcher/node-labeller/node-labeller.sh \"\$1/usr/bin/\"" \
		--customize-hook="install -m 0644 $src/cmd/virt-launcher/qemu.conf $src/cmd/virt-launcher/virtqemud.conf \"\$1/etc/libvirt/\"" \
		--customize-hook="install -m 0644 $src/cmd/virt-launcher/nsswitch.conf \"\$1/etc/\"" \
		--customize-hook="cp $root/tests/kubevirt-node/virtqemud \"\$1/usr/sbin/virtqemud\"" \
		--customize-hook='echo "qemu:x:107:107:qemu:/home/qemu:/bin/bash" >>"$1/etc/passwd"; echo "qemu:x:107:" >>"$1/etc/group"; mkdir -p "$1/home/qemu"; chown 107:107 "$1/home/qemu"' \
		trixie "$rootfs" http://deb.debian.org/debian
	IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		bash scripts/oci-image.sh localhost/kubevirt-node:v1.7.0 "$rootfs" "$image.partial" /usr/bin/virt-handler 0:0 >/dev/null
	rm -rf "$(dirname "$rootfs")"
	mv "$image.partial" "$image"
fi
guest=$(bash scripts/build-guest-image.sh)

# 3. The cluster, the handler, a VMI.
cargo build -q --bin vps-operator
work=$(mktemp -d /tmp/vps-probe.XXXXXX)
env_file=$work/env
# In its own PID namespace (and mount namespace, for its /proc), as a node in a container is
# (kind's): virt-handler reads the host through /proc/1 (its root, its mount namespace), and
# this machine's own PID 1 is not ours to open. Mounts propagate both ways (/ is made shared,
# as systemd makes it: virt-handler's Bidirectional mounts need that).
mount --make-rshared /
unshare --pid --fork --mount-proc --propagation unchanged --kill-child=SIGINT \
	target/debug/vps-operator local --cluster-only --real-node --no-real-guests --data-dir "$work/cluster" \
	--env-file "$env_file" >"$work/local.log" 2>&1 &
local_pid=$!
cleanup() {
	kill $local_pid 2>/dev/null
	wait $local_pid 2>/dev/null
	umount /var/lib/kubelet/pods 2>/dev/null
	[ -n "$keep" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for _ in $(seq 600); do [ -f "$env_file" ] && break; kill -0 $local_pid || { cat "$work/local.log"; exit 1; }; sleep 1; done
# shellcheck disable=SC1090
. "$env_file"
export KUBECONFIG
kubectl=$cache/controlplane-current/kubectl
node=$($kubectl get nodes -l vps.org/node=real -o jsonpath='{.items[0].metadata.name}')
log "cluster up ($KUBECONFIG), real node $node"
ctr --address "$work/cluster/node/containerd/containerd.sock" -n k8s.io images import "$image" >/dev/null
# Also under the name virt-controller gives launcher pods (never pulled: it is present).
for name in localhost/virt-launcher:v1.7.0 quay.io/kubevirt/virt-launcher:v1.7.0; do
	ctr --address "$work/cluster/node/containerd/containerd.sock" -n k8s.io images tag \
		localhost/kubevirt-node:v1.7.0 "$name" >/dev/null
done
# virt-handler finds the launchers' sockets under kubelet's default root; this node's kubelet
# keeps its pods in its own folder (its device plugins' socket is at the default place).
mkdir -p /var/lib/kubelet/pods
mount --bind "$work/cluster/node/kubelet/pods" /var/lib/kubelet/pods

# The client certificates virt-handler mounts (virt-operator would make them).
for s in kubevirt-virt-handler-certs kubevirt-virt-handler-migration-client-certs kubevirt-virt-handler-vsock-client-certs; do
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=kubevirt.io:system:client:virt-handler" \
		-keyout "$work/$s.key" -out "$work/$s.crt" 2>/dev/null
	$kubectl -n kubevirt create secret tls "$s" --cert "$work/$s.crt" --key "$work/$s.key" >/dev/null
done
(cd "$mod" && go build -o "$work/manifests" ./manifests)
"$work/manifests" kubevirt localhost/kubevirt-node:v1.7.0 localhost/virt-launcher:v1.7.0 vps.org/node real >"$work/handler.json"
$kubectl apply -f "$work/handler.json" >/dev/null
log "virt-handler applied; waiting up to 180 s for it to run"
for _ in $(seq 90); do
	phase=$($kubectl -n kubevirt get pods -l vps.org/kubevirt-node-probe=true -o jsonpath='{.items[0].status.phase}' 2>/dev/null || true)
	[ "$phase" = Running ] && break
	sleep 2
done

# The guest's kernel and initrd in a kernel-boot container image.
kernel_root=$work/kernel-root
mkdir -p "$kernel_root/boot"
cp "$guest/vmlinuz" "$kernel_root/boot/vmlinuz"
cp "$guest/initrd.img" "$kernel_root/boot/initrd.img"
bash scripts/oci-image.sh localhost/probe-kernel:v1 "$kernel_root" "$work/kernel.tar" /boot/vmlinuz 107:107 >/dev/null
ctr --address "$work/cluster/node/containerd/containerd.sock" -n k8s.io images import "$work/kernel.tar" >/dev/null
$kubectl apply -f - >/dev/null <<EOF
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: probe, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: $node}
  domain:
    cpu: {cores: 1}
    memory: {guest: 256Mi}
    resources: {requests: {memory: 256Mi}}
    firmware:
      kernelBoot:
        kernelArgs: console=ttyS0
        container: {image: localhost/probe-kernel:v1, imagePullPolicy: Never, kernelPath: /boot/vmlinuz, initrdPath: /boot/initrd.img}
    devices: {}
EOF
log "VMI created; waiting up to 240 s for Running"
for _ in $(seq 120); do
	phase=$($kubectl get vmi probe -o jsonpath='{.status.phase}' 2>/dev/null || true)
	[ "$phase" = Running ] || [ "$phase" = Failed ] && break
	sleep 2
done

# 4. What ran.
first_errors() { grep -m "${2:-5}" -iE '"level":"error"|error|fail|denied|refused|panic' "$1" || echo "(no error lines)"; }
echo "=== virt-handler pod"
$kubectl -n kubevirt get pods -o wide
$kubectl -n kubevirt get pods -l vps.org/kubevirt-node-probe=true -o jsonpath='{range .items[0].status.initContainerStatuses[*]}{.name}: {.state}{"\n"}{end}{range .items[0].status.containerStatuses[*]}{.name}: {.state}{"\n"}{end}'
echo "=== the node's KubeVirt labels"
$kubectl get node "$node" -o jsonpath='{.metadata.labels}' | tr ',' '\n' | grep -E 'kubevirt.io/(schedulable|.*emulation|.*cpu-model.*host)' | head
echo "=== the VMI"
$kubectl get vmi probe -o jsonpath='{.status.phase}{"\n"}{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' || true
echo "=== launcher pod"
$kubectl get pods -n default -o wide
for pod in $($kubectl -n kubevirt get pods -l vps.org/kubevirt-node-probe=true -o name); do
	$kubectl -n kubevirt logs "$pod" -c virt-launcher >"$work/node-labeller.log" 2>&1 || true
	$kubectl -n kubevirt logs "$pod" -c virt-handler >"$work/virt-handler.log" 2>&1 || true
done
for pod in $($kubectl -n default get pods -o name); do
	$kubectl -n default logs "$pod" --all-containers >"$work/launcher.log" 2>&1 || true
done
$kubectl get events -A --sort-by=.lastTimestamp >"$work/events.txt" 2>&1 || true
for f in node-labeller.log virt-handler.log launcher.log; do
	[ -f "$work/$f" ] || continue
	echo "=== first errors in $f"
	first_errors "$work/$f" 5 | cut -c1-400
done
echo "=== warning events"
grep -i warning "$work/events.txt" | head -10 | cut -c1-300 || true
if [ -n "$keep" ]; then
	log "kept: KUBECONFIG=$KUBECONFIG, logs in $work; Ctrl-C stops the cluster"
	wait $local_pid
fi
