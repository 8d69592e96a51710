#!/usr/bin/env bash
# Builds the project's OCI image without Docker, as an OCI archive that containerd
# (`ctr -n k8s.io images import`), kind (`kind load image-archive`) and registry tools
# (`skopeo copy oci-archive:...`, `crane push`) take. Its layout is the Dockerfile's: the
# release binary at /usr/local/bin/vps-operator, run as the non-root user 65532, no shell;
# beside it exactly the shared libraries the binary loads (the Dockerfile links statically
# instead). The tag is the crate's version.
#
#   scripts/build-image.sh [--binary PATH] [--tag TAG] [IMAGE_NAME]
#
# IMAGE_NAME defaults to vps-operator, TAG to the crate's version; --binary takes a binary
# built already (the real-node suite uses the tests' debug build) instead of building the
# release binary. Prints the archive's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
binary= tag=
while [ $# -gt 0 ]; do
	case $1 in
	--binary) binary=$2; shift 2 ;;
	--tag) tag=$2; shift 2 ;;
	*) break ;;
	esac
done
name=${1:-vps-operator}
version=${tag:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)}
if [ -z "$binary" ]; then
	cargo build --release --locked --bin vps-operator >&2
	binary=target/release/vps-operator
fi
rootfs=target/image/rootfs-$version
rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc"
cp "$binary" "$rootfs/usr/local/bin/vps-operator"
# The loader and every library ldd resolves, at the paths the binary asks for them.
for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
	mkdir -p "$rootfs$(dirname "$lib")"
	cp -L "$lib" "$rootfs$lib"
done
echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" >"$rootfs/etc/passwd"
echo "nonroot:x:65532:" >"$rootfs/etc/group"
exec bash scripts/oci-image.sh "$name:$version" "$rootfs" "target/image/$name-$version.tar" \
	/usr/local/bin/vps-operator 65532:65532
