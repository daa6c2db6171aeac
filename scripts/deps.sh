#!/usr/bin/env bash
# Installs (as root) or lists (otherwise) the Debian packages that building, testing and
# the demo need. `make deps` runs it; `scripts/deps.sh --check` only reports and fails
# when something is missing.
set -euo pipefail

packages=(
    build-essential cmake pkg-config
    libssl-dev openssl
    libcmocka-dev
    libtss2-dev swtpm swtpm-tools tpm2-tools
    libp11-kit-dev softhsm2 tpm2-openssl gnutls-bin
    tpm2-abrmd dbus-daemon libtss2-tcti-tabrmd0
    clang libclang-rt-14-dev
    valgrind python3 cppcheck clang-format
)

check_only=0
if [[ ${1:-} == --check ]]; then
    check_only=1
fi

native_arch=$(dpkg --print-architecture)

# installed PACKAGE: true when the package is installed for this machine's architecture
# (or is architecture-independent). With a foreign architecture enabled (cross builds),
# dpkg-query prints one line per installed architecture, so each line is read on its own.
installed() {
    local status arch
    while read -r status arch; do
        if [[ $status == installed && ($arch == "$native_arch" || $arch == all) ]]; then
            return 0
        fi
    done < <(dpkg-query -W -f='${db:Status-Status} ${Architecture}\n' "$1" 2>/dev/null || true)
    return 1
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    echo "deps: all ${#packages[@]} packages are installed"
    exit 0
fi

echo "deps: missing: ${missing[*]}"
if ((check_only)); then
    echo "deps: run 'make deps' as root, or as root: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "deps: not root; as root (for example through sudo), run:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"

still=()
for p in "${missing[@]}"; do
    installed "$p" || still+=("$p")
done
if ((${#still[@]} > 0)); then
    echo "deps: still missing after apt-get install: ${still[*]}" >&2
    exit 1
fi
echo "deps: installed ${missing[*]}"
