#!/usr/bin/env bash
# Builds the demo catalog's Debian 12 image as a real disk, from Debian's packages only:
# mmdebstrap makes the root filesystem (systemd, cloud-init, OpenSSH, the cloud kernel),
# `mkfs.ext4 -d` turns it into a raw ext4 disk (no mount, no loop device), and the image's own
# kernel and initrd are copied beside it (qemu boots them with `root=/dev/vda`). Cached by a
# hash of its inputs under ~/.cache/vps-operator/guest-debian-12-<hash>/; prints that folder.
#
#   scripts/build-guest-image.sh          # build (about a minute and 430 MB the first time)
#
# Installs what it needs (mmdebstrap, qemu, cloud-image-utils, the ssh client) from Debian's packages when
# missing.
set -euo pipefail

SUITE=bookworm
PACKAGES=systemd-sysv,dbus,cloud-init,openssh-server,linux-image-cloud-amd64,ifupdown,udev,iproute2,netbase,qemu-guest-agent
SIZE=2G
cache="${VPS_CACHE_DIR:-$HOME/.cache/vps-operator}"
hash=$(printf '%s\n' "$SUITE" "$PACKAGES" "$SIZE" "$(sha256sum <"$0")" | sha256sum | cut -c1-16)
out="$cache/guest-debian-12-$hash"
if [ -f "$out/disk.img" ]; then
  echo "$out"
  exit 0
fi

need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v cloud-localds >/dev/null || need+=(cloud-image-utils)
command -v ssh >/dev/null || need+=(openssh-client) # the real-guest test logs in with it
if [ "${#need[@]}" -gt 0 ]; then
  echo "[guest] installing ${need[*]} from Debian's packages" >&2
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

tmp="$out.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
start=$(date +%s)
echo "[guest] building a Debian 12 root filesystem ($PACKAGES)" >&2
# Only NoCloud (the seed disk the simulator writes): no network probing for other clouds.
mmdebstrap --variant=apt --include="$PACKAGES" \
  --customize-hook='printf "datasource_list: [NoCloud, None]\n" > "$1/etc/cloud/cloud.cfg.d/90-vps-datasource.cfg"' \
  --customize-hook='printf "/dev/vda / ext4 defaults 0 1\n" > "$1/etc/fstab"' \
  --customize-hook='rm -f "$1/etc/hostname" "$1/etc/machine-id"; touch "$1/etc/machine-id"' \
  "$SUITE" "$tmp/root" >&2
cp "$(ls "$tmp"/root/boot/vmlinuz-* | tail -1)" "$tmp/vmlinuz"
cp "$(ls "$tmp"/root/boot/initrd.img-* | tail -1)" "$tmp/initrd.img"
mkfs.ext4 -q -L root -d "$tmp/root" "$tmp/disk.img" "$SIZE" >&2
rm -rf "$tmp/root"
mv "$tmp" "$out"
echo "[guest] built in $(( $(date +%s) - start )) s: $out" >&2
echo "$out"
