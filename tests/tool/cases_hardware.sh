# Cases of test_tool.sh (sourced by it; uses its helpers: expect_ok, expect_error, expect_eq,
# expect_grep, jget, info_json, start_swtpm, fail): X.509 identities whose key stays in
# hardware, through the tool.
#   t_x509_tpm_tool     [x509] backend = tpm on a fresh swtpm: RSA refused (nothing made);
#                       generate --csr, the CSR signed by a CA, import; the key's attributes
#                       and that it cannot sign without the stored authorisation (tpm2-tools);
#                       a second generate refused without --force; adopt of a tpm2-tools key
#                       with a CA-issued certificate; adopt of an RSA key and of a key with
#                       another key's certificate refused
#   t_x509_pkcs11_tool  [x509] backend = pkcs11 on a fresh SoftHSM2 token: RSA refused;
#                       generate --self-signed; info says where the key is and that it is
#                       not extractable; a PIN file others can read refused; a wrong PIN is a
#                       clear error; adopt without --cert of a key whose certificate and CA
#                       are on the token (put there with p11tool), and of one without
# Added to CASES by test_tool.sh when swtpm + tpm2-tools, and SoftHSM2, are installed.

SOFTHSM_MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

stop_hardware_swtpm() {
    [ -s "$CASE/hwtpm.pid" ] && kill "$(cat "$CASE/hwtpm.pid")" 2>/dev/null
    rm -f "$WORK/swtpm.pid"
}

# hw_conf TEXT: the case's configuration file (0644, as the tool wants it).
hw_conf() {
    printf '%s\n' "$1" >"$CASE/hw.conf"
    chmod 644 "$CASE/hw.conf"
    export PROVHSM_CONFIG=$CASE/hw.conf
}

# make_ca: a throw-away CA in $CASE/ca.{key,pem}.
make_ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=tool-test-ca -keyout "$CASE/ca.key" -out "$CASE/ca.pem" 2>/dev/null ||
        fail "openssl could not make a CA"
}

# tpm2 ARGS...: tpm2-tools on the case's swtpm.
tpm2() {
    TPM2TOOLS_TCTI=$PROVHSM_TCTI TSS2_LOG=all+none "$@"
}

t_x509_tpm_tool() {
    local tcti pub
    mkdir -p "$CASE/hwtpm-state"
    tcti=$(start_swtpm "$CASE/hwtpm-state" hwtpm) || fail "swtpm did not start"
    cp "$CASE/hwtpm.pid" "$WORK/swtpm.pid"
    trap stop_hardware_swtpm EXIT
    export PROVHSM_TCTI=$tcti TSS2_LOG=all+none
    hw_conf "[x509]
backend = tpm
[tpm]
tcti = $tcti"
    expect_ok init
    make_ca

    # RSA in hardware is refused, saying why and what to use, and nothing is made
    expect_error 1 x509 generate --cn tpm-dev --rsa 2048 --self-signed
    expect_grep "RSA" "$CASE/err"
    expect_grep "P-256" "$CASE/err"
    info_json
    expect_eq "x509.present after RSA" "$(jget "$CASE/info.json" x509.present)" false

    # the CA flow: the CSR is signed in the TPM, the certificate comes back by import
    expect_ok x509 generate --cn tpm-dev --csr "$CASE/dev.csr"
    openssl req -in "$CASE/dev.csr" -noout -verify 2>&1 | grep -q "verify OK" ||
        fail "the CSR's signature (made in the TPM) does not verify"
    openssl x509 -req -in "$CASE/dev.csr" -CA "$CASE/ca.pem" -CAkey "$CASE/ca.key" \
        -CAcreateserial -days 1 -out "$CASE/dev.pem" 2>/dev/null || fail "the CA cannot sign"
    cat "$CASE/dev.pem" "$CASE/ca.pem" >"$CASE/chain.pem"
    expect_ok x509 import --cert "$CASE/chain.pem"
    info_json
    expect_eq "x509.registration_id" "$(jget "$CASE/info.json" x509.registration_id)" tpm-dev
    expect_eq "x509.backend" "$(jget "$CASE/info.json" x509.backend)" tpm
    jget "$CASE/info.json" x509.private_key | grep -q "0x81000110" ||
        fail "info does not say the key is at 0x81000110: $(jget "$CASE/info.json" x509.private_key)"

    # the key in the TPM: a signing key that cannot leave it
    tpm2 tpm2_readpublic -c 0x81000110 >"$CASE/readpublic.txt" 2>&1 ||
        fail "tpm2_readpublic 0x81000110 failed"
    for a in fixedtpm fixedparent sensitivedataorigin userwithauth sign; do
        grep -q "$a" "$CASE/readpublic.txt" || fail "the key lacks $a"
    done
    grep -q "decrypt\|restricted" "$CASE/readpublic.txt" && fail "the key may decrypt or is restricted"
    # another process that can open the TPM cannot sign without the stored authorisation
    printf 'data' >"$CASE/data"
    if tpm2 tpm2_sign -c 0x81000110 -g sha256 -o "$CASE/sig" "$CASE/data" >/dev/null 2>&1; then
        fail "tpm2_sign with an empty authorisation signed with the device key"
    fi

    # the working identity is not replaced without --force
    expect_error 1 x509 generate --cn tpm-dev-2 --self-signed
    info_json
    expect_eq "identity kept" "$(jget "$CASE/info.json" x509.registration_id)" tpm-dev

    # adopt: an EC key made with tpm2-tools at another handle, and its certificate
    # no resource manager here: every loaded context takes one of swtpm's 3 transient
    # slots, so each step flushes what it left behind
    tpm2 tpm2_createprimary -C o -c "$CASE/prim.ctx" >/dev/null 2>&1 || fail "tpm2_createprimary"
    tpm2 tpm2_flushcontext -t >/dev/null 2>&1
    tpm2 tpm2_create -C "$CASE/prim.ctx" -G ecc256 \
        -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign' \
        -u "$CASE/k.pub" -r "$CASE/k.priv" >/dev/null 2>&1 || fail "tpm2_create ecc"
    tpm2 tpm2_flushcontext -t >/dev/null 2>&1
    tpm2 tpm2_load -C "$CASE/prim.ctx" -u "$CASE/k.pub" -r "$CASE/k.priv" -c "$CASE/k.ctx" \
        >"$CASE/tpm2_load.log" 2>&1 || fail "tpm2_load: $(cat "$CASE/tpm2_load.log")"
    tpm2 tpm2_evictcontrol -C o -c "$CASE/k.ctx" 0x81000120 >/dev/null 2>&1 ||
        fail "tpm2_evictcontrol"
    tpm2 tpm2_flushcontext -t >/dev/null 2>&1
    tpm2 tpm2_readpublic -c 0x81000120 -f pem -o "$CASE/adopted-pub.pem" >/dev/null 2>&1 ||
        fail "tpm2_readpublic -f pem"
    openssl x509 -new -subj /CN=tpm-adopted -force_pubkey "$CASE/adopted-pub.pem" \
        -CA "$CASE/ca.pem" -CAkey "$CASE/ca.key" -days 1 -out "$CASE/adopted.pem" \
        2>/dev/null || fail "openssl could not issue the adopted key's certificate"
    # a certificate of another key is refused, and so is an existing identity without --force
    expect_error 1 x509 adopt --key 0x81000120 --cert "$CASE/dev.pem" --force
    expect_error 1 x509 adopt --key 0x81000120 --cert "$CASE/adopted.pem"
    expect_ok x509 adopt --key 0x81000120 --cert "$CASE/adopted.pem" --force
    info_json
    expect_eq "adopted id" "$(jget "$CASE/info.json" x509.registration_id)" tpm-adopted
    jget "$CASE/info.json" x509.private_key | grep -q "0x81000120" ||
        fail "info does not name the adopted handle"

    # an RSA key is refused at adopt too
    tpm2 tpm2_create -C "$CASE/prim.ctx" -G rsa2048 \
        -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign' \
        -u "$CASE/r.pub" -r "$CASE/r.priv" >/dev/null 2>&1 || fail "tpm2_create rsa"
    tpm2 tpm2_flushcontext -t >/dev/null 2>&1
    tpm2 tpm2_load -C "$CASE/prim.ctx" -u "$CASE/r.pub" -r "$CASE/r.priv" -c "$CASE/r.ctx" \
        >/dev/null 2>&1 || fail "tpm2_load rsa"
    tpm2 tpm2_evictcontrol -C o -c "$CASE/r.ctx" 0x81000121 >/dev/null 2>&1 ||
        fail "tpm2_evictcontrol rsa"
    tpm2 tpm2_flushcontext -t >/dev/null 2>&1
    pub=$(tpm2 tpm2_readpublic -c 0x81000121 -f pem -o "$CASE/rsa-pub.pem" 2>&1) ||
        fail "tpm2_readpublic rsa: $pub"
    openssl x509 -new -subj /CN=tpm-rsa -force_pubkey "$CASE/rsa-pub.pem" \
        -CA "$CASE/ca.pem" -CAkey "$CASE/ca.key" -days 1 -out "$CASE/rsa.pem" 2>/dev/null ||
        fail "openssl could not issue the RSA key's certificate"
    expect_error 1 x509 adopt --key 0x81000121 --cert "$CASE/rsa.pem" --force
    expect_grep "RSA" "$CASE/err"
    info_json
    expect_eq "identity after refused adopt" "$(jget "$CASE/info.json" x509.registration_id)" \
        tpm-adopted
}

t_x509_pkcs11_tool() {
    mkdir -p "$CASE/tokens"
    printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' \
        "$CASE" >"$CASE/softhsm2.conf"
    export SOFTHSM2_CONF=$CASE/softhsm2.conf
    softhsm2-util --init-token --free --label tooltest --so-pin 87654321 --pin 123456 \
        >/dev/null || fail "softhsm2-util could not make a token"
    printf '123456' >"$CASE/pin"
    chmod 600 "$CASE/pin"
    hw_conf "[x509]
backend = pkcs11
[pkcs11]
module = $SOFTHSM_MODULE
token = pkcs11:token=tooltest
pin_file = $CASE/pin"
    unset PROVHSM_PKCS11_PIN
    expect_ok init

    expect_error 1 x509 generate --cn p11-dev --rsa 2048 --self-signed
    expect_grep "RSA" "$CASE/err"

    # the configuration named with --config (no PROVHSM_CONFIG) reaches the key's signing too
    (
        unset PROVHSM_CONFIG
        expect_ok --config "$CASE/hw.conf" x509 generate --cn p11-dev-cfg --self-signed --days 5
    ) || exit 1
    expect_ok x509 generate --cn p11-dev --self-signed --days 5 --force
    info_json
    expect_eq "x509.registration_id" "$(jget "$CASE/info.json" x509.registration_id)" p11-dev
    jget "$CASE/info.json" x509.private_key | grep -q "not extractable" ||
        fail "info does not say the key is not extractable: $(jget "$CASE/info.json" x509.private_key)"
    jget "$CASE/info.json" x509.private_key | grep -q "tooltest" ||
        fail "info does not name the token"

    # the PIN file is a secret: others reading it is refused, with the file named
    chmod 644 "$CASE/pin"
    expect_error 1 x509 generate --cn p11-dev-2 --self-signed --force
    expect_grep "$CASE/pin" "$CASE/err"
    chmod 600 "$CASE/pin"

    # a wrong PIN is a clear error, and the identity is kept
    printf '000000' >"$CASE/pin"
    expect_error 1 x509 generate --cn p11-dev-3 --self-signed --force
    expect_grep "PIN" "$CASE/err"
    printf '123456' >"$CASE/pin"
    info_json
    expect_eq "identity kept" "$(jget "$CASE/info.json" x509.registration_id)" p11-dev

    # a secure element as shipped: key pair, its certificate and the CA's on the token
    # (put there with GnuTLS's p11tool), adopted without a chain file
    if ! command -v p11tool >/dev/null 2>&1; then
        echo "    (p11tool not installed: adopting with the token's certificates not checked)"
        return 0
    fi
    p11tool_on_token --generate-privkey ecdsa --curve secp256r1 --label se-key --id 5e01 \
        --outfile "$CASE/se-pub.pem" || fail "p11tool could not make a key"
    p11tool_on_token --generate-privkey ecdsa --curve secp256r1 --label bare-key --id 5e02 ||
        fail "p11tool could not make a key"
    make_ca
    openssl x509 -new -subj /CN=se-tool -force_pubkey "$CASE/se-pub.pem" -CA "$CASE/ca.pem" \
        -CAkey "$CASE/ca.key" -days 1 -out "$CASE/se.pem" 2>/dev/null ||
        fail "openssl could not issue the token key's certificate"
    p11tool_on_token --write --load-certificate "$CASE/ca.pem" --label tool-ca ||
        fail "p11tool could not write the CA's certificate"
    p11tool_on_token --write --load-certificate "$CASE/se.pem" --label se-key --id 5e01 ||
        fail "p11tool could not write the key's certificate"
    # no certificate for the key on the token: refused, asking for the chain
    expect_error 1 x509 adopt --key "pkcs11:token=tooltest;object=bare-key;type=private" --force
    expect_grep "--cert" "$CASE/err"
    info_json
    expect_eq "identity kept" "$(jget "$CASE/info.json" x509.registration_id)" p11-dev
    expect_ok x509 adopt --key "pkcs11:token=tooltest;object=se-key;type=private" --force --json
    expect_json
    expect_eq "adopted chain length" "$(jget "$CASE/out" chain_length)" 2
    expect_eq "adopted leaf" "$(jget "$CASE/out" fingerprint_sha256)" "$(fingerprint "$CASE/se.pem")"
    info_json
    expect_eq "adopted id" "$(jget "$CASE/info.json" x509.registration_id)" se-tool
    jget "$CASE/info.json" x509.private_key | grep -q "se-key" ||
        fail "info does not name the adopted key: $(jget "$CASE/info.json" x509.private_key)"
}

# p11tool_on_token ARGS...: GnuTLS's p11tool, logged in, on the case's SoftHSM2 token.
p11tool_on_token() {
    GNUTLS_PIN=123456 p11tool --provider "$SOFTHSM_MODULE" --login "$@" pkcs11:token=tooltest \
        >/dev/null 2>&1
}
