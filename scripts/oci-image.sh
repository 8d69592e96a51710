#!/usr/bin/env bash
# Writes an OCI image archive (an OCI image layout in a tar: what `ctr images import`,
# `kind load image-archive` and registry tools such as skopeo and crane accept) from a
# folder that becomes the image's one layer. No Docker, no registry:
#
#   scripts/oci-image.sh NAME:TAG ROOTFS_DIR OUT.tar ENTRYPOINT [USER]
#
# The layer is an uncompressed tar of ROOTFS_DIR, every file owned by root, times zeroed and
# names sorted, so the same folder always gives the same digests. The image's PATH is `/`
# unless IMAGE_PATH says otherwise.
set -euo pipefail
ref=$1 rootfs=$2 out=$3 entrypoint=$4 user=${5:-65532:65532}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
blobs=$work/blobs/sha256
mkdir -p "$blobs"

sha() { sha256sum "$1" | cut -d' ' -f1; }
# blob FILE MEDIATYPE -> a descriptor's JSON, and the file stored under its digest
blob() {
	local digest size
	digest=$(sha "$1")
	size=$(stat -c %s "$1")
	cp "$1" "$blobs/$digest"
	printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$digest" "$size"
}

tar --create --file "$work/layer.tar" --directory "$rootfs" --sort=name --mtime=@0 \
	--owner=0 --group=0 --numeric-owner --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime .
layer=$(blob "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)
diff_id=$(sha "$work/layer.tar")

printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["%s"],"User":"%s","Env":["PATH=%s"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
	"$entrypoint" "$user" "${IMAGE_PATH:-/}" "$diff_id" >"$work/config.json"
config=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
	"$config" "$layer" >"$work/manifest.json"
manifest=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)

# The name as containerd reads it, and the tag as the OCI layout spec says it. A name
# without a registry is Docker Hub's, as Docker and kubelet read it (kubelet asks the
# runtime for docker.io/library/NAME:TAG).
first=${ref%%/*}
if [ "$first" = "$ref" ] || { [[ $first != *.* ]] && [[ $first != *:* ]] && [ "$first" != localhost ]; }; then
	case $ref in
	*/*) ref=docker.io/$ref ;;
	*) ref=docker.io/library/$ref ;;
	esac
fi
tag=${ref##*:}
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' \
	"${manifest%\}},\"annotations\":{\"io.containerd.image.name\":\"$ref\",\"org.opencontainers.image.ref.name\":\"$tag\"}}" \
	>"$work/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"

mkdir -p "$(dirname "$out")"
tar --create --file "$out" --directory "$work" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
	oci-layout index.json blobs
echo "$out"
