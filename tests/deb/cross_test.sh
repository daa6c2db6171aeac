#!/usr/bin/env bash
# The arm64 packages, checked the way a cross build uses them: libprovhsm-dev and provhsm
# unpacked into a directory that stands for the device's sysroot, the link-test consumer
# cross-compiled with cmake/toolchains/aarch64-linux-gnu.cmake through
# -Dhsm_custom_lib="$(pkg-config --variable=hsm_custom_lib provhsm)" (PKG_CONFIG_SYSROOT_DIR
# set), then the consumer and the packaged tool run under qemu-user. Run by scripts/deb.sh
# (make deb) after the install test.
#
#   tests/deb/cross_test.sh LIBPROVHSM_DEV_DEB PROVHSM_DEB
set -euo pipefail

dev_deb=$(realpath -e "${1:?libprovhsm-dev .deb}")
tool_deb=$(realpath -e "${2:?provhsm .deb}")
src=$(cd "$(dirname "$0")/../.." && pwd)
triplet=aarch64-linux-gnu
qemu=(qemu-aarch64-static -L "/usr/$triplet")
start=$SECONDS

fail() {
    echo "deb cross test: $*" >&2
    exit 1
}
command -v qemu-aarch64-static >/dev/null || fail "qemu-aarch64-static is not installed"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/provhsm-deb-cross.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
sysroot=$tmp/sysroot
dpkg-deb -x "$dev_deb" "$sysroot"
dpkg-deb -x "$tool_deb" "$sysroot"

# The archive comes from the package (under the sysroot); its dependencies by -l from the
# cross toolchain's multiarch directories, where the :arm64 -dev packages put them.
export PKG_CONFIG_SYSROOT_DIR=$sysroot
export PKG_CONFIG_LIBDIR=$sysroot/usr/lib/$triplet/pkgconfig:/usr/lib/$triplet/pkgconfig:/usr/share/pkgconfig
value=$(pkg-config --print-errors --variable=hsm_custom_lib provhsm) ||
    fail "pkg-config cannot read the packaged provhsm.pc"
[[ ${value%%;*} == "$sysroot/usr/lib/$triplet/libprovhsm.a" ]] ||
    fail "hsm_custom_lib does not name the packaged archive under the sysroot: $value"
echo "deb cross test: hsm_custom_lib=$value"

if ! cmake -S "$src/tests/link/consumer" -B "$tmp/build" \
    -DCMAKE_TOOLCHAIN_FILE="$src/cmake/toolchains/$triplet.cmake" \
    -Dhsm_custom_lib="$value" -DPROVHSM_SDK_HEADER_DIR="$src/src/sdk" \
    -DPROVHSM_INCLUDE_DIR="$sysroot/usr/include" >"$tmp/build.log" 2>&1 ||
    ! cmake --build "$tmp/build" >>"$tmp/build.log" 2>&1; then
    cat "$tmp/build.log" >&2
    fail "cross-building the consumer against the arm64 package failed"
fi
file -b "$tmp/build/consumer" | grep -q 'ARM aarch64' || fail "the consumer is not an arm64 program"

mkdir -p "$tmp/home"
: >"$tmp/empty.conf"
if ! env -u PROVHSM_TCTI -u PROVHSM_PASSPHRASE -u PROVHSM_LOG HOME="$tmp/home" \
    PROVHSM_CONFIG="$tmp/empty.conf" PROVHSM_STORE="$tmp/store" \
    "${qemu[@]}" "$tmp/build/consumer" >"$tmp/run.log" 2>&1; then
    cat "$tmp/run.log" >&2
    fail "the arm64 consumer failed under qemu"
fi
version=$(dpkg-deb -f "$tool_deb" Version)
"${qemu[@]}" "$sysroot/usr/bin/provhsm" --version | grep -qF -- "$version" ||
    fail "the packaged arm64 provhsm does not print version $version under qemu"
echo "deb cross test: the arm64 consumer built from the package runs under qemu; passed in" \
    "$((SECONDS - start)) s"
