#!/usr/bin/env bash
# Installs a provhsm build into a temporary prefix and links tests/link/consumer/main.c
# against the installed copy, one of three ways a user would:
#   custom_lib    the Azure IoT C SDK's way: -Dhsm_custom_lib="$(pkg-config --variable=
#                 hsm_custom_lib provhsm)" and target_link_libraries(... ${hsm_custom_lib})
#   find_package  find_package(provhsm) + provhsm::provhsm
#   pkg_config    cc main.c $(pkg-config --cflags --libs provhsm)
# then runs the program against a fresh store in the temporary directory. For a cross build
# the consumer is built with the same CMake toolchain file (pkg-config reads the target's
# .pc files), must come out for the target's machine, and runs under the emulator.
# Registered by tests/link/CMakeLists.txt:
#   run_link_test.sh MODE BUILD_DIR SOURCE_DIR C_COMPILER [SANITIZERS [TOOLCHAIN [EMULATOR]]]
# (EMULATOR: a ;-separated command, as CMake lists it)
set -euo pipefail

mode=${1:?mode}
build_dir=${2:?build dir}
source_dir=${3:?source dir}
cc=${4:?C compiler}
sanitize=${5:-}
toolchain=${6:-}
IFS=';' read -r -a emulator <<<"${7:-}"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/provhsm-link.XXXXXX")
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT

fail() {
    echo "link test ($mode): $*" >&2
    exit 1
}

# Run a step quietly, showing its output only when it fails.
step() {
    local what=$1
    shift
    if ! "$@" >"$tmp/step.log" 2>&1; then
        cat "$tmp/step.log" >&2
        fail "$what failed: $*"
    fi
}

prefix=$tmp/prefix
step "install" cmake --install "$build_dir" --prefix "$prefix"

# GNUInstallDirs may have chosen lib, lib64 or lib/<multiarch>.
pcdir=
for d in "$prefix"/lib/pkgconfig "$prefix"/lib64/pkgconfig "$prefix"/lib/*/pkgconfig; do
    if [[ -f $d/provhsm.pc ]]; then
        pcdir=$d
        break
    fi
done
[[ -n $pcdir ]] || fail "no provhsm.pc under $prefix"
export PKG_CONFIG_PATH=$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
command -v pkg-config >/dev/null || fail "pkg-config is not installed"

# what a consumer's configure gets besides its own options
consumer_cmake=(-DCMAKE_C_COMPILER="$cc")
if [[ -n $toolchain ]]; then
    consumer_cmake+=(-DCMAKE_TOOLCHAIN_FILE="$toolchain")
    # the target's .pc files (libcrypto, tss2-*) instead of the build machine's
    multiarch=$("$cc" -print-multiarch)
    [[ -n $multiarch ]] || fail "$cc -print-multiarch printed nothing"
    export PKG_CONFIG_LIBDIR=/usr/lib/$multiarch/pkgconfig:/usr/share/pkgconfig
fi

san_flags=
if [[ -n $sanitize ]]; then
    # an instrumented archive needs the sanitizer runtime in the final link
    san_flags="-fsanitize=$sanitize -fno-omit-frame-pointer"
fi

# The environment the program runs in: nothing from the machine's /etc or $HOME.
mkdir -p "$tmp/home"
: >"$tmp/empty.conf"
chmod 644 "$tmp/empty.conf" # a umask of 002 would make it group-writable: refused
run_consumer() {
    env -u PROVHSM_TCTI -u PROVHSM_PASSPHRASE -u PROVHSM_LOG \
        HOME="$tmp/home" XDG_DATA_HOME="$tmp/home/.local/share" \
        XDG_CONFIG_HOME="$tmp/home/.config" \
        PROVHSM_CONFIG="$tmp/empty.conf" PROVHSM_STORE="$tmp/store" "${emulator[@]}" "$@"
}

# The program is for the machine the library was built for: its ELF machine field is the
# one of the installed archive's objects.
check_machine() {
    local program=$1 want got
    want=$(LC_ALL=C readelf -h "$(find "$prefix" -name libprovhsm.a -print -quit)" |
        sed -n 's/^ *Machine: *//p' | sort -u)
    got=$(LC_ALL=C readelf -h "$program" | sed -n 's/^ *Machine: *//p')
    [[ -n $want && $got == "$want" ]] || fail "$program is for '$got', the library for '$want'"
    echo "consumer machine: $got"
}

case $mode in
custom_lib)
    value=$(pkg-config --variable=hsm_custom_lib provhsm)
    [[ -n $value ]] || fail "provhsm.pc has no hsm_custom_lib"
    echo "hsm_custom_lib=$value"
    datafile="$prefix/share/provhsm/hsm_custom_lib.txt"
    [[ -f $datafile ]] || fail "$datafile was not installed"
    [[ $(<"$datafile") == "$value" ]] || fail "$datafile differs from provhsm.pc: $(<"$datafile")"
    # the installed archive first, then only -l flags: no path of the build machine, so
    # the value holds in a cross sysroot or a package's build root
    IFS=';' read -r -a entries <<<"$value"
    [[ ${entries[0]} == "$prefix"/lib*/libprovhsm.a && -f ${entries[0]} ]] ||
        fail "first entry is not the installed archive: ${entries[0]}"
    for e in "${entries[@]:1}"; do
        [[ $e == -l* ]] || fail "dependency is not named by -l: $e"
    done
    # with a sysroot set, pkg-config puts the archive under it
    sysrooted=$(PKG_CONFIG_SYSROOT_DIR=/some/sysroot pkg-config --variable=hsm_custom_lib provhsm)
    [[ ${sysrooted%%;*} == /some/sysroot"$prefix"/lib*/libprovhsm.a ]] ||
        fail "the archive does not follow PKG_CONFIG_SYSROOT_DIR: ${sysrooted%%;*}"
    step "configure consumer" cmake -S "$source_dir/tests/link/consumer" -B "$tmp/build" \
        "${consumer_cmake[@]}" -DCMAKE_BUILD_TYPE=Debug \
        -DCMAKE_C_FLAGS="$san_flags" -DCMAKE_EXE_LINKER_FLAGS="$san_flags" \
        -Dhsm_custom_lib="$value" \
        -DPROVHSM_SDK_HEADER_DIR="$source_dir/src/sdk" \
        -DPROVHSM_INCLUDE_DIR="$source_dir/include"
    step "build consumer" cmake --build "$tmp/build"
    check_machine "$tmp/build/consumer"
    run_consumer "$tmp/build/consumer"
    ;;
find_package)
    step "configure consumer2" cmake -S "$source_dir/tests/link/consumer_pkg" -B "$tmp/build" \
        "${consumer_cmake[@]}" -DCMAKE_BUILD_TYPE=Debug \
        -DCMAKE_C_FLAGS="$san_flags" -DCMAKE_EXE_LINKER_FLAGS="$san_flags" \
        -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
        -DPROVHSM_SDK_HEADER_DIR="$source_dir/src/sdk"
    found=$(sed -n 's/^provhsm_DIR:PATH=//p' "$tmp/build/CMakeCache.txt")
    [[ $found == "$prefix"/* ]] || fail "find_package found provhsm outside the prefix: $found"
    step "build consumer2" cmake --build "$tmp/build"
    check_machine "$tmp/build/consumer2"
    run_consumer "$tmp/build/consumer2"
    ;;
pkg_config)
    read -r -a cflags <<<"$(pkg-config --cflags provhsm)"
    read -r -a libs <<<"$(pkg-config --libs provhsm)"
    read -r -a sanv <<<"$san_flags"
    step "compile with pkg-config flags" "$cc" -std=c11 "${sanv[@]}" "${cflags[@]}" \
        -I"$source_dir/src/sdk" "$source_dir/tests/link/consumer/main.c" \
        "${libs[@]}" -o "$tmp/consumer3"
    check_machine "$tmp/consumer3"
    run_consumer "$tmp/consumer3"
    ;;
*)
    fail "unknown mode"
    ;;
esac
