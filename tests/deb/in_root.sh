#!/bin/bash
# The part of tests/deb/install_test.sh that runs inside the clean Debian root, as root:
#   in_root.sh LIBPROVHSM_DEV_DEB PROVHSM_DEB
# Everything provhsm-related it uses comes from the two packages; /tmp/in holds only the
# consumer's sources and the SDK's hsm_client_data.h.
set -euo pipefail

dev_deb=$1
tool_deb=$2
failures=0

check() {
    local what=$1
    shift
    if "$@"; then
        echo "ok   $what"
    else
        echo "FAIL $what"
        failures=$((failures + 1))
    fi
}

# Run quietly; show the output only when the step fails, then stop.
step() {
    local what=$1
    shift
    if ! "$@" >/tmp/step.log 2>&1; then
        cat /tmp/step.log >&2
        echo "FAIL $what" >&2
        exit 1
    fi
    echo "ok   $what"
}

apt_install() {
    apt-get install -y -q --no-install-recommends -o APT::Sandbox::User=root "$@"
}

# The build tools a consumer brings; provhsm's own Depends come in through the packages.
tools=(gcc libc6-dev make cmake pkg-config)
if ! apt_install "$dev_deb" "$tool_deb" "${tools[@]}" >/tmp/apt.log 2>&1; then
    # the cached package lists may be older than the mirror: refresh once
    apt-get -q update >/dev/null 2>&1
    step "apt-get install the packages and the build tools (lists refreshed)" \
        apt_install "$dev_deb" "$tool_deb" "${tools[@]}"
else
    echo "ok   apt-get install the packages and the build tools"
fi

# ---- what the packages put on the system ------------------------------------------------
version=$(dpkg-query -W -f='${Version}' provhsm)
check "provhsm --version prints the package version $version" \
    bash -c "provhsm --version | grep -qF -- '$version'"
check "libprovhsm-dev depends on libssl-dev and libtss2-dev" \
    bash -c "dpkg-query -W -f='\${Depends}' libprovhsm-dev | grep -q 'libssl-dev.*libtss2-dev'"
check "the tool's Depends name libssl3 and the tss2 libraries" \
    bash -c "dpkg-query -W -f='\${Depends}' provhsm | grep -q 'libssl3.*libtss2-esys.*libtss2-tctildr'"
check "/var/lib/provhsm made by postinst: root:root, 0700" \
    test "$(stat -c '%U:%G %a %F' /var/lib/provhsm)" = "root:root 700 directory"
check "/etc/provhsm/provhsm.conf: root:root, 0644" \
    test "$(stat -c '%U:%G %a' /etc/provhsm/provhsm.conf)" = "root:root 644"
check "/etc/provhsm/provhsm.conf is a conffile" \
    bash -c "dpkg-query -W -f='\${Conffiles}' provhsm | grep -q '^ /etc/provhsm/provhsm.conf '"

# pkg-config checks provhsm.pc's Requires (libcrypto, tss2-*): they come from the Depends
if ! value=$(pkg-config --print-errors --variable=hsm_custom_lib provhsm 2>/tmp/pc.log); then
    cat /tmp/pc.log >&2
    echo "FAIL pkg-config --variable=hsm_custom_lib provhsm" >&2
    exit 1
fi
echo "     hsm_custom_lib=$value"
IFS=';' read -r -a entries <<<"$value"
check "hsm_custom_lib names the packaged archive first" \
    test "${entries[0]}" = /usr/lib/x86_64-linux-gnu/libprovhsm.a -a -f "${entries[0]}"
deps_ok=1
for e in "${entries[@]:1}"; do
    [[ $e == -l* ]] || deps_ok=0
done
check "hsm_custom_lib names its dependencies by -l only" test "$deps_ok" = 1
check "share/provhsm/hsm_custom_lib.txt holds the same value" \
    test "$(cat /usr/share/provhsm/hsm_custom_lib.txt)" = "$value"

# ---- the consumer, three ways ---------------------------------------------------------
step "configure the consumer with -Dhsm_custom_lib only" \
    cmake -S /tmp/in/link/consumer -B /tmp/build1 -DCMAKE_BUILD_TYPE=Debug \
    -Dhsm_custom_lib="$value" -DPROVHSM_SDK_HEADER_DIR=/tmp/in/sdk
step "build the consumer" cmake --build /tmp/build1
step "configure the consumer through find_package(provhsm)" \
    cmake -S /tmp/in/link/consumer_pkg -B /tmp/build2 -DCMAKE_BUILD_TYPE=Debug \
    -DPROVHSM_SDK_HEADER_DIR=/tmp/in/sdk
check "find_package found the packaged CMake package" \
    grep -q '^provhsm_DIR:PATH=/usr/lib/x86_64-linux-gnu/cmake/provhsm$' /tmp/build2/CMakeCache.txt
step "build consumer2" cmake --build /tmp/build2
read -r -a pc_flags <<<"$(pkg-config --cflags --libs provhsm)"
step "compile the consumer with pkg-config --cflags --libs provhsm" \
    gcc -std=c11 -I/tmp/in/sdk /tmp/in/link/consumer/main.c "${pc_flags[@]}" -o /tmp/consumer3

# The SDK's way, as root with nothing set: the packaged configuration file and the store
# directory postinst made must both be accepted as they are.
check "consumer (hsm_custom_lib) runs on the default configuration and /var/lib/provhsm" \
    bash -c '/tmp/build1/consumer >/tmp/run1.log 2>&1'
check "provhsm info, as root, reads what the consumer stored in /var/lib/provhsm" \
    bash -c 'provhsm info 2>&1 | tee /tmp/info.log | grep -q link-test-device'
check "consumer2 (find_package) runs" \
    env PROVHSM_STORE=/tmp/store2 /tmp/build2/consumer2 >/tmp/run2.log 2>&1
check "consumer3 (pkg-config) runs" \
    env PROVHSM_STORE=/tmp/store3 /tmp/consumer3 >/tmp/run3.log 2>&1

if ((failures > 0)); then
    for log in /tmp/run1.log /tmp/info.log /tmp/run2.log /tmp/run3.log; do
        [[ -f $log ]] && sed "s|^|     ${log#/tmp/}: |" "$log"
    done
fi

# ---- purge and reinstall ----------------------------------------------------------------
step "apt-get purge provhsm" apt-get purge -y -q provhsm
check "purge removed the conffile" test ! -e /etc/provhsm/provhsm.conf
check "purge kept the store with its identities" test -f /var/lib/provhsm/store.key
# a store directory handed to a service user keeps its owner and mode on (re)install
chown nobody:nogroup /var/lib/provhsm
chmod 0750 /var/lib/provhsm
step "reinstall provhsm" apt_install "$tool_deb"
check "reinstall left the service user's store directory as it was (nobody:nogroup 0750)" \
    test "$(stat -c '%U:%G %a' /var/lib/provhsm)" = "nobody:nogroup 750"
rm -rf /var/lib/provhsm
step "apt-get purge provhsm, then install it on a root without the store" \
    bash -c "apt-get purge -y -q provhsm && apt-get install -y -q -o APT::Sandbox::User=root '$tool_deb'"
check "postinst made /var/lib/provhsm again: root:root, 0700" \
    test "$(stat -c '%U:%G %a' /var/lib/provhsm)" = "root:root 700"
step "apt-get purge provhsm on an empty store directory" apt-get purge -y -q provhsm
check "purge removed the empty store directory" test ! -e /var/lib/provhsm
# an administrator's dpkg-statoverride decides the store directory's owner and mode
step "install provhsm with a statoverride for /var/lib/provhsm (nobody:nogroup 0700)" \
    bash -c "dpkg-statoverride --add nobody nogroup 0700 /var/lib/provhsm &&
        apt-get install -y -q -o APT::Sandbox::User=root '$tool_deb'"
check "postinst applied the statoverride (nobody:nogroup 0700)" \
    test "$(stat -c '%U:%G %a' /var/lib/provhsm)" = "nobody:nogroup 700"

echo "$failures failure(s) in the clean root"
((failures == 0))
