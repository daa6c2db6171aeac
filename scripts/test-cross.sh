#!/usr/bin/env bash
# `make test-cross`: the library, tool and test suite cross-built for arm64 and armhf
# (Debian multiarch, cmake/toolchains/*.cmake) and run under qemu-user:
#   setup        as root, installs what is missing: the foreign architectures (dpkg
#                --add-architecture), crossbuild-essential-*, the -dev packages of both
#                architectures, qemu-user-static, and the qemu binfmt handlers (so that a
#                test script can start a target program like a native one); otherwise it
#                prints exactly what to run and fails
#   arm64        build-aarch64/: configure, build, ctest -LE 'lint|valgrind'
#   armhf        build-armhf/:   the same
#   store format a store made by each build (x86-64 from build/, arm64, armhf), with and
#                without a passphrase, is read by the two others: `info --json`,
#                `export x509-cert` and `sas-token` print what the maker prints
# swtpm runs natively: the test programs start it from inside the emulated process (a
# native program exec'd from qemu-user runs natively) and reach it over TCP.
# Not run here: lint (the same sources, checked by `make test`) and valgrind (it runs only
# native programs; `make test` runs those tests on x86-64).
# A failing stage does not stop the later ones; the summary lists each, the exit status
# is non-zero when any failed. JOBS (default 2) sets build and ctest parallelism;
# CROSS_ARCHES (default "arm64 armhf") picks the architectures, NATIVE_BUILD_DIR (default
# build) the x86-64 build whose tool the store-format stage uses.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
root=$(pwd)
jobs=${JOBS:-2}
read -r -a arches <<<"${CROSS_ARCHES:-arm64 armhf}"

declare -A triplet=([arm64]=aarch64-linux-gnu [armhf]=arm-linux-gnueabihf)
declare -A qemu_name=([arm64]=aarch64 [armhf]=arm)
declare -A build_dir=([arm64]=build-aarch64 [armhf]=build-armhf)

for a in "${arches[@]}"; do
    if [[ -z ${triplet[$a]:-} ]]; then
        echo "test-cross: unknown architecture '$a' (known: ${!triplet[*]})" >&2
        exit 2
    fi
done

ctest_log=$(mktemp)
work=$(mktemp -d "${TMPDIR:-/tmp}/provhsm-cross.XXXXXX")
trap 'rm -rf "$ctest_log" "$work"' EXIT
stages=()
results=()
times=()
failed=0
interop_passed=0
interop_failed=0

banner() {
    printf '\n==== %s ====\n' "$*"
}

# run_stage NAME COMMAND...: runs the command, records pass/fail and duration.
run_stage() {
    local name=$1
    shift
    local start=$SECONDS rc
    banner "$name"
    "$@"
    rc=$?
    stages+=("$name")
    times+=("$((SECONDS - start))s")
    if ((rc == 0)); then
        results+=("PASS")
    else
        results+=("FAIL (exit $rc)")
        failed=1
    fi
    return 0
}

# ---- setup -------------------------------------------------------------------------------

# installed PACKAGE[:ARCH]: dpkg-query prints one status for an architecture-qualified name
installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

foreign_arch_enabled() {
    # read whole first: grep -q closing the pipe early would fail dpkg (pipefail)
    local archs
    archs=$(dpkg --print-foreign-architectures)
    [[ $'\n'$archs$'\n' == *$'\n'$1$'\n'* ]]
}

binfmt_registered() { # QEMU-NAME
    local entry=/proc/sys/fs/binfmt_misc/qemu-$1
    [[ -r $entry && $(head -n 1 "$entry") == enabled ]]
}

missing_archs=()
missing_packages=()
missing_binfmt=()
find_missing() {
    missing_archs=()
    missing_packages=()
    missing_binfmt=()
    installed qemu-user-static || missing_packages+=(qemu-user-static)
    for a in "${arches[@]}"; do
        foreign_arch_enabled "$a" || missing_archs+=("$a")
        for p in "crossbuild-essential-$a" "libssl-dev:$a" "libtss2-dev:$a" "libp11-kit-dev:$a" "libcmocka-dev:$a"; do
            installed "$p" || missing_packages+=("$p")
        done
        binfmt_registered "${qemu_name[$a]}" || missing_binfmt+=("${qemu_name[$a]}")
    done
}

print_missing_commands() {
    echo "test-cross: as root, run:" >&2
    for a in "${missing_archs[@]}"; do
        echo "  dpkg --add-architecture $a" >&2
    done
    if ((${#missing_packages[@]} > 0)); then
        echo "  apt-get update && apt-get install -y --no-install-recommends ${missing_packages[*]}" >&2
    fi
    if ((${#missing_binfmt[@]} > 0)); then
        echo "  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc" >&2
    fi
    for q in "${missing_binfmt[@]}"; do
        if [[ -e /proc/sys/fs/binfmt_misc/qemu-$q ]]; then
            echo "  echo 1 > /proc/sys/fs/binfmt_misc/qemu-$q" >&2
        else
            echo "  cat /usr/lib/binfmt.d/qemu-$q.conf > /proc/sys/fs/binfmt_misc/register" >&2
        fi
    done
}

register_binfmt() { # QEMU-NAME
    local conf=/usr/lib/binfmt.d/qemu-$1.conf entry=/proc/sys/fs/binfmt_misc/qemu-$1
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || return 1
    fi
    if [[ -e $entry ]]; then # registered but disabled
        echo 1 >"$entry"
        return
    fi
    [[ -r $conf ]] || {
        echo "test-cross: $conf is missing (qemu-user-static installs it)" >&2
        return 1
    }
    cat "$conf" >/proc/sys/fs/binfmt_misc/register
}

stage_setup() {
    # the native packages (swtpm, openssl, python3, cmake...) first, as make deps does
    if ! bash scripts/deps.sh --check; then
        [[ $(id -u) -eq 0 ]] || return 1
        bash scripts/deps.sh || return 1
    fi
    find_missing
    if ((${#missing_archs[@]} + ${#missing_packages[@]} + ${#missing_binfmt[@]} == 0)); then
        echo "test-cross: ${arches[*]}: packages, qemu-user-static and binfmt handlers in place"
        return 0
    fi
    echo "test-cross: missing: architectures (${missing_archs[*]}) packages" \
        "(${missing_packages[*]}) binfmt handlers (${missing_binfmt[*]})"
    if [[ $(id -u) -ne 0 ]]; then
        print_missing_commands
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    for a in "${missing_archs[@]}"; do
        dpkg --add-architecture "$a" || return 1
    done
    if ((${#missing_packages[@]} > 0)); then
        apt-get update && apt-get install -y --no-install-recommends "${missing_packages[@]}" ||
            return 1
    fi
    for q in "${missing_binfmt[@]}"; do
        register_binfmt "$q" || echo "test-cross: registering the qemu-$q handler failed" >&2
    done
    find_missing
    if ((${#missing_archs[@]} + ${#missing_packages[@]} + ${#missing_binfmt[@]} > 0)); then
        echo "test-cross: still missing after the setup:" >&2
        print_missing_commands
        return 1
    fi
    echo "test-cross: setup done"
}

# ---- one architecture --------------------------------------------------------------------

stage_arch() { # ARCH
    local a=$1 dir=${build_dir[$1]}
    local toolchain=$root/cmake/toolchains/${triplet[$a]}.cmake
    # a build directory configured with another toolchain (or none) starts again
    if [[ -f $dir/CMakeCache.txt ]] &&
        ! grep -qx "CMAKE_TOOLCHAIN_FILE:FILEPATH=$toolchain" "$dir/CMakeCache.txt"; then
        rm -rf "$dir"
    fi
    cmake -S . -B "$dir" -DCMAKE_TOOLCHAIN_FILE="$toolchain" \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPROVHSM_BUILD_BENCH=OFF || return 1
    cmake --build "$dir" -j "$jobs" || return 1
    # the binfmt handler runs a target program like a native one (the test scripts need it)
    "$dir/provhsm" --version || {
        echo "test-cross: $dir/provhsm does not run; is the qemu-${qemu_name[$a]} binfmt handler registered?" >&2
        return 1
    }
    echo "test-cross: not run under emulation: label lint (the same sources, checked by" \
        "make test), label valgrind (valgrind runs only native programs), the SoftHSM2" \
        "tests (SoftHSM2's module is this machine's architecture and cannot be loaded into" \
        "a $a program; Debian installs it outside the multiarch paths, so no $a copy can sit" \
        "next to it):"
    ctest --test-dir "$dir" -N -L 'lint|valgrind' | sed -n 's/^ *Test *#[0-9]*: /  skipped: /p'
    ctest --test-dir "$dir" -N -R 'pkcs11' | sed -n 's/^ *Test *#[0-9]*: /  skipped: /p'
    ctest --test-dir "$dir" --output-on-failure -j "$jobs" --timeout 600 -LE 'lint|valgrind' \
        -E 'pkcs11' | tee -a "$ctest_log"
}

# ---- the store format across architectures -----------------------------------------------

# The x86-64 tool, from the plain build that `make test` leaves in build/ (NATIVE_BUILD_DIR
# picks another), brought up to date with these sources.
native_tool() {
    local dir=${NATIVE_BUILD_DIR:-build}
    if [[ ! -f $dir/CMakeCache.txt ]]; then
        cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2 || return 1
    fi
    cmake --build "$dir" -j "$jobs" --target provhsm-tool >&2 || return 1
    echo "$(cd "$dir" && pwd)/provhsm"
}

# tool_in STORE-DIR TOOL ARGS...: the tool on that store, nothing from the machine's
# configuration or environment; a passphrase store (STORE-DIR/../passphrase) gets its
# passphrase.
tool_in() {
    local store=$1 tool=$2
    shift 2
    local base
    base=$(dirname "$store")
    local -a pass=()
    if [[ -f $base/passphrase ]]; then
        pass=(PROVHSM_PASSPHRASE="$(<"$base/passphrase")")
    fi
    env -u PROVHSM_TCTI -u PROVHSM_LOG -u PROVHSM_PASSPHRASE HOME="$base/home" \
        PROVHSM_CONFIG="$base/provhsm.conf" PROVHSM_STORE="$store" "${pass[@]}" "$tool" "$@"
}

# make_store DIR TOOL KIND: a store with an X.509 (self-signed P-256) and a symmetric
# identity; KIND is keyfile or passphrase (scrypt, cost lowered to 2^10).
make_store() {
    local base=$1 tool=$2 kind=$3
    mkdir -p "$base/home"
    chmod 700 "$base"
    : >"$base/provhsm.conf"
    if [[ $kind == passphrase ]]; then
        printf '[store]\nscrypt_log2_n = 10\n' >"$base/provhsm.conf"
        echo "cross-arch passphrase" >"$base/passphrase"
    fi
    chmod 600 "$base/provhsm.conf"
    tool_in "$base/store" "$tool" init >/dev/null &&
        tool_in "$base/store" "$tool" x509 generate --cn dev-cross-x509 --self-signed >/dev/null &&
        tool_in "$base/store" "$tool" symmetric set --registration-id dev-cross-sym \
            --key "$(printf 'provhsm cross-architecture key 1' | base64)" >/dev/null
}

# outputs_of BASE TOOL OUT-DIR: what a reader prints, one file per command.
outputs_of() {
    local base=$1 tool=$2 out=$3
    mkdir -p "$out"
    tool_in "$base/store" "$tool" info --json >"$out/info" 2>"$out/info.err" &&
        tool_in "$base/store" "$tool" export x509-cert >"$out/x509-cert" 2>"$out/x509-cert.err"
}

# sas_token BASE TOOL: the token of the symmetric identity (expiry: now + 1 hour).
sas_token() {
    tool_in "$1/store" "$2" sas-token --scope 0ne00000000/registrations/dev-cross-sym \
        --expiry 3600
}

# same_sas BASE MAKER READER: both print the same token; the expiry counts from each run's
# "now", so a token pair made across a second's boundary is made again.
same_sas() {
    local base=$1 maker=$2 reader=$3 a b
    for _ in 1 2 3 4 5; do
        a=$(sas_token "$base" "$maker") || return 1
        b=$(sas_token "$base" "$reader") || return 1
        [[ $a == "$b" ]] && return 0
        [[ ${a##*&se=} != "${b##*&se=}" ]] || break # same expiry, another token: a failure
    done
    echo "    maker:  $a"
    echo "    reader: $b"
    return 1
}

interop_check() { # WHAT COMMAND...
    local what=$1
    shift
    if "$@"; then
        echo "  ok: $what"
        interop_passed=$((interop_passed + 1))
    else
        echo "  FAIL: $what"
        interop_failed=$((interop_failed + 1))
    fi
}

same_outputs() { # BASE MAKER-TOOL READER-TOOL NAME
    local base=$1 maker=$2 reader=$3 name=$4
    outputs_of "$base" "$maker" "$base/out.maker" || return 1
    if ! outputs_of "$base" "$reader" "$base/out.$name"; then
        cat "$base/out.$name"/*.err
        return 1
    fi
    diff -u "$base/out.maker/info" "$base/out.$name/info" &&
        diff -u "$base/out.maker/x509-cert" "$base/out.$name/x509-cert" &&
        grep -q 'BEGIN CERTIFICATE' "$base/out.$name/x509-cert" &&
        same_sas "$base" "$maker" "$reader"
}

stage_store_format() {
    local -A tool
    local native
    native=$(native_tool) || return 1
    tool[x86-64]=$native
    for a in "${arches[@]}"; do
        tool[$a]=$root/${build_dir[$a]}/provhsm
        [[ -x ${tool[$a]} ]] || {
            echo "test-cross: ${tool[$a]} was not built" >&2
            return 1
        }
    done
    local maker reader kind base
    for maker in "${!tool[@]}"; do
        for kind in keyfile passphrase; do
            base=$work/store-$maker-$kind
            mkdir -p "$base"
            if ! make_store "$base" "${tool[$maker]}" "$kind"; then
                interop_check "$kind store made by $maker" false
                continue
            fi
            for reader in "${!tool[@]}"; do
                [[ $reader != "$maker" ]] || continue
                interop_check "$kind store made by $maker, read by $reader" \
                    same_outputs "$base" "${tool[$maker]}" "${tool[$reader]}" "$reader"
            done
        done
    done
    ((interop_failed == 0))
}

# ---- run ---------------------------------------------------------------------------------

run_stage "setup: multiarch packages, qemu-user, binfmt" stage_setup
if ((failed)); then
    echo "make test-cross: FAILED (setup)"
    echo "tests: 0 passed, 1 failed"
    exit 1
fi
for a in "${arches[@]}"; do
    run_stage "$a: build + ctest under qemu-user (${build_dir[$a]}/)" stage_arch "$a"
done
run_stage "store format: made by one architecture, read by the others" stage_store_format

banner "summary"
for i in "${!stages[@]}"; do
    printf '  %-62s %-14s %s\n' "${stages[$i]}" "${results[$i]}" "${times[$i]}"
done
total=0
bad=0
while read -r line; do
    if [[ $line =~ tests\ passed,\ ([0-9]+)\ tests?\ failed\ out\ of\ ([0-9]+) ]]; then
        bad=$((bad + BASH_REMATCH[1]))
        total=$((total + BASH_REMATCH[2]))
    fi
done <"$ctest_log"
passed=$((total - bad + interop_passed))
bad=$((bad + interop_failed))
if ((failed && bad == 0)); then
    bad=1 # a stage failed outside the tests (configure or build)
fi
if ((failed)); then
    echo "make test-cross: FAILED"
    echo "tests: $passed passed, $bad failed"
    exit 1
fi
echo "make test-cross: all stages passed"
echo "tests: $passed passed, $bad failed"
