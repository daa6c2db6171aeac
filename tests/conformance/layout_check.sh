#!/usr/bin/env bash
# Proves that compiling the front against a header that differs from the SDK's table
# layout fails: each mutation of src/sdk/hsm_client_data.h (two members swapped, a member
# renamed, a parameter retyped, a member added) must make src/hsm_front.c fail to compile,
# and the unmodified header must compile. This is what -DPROVHSM_SDK_DIR relies on.
# Usage: layout_check.sh <source dir> <C compiler> [extra -I/-D flags...]
set -u
src=$1
cc=$2
shift 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
hdr=$src/src/sdk/hsm_client_data.h
pass=0
fail=0

compile() { # DIR
    "$cc" -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -fsyntax-only \
        -I"$1" -I"$src/include" -I"$src/src" "$@" "$src/src/hsm_front.c" 2>/dev/null
}

expect() { # NAME WANT(0|1) SED-SCRIPT
    local name=$1 want=$2 script=$3 dir=$tmp/$1
    mkdir -p "$dir"
    sed "$script" "$hdr" >"$dir/hsm_client_data.h"
    if [[ $want == 1 ]] && cmp -s "$hdr" "$dir/hsm_client_data.h"; then
        echo "FAIL $name: the mutation did not change the header"
        fail=$((fail + 1))
        return
    fi
    compile "$dir"
    local rc=$?
    if { [[ $want == 0 ]] && ((rc == 0)); } || { [[ $want == 1 ]] && ((rc != 0)); }; then
        echo "ok   $name"
        pass=$((pass + 1))
    else
        echo "FAIL $name (compiler exit $rc)"
        fail=$((fail + 1))
    fi
}

expect unmodified 0 ''
# swap the EK and SRK getters (same type, so only the offset checks can catch it)
expect swap_tpm_members 1 '/HSM_CLIENT_GET_ENDORSEMENT_KEY hsm_client_get_ek;/{
N
s/\(.*\)\n\(.*\)/\2\n\1/
}'
# swap get_cert and get_key in the X.509 table (same type)
expect swap_x509_members 1 '/HSM_CLIENT_GET_CERTIFICATE hsm_client_get_cert;/{
N
s/\(.*\)\n\(.*\)/\2\n\1/
}'
expect rename_member 1 's/hsm_client_get_registration_name;/hsm_client_get_reg_name;/'
expect retype_parameter 1 's/size_t key_len);/int key_len);/'
expect extra_member 1 's/HSM_CLIENT_GET_COMMON_NAME hsm_client_get_common_name;/&\n    HSM_CLIENT_GET_COMMON_NAME hsm_client_extra;/'
echo "$pass passed, $fail failed"
((fail == 0))
