#!/usr/bin/env bash
# Tests of the provhsm command-line tool, run by ctest (tests/tool/CMakeLists.txt) as
#   bash test_tool.sh PATH_TO_PROVHSM [CASE...]
# (or with PROVHSM_TOOL set). Each case runs in a subshell with a fresh temporary store,
# an empty configuration file and HOME in its temporary directory, and checks exit codes,
# stdout/stderr and results against values computed independently here with openssl and
# python3. Naming cases on the command line runs only those.
#
# TPM cases (skipped when PROVHSM_TEST_WITH_TPM=0, which ctest sets for a build without
# the TPM backend): with PROVHSM_TEST_TCTI set, the tool is checked against that TPM (read-only
# checks plus an activation blob that must be refused). Otherwise, when swtpm is installed,
# the script starts one on a copy of tests/fixtures/tpm-activation/swtpm-state and checks
# the known answers kept there. The "TPM absent" case always runs.
#
# Prints "N passed, M failed" last; exits 0 only when nothing failed (77 when a tool this
# script needs is missing).

set -u

TOOL=${1:-${PROVHSM_TOOL:-}}
[ $# -gt 0 ] && shift
HERE=$(cd "$(dirname "$0")" && pwd)
FIXTURES=${PROVHSM_FIXTURES:-$HERE/../fixtures}
# shellcheck source=cases_process.sh
. "$HERE/cases_process.sh" # the tool as a process; what users paste elsewhere
# shellcheck source=cases_owner.sh
. "$HERE/cases_owner.sh" # a device's service user owns the store; root acts as that user
# shellcheck source=cases_sealed.sh
. "$HERE/cases_sealed.sh" # the store key sealed to the TPM: init, info, reseal, rekey
# shellcheck source=cases_hardware.sh
. "$HERE/cases_hardware.sh" # X.509 keys in the TPM and on a PKCS#11 token

if [ -z "$TOOL" ] || [ ! -x "$TOOL" ]; then
    echo "usage: $0 PATH_TO_PROVHSM [CASE...] (or set PROVHSM_TOOL)" >&2
    exit 2
fi
for need in openssl python3; do
    if ! command -v "$need" >/dev/null 2>&1; then
        echo "SKIP: $need is not installed" >&2
        exit 77
    fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/provhsm-tool-test.XXXXXX")
cleanup() {
    # a swtpm this script started and a case did not stop
    if [ -s "$WORK/swtpm.pid" ]; then
        kill "$(cat "$WORK/swtpm.pid")" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---- assertions and utilities (used inside a case's subshell) ----------------------------

# Fails the current case: prints why, and the last command's output.
fail() {
    echo "    FAIL: $*"
    if [ -f "$CASE/out" ]; then
        echo "    --- stdout:"
        sed 's/^/    | /' "$CASE/out" | head -40
        echo "    --- stderr:"
        sed 's/^/    | /' "$CASE/err" | head -40
    fi
    exit 1
}

# Runs the tool; stdout in $CASE/out, stderr in $CASE/err, exit code in RC.
run() {
    "$TOOL" "$@" >"$CASE/out" 2>"$CASE/err" </dev/null
    RC=$?
}

# Like run, with stdin from the file $1.
run_stdin() {
    local input=$1
    shift
    "$TOOL" "$@" >"$CASE/out" 2>"$CASE/err" <"$input"
    RC=$?
}

OUT() { cat "$CASE/out"; }

expect_ok() {
    run "$@"
    [ "$RC" = 0 ] || fail "provhsm $* exited $RC, expected 0"
    check_no_private_key
}

# expect_error CODE ARGS...: exit CODE, nothing on stdout, a "provhsm: error:" line.
expect_error() {
    local want=$1
    shift
    run "$@"
    [ "$RC" = "$want" ] || fail "provhsm $* exited $RC, expected $want"
    [ -s "$CASE/out" ] && fail "provhsm $* printed on stdout although it failed"
    grep -q '^provhsm: error: ' "$CASE/err" || fail "provhsm $*: no 'provhsm: error:' line"
}

expect_error_stdin() {
    local want=$1 input=$2
    shift 2
    run_stdin "$input" "$@"
    [ "$RC" = "$want" ] || fail "provhsm $* exited $RC, expected $want"
    [ -s "$CASE/out" ] && fail "provhsm $* printed on stdout although it failed"
    grep -q '^provhsm: error: ' "$CASE/err" || fail "provhsm $*: no 'provhsm: error:' line"
}

check_no_private_key() {
    if grep -q "PRIVATE KEY" "$CASE/out" "$CASE/err"; then
        fail "output contains PRIVATE KEY"
    fi
}

expect_eq() { # WHAT GOT WANT
    [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
}

expect_grep() { # PATTERN FILE
    grep -q -- "$1" "$2" || fail "'$1' not found in $(basename "$2")"
}

# The last output must be one JSON object.
expect_json() {
    python3 -c 'import json,sys; d=json.load(sys.stdin); assert isinstance(d, dict)' \
        <"$CASE/out" || fail "output is not one JSON object"
}

# jget FILE a.b.c: prints a JSON member (booleans as true/false).
jget() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    d = d[k]
print(str(d).lower() if isinstance(d, bool) else d)
EOF
}

info_json() {
    expect_ok info --json
    expect_json
    cp "$CASE/out" "$CASE/info.json"
}

fingerprint() { # PEM file: its first certificate's SHA-256 fingerprint
    openssl x509 -in "$1" -noout -fingerprint -sha256 | sed 's/^[^=]*=//'
}

# A random key of $1 bytes, base64 on one line.
randkey() {
    openssl rand "$1" | openssl base64 -A
}

hexfile_to_b64() {
    python3 -c 'import base64, sys; print(base64.b64encode(bytes.fromhex(open(sys.argv[1]).read().strip())).decode())' "$1"
}

b64_to_hex() {
    printf '%s' "$1" | openssl base64 -d -A | od -An -v -tx1 | tr -d ' \n'
}

# HMAC-SHA256 with a hex key over stdin, base64.
hmac_b64() {
    openssl dgst -sha256 -mac HMAC -macopt "hexkey:$1" -binary | openssl base64 -A
}

# The SDK's URL encoding: A-Z a-z 0-9 ! ( ) * - . _ stay, the rest is %xx in lowercase.
urlencode() {
    local LC_ALL=C s=$1 out="" c h i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
        [A-Za-z0-9] | '!' | '(' | ')' | '*' | '-' | '.' | '_') out+=$c ;;
        *)
            printf -v h '%%%02x' "'$c"
            out+=$h
            ;;
        esac
    done
    printf '%s' "$out"
}

# check_sas TOKEN SCOPE HEXKEY KEYNAME LIFETIME: rebuilds the token independently.
check_sas() {
    local token=$1 scope=$2 hexkey=$3 keyname=$4 lifetime=$5
    local se enc sig now
    case $token in
    "SharedAccessSignature "*) ;;
    *) fail "token does not start with 'SharedAccessSignature ': $token" ;;
    esac
    se=$(printf '%s' "$token" | sed -n 's/.*[ &]se=\([0-9][0-9]*\).*/\1/p')
    [ -n "$se" ] || fail "no se= in $token"
    now=$(date +%s)
    if [ "$se" -lt $((now + lifetime - 30)) ] || [ "$se" -gt $((now + lifetime + 30)) ]; then
        fail "se=$se is not now+$lifetime (now=$now)"
    fi
    enc=$(urlencode "$scope")
    sig=$(printf '%s\n%s' "$enc" "$se" | hmac_b64 "$hexkey")
    expect_eq "SAS token" "$token" \
        "SharedAccessSignature sr=$enc&sig=$(urlencode "$sig")&se=$se&skn=$keyname"
}

# Self-signed EC certificate and key made by openssl: mkcert NAME SUBJECT [openssl args]
mkcert() {
    local name=$1 subj=$2
    shift 2
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$CASE/$name.key" -out "$CASE/$name.pem" -subj "$subj" -days 30 "$@" \
        >/dev/null 2>&1 || fail "openssl could not make $name"
}

# ---- cases -------------------------------------------------------------------------

t_help() {
    local c
    for c in "" init info x509 "x509 generate" "x509 import" symmetric "symmetric set" \
        "symmetric derive" sas-token export "export x509-cert" tpm "tpm info" \
        "tpm activate" "tpm sign" "tpm clear-identity" identity "identity remove"; do
        # shellcheck disable=SC2086
        run $c --help
        [ "$RC" = 0 ] || fail "provhsm $c --help exited $RC"
        grep -q "^Usage: provhsm" "$CASE/out" || fail "provhsm $c --help printed no usage"
        [ -s "$CASE/err" ] && fail "provhsm $c --help wrote to stderr"
    done
    run -h
    [ "$RC" = 0 ] || fail "provhsm -h exited $RC"
    expect_ok help x509 generate
    expect_grep "--self-signed" "$CASE/out"
    expect_ok --version
    grep -Eq '^provhsm [0-9]+\.[0-9]+\.[0-9]+' "$CASE/out" || fail "--version: $(OUT)"
    [ -e "$PROVHSM_STORE" ] && fail "--help created the store"
    return 0
}

t_usage_errors() {
    expect_error 2
    expect_error 2 bogus
    expect_error 2 --bogus info
    expect_error 2 info --bogus
    expect_error 2 info extra
    expect_error 2 init --json --json
    expect_error 2 x509
    expect_error 2 x509 bogus
    expect_error 2 x509 generate --self-signed
    expect_error 2 x509 generate --cn
    expect_error 2 x509 generate --cn dev
    expect_error 2 x509 generate --cn dev --self-signed --csr "$CASE/x.csr"
    expect_error 2 x509 generate --cn dev --csr "$CASE/x.csr" --days 3
    expect_error 2 x509 generate --cn dev --self-signed --days 0
    expect_error 2 x509 generate --cn dev --self-signed --days soon
    expect_error 2 x509 generate --cn dev --self-signed --curve p521
    expect_error 2 x509 generate --cn dev --self-signed --rsa 1024
    expect_error 2 x509 generate --cn dev --self-signed --rsa 2048 --curve p256
    expect_error 2 x509 generate --cn dev --self-signed --force=yes
    expect_error 2 x509 import
    expect_error 2 x509 import --key k.pem
    expect_error 2 symmetric
    expect_error 2 symmetric set --key AAAA
    expect_error 2 symmetric set --registration-id dev
    expect_error 2 symmetric derive --registration-id dev
    expect_error 2 symmetric derive --group-key AAAA
    expect_error 2 sas-token --expiry 10
    expect_error 2 sas-token --scope s
    expect_error 2 sas-token --scope s --expiry 10 --type x509
    expect_error 2 sas-token --scope s --expiry 10 --key-name ""
    expect_error 2 export
    expect_error 2 export x509-key
    expect_error 2 tpm
    expect_error 2 tpm sign
    expect_error 2 tpm sign --data a --file b
    expect_error 2 tpm activate
    expect_error 2 tpm clear-identity now
    expect_error 2 identity remove
    expect_error 2 identity remove tpm
    expect_error 2 identity remove bogus
    expect_error 2 --config
    [ -e "$CASE/x.csr" ] && fail "a usage error created the CSR file"
    [ -e "$PROVHSM_STORE" ] && fail "a usage error created the store"
    return 0
}

t_init_twice() {
    expect_ok init
    expect_eq "init output" "$(OUT)" "$PROVHSM_STORE"
    [ -d "$PROVHSM_STORE" ] || fail "no store directory"
    expect_eq "store mode" "$(stat -c %a "$PROVHSM_STORE")" 700
    expect_error 1 init
    grep -qi "already" "$CASE/err" || fail "init twice: no 'already' in the message"
    rm -rf "$PROVHSM_STORE"
    expect_ok init --json
    expect_json
    expect_eq "store_dir" "$(jget "$CASE/out" store_dir)" "$PROVHSM_STORE"
}

t_config_option() {
    expect_error 1 --config "$CASE/missing.conf" info
    # an explicit (empty) configuration is accepted; the store still comes from PROVHSM_STORE
    expect_ok --config "$CASE/empty.conf" init
    expect_eq "init output" "$(OUT)" "$PROVHSM_STORE"
    expect_ok -q info
    expect_ok -v info
}

t_x509_self_signed() {
    local gen_fp ossl_fp
    expect_ok init
    expect_ok x509 generate --cn dev-self-1 --self-signed --days 30
    gen_fp=$(sed -n 's/^SHA-256 fingerprint: *//p' "$CASE/out")
    expect_grep "CN=dev-self-1" "$CASE/out"
    expect_ok export x509-cert
    cp "$CASE/out" "$CASE/cert.pem"
    expect_eq "certificates exported" "$(grep -c 'BEGIN CERTIFICATE' "$CASE/cert.pem")" 1
    ossl_fp=$(fingerprint "$CASE/cert.pem")
    [ -n "$ossl_fp" ] || fail "openssl cannot read the exported certificate"
    expect_eq "generate's fingerprint" "$gen_fp" "$ossl_fp"
    info_json
    expect_eq "x509.present" "$(jget "$CASE/info.json" x509.present)" true
    expect_eq "x509.registration_id" "$(jget "$CASE/info.json" x509.registration_id)" dev-self-1
    expect_eq "x509.fingerprint_sha256" "$(jget "$CASE/info.json" x509.fingerprint_sha256)" \
        "$ossl_fp"
    expect_eq "x509.subject" "$(jget "$CASE/info.json" x509.subject)" "CN=dev-self-1"
    expect_eq "x509.issuer" "$(jget "$CASE/info.json" x509.issuer)" "CN=dev-self-1"
    expect_eq "x509.chain_length" "$(jget "$CASE/info.json" x509.chain_length)" 1
    expect_eq "x509.expired" "$(jget "$CASE/info.json" x509.expired)" false
    expect_eq "x509.private_key" "$(jget "$CASE/info.json" x509.private_key)" \
        "software: in the encrypted store"
    expect_eq "openssl subject" \
        "$(openssl x509 -in "$CASE/cert.pem" -noout -subject -nameopt RFC2253)" \
        "subject=CN=dev-self-1"
    openssl x509 -in "$CASE/cert.pem" -noout -text | grep -q "prime256v1" ||
        fail "the default key is not EC P-256"
    # validity: 30 days, and the dates match openssl's
    python3 - "$CASE/info.json" "$(openssl x509 -in "$CASE/cert.pem" -noout -enddate)" <<'EOF' ||
import json, sys, datetime
x = json.load(open(sys.argv[1]))["x509"]
f = "%Y-%m-%dT%H:%M:%SZ"
nb = datetime.datetime.strptime(x["not_before"], f)
na = datetime.datetime.strptime(x["not_after"], f)
days = (na - nb).total_seconds() / 86400
assert 29 <= days <= 31, days
ossl = datetime.datetime.strptime(sys.argv[2].split("=", 1)[1], "%b %d %H:%M:%S %Y GMT")
assert ossl == na, (ossl, na)
EOF
        fail "validity in info does not match the certificate"
    expect_ok info
    expect_grep "dev-self-1" "$CASE/out"
    expect_grep "$ossl_fp" "$CASE/out"
}

t_x509_p384() {
    expect_ok init
    expect_ok x509 generate --cn dev-p384 --self-signed --curve p384
    expect_ok export x509-cert
    openssl x509 -in "$CASE/out" -noout -text | grep -q "secp384r1" ||
        fail "--curve p384 did not make an EC P-384 key"
}

t_x509_force() {
    local fp1
    expect_ok init
    expect_ok x509 generate --cn first --self-signed
    expect_ok export x509-cert
    cp "$CASE/out" "$CASE/first.pem"
    fp1=$(fingerprint "$CASE/first.pem")
    expect_error 1 x509 generate --cn second --self-signed
    grep -q -- "--force" "$CASE/err" || fail "the refusal does not mention --force"
    expect_ok export x509-cert
    expect_eq "fingerprint after refusal" "$(fingerprint "$CASE/out")" "$fp1"
    expect_ok x509 generate --cn second --self-signed --force --rsa 2048 --json
    expect_json
    expect_ok export x509-cert
    cp "$CASE/out" "$CASE/second.pem"
    [ "$(fingerprint "$CASE/second.pem")" != "$fp1" ] || fail "--force did not replace"
    openssl x509 -in "$CASE/second.pem" -noout -text | grep -q "Public-Key: (2048 bit)" ||
        fail "--rsa 2048 did not make an RSA-2048 key"
    expect_eq "openssl subject" \
        "$(openssl x509 -in "$CASE/second.pem" -noout -subject -nameopt RFC2253)" \
        "subject=CN=second"
}

t_store_no_cleartext() {
    local key
    expect_ok init
    expect_ok x509 generate --cn leak-check --self-signed
    key=$(randkey 32)
    expect_ok symmetric set --registration-id leak-dev --key "$key"
    if grep -r -q "PRIVATE KEY" "$PROVHSM_STORE"; then
        fail "the store holds a PEM private key in clear"
    fi
    if grep -r -q -F -- "$key" "$PROVHSM_STORE"; then
        fail "the store holds the symmetric key text in clear"
    fi
    # an imported key, and the raw key bytes, must not be there either
    mkcert imp "/CN=leak-import"
    expect_ok x509 import --cert "$CASE/imp.pem" --key "$CASE/imp.key"
    openssl pkey -in "$CASE/imp.key" -outform DER -out "$CASE/imp.p8.der" 2>/dev/null ||
        fail "openssl pkey"
    openssl ec -in "$CASE/imp.key" -outform DER -out "$CASE/imp.sec1.der" 2>/dev/null ||
        fail "openssl ec"
    # the hex lines between "priv:" and "pub:" (each but the last ends with ':')
    openssl ec -in "$CASE/imp.key" -noout -text 2>/dev/null |
        sed -n '/^priv:/,/^pub:/p' | sed '1d;$d' | tr -d ' :\n' >"$CASE/imp.scalar.hex"
    # a whole scalar (a few leading zero bytes at most), not the tail of one
    [ "$(wc -c <"$CASE/imp.scalar.hex")" -ge 56 ] || fail "cannot read the whole private scalar"
    if grep -r -q "PRIVATE KEY" "$PROVHSM_STORE"; then
        fail "the store holds a PEM private key in clear after import"
    fi
    python3 - "$PROVHSM_STORE" "$key" "$CASE" <<'EOF' || fail "a secret is in the store in clear"
import base64, os, sys
store, key_b64, case = sys.argv[1:4]
secrets = {
    "symmetric key bytes": base64.b64decode(key_b64),
    "symmetric key text": key_b64.encode(),
    "PKCS#8 DER": open(os.path.join(case, "imp.p8.der"), "rb").read(),
    "SEC1 DER": open(os.path.join(case, "imp.sec1.der"), "rb").read(),
    "EC private scalar": int(open(os.path.join(case, "imp.scalar.hex")).read(), 16).to_bytes(32, "big"),
}
bad = 0
for root, _, files in os.walk(store):
    for f in files:
        data = open(os.path.join(root, f), "rb").read()
        for what, s in secrets.items():
            if s and s in data:
                print("    %s found in %s" % (what, f))
                bad = 1
sys.exit(bad)
EOF
    expect_ok info
    grep -q -F -- "$key" "$CASE/out" && fail "info printed the symmetric key"
    info_json
    grep -q -F -- "$key" "$CASE/out" && fail "info --json printed the symmetric key"
    return 0
}

t_csr_chain() {
    local leaf_fp ca_fp
    expect_ok init
    expect_ok x509 generate --cn dev-csr --csr "$CASE/dev.csr"
    expect_grep "dev.csr" "$CASE/out"
    expect_eq "CSR mode" "$(stat -c %a "$CASE/dev.csr")" 644
    openssl req -in "$CASE/dev.csr" -noout -verify >/dev/null 2>&1 || fail "the CSR does not verify"
    expect_eq "CSR subject" "$(openssl req -in "$CASE/dev.csr" -noout -subject -nameopt RFC2253)" \
        "subject=CN=dev-csr"
    grep -q "PRIVATE KEY" "$CASE/dev.csr" && fail "the CSR file holds a private key"

    mkcert ca "/O=provhsm tests/CN=Test Root CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl x509 -req -in "$CASE/dev.csr" -CA "$CASE/ca.pem" -CAkey "$CASE/ca.key" \
        -CAserial "$CASE/ca.srl" -CAcreateserial -days 10 -out "$CASE/leaf.pem" >/dev/null 2>&1 ||
        fail "openssl could not sign the CSR"
    cat "$CASE/leaf.pem" "$CASE/ca.pem" >"$CASE/chain.pem"
    leaf_fp=$(fingerprint "$CASE/leaf.pem")
    ca_fp=$(fingerprint "$CASE/ca.pem")

    expect_ok x509 import --cert "$CASE/chain.pem"
    expect_grep "dev-csr" "$CASE/out"
    expect_ok export x509-cert
    cp "$CASE/out" "$CASE/exported.pem"
    expect_eq "certificates exported" "$(grep -c 'BEGIN CERTIFICATE' "$CASE/exported.pem")" 2
    expect_eq "first exported certificate" "$(fingerprint "$CASE/exported.pem")" "$leaf_fp"
    awk 'n>=1{print} /END CERTIFICATE/{n++}' "$CASE/exported.pem" >"$CASE/second.pem"
    expect_eq "second exported certificate" "$(fingerprint "$CASE/second.pem")" "$ca_fp"
    openssl verify -CAfile "$CASE/ca.pem" "$CASE/exported.pem" >/dev/null 2>&1 ||
        fail "the exported leaf does not verify against the CA"

    info_json
    expect_eq "x509.registration_id" "$(jget "$CASE/info.json" x509.registration_id)" dev-csr
    expect_eq "x509.issuer" "$(jget "$CASE/info.json" x509.issuer)" \
        "CN=Test Root CA,O=provhsm tests"
    expect_eq "x509.chain_length" "$(jget "$CASE/info.json" x509.chain_length)" 2
    expect_eq "x509.fingerprint_sha256" "$(jget "$CASE/info.json" x509.fingerprint_sha256)" \
        "$leaf_fp"
    expect_ok info
    expect_grep "Test Root CA" "$CASE/out"
}

t_csr_stdout() {
    expect_ok init
    expect_ok x509 generate --cn dev-csr-out --csr - --rsa 2048
    head -1 "$CASE/out" | grep -q "^-----BEGIN CERTIFICATE REQUEST-----" ||
        fail "--csr - did not print a CSR"
    openssl req -in "$CASE/out" -noout -verify >/dev/null 2>&1 || fail "the CSR does not verify"
    expect_ok x509 generate --cn dev-csr-json --csr - --json --force
    expect_json
    python3 -c 'import json,sys; assert json.load(sys.stdin)["csr"].startswith("-----BEGIN CERTIFICATE REQUEST")' \
        <"$CASE/out" || fail "--csr - --json has no csr member"
}

t_csr_no_store() {
    # the store does not exist: the key cannot be generated, and no CSR file is left behind
    expect_error 1 x509 generate --cn dev --csr "$CASE/dev.csr"
    [ -e "$CASE/dev.csr" ] && fail "a failed generate left $CASE/dev.csr"
    expect_error 1 x509 generate --cn dev --csr "$CASE/no/such/dir/dev.csr"
    return 0
}

t_import_mismatch() {
    local fp0
    expect_ok init
    expect_ok x509 generate --cn original --self-signed
    expect_ok export x509-cert
    fp0=$(fingerprint "$CASE/out")
    mkcert other "/CN=other-device"
    mkcert third "/CN=third-device"
    # no key: the leaf must match the key in the store, which it does not
    expect_error 1 x509 import --cert "$CASE/other.pem"
    grep -qi "belong\|match" "$CASE/err" || fail "no mismatch message"
    expect_ok export x509-cert
    expect_eq "fingerprint after refused import" "$(fingerprint "$CASE/out")" "$fp0"
    # a key that is not the certificate's
    expect_error 1 x509 import --cert "$CASE/other.pem" --key "$CASE/third.key"
    grep -qi "belong\|match" "$CASE/err" || fail "no mismatch message"
    expect_ok export x509-cert
    expect_eq "fingerprint after refused import" "$(fingerprint "$CASE/out")" "$fp0"
    info_json
    expect_eq "x509.registration_id" "$(jget "$CASE/info.json" x509.registration_id)" original
    # and a matching pair is accepted (key read from stdin)
    run_stdin "$CASE/other.key" x509 import --cert "$CASE/other.pem" --key - --json
    [ "$RC" = 0 ] || fail "import of a matching pair exited $RC"
    expect_json
    expect_eq "key_imported" "$(jget "$CASE/out" key_imported)" true
    expect_ok export x509-cert
    expect_eq "fingerprint after import" "$(fingerprint "$CASE/out")" \
        "$(fingerprint "$CASE/other.pem")"
}

t_import_no_cn() {
    expect_ok init
    mkcert nocn "/O=No Common Name Ltd"
    expect_error 1 x509 import --cert "$CASE/nocn.pem" --key "$CASE/nocn.key"
    grep -qi "common name" "$CASE/err" || fail "the message does not mention the common name"
    expect_error 1 export x509-cert
}

t_import_expired() {
    local d=$CASE/ca
    expect_ok init
    mkdir -p "$d" && : >"$d/index.txt" && echo 01 >"$d/serial"
    cat >"$d/ca.cnf" <<EOF
[ca]
default_ca = d
[d]
database = $d/index.txt
new_certs_dir = $d
serial = $d/serial
default_md = sha256
policy = p
[p]
commonName = supplied
EOF
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/exp.key" \
        -out "$d/exp.csr" -subj "/CN=expired-dev" >/dev/null 2>&1 || fail "openssl req"
    openssl ca -batch -config "$d/ca.cnf" -selfsign -keyfile "$d/exp.key" -in "$d/exp.csr" \
        -startdate 20200101000000Z -enddate 20210101000000Z -notext -out "$d/exp.pem" \
        >/dev/null 2>&1 || fail "openssl ca"
    expect_ok x509 import --cert "$d/exp.pem" --key "$d/exp.key"
    grep -q "^provhsm: warning: .*expired" "$CASE/err" || fail "no expiry warning on stderr"
    grep -qi "warning" "$CASE/out" && fail "the warning went to stdout"
    info_json
    expect_eq "x509.expired" "$(jget "$CASE/info.json" x509.expired)" true
    expect_eq "x509.not_after" "$(jget "$CASE/info.json" x509.not_after)" "2021-01-01T00:00:00Z"
    expect_eq "x509.registration_id" "$(jget "$CASE/info.json" x509.registration_id)" expired-dev
}

t_json_escaping() {
    local cn='dev "quoted" back\slash'
    expect_ok init
    expect_ok x509 generate --cn "$cn" --self-signed --json
    expect_json
    expect_eq "common_name" "$(jget "$CASE/out" common_name)" "$cn"
    info_json
    expect_eq "x509.registration_id" "$(jget "$CASE/info.json" x509.registration_id)" "$cn"
    expect_ok x509 generate --cn "gerät-ü-设备" --self-signed --force
    info_json
    expect_eq "UTF-8 registration_id" "$(jget "$CASE/info.json" x509.registration_id)" \
        "gerät-ü-设备"
}

t_symmetric_invalid() {
    expect_ok init
    expect_error 1 symmetric set --registration-id dev-1 --key 'not*base64!'
    expect_error 1 symmetric set --registration-id dev-1 --key "$(printf 'short' | openssl base64 -A)"
    expect_error 1 symmetric set --registration-id dev-1 --key ""
    expect_error 1 symmetric set --registration-id 'bad id!' --key "$(randkey 32)"
    info_json
    expect_eq "symmetric.present" "$(jget "$CASE/info.json" symmetric.present)" false
    [ -n "$(jget "$CASE/info.json" symmetric.reason)" ] || fail "no reason for the absence"
}

t_symmetric_stdin() {
    local key
    expect_ok init
    key=$(randkey 32)
    printf '%s\n' "$key" >"$CASE/key.txt"
    run_stdin "$CASE/key.txt" symmetric set --registration-id stdin-dev --key -
    [ "$RC" = 0 ] || fail "symmetric set --key - exited $RC"
    expect_eq "output" "$(OUT)" "stored symmetric identity for stdin-dev"
    info_json
    expect_eq "symmetric.present" "$(jget "$CASE/info.json" symmetric.present)" true
    expect_eq "symmetric.registration_id" "$(jget "$CASE/info.json" symmetric.registration_id)" \
        stdin-dev
    grep -q -F -- "$key" "$CASE/info.json" && fail "info printed the key"
    # the key read from stdin is the one stored: a token signed with it verifies
    expect_ok sas-token --scope "0ne0000000A/registrations/stdin-dev" --expiry 600
    check_sas "$(OUT)" "0ne0000000A/registrations/stdin-dev" "$(b64_to_hex "$key")" \
        registration 600
}

t_derive() {
    local gk hex want id=derived-dev-7
    expect_ok init
    gk=$(randkey 64)
    hex=$(b64_to_hex "$gk")
    want=$(printf '%s' "$id" | hmac_b64 "$hex")
    expect_ok symmetric derive --registration-id "$id" --group-key "$gk" --print-only
    expect_eq "derived key" "$(OUT)" "$want"
    printf '%s\n' "$gk" >"$CASE/gk.txt"
    run_stdin "$CASE/gk.txt" symmetric derive --registration-id "$id" --group-key - --print-only \
        --json
    [ "$RC" = 0 ] || fail "derive --group-key - exited $RC"
    expect_json
    expect_eq "device_key" "$(jget "$CASE/out" device_key)" "$want"
    info_json
    expect_eq "symmetric.present after --print-only" \
        "$(jget "$CASE/info.json" symmetric.present)" false
    expect_ok symmetric derive --registration-id "$id" --group-key "$gk"
    expect_eq "output" "$(OUT)" "stored symmetric identity for $id"
    grep -q -F -- "$want" "$CASE/out" && fail "derive printed the key without --print-only"
    info_json
    expect_eq "symmetric.registration_id" "$(jget "$CASE/info.json" symmetric.registration_id)" \
        "$id"
    # the stored key is the derived one
    expect_ok sas-token --scope "0ne0000000B/registrations/$id" --expiry 60
    check_sas "$(OUT)" "0ne0000000B/registrations/$id" "$(b64_to_hex "$want")" registration 60
    expect_error 1 symmetric derive --registration-id "$id" --group-key 'not base64' --print-only
}

t_sas_symmetric() {
    local key hex scope token se
    expect_ok init
    key=$(randkey 32)
    hex=$(b64_to_hex "$key")
    expect_ok symmetric set --registration-id sas-dev --key "$key"
    scope="0ne00ABCDEF/registrations/sas-dev"
    expect_ok sas-token --scope "$scope" --expiry 3600
    check_sas "$(OUT)" "$scope" "$hex" registration 3600
    # characters that need encoding, and another key name
    scope="my-hub.azure-devices.net/devices/sas dev~1+x=y&z;(ok)!*'"
    expect_ok sas-token --scope "$scope" --expiry 86400 --key-name device --type symmetric
    check_sas "$(OUT)" "$scope" "$hex" device 86400
    expect_ok sas-token --scope "$scope" --expiry=120 --json
    expect_json
    token=$(jget "$CASE/out" token)
    se=$(printf '%s' "$token" | sed -n 's/.*&se=\([0-9]*\).*/\1/p')
    expect_eq "expiry member" "$(jget "$CASE/out" expiry)" "$se"
    check_sas "$token" "$scope" "$hex" registration 120
}

t_sas_errors() {
    local e
    expect_ok init
    for e in -5 abc 0 "" 1.5 +5 " 5" 99999999999999999999999; do
        expect_error 2 sas-token --scope s --expiry "$e"
    done
    # no symmetric identity yet
    expect_error 1 sas-token --scope s --expiry 60
}

t_csr_file_safety() {
    expect_ok init
    printf 'precious\n' >"$CASE/victim"
    chmod 600 "$CASE/victim"
    # a planted symbolic link must not lead the CSR (and its 0644 mode) to another file
    ln -s "$CASE/victim" "$CASE/link.csr"
    expect_error 1 x509 generate --cn dev --csr "$CASE/link.csr"
    grep -q "symbolic link" "$CASE/err" || fail "the refusal does not name the link"
    expect_eq "victim content" "$(cat "$CASE/victim")" precious
    expect_eq "victim mode" "$(stat -c %a "$CASE/victim")" 600
    ln -s "$CASE/nowhere" "$CASE/dangling.csr"
    expect_error 1 x509 generate --cn dev --csr "$CASE/dangling.csr"
    [ -e "$CASE/nowhere" ] && fail "a dangling link's target was created"
    # a second hard link to another file
    ln "$CASE/victim" "$CASE/hard.csr"
    expect_error 1 x509 generate --cn dev --csr "$CASE/hard.csr"
    expect_eq "victim content" "$(cat "$CASE/victim")" precious
    # a FIFO without a reader: refused at once, no hang
    mkfifo "$CASE/fifo.csr"
    timeout 20 "$TOOL" x509 generate --cn dev --csr "$CASE/fifo.csr" >"$CASE/out" 2>"$CASE/err" \
        </dev/null
    expect_eq "exit code for a FIFO" "$?" 1
    # nothing was generated by the refusals
    info_json
    expect_eq "x509.present" "$(jget "$CASE/info.json" x509.present)" false
    grep -q "CSR" "$CASE/info.json" && fail "a refused --csr still generated a key"
    # an existing plain file of ours is replaced, and gets mode 0644
    printf 'old\n' >"$CASE/old.csr"
    chmod 600 "$CASE/old.csr"
    expect_ok x509 generate --cn dev --csr "$CASE/old.csr"
    expect_eq "CSR mode" "$(stat -c %a "$CASE/old.csr")" 644
    openssl req -in "$CASE/old.csr" -noout -verify >/dev/null 2>&1 || fail "the CSR does not verify"
    grep -q "^old" "$CASE/old.csr" && fail "the old content is still there"
    return 0
}

t_stdin_secret_edges() {
    local key
    expect_ok init
    key=$(randkey 32)
    # a NUL byte would cut the key short: refused, nothing stored
    printf '%s\0%s\n' "$key" "$key" >"$CASE/nul.txt"
    expect_error_stdin 1 "$CASE/nul.txt" symmetric set --registration-id nul-dev --key -
    grep -q "NUL" "$CASE/err" || fail "the message does not mention the NUL byte"
    expect_error_stdin 1 "$CASE/nul.txt" symmetric derive --registration-id nul-dev \
        --group-key - --print-only
    info_json
    expect_eq "symmetric.present" "$(jget "$CASE/info.json" symmetric.present)" false
    # empty input, and a line longer than any key
    : >"$CASE/empty.txt"
    expect_error_stdin 1 "$CASE/empty.txt" symmetric set --registration-id e-dev --key -
    head -c 5000 /dev/zero | tr '\0' A >"$CASE/long.txt"
    expect_error_stdin 1 "$CASE/long.txt" symmetric set --registration-id e-dev --key -
    grep -q "too long" "$CASE/err" || fail "no 'too long' for an overlong line"
    # no line end, and a CRLF line end, are fine
    printf '%s' "$key" >"$CASE/nonl.txt"
    run_stdin "$CASE/nonl.txt" symmetric set --registration-id nonl-dev --key -
    [ "$RC" = 0 ] || fail "a key without a newline was refused ($RC)"
    printf '%s\r\n' "$key" >"$CASE/crlf.txt"
    run_stdin "$CASE/crlf.txt" symmetric set --registration-id crlf-dev --key -
    [ "$RC" = 0 ] || fail "a key with CRLF was refused ($RC)"
    expect_ok sas-token --scope "0ne0000000C/registrations/crlf-dev" --expiry 60
    check_sas "$(OUT)" "0ne0000000C/registrations/crlf-dev" "$(b64_to_hex "$key")" registration 60
    # --key=VALUE works; a value that looks like an option does not
    expect_ok symmetric set --registration-id eq-dev "--key=$key"
    expect_error 2 symmetric set --registration-id eq-dev --key --json
    # an overlong key on the command line: a failure, not a crash
    expect_error 1 symmetric set --registration-id long-dev --key "$(cat "$CASE/long.txt")"
}

t_text_output_controls() {
    # control characters in a name (from --cn here, from a CA's certificate in the field)
    # must not forge lines or reach the terminal as escape sequences
    local cn
    cn=$(printf 'evil\nSHA-256 fingerprint: AA:BB\033[31m')
    expect_ok init
    expect_ok x509 generate --cn "$cn" --self-signed
    grep -q '^SHA-256 fingerprint: AA:BB' "$CASE/out" && fail "a forged line in generate's output"
    grep -q "$(printf '\033')" "$CASE/out" && fail "an ESC byte in generate's output"
    expect_grep 'evil\\x0ASHA-256' "$CASE/out"
    expect_ok info
    grep -q '^SHA-256 fingerprint: AA:BB' "$CASE/out" && fail "a forged line in info's output"
    grep -q "$(printf '\033')" "$CASE/out" && fail "an ESC byte in info's output"
    # JSON keeps the exact name
    info_json
    expect_eq "x509.registration_id" "$(jget "$CASE/info.json" x509.registration_id)" "$cn"
    mkcert cr "/CN=imp$(printf '\r')fake"
    expect_ok x509 import --cert "$CASE/cr.pem" --key "$CASE/cr.key"
    grep -q "$(printf '\r')" "$CASE/out" && fail "a CR byte in import's output"
    expect_grep 'imp\\x0Dfake' "$CASE/out"
}

t_integer_limits() {
    local v
    for v in -1 36501 18446744073709551616 99999999999999999999 0x10 " 30" 30days; do
        expect_error 2 x509 generate --cn dev --self-signed --days "$v"
    done
    for v in -2048 02048 2048x 18446744073709551616; do
        expect_error 2 x509 generate --cn dev --self-signed --rsa "$v"
    done
    for v in 31557600001 18446744073709551615 -0; do
        expect_error 2 sas-token --scope s --expiry "$v"
    done
    expect_ok init
    expect_ok x509 generate --cn dev --self-signed --days 36500 --json
    expect_json
}

t_export_identity_remove() {
    expect_ok init
    expect_error 1 export x509-cert
    expect_ok x509 generate --cn removable --self-signed
    expect_ok symmetric set --registration-id removable-sym --key "$(randkey 32)"
    expect_ok identity remove x509
    expect_error 1 export x509-cert
    info_json
    expect_eq "x509.present" "$(jget "$CASE/info.json" x509.present)" false
    expect_eq "symmetric.present" "$(jget "$CASE/info.json" symmetric.present)" true
    expect_error 1 identity remove x509
    expect_ok identity remove symmetric
    info_json
    expect_eq "symmetric.present" "$(jget "$CASE/info.json" symmetric.present)" false
}

t_info_empty() {
    # no store at all: info still answers (exit 0) with a reason per attestation
    info_json
    local a
    for a in x509 symmetric tpm; do
        expect_eq "$a.present" "$(jget "$CASE/info.json" "$a.present")" false
        [ -n "$(jget "$CASE/info.json" "$a.reason")" ] || fail "$a: no reason"
        [ -n "$(jget "$CASE/info.json" "$a.backend")" ] || fail "$a: no backend"
    done
    expect_eq "store_dir" "$(jget "$CASE/info.json" store_dir)" "$PROVHSM_STORE"
    # the reasons are in the output, not scattered over stderr as log lines
    grep -q "^provhsm: error: \[" "$CASE/err" && fail "info let library error lines through"
    expect_ok info
    grep -q "^x509" "$CASE/out" || fail "text info has no x509 section"
    return 0
}

t_tpm_absent() {
    export PROVHSM_TCTI="swtpm:host=127.0.0.1,port=1"
    expect_error 1 tpm info
    grep -qi "TPM" "$CASE/err" || fail "the message does not mention the TPM"
    expect_error 1 tpm info --json
    expect_error 1 tpm sign --data hello
    expect_error 1 tpm activate --blob "$FIXTURES/tpm-activation/blob1.bin"
    expect_error 1 tpm clear-identity
    expect_ok init
    expect_error 1 sas-token --type tpm --scope s --expiry 60
    info_json
    expect_eq "tpm.present" "$(jget "$CASE/info.json" tpm.present)" false
    [ -n "$(jget "$CASE/info.json" tpm.reason)" ] || fail "tpm: no reason"
}

# Starts swtpm on a copy of the fixture state; sets PROVHSM_TCTI. Returns 1 without swtpm.
# start_swtpm STATE_DIR NAME: a swtpm on STATE_DIR, pid in $CASE/NAME.pid, log in
# $CASE/NAME.log; prints its TCTI. Other tests start simulators in parallel: it picks a
# port P with P and P+1 both free, and tries again with another pair when swtpm loses the
# race for one of them.
start_swtpm() {
    local state=$1 name=$2 port
    command -v swtpm >/dev/null 2>&1 || return 1
    for _ in $(seq 20); do
        port=$(python3 -c '
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 1))
    except OSError:
        continue
    print(p)
    break')
        rm -f "$CASE/$name.pid"
        if swtpm socket --tpm2 --tpmstate dir="$state" \
            --server type=tcp,port="$port",bindaddr=127.0.0.1 \
            --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
            --flags not-need-init,startup-clear --pid file="$CASE/$name.pid" \
            --log file="$CASE/$name.log" --daemon 2>>"$CASE/$name.log"; then
            for _ in $(seq 50); do
                [ -s "$CASE/$name.pid" ] &&
                    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$port" 2>/dev/null &&
                    break
                sleep 0.1
            done
            if [ -s "$CASE/$name.pid" ]; then
                echo "swtpm:host=127.0.0.1,port=$port"
                return 0
            fi
        fi
        sleep 0.2
    done
    return 1
}

# The swtpm on a copy of the fixture's state (its known EK and SRK); sets PROVHSM_TCTI.
start_fixture_swtpm() {
    local tcti
    cp -r "$FIXTURES/tpm-activation/swtpm-state" "$CASE/tpmstate" || return 1
    tcti=$(start_swtpm "$CASE/tpmstate" swtpm) || return 1
    cp "$CASE/swtpm.pid" "$WORK/swtpm.pid"
    export PROVHSM_TCTI=$tcti
}

stop_fixture_swtpm() {
    [ -s "$CASE/swtpm.pid" ] && kill "$(cat "$CASE/swtpm.pid")" 2>/dev/null
    rm -f "$WORK/swtpm.pid"
}

t_tpm_known_answers() {
    local fx=$FIXTURES/tpm-activation regid payload key2 token
    start_fixture_swtpm || fail "swtpm did not start (see $CASE/swtpm.log)"
    trap stop_fixture_swtpm EXIT
    expect_ok tpm info --json
    expect_json
    regid=$(jget "$CASE/out" registration_id)
    expect_eq "registration id" "$regid" "$(tr -d ' \n' <"$fx/registration-id.txt")"
    expect_eq "endorsement key" "$(jget "$CASE/out" endorsement_key)" \
        "$(openssl base64 -A <"$fx/ek.tpm2b")"
    expect_eq "storage root key" "$(jget "$CASE/out" storage_root_key)" \
        "$(openssl base64 -A <"$fx/srk.tpm2b")"
    # and base32(SHA-256(EK)) recomputed here
    expect_eq "registration id from the EK" "$regid" "$(python3 -c '
import base64, hashlib, sys
ek = base64.b64decode(sys.argv[1])
print(base64.b32encode(hashlib.sha256(ek).digest()).decode().lower().rstrip("="))' \
        "$(jget "$CASE/out" endorsement_key)")"
    expect_ok tpm info
    expect_grep "$regid" "$CASE/out"

    payload=$(cat "$fx/payload.txt")
    expect_error 1 tpm sign --data "$payload"
    info_json
    expect_eq "tpm.present" "$(jget "$CASE/info.json" tpm.present)" true
    expect_eq "tpm.registration_id" "$(jget "$CASE/info.json" tpm.registration_id)" "$regid"
    expect_eq "tpm.identity_key_activated" \
        "$(jget "$CASE/info.json" tpm.identity_key_activated)" false

    # a malformed blob is refused and changes nothing
    head -c 40 "$fx/blob1.bin" >"$CASE/short.bin"
    expect_error 1 tpm activate --blob "$CASE/short.bin"

    expect_ok tpm activate --blob "$fx/blob1.bin"
    expect_ok tpm sign --data "$payload"
    expect_eq "signature 1" "$(OUT)" "$(hexfile_to_b64 "$fx/hmac-1.hex")"
    info_json
    expect_eq "tpm.identity_key_activated" \
        "$(jget "$CASE/info.json" tpm.identity_key_activated)" true

    # the second blob as base64 text on stdin, as the service sends it
    openssl base64 <"$fx/blob2.bin" >"$CASE/blob2.b64"
    run_stdin "$CASE/blob2.b64" tpm activate --blob -
    [ "$RC" = 0 ] || fail "activate with base64 on stdin exited $RC"
    expect_ok tpm sign --file "$fx/payload.txt" --json
    expect_json
    expect_eq "signature 2" "$(jget "$CASE/out" signature)" \
        "$(hexfile_to_b64 "$fx/hmac-2.hex")"

    key2=$(tr -d ' \n' <"$fx/identity-key-2.hex")
    expect_ok sas-token --type tpm --scope "0ne00000001/registrations/$regid" --expiry 900
    token=$(OUT)
    check_sas "$token" "0ne00000001/registrations/$regid" "$key2" registration 900

    expect_ok tpm clear-identity
    expect_error 1 tpm sign --data "$payload"
    expect_error 1 tpm clear-identity
}

t_tpm_external() {
    export PROVHSM_TCTI=$PROVHSM_TEST_TCTI
    local regid
    expect_ok tpm info --json
    expect_json
    regid=$(jget "$CASE/out" registration_id)
    [[ $regid =~ ^[a-z2-7]{52}$ ]] || fail "registration id '$regid' is not 52 base32 characters"
    expect_eq "registration id from the EK" "$regid" "$(python3 -c '
import base64, hashlib, sys
ek = base64.b64decode(sys.argv[1])
print(base64.b32encode(hashlib.sha256(ek).digest()).decode().lower().rstrip("="))' \
        "$(jget "$CASE/out" endorsement_key)")"
    info_json
    expect_eq "tpm.present" "$(jget "$CASE/info.json" tpm.present)" true
    expect_eq "tpm.registration_id" "$(jget "$CASE/info.json" tpm.registration_id)" "$regid"
    printf 'not an activation blob' >"$CASE/junk.bin"
    expect_error 1 tpm activate --blob "$CASE/junk.bin"
    run tpm sign --data hello --json
    if [ "$RC" = 0 ]; then
        expect_json
        expect_eq "signature length" \
            "$(jget "$CASE/out" signature | openssl base64 -d -A | wc -c | tr -d ' ')" 32
    else
        expect_error 1 tpm sign --data hello
    fi
}

# A key typed at a terminal (`--key -`) is not echoed. script(1) gives the tool a pty;
# the key must not come back in what the terminal shows, and it must be stored.
t_tty_key_not_echoed() {
    local key
    if ! command -v script >/dev/null 2>&1; then
        echo "note: no script(1); the terminal case is not run"
        return 0
    fi
    expect_ok init
    key=$(randkey 32)
    (
        sleep 0.5
        printf '%s\n' "$key"
    ) | script -qec "'$TOOL' symmetric set --registration-id tty-dev --key -" /dev/null \
        >"$CASE/tty.txt" 2>&1 || fail "symmetric set on a terminal failed: $(cat "$CASE/tty.txt")"
    grep -q "stored symmetric identity for tty-dev" "$CASE/tty.txt" ||
        fail "no confirmation on the terminal: $(cat "$CASE/tty.txt")"
    if grep -qF "$key" "$CASE/tty.txt"; then
        fail "the key was echoed on the terminal"
    fi
    info_json
    expect_eq "symmetric.registration_id" "$(jget "$CASE/info.json" symmetric.registration_id)" \
        tty-dev
}

# Signs $CASE/NAME.csr with $CASE/ca.pem into $CASE/NAME.pem.
sign_csr() {
    openssl x509 -req -in "$CASE/$1.csr" -CA "$CASE/ca.pem" -CAkey "$CASE/ca.key" \
        -CAserial "$CASE/ca.srl" -CAcreateserial -days 10 -out "$CASE/$1.pem" >/dev/null 2>&1 ||
        fail "openssl could not sign $1.csr"
}

# A second request over a pending one is refused without --force, naming the pending one
# (its CN and date); the pending key survives the refusal, and --force replaces it.
t_csr_pending_refused() {
    local before after
    expect_ok init
    before=$(date -u +%Y-%m-%d)
    expect_ok x509 generate --cn dev-first --csr "$CASE/first.csr"
    after=$(date -u +%Y-%m-%d)
    expect_error 1 x509 generate --cn dev-second --csr "$CASE/second.csr"
    expect_grep "CN=dev-first" "$CASE/err"
    grep -q -e "$before" -e "$after" "$CASE/err" || fail "the refusal does not say when"
    expect_grep "--force" "$CASE/err"
    [ -e "$CASE/second.csr" ] && fail "a refused request left second.csr behind"
    mkcert ca "/CN=Pending Test CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    sign_csr first
    expect_ok x509 import --cert "$CASE/first.pem"
    # the import used the pending key: the next request needs no --force
    expect_ok x509 generate --cn dev-third --csr "$CASE/third.csr"
    expect_ok x509 generate --cn dev-fourth --csr "$CASE/fourth.csr" --force
    sign_csr third
    sign_csr fourth
    expect_error 1 x509 import --cert "$CASE/third.pem"
    expect_ok x509 import --cert "$CASE/fourth.pem"
    info_json
    expect_eq "x509.registration_id" "$(jget "$CASE/info.json" x509.registration_id)" dev-fourth
}

# init neither uses nor chmods an existing store directory that others can enter.
t_init_existing_dir() {
    mkdir -m 755 "$PROVHSM_STORE" || fail "mkdir"
    expect_error 1 init
    expect_grep "$PROVHSM_STORE" "$CASE/err"
    expect_grep "0755" "$CASE/err"
    expect_eq "mode of the existing directory" "$(stat -c %a "$PROVHSM_STORE")" 755
    [ -e "$PROVHSM_STORE/store.meta" ] && fail "a refused init wrote a store"
    chmod 700 "$PROVHSM_STORE"
    expect_ok init
    expect_eq "store mode" "$(stat -c %a "$PROVHSM_STORE")" 700
}

# The configuration file may name a TCTI library to load: one that others can write, a
# link, a FIFO or another user's file is refused, naming the file.
t_config_file_safety() {
    local conf=$CASE/provhsm.conf mode
    expect_ok init
    printf '[log]\nlevel = warn\n' >"$conf"
    chmod 644 "$conf"
    expect_ok --config "$conf" info
    for mode in 664 646 620; do
        chmod "$mode" "$conf"
        expect_error 1 --config "$conf" info
        expect_grep "$conf" "$CASE/err"
        expect_grep "0$mode" "$CASE/err"
    done
    PROVHSM_CONFIG=$conf run info
    [ "$RC" = 1 ] || fail "a group-writable PROVHSM_CONFIG file: exit $RC, expected 1"
    expect_grep "PROVHSM_CONFIG" "$CASE/err"
    chmod 644 "$conf"
    ln -s "$conf" "$CASE/link.conf"
    expect_error 1 --config "$CASE/link.conf" info
    expect_grep "symbolic link" "$CASE/err"
    mkfifo "$CASE/fifo.conf"
    timeout 20 "$TOOL" --config "$CASE/fifo.conf" info >"$CASE/out" 2>"$CASE/err" </dev/null
    RC=$?
    [ "$RC" = 124 ] && fail "a FIFO as configuration file blocked"
    [ "$RC" = 1 ] || fail "a FIFO as configuration file: exit $RC, expected 1"
    expect_grep "not a regular file" "$CASE/err"
    if [ "$(id -u)" = 0 ]; then
        cp "$conf" "$CASE/other.conf"
        chown 4242 "$CASE/other.conf"
        expect_error 1 --config "$CASE/other.conf" info
        expect_grep "owner uid 4242" "$CASE/err"
    else
        echo "note: not root: a configuration file of another owner is not tried"
    fi
}

# x509 import refuses a chain out of order and keeps the identity in place.
t_import_chain_order() {
    local fp0 chain
    expect_ok init
    expect_ok x509 generate --cn dev-kept --self-signed
    expect_ok export x509-cert
    fp0=$(fingerprint "$CASE/out")
    mkcert root "/CN=Order Root" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    mkcert other "/CN=Unrelated CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n' \
        >"$CASE/ca.ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$CASE/int.key" \
        -out "$CASE/int.csr" -subj "/CN=Order Intermediate" >/dev/null 2>&1 || fail "openssl req"
    openssl x509 -req -in "$CASE/int.csr" -CA "$CASE/root.pem" -CAkey "$CASE/root.key" \
        -CAcreateserial -CAserial "$CASE/root.srl" -days 10 -extfile "$CASE/ca.ext" \
        -out "$CASE/int.pem" >/dev/null 2>&1 || fail "openssl could not sign the intermediate"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$CASE/leaf.key" \
        -out "$CASE/leaf.csr" -subj "/CN=dev-chained" >/dev/null 2>&1 || fail "openssl req"
    openssl x509 -req -in "$CASE/leaf.csr" -CA "$CASE/int.pem" -CAkey "$CASE/int.key" \
        -CAcreateserial -CAserial "$CASE/int.srl" -days 10 -out "$CASE/leaf.pem" \
        >/dev/null 2>&1 || fail "openssl could not sign the leaf"
    cat "$CASE/leaf.pem" "$CASE/other.pem" >"$CASE/unrelated.pem"
    cat "$CASE/leaf.pem" "$CASE/root.pem" "$CASE/int.pem" >"$CASE/root-first.pem"
    cat "$CASE/leaf.pem" "$CASE/int.pem" "$CASE/root.pem" >"$CASE/in-order.pem"
    for chain in unrelated root-first; do
        expect_error 1 x509 import --cert "$CASE/$chain.pem" --key "$CASE/leaf.key"
        expect_grep "not issued by" "$CASE/err"
        expect_ok export x509-cert
        expect_eq "fingerprint after refusing $chain" "$(fingerprint "$CASE/out")" "$fp0"
    done
    expect_ok x509 import --cert "$CASE/in-order.pem" --key "$CASE/leaf.key"
    expect_ok export x509-cert
    expect_eq "fingerprint after import" "$(fingerprint "$CASE/out")" \
        "$(fingerprint "$CASE/leaf.pem")"
}

# A store write is: fsync of the temp file, rename over the entry, fsync of the directory
# (seen in the system calls the tool makes, with strace).
t_write_order() {
    if ! command -v strace >/dev/null 2>&1; then
        echo "note: no strace: the order of a write's system calls is not checked"
        return 0
    fi
    expect_ok init
    # LeakSanitizer cannot run under ptrace: off for this one run of a sanitizer build
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
        strace -f -y -qq -e trace=fsync,fdatasync,rename,renameat,renameat2 -o "$CASE/trace" \
        "$TOOL" symmetric set --registration-id order-dev --key "$(randkey 32)" \
        >"$CASE/out" 2>"$CASE/err" </dev/null || fail "symmetric set under strace failed"
    python3 - "$CASE/trace" "$(cd "$PROVHSM_STORE" && pwd -P)" <<'EOF' ||
import re, sys
trace, store = sys.argv[1], sys.argv[2]
events = []
for line in open(trace):
    m = re.search(r'\b(?:fsync|fdatasync)\(\d+<([^>]*)>\)\s*=\s*0', line)
    if m:
        events.append(("fsync", m.group(1)))
        continue
    m = re.search(r'\brename(?:at2?)?\(.*"(?:[^"]*/)?(\.tmp-[0-9a-f]{16}-symmetric\.entry)", '
                  r'(?:\d+<[^>]*>, )?"(?:[^"]*/)?symmetric\.entry".*\)\s*=\s*0', line)
    if m:
        events.append(("rename", m.group(1)))
renames = [i for i, e in enumerate(events) if e[0] == "rename"]
if len(renames) != 1:
    sys.exit("expected one rename onto symmetric.entry, saw %d: %s" % (len(renames), events))
r = renames[0]
tmp = events[r][1]
if not any(e == ("fsync", store + "/" + tmp) for e in events[:r]):
    sys.exit("the temp file %s was not fsync'ed before the rename: %s" % (tmp, events))
if not any(e == ("fsync", store) for e in events[r + 1:]):
    sys.exit("the store directory was not fsync'ed after the rename: %s" % events)
EOF
        fail "the write order is not fsync, rename, fsync of the directory"
    info_json
    expect_eq "symmetric.registration_id" "$(jget "$CASE/info.json" symmetric.registration_id)" \
        order-dev
}

# ---- driver ----------------------------------------------------------------------------

CASES=(t_help t_usage_errors t_init_twice t_config_option t_x509_self_signed t_x509_force
    t_store_no_cleartext t_csr_chain t_csr_stdout t_csr_no_store t_import_mismatch
    t_import_no_cn t_import_expired t_json_escaping t_symmetric_invalid t_symmetric_stdin
    t_derive t_sas_symmetric t_sas_errors t_csr_file_safety t_stdin_secret_edges
    t_text_output_controls t_integer_limits t_export_identity_remove t_info_empty t_tpm_absent
    t_tty_key_not_echoed)
CASES+=(t_file_arg_fifo t_tty_interrupt_restores_echo t_activate_empty_blob t_thumbprint
    t_sas_far_expiry)
CASES+=(t_service_user t_x509_p384)
CASES+=(t_csr_pending_refused t_init_existing_dir t_config_file_safety t_import_chain_order
    t_write_order)
if [ "${PROVHSM_TEST_WITH_TPM:-1}" = 0 ]; then
    echo "note: the library was built without TPM support: only the TPM-absent case runs"
elif [ -n "${PROVHSM_TEST_TCTI:-}" ]; then
    CASES+=(t_tpm_external)
elif command -v swtpm >/dev/null 2>&1; then
    CASES+=(t_tpm_known_answers)
    CASES+=(t_sealed_no_tpm t_sealed_store_tool t_sealed_pcr_values)
    command -v tpm2_create >/dev/null 2>&1 && CASES+=(t_x509_tpm_tool)
else
    echo "note: neither PROVHSM_TEST_TCTI nor swtpm: the TPM known-answer case is not run"
fi
if [ "${PROVHSM_TEST_WITH_PKCS11:-1}" = 1 ] && [ -e "$SOFTHSM_MODULE" ] &&
    command -v softhsm2-util >/dev/null 2>&1; then
    CASES+=(t_x509_pkcs11_tool)
else
    echo "note: no SoftHSM2 (or a build without PKCS#11): the PKCS#11 case is not run"
fi
if [ $# -gt 0 ]; then
    CASES=("$@")
fi

passed=0
# PROVHSM_TOOL_CASES="t_a t_b": run only those cases (while working on them)
if [ -n "${PROVHSM_TOOL_CASES:-}" ]; then
    read -ra CASES <<<"$PROVHSM_TOOL_CASES"
fi
failed=0
for c in "${CASES[@]}"; do
    CASE=$WORK/$c
    mkdir -p "$CASE"
    : >"$CASE/empty.conf"
    chmod 644 "$CASE/empty.conf" # a umask of 002 would make it group-writable: refused
    (
        export PROVHSM_STORE=$CASE/store HOME=$CASE PROVHSM_CONFIG=$CASE/empty.conf
        unset PROVHSM_LOG PROVHSM_PASSPHRASE PROVHSM_TCTI XDG_DATA_HOME XDG_CONFIG_HOME
        cd "$CASE" || exit 1
        "$c"
    ) >"$CASE.log" 2>&1
    status=$?
    if [ $status = 0 ]; then
        passed=$((passed + 1))
        echo "ok   $c"
    else
        failed=$((failed + 1))
        echo "FAIL $c"
        cat "$CASE.log"
    fi
    # a case that died before stopping its swtpm
    if [ -s "$WORK/swtpm.pid" ]; then
        kill "$(cat "$WORK/swtpm.pid")" 2>/dev/null
        rm -f "$WORK/swtpm.pid"
    fi
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
