# Cases of test_tool.sh (sourced by it; uses its helpers: run, expect_ok, expect_error,
# expect_eq, expect_grep, jget, check_sas, start_swtpm, start_fixture_swtpm, fail): the
# store key sealed to the TPM, through the tool.
#   t_sealed_no_tpm       reseal and rekey without a store; init --seal-to-tpm, reseal and
#                         rekey --to tpm without [tpm]: a clear error, exit 1, no store made
#   t_sealed_store_tool   init --seal-to-tpm on the fixture TPM; info (text and JSON);
#                         identities made by the tool read back after every reseal
#                         (bound, --unbound) and rekey (key-file, passphrase, tpm, tpm
#                         again, tpm at sealed_key_handle); a second, fresh swtpm: init
#                         makes its SRK, and the first store is refused there as sealed to
#                         "another TPM", its files byte-identical
#   t_sealed_pcr_values   store reseal --pcr-values: usage errors (exit 2), a malformed
#                         value, another bank, a PCR outside seal_pcrs, no seal_pcrs (exit 1,
#                         the cause named, the store's files unchanged); sealed to the value
#                         PCR 16 will have after one extend: refused until tpm2_pcrextend,
#                         read after it (needs tpm2_pcrextend for that half)
# Needs swtpm: added to CASES by test_tool.sh only when it is installed.

# start_fresh_swtpm NAME: a swtpm on an empty state (no EK, no SRK) on free ports; prints
# its TCTI. Stopped by stop_sealed_swtpms (the case's EXIT trap).
start_fresh_swtpm() {
    mkdir -p "$CASE/$1-state" && start_swtpm "$CASE/$1-state" "$1"
}

stop_sealed_swtpms() {
    local p
    for p in "$CASE"/*.pid; do
        [ -s "$p" ] && kill "$(cat "$p")" 2>/dev/null
    done
    rm -f "$WORK/swtpm.pid"
}

# sealed_conf [STORE_LINES...]: the case's configuration, [store] with those lines and
# [tpm] on $PROVHSM_TCTI (0644, as the tool wants it).
sealed_conf() {
    {
        echo "[store]"
        printf '%s\n' "$@"
        echo "[tpm]"
        echo "tcti = $PROVHSM_TCTI"
    } >"$CASE/sealed.conf"
    chmod 644 "$CASE/sealed.conf"
    export PROVHSM_CONFIG=$CASE/sealed.conf
}

# The store directory's entries (name, type, mode, size) and its files' SHA-256.
store_digest() {
    (cd "$1" && find . -printf '%p %y %m %s\n' | sort && find . -type f -print0 | sort -z |
        xargs -0 sha256sum)
}

# The identities the case made, read back through the tool: the same certificate, and a
# SAS token signed with the same symmetric key.
check_identities() {
    local when=$1
    expect_ok export x509-cert
    cmp -s "$CASE/out" "$CASE/cert0.pem" || fail "$when: another certificate than the one made"
    expect_ok sas-token --type symmetric --scope "$SEALED_SCOPE" --expiry 3600
    check_sas "$(OUT)" "$SEALED_SCOPE" "$SEALED_HEX" registration 3600
    expect_ok info --json
    expect_eq "$when: symmetric registration id" "$(jget "$CASE/out" symmetric.registration_id)" \
        sealed-sym
    expect_eq "$when: x509 registration id" "$(jget "$CASE/out" x509.registration_id)" \
        sealed-x509
}

# expect_mode WANT: info --json's store_key, and the text form's line.
expect_mode() {
    expect_ok info --json
    expect_eq "store_key" "$(jget "$CASE/out" store_key)" "$1"
    expect_ok info
    expect_grep "^store key: $1\$" "$CASE/out"
}

t_sealed_no_tpm() {
    # no store yet: said so, with the way out
    expect_error 1 store reseal
    expect_grep "no store at $PROVHSM_STORE; run 'provhsm init'" "$CASE/err"
    expect_error 1 store rekey --to key-file
    expect_grep "no store at $PROVHSM_STORE; run 'provhsm init'" "$CASE/err"
    # neither [tpm] nor PROVHSM_TCTI
    expect_error 1 init --seal-to-tpm
    expect_grep "needs a \[tpm\] section" "$CASE/err"
    [ -e "$PROVHSM_STORE/store.meta" ] && fail "a failed init left a store header"
    expect_ok init
    expect_error 1 store rekey --to tpm
    expect_grep "needs a \[tpm\] section" "$CASE/err"
    expect_mode key-file
    expect_error 1 store reseal
    expect_grep "not sealed to the TPM" "$CASE/err"
}

t_sealed_store_tool() {
    local blob="tpm (sealed blob in the store directory, PCRs none)" store_a before tcti_a tcti_b
    start_fixture_swtpm || fail "swtpm did not start (see $CASE/swtpm.log)"
    trap stop_sealed_swtpms EXIT
    tcti_a=$PROVHSM_TCTI
    store_a=$PROVHSM_STORE
    sealed_conf

    expect_ok init --seal-to-tpm
    expect_eq "init prints" "$(OUT)" "$store_a"
    [ -s "$store_a/store.sealed" ] || fail "no store.sealed"
    [ -e "$store_a/store.key" ] && fail "a sealed store has a key file"
    expect_mode "$blob"

    # identities made by the tool
    SEALED_SCOPE="0ne00ABCDEF/registrations/sealed-sym"
    local key
    key=$(randkey 32)
    SEALED_HEX=$(b64_to_hex "$key")
    expect_ok symmetric set --registration-id sealed-sym --key "$key"
    expect_ok x509 generate --cn sealed-x509 --self-signed --days 30
    expect_ok export x509-cert
    cp "$CASE/out" "$CASE/cert0.pem"
    check_identities "after init"

    # reseal: a new sealed object for the same key
    cp "$store_a/store.sealed" "$CASE/sealed.before"
    expect_ok store reseal
    expect_grep "store key sealed again: $blob" "$CASE/out"
    cmp -s "$store_a/store.sealed" "$CASE/sealed.before" && fail "reseal did not seal again"
    check_identities "after reseal"

    # bound to a PCR, then unbound again, as around a firmware update
    sealed_conf "seal_pcrs = sha256:16"
    expect_ok store reseal
    expect_mode "tpm (sealed blob in the store directory, PCRs sha256:16)"
    check_identities "after reseal bound to PCR 16"
    expect_ok store reseal --unbound
    expect_mode "$blob"
    check_identities "after reseal --unbound"
    sealed_conf

    # the same store directory behind another TPM: a fresh one, where init makes the SRK
    tcti_b=$(start_fresh_swtpm tpm-b) || fail "the second swtpm did not start"
    PROVHSM_TCTI=$tcti_b PROVHSM_STORE=$CASE/store-b expect_ok init --seal-to-tpm
    PROVHSM_TCTI=$tcti_b PROVHSM_STORE=$CASE/store-b expect_mode "$blob"
    before=$(store_digest "$store_a")
    PROVHSM_TCTI=$tcti_b expect_error 1 export x509-cert
    expect_grep "another TPM" "$CASE/err"
    PROVHSM_TCTI=$tcti_b expect_error 1 sas-token --type symmetric --scope s --expiry 60
    expect_grep "another TPM" "$CASE/err"
    PROVHSM_TCTI=$tcti_b expect_error 1 store reseal
    expect_grep "another TPM" "$CASE/err"
    PROVHSM_TCTI=$tcti_b expect_error 1 store rekey --to key-file
    expect_grep "another TPM" "$CASE/err"
    expect_eq "store files after the other TPM" "$(store_digest "$store_a")" "$before"
    check_identities "back on its own TPM"

    # rekey away from the TPM and back, and to the TPM again (a new key, same mode)
    expect_ok store rekey --to key-file
    expect_mode key-file
    [ -e "$store_a/store.sealed" ] && fail "store.sealed left after a rekey to a key file"
    check_identities "after rekey to key-file"
    PROVHSM_PASSPHRASE="sealed tool passphrase" expect_ok store rekey --to passphrase
    expect_mode passphrase
    [ -e "$store_a/store.key" ] && fail "the key file left after a rekey to a passphrase"
    PROVHSM_PASSPHRASE="sealed tool passphrase" check_identities "after rekey to passphrase"
    PROVHSM_PASSPHRASE="sealed tool passphrase" expect_ok store rekey --to tpm
    expect_mode "$blob"
    check_identities "after rekey to tpm"
    cp "$store_a/store.sealed" "$CASE/sealed.before"
    cp "$store_a/store.check" "$CASE/check.before"
    expect_ok store rekey --to tpm
    expect_grep "store rekeyed: $blob" "$CASE/out"
    cmp -s "$store_a/store.sealed" "$CASE/sealed.before" && fail "rekey tpm to tpm kept the sealed key"
    cmp -s "$store_a/store.check" "$CASE/check.before" && fail "rekey tpm to tpm kept the key"
    check_identities "after rekey from tpm to tpm"

    # with sealed_key_handle, a rekey to the TPM keeps the key at that handle
    sealed_conf "sealed_key_handle = 0x81000240"
    expect_ok store rekey --to tpm
    expect_mode "tpm (persistent handle 0x81000240, PCRs none)"
    check_identities "after rekey to tpm at a handle"
    # ... and another TPM does not hold that handle's key: refused, nothing changed
    before=$(store_digest "$store_a")
    PROVHSM_TCTI=$tcti_b expect_error 1 export x509-cert
    expect_grep "another TPM" "$CASE/err"
    expect_eq "store files after the other TPM" "$(store_digest "$store_a")" "$before"
    PROVHSM_TCTI=$tcti_a check_identities "at a handle, back on its own TPM"
}

# expect_reseal_refused CODE WHY ARGS...: store reseal ARGS exits CODE, stderr says WHY, and
# the store's files are unchanged.
expect_reseal_refused() {
    local code=$1 why=$2 before
    shift 2
    before=$(store_digest "$PROVHSM_STORE")
    expect_error "$code" store reseal "$@"
    expect_grep "$why" "$CASE/err"
    expect_eq "store files after a refused reseal $*" "$(store_digest "$PROVHSM_STORE")" "$before"
}

t_sealed_pcr_values() {
    local hex key pcr16 future before
    local pending='tpm (sealed blob in the store directory, PCRs sha256:0,16, also the values'
    pending+=' given by reseal --pcr-values: run `provhsm store reseal` once the update is in)'
    start_fixture_swtpm || fail "swtpm did not start (see $CASE/swtpm.log)"
    trap stop_sealed_swtpms EXIT
    sealed_conf "seal_pcrs = sha256:0,16"
    expect_ok init --seal-to-tpm
    key=$(randkey 32)
    SEALED_SCOPE="0ne00ABCDEF/registrations/pcr-sym"
    expect_ok symmetric set --registration-id pcr-sym --key "$key"
    hex=$(printf 'update' | sha256sum | cut -c1-64)

    expect_reseal_refused 2 "option --pcr-values needs a value" --pcr-values
    expect_reseal_refused 2 "exclude each other" --unbound --pcr-values "sha256:16=$hex"
    expect_reseal_refused 1 "PCR 16: the value must be 64 hex digits" \
        --pcr-values "sha256:16=${hex%?}"
    expect_reseal_refused 1 "character 64 of its value is not a hex digit" \
        --pcr-values "sha256:16=${hex%?}g"
    expect_reseal_refused 1 "PCRs 7 are not in \\[store\\] seal_pcrs = sha256:0,16" \
        --pcr-values "sha256:7=$hex,16=$hex"
    expect_reseal_refused 1 "values of the sha1 bank" --pcr-values "sha1:16=${hex:0:40}"
    expect_reseal_refused 1 "does not start with a PCR bank" --pcr-values "16=$hex"
    expect_grep "cannot seal the store key again" "$CASE/err"
    sealed_conf
    expect_reseal_refused 1 "seal_pcrs is not set" --pcr-values "sha256:16=$hex"
    sealed_conf "seal_pcrs = sha256:0,16"
    expect_ok sas-token --type symmetric --scope "$SEALED_SCOPE" --expiry 3600

    command -v tpm2_pcrextend >/dev/null 2>&1 || return 0
    # PCR 16 after one extend with $hex: SHA-256 of its value now and $hex
    pcr16=$(TPM2TOOLS_TCTI=$PROVHSM_TCTI tpm2_pcrread sha256:16 | sed -n 's/.*16 *: *0x//p')
    [ ${#pcr16} = 64 ] || fail "tpm2_pcrread gave no PCR 16: $pcr16"
    future=$(printf '%s%s' "$pcr16" "$hex" | xxd -r -p | sha256sum | cut -c1-64)
    expect_ok store reseal --pcr-values "sha256:16=$future"
    expect_grep "store key sealed again: $pending" "$CASE/out"
    expect_mode "$pending"
    # before the update: it opens under the values of now
    expect_ok sas-token --type symmetric --scope "$SEALED_SCOPE" --expiry 3600
    TPM2TOOLS_TCTI=$PROVHSM_TCTI tpm2_pcrextend "16:sha256=$hex" || fail "tpm2_pcrextend failed"
    # after it: under the values given
    expect_ok sas-token --type symmetric --scope "$SEALED_SCOPE" --expiry 3600
    check_sas "$(OUT)" "$SEALED_SCOPE" "$(b64_to_hex "$key")" registration 3600
    # another change: neither, said so, nothing changed
    TPM2TOOLS_TCTI=$PROVHSM_TCTI tpm2_pcrextend "16:sha256=$hex" || fail "tpm2_pcrextend failed"
    before=$(store_digest "$PROVHSM_STORE")
    expect_error 1 sas-token --type symmetric --scope "$SEALED_SCOPE" --expiry 3600
    expect_grep "hold neither the values they had" "$CASE/err"
    expect_eq "store files while refused" "$(store_digest "$PROVHSM_STORE")" "$before"
    # the update rolled back (PCR 16 reset): the old values still open it
    TPM2TOOLS_TCTI=$PROVHSM_TCTI tpm2_pcrreset 16 || fail "tpm2_pcrreset failed"
    expect_ok sas-token --type symmetric --scope "$SEALED_SCOPE" --expiry 3600
    # the update in, a plain reseal: the new values alone
    TPM2TOOLS_TCTI=$PROVHSM_TCTI tpm2_pcrextend "16:sha256=$hex" || fail "tpm2_pcrextend failed"
    expect_ok store reseal
    expect_mode "tpm (sealed blob in the store directory, PCRs sha256:0,16)"
    expect_ok sas-token --type symmetric --scope "$SEALED_SCOPE" --expiry 3600
    TPM2TOOLS_TCTI=$PROVHSM_TCTI tpm2_pcrreset 16 || fail "tpm2_pcrreset failed"
    expect_error 1 sas-token --type symmetric --scope "$SEALED_SCOPE" --expiry 3600
    expect_grep "no longer hold the values" "$CASE/err"
    TPM2TOOLS_TCTI=$PROVHSM_TCTI tpm2_pcrextend "16:sha256=$hex" || fail "tpm2_pcrextend failed"
    expect_ok sas-token --type symmetric --scope "$SEALED_SCOPE" --expiry 3600
    check_sas "$(OUT)" "$SEALED_SCOPE" "$(b64_to_hex "$key")" registration 3600
}
