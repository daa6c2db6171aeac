#!/usr/bin/env bash
# `make demo`: a tour of provhsm on a throw-away software store in ./.demo/ (recreated on
# every run). Uses the tool and examples from build/ (BUILD_DIR overrides):
#   provhsm init, x509 generate, symmetric set, info, sas-token, then examples/sdk_walkthrough
#   (the three SDK tables called as the SDK calls them), then the TPM part on swtpm.
# Nothing here touches /etc or $HOME: the configuration is .demo/provhsm.conf and the store
# is .demo/store.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
demo=$root/.demo
tool=$build/provhsm
blob_maker=$build/tests/integration/dps_make_blob

[[ -x $tool ]] || {
    echo "demo: $tool not found; run 'make build' first" >&2
    exit 1
}

rm -rf "$demo"
mkdir -p "$demo"
chmod 700 "$demo"
cat >"$demo/provhsm.conf" <<'CONF'
# provhsm configuration for the demo: empty on purpose. The built-in defaults apply
# (software backend for x509 and symmetric keys), and PROVHSM_STORE names the store.
CONF
chmod 644 "$demo/provhsm.conf" # provhsm refuses a configuration others can write (umask 002)
export PROVHSM_CONFIG=$demo/provhsm.conf
export PROVHSM_STORE=$demo/store
unset PROVHSM_TCTI PROVHSM_PASSPHRASE

section() {
    printf '\n---- %s ----\n' "$*"
}
run() {
    printf '$ %s\n' "$*"
    "$@"
}

# sdk_walkthrough: from this build when the top level builds examples/, else built here
# against an installed copy in .demo/prefix (which also exercises the CMake package).
walkthrough_binary() {
    if [[ -x $build/examples/sdk_walkthrough ]]; then
        echo "$build/examples/sdk_walkthrough"
        return
    fi
    if ! {
        cmake --install "$build" --prefix "$demo/prefix" >"$demo/install.log" 2>&1 &&
            cmake -S "$root/examples" -B "$demo/examples-build" \
                -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$demo/prefix" \
                -DPROVHSM_SDK_HEADER_DIR="$root/src/sdk" >"$demo/examples.log" 2>&1 &&
            cmake --build "$demo/examples-build" >>"$demo/examples.log" 2>&1
    }; then
        echo "demo: could not build examples/sdk_walkthrough (see $demo/*.log)" >&2
        return 1
    fi
    echo "$demo/examples-build/sdk_walkthrough"
}

# Two adjacent free TCP ports on 127.0.0.1 (swtpm's server and control ports): prints the first.
free_port_pair() {
    python3 - <<'PY'
import socket
for _ in range(100):
    a = socket.socket(); a.bind(("127.0.0.1", 0)); port = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", port + 1))
    except OSError:
        a.close(); b.close(); continue
    a.close(); b.close(); print(port); break
PY
}

# ==== TPM part: to be completed once the TPM backend lands ====
# Starts a fresh swtpm with a temporary state on a free port, points provhsm at it
# (PROVHSM_TCTI), runs `provhsm tpm info`, and stops swtpm. A failure is reported and the
# demo goes on.
# TPM attestation end to end on the swtpm: what the enrollment needs, the service's
# activation blob (made by the test implementation of the service, tests/common/
# dps_service.c, for this TPM's EK and SRK), activation, a TPM-signed SAS token that the
# service's copy of the key verifies, and the SDK's view of it all.
demo_tpm_attestation() {
    local dir=$1 key_hex token sig expected scope=0ne00000000
    export TSS2_LOG=${TSS2_LOG:-all+none}
    run "$tool" tpm info || return 1
    "$tool" tpm info --json >"$dir/info.json" || return 1
    python3 - "$dir" <<'PY' || return 1
import base64, json, sys
d = sys.argv[1]
info = json.load(open(d + "/info.json"))
open(d + "/ek.tpm2b", "wb").write(base64.b64decode(info["endorsement_key"]))
open(d + "/srk.tpm2b", "wb").write(base64.b64decode(info["storage_root_key"]))
open(d + "/regid", "w").write(info["registration_id"])
PY
    echo
    echo "The service answers the first registration with an activation blob for this TPM:"
    key_hex=$(openssl rand -hex 32)
    "$blob_maker" "$dir/ek.tpm2b" "$dir/srk.tpm2b" "$key_hex" >"$dir/blob.bin" || return 1
    run "$tool" tpm activate --blob "$dir/blob.bin" || return 1
    echo "\$ $tool sas-token --type tpm --scope $scope/registrations/$(cat "$dir/regid") --expiry 3600"
    token=$("$tool" sas-token --type tpm --scope "$scope/registrations/$(cat "$dir/regid")" \
        --expiry 3600) || return 1
    echo "$token"
    # the service recomputes the signature with its copy of the identity key
    sig=$(sed -e 's/.*&sig=//' -e 's/&se=.*//' <<<"$token" | python3 -c \
        'import sys, urllib.parse; print(urllib.parse.unquote(sys.stdin.read().strip()))')
    expected=$(printf '%s\n%s' "$(sed -e 's/^SharedAccessSignature sr=//' -e 's/&sig=.*//' <<<"$token")" \
        "$(sed -e 's/.*&se=//' -e 's/&skn=.*//' <<<"$token")" |
        openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key_hex" -binary | openssl base64 -A)
    if [[ $sig == "$expected" ]]; then
        echo "the service's copy of the identity key verifies the TPM-signed token"
    else
        echo "demo: the TPM-signed token does not verify" >&2
        return 1
    fi
    echo
    run "$walkthrough" "$scope" || return 1
}

# X.509 with a key that stays in hardware: a store of its own whose configuration names
# the backend, a self-signed identity made in the device, `provhsm info`, then the SDK's way
# of loading certificate and key (examples/tls_client_auth) against `openssl s_server`,
# which requires and verifies the client certificate, over TLS 1.3 and 1.2.
# Usage: demo_hardware_x509 DIR NAME CONFIG-SECTIONS
demo_hardware_x509() {
    local dir=$1 name=$2 sections=$3 port srv_pid rc=0 version
    local client=$build/examples/tls_client_auth
    [[ -x $client ]] || {
        echo "demo: $client not built"
        return 1
    }
    printf '%s\n' "$sections" >"$dir/provhsm.conf"
    chmod 644 "$dir/provhsm.conf"
    echo "configuration ($dir/provhsm.conf):"
    sed 's/^/    /' "$dir/provhsm.conf"
    (
        export PROVHSM_CONFIG=$dir/provhsm.conf PROVHSM_STORE=$dir/store
        run "$tool" init >/dev/null || exit 1
        run "$tool" x509 generate --cn "$name" --self-signed --days 30 >/dev/null || exit 1
        run "$tool" info || exit 1
        "$tool" export x509-cert >"$dir/device.pem" || exit 1
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
            -subj /CN=demo-server -keyout "$dir/server.key" -out "$dir/server.pem" \
            2>/dev/null || exit 1
        for version in 1.3 1.2; do
            port=$(free_port_pair)
            openssl s_server -accept "127.0.0.1:$port" -cert "$dir/server.pem" \
                -key "$dir/server.key" -Verify 1 -CAfile "$dir/device.pem" -naccept 1 -www \
                "-tls${version/./_}" >"$dir/s_server.log" 2>&1 &
            srv_pid=$!
            for _ in $(seq 50); do # s_server prints ACCEPT once it listens
                grep -q '^ACCEPT' "$dir/s_server.log" && break
                sleep 0.1
            done
            run "$client" 127.0.0.1 "$port" "$version" || rc=1
            wait "$srv_pid" 2>/dev/null || true
            if grep -q "CN = $name" "$dir/s_server.log"; then
                echo "openssl s_server verified the client certificate CN=$name"
            else
                echo "demo: s_server did not see the device's certificate:" >&2
                cat "$dir/s_server.log" >&2
                rc=1
            fi
        done
        exit $rc
    )
}

# X.509 on a SoftHSM2 token: a token of its own in a temporary directory.
demo_softhsm() {
    section "X.509 with the key on a PKCS#11 token (SoftHSM2)"
    local module=/usr/lib/softhsm/libsofthsm2.so dir rc=0
    if [[ ! -e $module ]] || ! command -v softhsm2-util >/dev/null; then
        echo "SoftHSM2 is not installed (make deps); skipping the PKCS#11 part"
        return 0
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/provhsm-demo-p11.XXXXXX")
    mkdir -p "$dir/tokens"
    printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' \
        "$dir" >"$dir/softhsm2.conf"
    export SOFTHSM2_CONF=$dir/softhsm2.conf
    run softhsm2-util --init-token --free --label provhsm-demo --so-pin 87654321 --pin 123456 \
        >/dev/null || rc=1
    export PROVHSM_PKCS11_PIN=123456
    ((rc == 0)) && demo_hardware_x509 "$dir" demo-p11-device "[x509]
backend = pkcs11
[pkcs11]
module = $module
token = pkcs11:token=provhsm-demo" || rc=1
    unset PROVHSM_PKCS11_PIN SOFTHSM2_CONF
    rm -rf "$dir"
    return "$rc"
}

demo_tpm() {
    section "TPM 2.0 on swtpm"
    if ! command -v swtpm >/dev/null; then
        echo "swtpm is not installed (make deps); skipping the TPM part"
        return 0
    fi
    local state port pid rc=0
    state=$(mktemp -d "${TMPDIR:-/tmp}/provhsm-demo-tpm.XXXXXX")
    port=$(free_port_pair)
    if [[ -z $port ]]; then
        echo "no free port pair for swtpm; skipping the TPM part"
        rm -rf "$state"
        return 0
    fi
    swtpm socket --tpm2 --tpmstate dir="$state" \
        --server type=tcp,port="$port",bindaddr=127.0.0.1 \
        --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
        --flags not-need-init,startup-clear >"$state/swtpm.log" 2>&1 &
    pid=$!
    local up=0
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            up=1
            break
        fi
        sleep 0.1
    done
    if ((up)); then
        echo "swtpm (pid $pid) listening on 127.0.0.1:$port"
        PROVHSM_TCTI="swtpm:host=127.0.0.1,port=$port" demo_tpm_attestation "$state" || rc=$?
        if ((rc != 0)); then
            echo "demo: the TPM part failed (exit $rc)" >&2
        fi
        section "X.509 with the key in the TPM (swtpm)"
        mkdir -p "$state/x509"
        TSS2_LOG=${TSS2_LOG:-all+none} demo_hardware_x509 "$state/x509" demo-tpm-device "[x509]
backend = tpm
[tpm]
tcti = swtpm:host=127.0.0.1,port=$port" || {
            echo "demo: the TPM X.509 part failed" >&2
            rc=1
        }
    else
        echo "demo: swtpm did not start:"
        cat "$state/swtpm.log"
        rc=1
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$state"
    return "$rc"
}
# ==== end of the TPM part ====

section "a software store in $PROVHSM_STORE"
run "$tool" init

section "an X.509 identity: device key in the store, self-signed certificate"
run "$tool" x509 generate --cn demo-device --self-signed

section "a symmetric-key identity (random key, passed on stdin)"
printf '$ openssl rand -base64 32 | %s symmetric set --registration-id demo-device-sym --key -\n' \
    "$tool"
openssl rand -base64 32 | "$tool" symmetric set --registration-id demo-device-sym --key -

section "what the store holds (never a secret)"
run "$tool" info

section "a SAS token for the provisioning service, valid one hour"
run "$tool" sas-token --scope "0ne00000000/registrations/demo-device-sym" --expiry 3600

section "the SDK's view: examples/sdk_walkthrough"
echo "(no TPM is configured yet, so the TPM table's create fails with a log line, as it"
echo " would in the SDK; the TPM section below runs the walkthrough again on a swtpm)"
walkthrough=$(walkthrough_binary)
run "$walkthrough" 0ne00000000

if [[ -x $blob_maker ]]; then
    demo_tpm || {
        echo "demo: FAILED in the TPM part" >&2
        exit 1
    }
else
    echo "demo: $blob_maker not built (a build without the TPM backend); no TPM part"
fi

demo_softhsm || {
    echo "demo: FAILED in the PKCS#11 part" >&2
    exit 1
}

section "done"
echo "The demo store is in $demo (removed by 'make clean')."
