#!/bin/sh
# Manual check, not run by ctest: activates activation blobs in a swtpm with tpm2-tools
# only (no provhsm code on the TPM side) and compares the TPM's HMAC with one computed
# from the known identity key. It checks the fixture blobs (independently made) and blobs
# from our test-side provisioning service, tests/common/dps_service.c, for the fixture EK
# and SRK and several identity keys; and that a blob with one flipped byte is refused.
#
# Usage: tests/integration/manual_check_dps_blob.sh
# Needs swtpm, tpm2-tools (>= 5), openssl, python3, a C compiler, libtss2-dev and
# libssl-dev. Exits 77 when something is missing, 1 on any mismatch.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
fixtures=$repo/tests/fixtures/tpm-activation
cc=${CC:-cc}

for tool in swtpm tpm2_activatecredential tpm2_import tpm2_load tpm2_hmac openssl python3 \
    pkg-config "$cc"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "skip: $tool not found"; exit 77; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/provhsm-dpscheck.XXXXXX")
swtpm_pid=
cleanup() {
    if [ -n "$swtpm_pid" ]; then kill "$swtpm_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# ---- a small driver around provhsm_test_dps_make_blob --------------------------------
cat >"$work/make_blob.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include "dps_service.h"
#include "testutil.h"
int main(int argc, char **argv)
{
    uint8_t *ek, *srk, *key, *blob;
    size_t ek_len, srk_len, key_len, blob_len;
    if (argc != 5 || provhsm_test_read_file(argv[1], &ek, &ek_len) != 0 ||
        provhsm_test_read_file(argv[2], &srk, &srk_len) != 0 ||
        provhsm_test_hex_decode(argv[3], &key, &key_len) != 0 ||
        provhsm_test_dps_make_blob(ek, ek_len, srk, srk_len, key, key_len, &blob, &blob_len) != 0)
        return 1;
    FILE *f = fopen(argv[4], "wb");
    if (f == NULL || fwrite(blob, 1, blob_len, f) != blob_len || fclose(f) != 0)
        return 1;
    return 0;
}
EOF
# shellcheck disable=SC2046
"$cc" -std=c11 -D_POSIX_C_SOURCE=200809L -I"$repo/include" -I"$repo/src" \
    -I"$repo/tests/common" "$work/make_blob.c" "$repo/tests/common/dps_service.c" \
    "$repo/tests/common/testutil.c" "$repo/src/secmem.c" \
    $(pkg-config --cflags --libs tss2-mu libcrypto) -o "$work/make_blob"

# ---- blob -> tpm2-tools files ----------------------------------------------------------
cat >"$work/split.py" <<'EOF'
import struct, sys
blob = open(sys.argv[1], "rb").read()
out = sys.argv[2]
fields, off = [], 0
for _ in range(5):
    (n,) = struct.unpack(">H", blob[off:off + 2])
    fields.append(blob[off:off + 2 + n])
    off += 2 + n
# tpm2-tools credential file: magic, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET
open(out + ".cred", "wb").write(struct.pack(">II", 0xBADCC0DE, 1) + fields[0] + fields[1])
open(out + ".dpriv", "wb").write(fields[2])
open(out + ".seed", "wb").write(fields[3])
open(out + ".pub", "wb").write(fields[4])
EOF

free_port() {
    python3 -c 'import socket
for _ in range(100):
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 1)); print(p); break
    except OSError:
        pass
    finally:
        a.close(); b.close()'
}

# check NAME BLOB KEYHEX [expect-fail]: activate BLOB in a fresh copy of the fixture TPM
check() {
    name=$1 blob=$2 key=$3 expect=${4:-ok}
    d=$work/$name
    mkdir -p "$d"
    cp -r "$fixtures/swtpm-state" "$d/state"
    port=$(free_port)
    swtpm socket --tpm2 --tpmstate dir="$d/state" --flags not-need-init,startup-clear \
        --server type=tcp,port="$port" --ctrl type=tcp,port=$((port + 1)) \
        --pid file="$d/swtpm.pid" >"$d/swtpm.log" 2>&1 &
    swtpm_pid=$!
    i=0
    while [ ! -s "$d/swtpm.pid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    export TPM2TOOLS_TCTI="swtpm:port=$port"
    python3 "$work/split.py" "$blob" "$d/b"
    result=fail
    if (cd "$d" &&
        tpm2_startauthsession --policy-session -S s.ctx &&
        tpm2_policysecret -S s.ctx -c e >/dev/null &&
        tpm2_activatecredential -c 0x81000001 -C 0x81010001 -i b.cred -o inner.key \
            -P session:s.ctx >/dev/null &&
        tpm2_flushcontext s.ctx &&
        tpm2_import -C 0x81000001 -u b.pub -i b.dpriv -s b.seed -k inner.key \
            -r imported.priv >/dev/null &&
        tpm2_load -C 0x81000001 -u b.pub -r imported.priv -c key.ctx >/dev/null &&
        tpm2_hmac -c key.ctx -g sha256 -o tpm.hmac "$fixtures/payload.txt") >"$d/tools.log" 2>&1
    then
        tpm=$(od -An -v -tx1 "$d/tpm.hmac" | tr -d ' \n')
        ref=$(openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key" "$fixtures/payload.txt" |
            sed 's/.*= //')
        [ "$tpm" = "$ref" ] && result=match || result=mismatch
    fi
    kill "$swtpm_pid" 2>/dev/null || true
    wait "$swtpm_pid" 2>/dev/null || true
    swtpm_pid=
    if [ "$expect" = ok ] && [ "$result" = match ]; then
        echo "ok:   $name (TPM HMAC = HMAC of the known key)"
    elif [ "$expect" = fail ] && [ "$result" = fail ]; then
        echo "ok:   $name (refused by the TPM, as it must be)"
    else
        echo "FAIL: $name ($result)"
        cat "$d/tools.log"
        failed=1
    fi
}

failed=0
key1=$(cat "$fixtures/identity-key-1.hex")
key2=$(cat "$fixtures/identity-key-2.hex")
check fixture-blob1 "$fixtures/blob1.bin" "$key1"
check fixture-blob2 "$fixtures/blob2.bin" "$key2"

n=0
for key in "$key1" "$key2" "$(openssl rand -hex 16)" "$(openssl rand -hex 64)" \
    "$(openssl rand -hex 1)"; do
    n=$((n + 1))
    "$work/make_blob" "$fixtures/ek.tpm2b" "$fixtures/srk.tpm2b" "$key" "$work/ours$n.bin"
    check "ours$n-$(($(printf %s "$key" | wc -c) / 2))-byte-key" "$work/ours$n.bin" "$key"
done

# one flipped byte in each wrapper must make the TPM refuse the blob
python3 -c 'import sys
b = bytearray(open(sys.argv[1], "rb").read())
b[10] ^= 1          # inside credentialBlob (its integrity HMAC)
open(sys.argv[2], "wb").write(b)
b = bytearray(open(sys.argv[1], "rb").read())
b[0x138 + 40] ^= 1  # inside the duplicate (fixture layout: it starts at 0x138)
open(sys.argv[3], "wb").write(b)' "$work/ours1.bin" "$work/bad-cred.bin" "$work/bad-dup.bin"
check ours-flipped-credential "$work/bad-cred.bin" "$key1" fail
check ours-flipped-duplicate "$work/bad-dup.bin" "$key1" fail

[ "$failed" = 0 ] && echo "all checks passed" || exit 1
