#!/usr/bin/env bash
# The size budget (make size): per architecture and build type, the size of libprovhsm.a
# without debug information (a `strip -g` copy), and what provhsm adds to a device's
# program: tests/size/sdk_app.c (init, the three table getters, create/destroy through each
# table, as the Azure IoT C SDK calls a custom HSM) linked once with libprovhsm.a and its
# hsm_custom_lib dependencies, once with tests/size/hsm_stubs.c (the same functions doing
# nothing) and the same dependencies; both stripped, the difference printed. The
# dependencies (OpenSSL, tpm2-tss) are shared libraries, and the SDK links OpenSSL itself,
# so the difference is provhsm's own code and data.
#
#   scripts/size.sh [ARCH...]     ARCH: amd64, arm64, armhf (default: every one whose
#                                 cross compiler and :ARCH -dev packages are installed)
#
# Builds only the library, in build-deb-size-<arch>-<type>/ (RelWithDebInfo, the project's
# default, and MinSizeRel); cross builds use cmake/toolchains/. Prints a Markdown table.
set -euo pipefail

cd "$(dirname "$0")/.."
src=$PWD
JOBS=${JOBS:-2}
build_types=(RelWithDebInfo MinSizeRel)

archs=("$@")
((${#archs[@]} > 0)) || archs=(amd64 arm64 armhf)

fail() {
    echo "size: $*" >&2
    exit 1
}

# triplet ARCH: the GNU triplet of a Debian architecture.
triplet() {
    case $1 in
    amd64) echo x86_64-linux-gnu ;;
    arm64) echo aarch64-linux-gnu ;;
    armhf) echo arm-linux-gnueabihf ;;
    *) fail "unknown architecture $1 (amd64, arm64 or armhf)" ;;
    esac
}

# usable ARCH: its compiler and its OpenSSL and tpm2-tss development packages are installed.
usable() {
    local arch=$1 t
    t=$(triplet "$arch")
    command -v "$t-gcc" >/dev/null || return 1
    [[ -f /usr/lib/$t/pkgconfig/libcrypto.pc && -f /usr/lib/$t/pkgconfig/tss2-esys.pc ]]
}

# opt_flags TYPE: the optimisation CMake uses for the build type, for the program itself.
opt_flags() {
    case $1 in
    MinSizeRel) echo -Os ;;
    *) echo -O2 ;;
    esac
}

rows=()
skipped=()

# measure ARCH TYPE: build the library, link the two programs, add a row.
measure() {
    local arch=$1 type=$2 t build
    t=$(triplet "$arch")
    build=$src/build-deb-size-$arch-${type,,}
    local toolchain=()
    if [[ $arch != amd64 ]]; then
        toolchain=(-DCMAKE_TOOLCHAIN_FILE="$src/cmake/toolchains/$t.cmake")
    fi
    mkdir -p "$build"
    cmake -S "$src" -B "$build" "${toolchain[@]}" -DCMAKE_BUILD_TYPE="$type" \
        -DPROVHSM_BUILD_TESTS=OFF -DPROVHSM_BUILD_BENCH=OFF -DPROVHSM_BUILD_TOOL=OFF \
        >"$build/size-configure.log" 2>&1 ||
        {
            cat "$build/size-configure.log" >&2
            fail "configuring $arch $type failed"
        }
    cmake --build "$build" -j"$JOBS" --target provhsm >"$build/size-build.log" 2>&1 ||
        {
            tail -40 "$build/size-build.log" >&2
            fail "building $arch $type failed"
        }
    # the dependencies exactly as the SDK gets them: the installed hsm_custom_lib value
    rm -rf "$build/size-stage"
    cmake --install "$build" --prefix "$build/size-stage" >/dev/null
    local value deps=() entries
    value=$(cat "$build"/size-stage/share/provhsm/hsm_custom_lib.txt)
    IFS=';' read -r -a entries <<<"$value"
    deps=("${entries[@]:1}")

    local out=$build/size
    mkdir -p "$out"
    cp "${entries[0]}" "$out/libprovhsm.a"
    "$t-strip" -g "$out/libprovhsm.a"
    local cc=$t-gcc opt
    opt=$(opt_flags "$type")
    "$cc" -std=c11 "$opt" -I"$src/src/sdk" "$src/tests/size/sdk_app.c" "$out/libprovhsm.a" \
        "${deps[@]}" -o "$out/app_provhsm"
    "$cc" -std=c11 "$opt" -I"$src/src/sdk" "$src/tests/size/sdk_app.c" \
        "$src/tests/size/hsm_stubs.c" "${deps[@]}" -o "$out/app_stubs"
    "$t-strip" "$out/app_provhsm" "$out/app_stubs"
    # the program must really contain provhsm: its tables and the library's version string
    grep -qa 'PROVHSM_CONFIG' "$out/app_provhsm" || fail "$arch $type: provhsm is not in app_provhsm"

    local archive with without mem_with mem_without
    archive=$(stat -c %s "$out/libprovhsm.a")
    with=$(stat -c %s "$out/app_provhsm")
    without=$(stat -c %s "$out/app_stubs")
    mem_with=$(loaded_size "$t" "$out/app_provhsm")
    mem_without=$(loaded_size "$t" "$out/app_stubs")
    rows+=("$(printf '| %s | %s | %s | %s | %s | **%s** | %s |' "$arch" "$type" \
        "$(kib "$archive")" "$(kib "$with")" "$(kib "$without")" \
        "$(kib $((mem_with - mem_without)))" "$(kib $((with - without)))")")
}

# loaded_size TRIPLET PROGRAM: text + data + bss, the bytes the program occupies once
# loaded. File sizes alone mislead: the linker pads segments to the target's page size
# (64 KiB on aarch64), so a small difference can show as 0 or 64 KiB.
loaded_size() {
    "$1-size" "$2" | awk 'NR == 2 { print $4 }'
}

# kib BYTES: "123.4 KiB"
kib() {
    awk -v b="$1" 'BEGIN { printf "%.1f KiB", b / 1024 }'
}

start=$SECONDS
for arch in "${archs[@]}"; do
    if ! usable "$arch"; then
        skipped+=("$arch (no $(triplet "$arch")-gcc or :$arch libssl-dev/libtss2-dev)")
        continue
    fi
    for type in "${build_types[@]}"; do
        echo "size: $arch $type" >&2
        measure "$arch" "$type"
    done
done
((${#rows[@]} > 0)) || fail "no architecture could be built"

echo
echo "| arch | build | libprovhsm.a (strip -g) | program with provhsm (stripped file) | with stubs (stripped file) | provhsm adds (text+data+bss) | provhsm adds (file) |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "Program: tests/size/sdk_app.c (the SDK's calls into a custom HSM). TPM backend built in;"
echo "OpenSSL and tpm2-tss linked as shared libraries (not counted). File sizes are padded to"
echo "the target's page size (64 KiB on arm64): text+data+bss is the figure to budget with."
if ((${#skipped[@]} > 0)); then
    echo "skipped: ${skipped[*]}"
fi
echo "size: measured in $((SECONDS - start)) s" >&2
