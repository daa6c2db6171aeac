#!/usr/bin/env bash
# Installs the amd64 libprovhsm-dev and provhsm packages into a clean Debian 12 root (a
# fresh copy of a debootstrap minbase) with apt, which must resolve their Depends from the
# mirror, and there:
#   - checks what postinst made (/var/lib/provhsm: root, 0700) and the conffile;
#   - builds tests/link/consumer against the installed package only: through the SDK's
#     -Dhsm_custom_lib="$(pkg-config --variable=hsm_custom_lib provhsm)", through
#     find_package(provhsm) and through pkg-config --cflags --libs; runs them, the first
#     with the installed default configuration and store directory;
#   - purges and reinstalls provhsm: the store (identities) and a store directory handed
#     to another owner survive, the conffile goes.
# Run by scripts/deb.sh (make deb); needs root (chroot, mount).
#
#   tests/deb/install_test.sh LIBPROVHSM_DEV_DEB PROVHSM_DEB
#
# Cache, kept between runs in build-deb-cache/: the debootstrap minbase with apt's lists
# (bookworm-minbase.tar) and apt's downloaded packages (archives/). Delete the directory to
# start from nothing. The mirror is the one this machine's apt uses for Debian
# (PROVHSM_DEB_MIRROR overrides it).
set -euo pipefail

dev_deb=$(realpath -e "${1:?libprovhsm-dev .deb}")
tool_deb=$(realpath -e "${2:?provhsm .deb}")
src=$(cd "$(dirname "$0")/../.." && pwd)
cache=$src/build-deb-cache
base=$cache/bookworm-minbase.tar
archives=$cache/archives
suite=bookworm
start=$SECONDS

fail() {
    echo "deb install test: $*" >&2
    exit 1
}
[[ $(id -u) -eq 0 ]] || fail "needs root (debootstrap, chroot, mount)"
command -v debootstrap >/dev/null || fail "debootstrap is not installed (make deb installs it)"

# The Debian mirror from this machine's apt sources (deb822 or one-line format).
apt_mirror() {
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -oE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)[a-z]+://[^[:space:]]+/debian/?([[:space:]]|$)' |
        grep -oE '[a-z]+://[^[:space:]]+' | head -n1)
    echo "${uri:-http://deb.debian.org/debian}"
}

# ---- the clean root, and everything mounted into it, always undone ----------------------
root=
mounts=()
cleanup() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" || true
    done
    # never delete through a mount that is still there (it would reach the host or the cache)
    if [[ -n $root ]] && ! grep -q " $root/" /proc/mounts; then
        rm -rf "$root"
    fi
}
trap cleanup EXIT

mount_into() {
    mount "$@"
    mounts+=("${*: -1}")
}

make_base() {
    local mirror tmp
    mirror=${PROVHSM_DEB_MIRROR:-$(apt_mirror)}
    tmp=$cache/bootstrap.$$
    echo "deb install test: debootstrap --variant=minbase $suite from $mirror (once; cached)"
    rm -rf "$tmp"
    root=$tmp
    debootstrap --variant=minbase "$suite" "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        {
            tail -20 "$cache/debootstrap.log" >&2
            fail "debootstrap failed (log: $cache/debootstrap.log)"
        }
    cp /etc/resolv.conf "$tmp/etc/resolv.conf"
    chroot "$tmp" apt-get -q update >/dev/null
    tar -C "$tmp" -cf "$base.partial" . && mv "$base.partial" "$base"
    rm -rf "$tmp"
    root=
}

mkdir -p "$cache" "$archives/partial"
[[ -f $base ]] || make_base

root=$(mktemp -d "$src/build-deb-root.XXXXXX")
tar -C "$root" -xf "$base"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount_into -t proc proc "$root/proc"
mount_into --bind "$archives" "$root/var/cache/apt/archives"

# What the root gets from outside: the two packages, the consumer's sources, and the SDK's
# hsm_client_data.h (the SDK brings it; the packages do not install it).
mkdir -p "$root/tmp/in/debs" "$root/tmp/in/sdk" "$root/tmp/in/link"
cp "$dev_deb" "$tool_deb" "$root/tmp/in/debs/"
cp -r "$src/tests/link/consumer" "$src/tests/link/consumer_pkg" "$root/tmp/in/link/"
cp "$src/src/sdk/hsm_client_data.h" "$root/tmp/in/sdk/"
cp "$src/tests/deb/in_root.sh" "$root/tmp/in/"
ready=$SECONDS

chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive /bin/bash /tmp/in/in_root.sh \
    "/tmp/in/debs/${dev_deb##*/}" "/tmp/in/debs/${tool_deb##*/}" ||
    fail "FAILED in the clean root (see above)"

echo "deb install test: passed in $((SECONDS - start)) s" \
    "(clean root ready in $((ready - start)) s)"
