#!/usr/bin/env bash
# Checks the global symbol table of libprovhsm.a against the SDK contract
# (shared/docs/sdk-contract.md):
#   - the 7 functions the SDK calls are defined (T);
#   - the per-operation names of the seed document are defined (T);
#   - initialize_hsm_system / deinitialize_hsm_system are not defined (the SDK defines them);
#   - every other defined global symbol starts with provhsm_, so nothing can collide with
#     the SDK or its dependencies;
#   - no test hook (a global with _test_ in its name) is in the installed archive: hooks
#     are compiled only into the test copy of the library (PROVHSM_TEST_HOOKS).
# Usage: check_symbols.sh path/to/libprovhsm.a   (exit 0 = clean; offenders are printed)
# Registered as ctest symbols.archive by tests/link/CMakeLists.txt.
set -euo pipefail

archive=${1:?usage: check_symbols.sh libprovhsm.a}
[[ -f $archive ]] || {
    echo "check_symbols: no such file: $archive" >&2
    exit 2
}
NM=${NM:-nm}

contract=(hsm_client_x509_init hsm_client_x509_deinit hsm_client_tpm_init hsm_client_tpm_deinit
    hsm_client_x509_interface hsm_client_tpm_interface hsm_client_key_interface)
seed=(custom_hsm_create custom_hsm_destroy custom_hsm_get_certificate custom_hsm_get_alias_key
    custom_hsm_get_common_name custom_hsm_get_endorsement_key custom_hsm_get_storage_root_key
    custom_hsm_import_key hsm_client_sign_with_identity hsm_client_get_symmetric_key
    hsm_client_get_registration_name)
forbidden=(initialize_hsm_system deinitialize_hsm_system)

# Symbols that compilers add on their own when instrumenting (sanitizers, coverage,
# libFuzzer); they are not ours to name.
toolchain_re='^(__odr_asan|__asan_|__ubsan_|__sancov_|__sanitizer_|__llvm_|__profc_|__profd_|___asan)'

# "name type" for every defined global symbol; archive member headers and blank lines have
# fewer than three fields.
if ! table=$("$NM" -g --defined-only "$archive" 2>&1); then
    echo "check_symbols: $NM failed on $archive:" >&2
    echo "$table" >&2
    exit 2
fi
defined=$(awk 'NF == 3 { print $3, $2 }' <<<"$table" | sort -u)

declare -A type_of=()
while read -r name type; do
    [[ -n $name ]] || continue
    type_of[$name]=$type
done <<<"$defined"

status=0
report() {
    echo "check_symbols: $*"
    status=1
}

for s in "${contract[@]}" "${seed[@]}"; do
    if [[ -z ${type_of[$s]+x} ]]; then
        report "missing: $s"
    elif [[ ${type_of[$s]} != T ]]; then
        report "$s is defined with type ${type_of[$s]}, expected T (a function in .text)"
    fi
done

for s in "${forbidden[@]}"; do
    if [[ -n ${type_of[$s]+x} ]]; then
        report "defined but must come from the SDK: $s (${type_of[$s]})"
    fi
done

allowed=" ${contract[*]} ${seed[*]} ${forbidden[*]} "
checked=0
for s in "${!type_of[@]}"; do
    checked=$((checked + 1))
    if [[ $s == *_test_* ]]; then
        report "test hook in the installed archive: $s (${type_of[$s]})"
        continue
    fi
    [[ $s == provhsm_* ]] && continue
    [[ $allowed == *" $s "* ]] && continue
    [[ $s =~ $toolchain_re ]] && continue
    report "unprefixed global symbol: $s (${type_of[$s]})"
done

if ((checked == 0)); then
    report "no defined global symbols in $archive"
fi
if ((status == 0)); then
    echo "check_symbols: $archive: $checked global symbols, contract and prefix rules hold"
fi
exit $status
