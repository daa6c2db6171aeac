# Cases of test_tool.sh (sourced by it; uses its helpers: run, expect_ok, expect_error,
# expect_error_stdin, expect_json, jget, check_sas, mkcert, randkey, b64_to_hex, fail):
# how the tool behaves as a process and what users paste elsewhere.
#   t_file_arg_fifo            a FIFO (or device) given as a file is refused, not waited on
#   t_tty_interrupt_restores_echo  SIGINT/SIGTERM during a hidden key prompt put echo back
#   t_activate_empty_blob      an empty activation blob is a failure (1), not a usage error (2)
#   t_thumbprint               the printed thumbprint is openssl's SHA-256 fingerprint
#   t_sas_far_expiry           SAS tokens with an expiry beyond 2^32 seconds

# Runs the tool with a time limit; RC 124 means it was still waiting when the limit came.
run_limited() {
    timeout 10 "$TOOL" "$@" >"$CASE/out" 2>"$CASE/err" </dev/null
    RC=$?
}

t_file_arg_fifo() {
    command -v timeout >/dev/null 2>&1 || fail "timeout(1) is missing"
    mkfifo "$CASE/fifo" || fail "mkfifo failed"
    expect_ok init
    # nobody ever writes to the FIFO: opening it for reading would block forever
    for args in "tpm activate --blob" "tpm sign --file" "x509 import --cert"; do
        # shellcheck disable=SC2086
        run_limited $args "$CASE/fifo"
        [ "$RC" = 124 ] && fail "provhsm $args FIFO blocked"
        [ "$RC" = 1 ] || fail "provhsm $args FIFO exited $RC, expected 1"
        grep -q "not a regular file" "$CASE/err" || fail "provhsm $args FIFO: $(cat "$CASE/err")"
    done
    run_limited x509 import --cert "$CASE" # a directory
    [ "$RC" = 1 ] || fail "a directory as --cert exited $RC, expected 1"
    run_limited tpm sign --file /dev/zero # a device that never ends
    [ "$RC" = 1 ] || fail "/dev/zero as --file exited $RC, expected 1"
    grep -q "not a regular file" "$CASE/err" || fail "/dev/zero: $(cat "$CASE/err")"
}

# The tool on a pty, at its hidden key prompt, gets a signal; the pty must have echo back.
t_tty_interrupt_restores_echo() {
    local sig
    expect_ok init
    for sig in INT TERM; do
        python3 - "$TOOL" "$sig" >"$CASE/pty-$sig.txt" 2>&1 <<'EOF' ||
import fcntl, os, select, signal, subprocess, sys, termios, time

tool, signame = sys.argv[1], sys.argv[2]
master, slave = os.openpty()

def own_terminal():
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)

echo_on = lambda: bool(termios.tcgetattr(slave)[3] & termios.ECHO)
if not echo_on():
    sys.exit("echo was off before the tool started")
proc = subprocess.Popen([tool, "symmetric", "set", "--registration-id", "tty-dev", "--key", "-"],
                        stdin=slave, stdout=slave, stderr=slave, preexec_fn=own_terminal)
deadline = time.time() + 10
while echo_on() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
    while select.select([master], [], [], 0)[0]:
        os.read(master, 4096)
if echo_on():
    proc.kill()
    sys.exit("the tool never turned echo off at its prompt")
proc.send_signal(getattr(signal, "SIG" + signame))
try:
    rc = proc.wait(10)
except subprocess.TimeoutExpired:
    proc.kill()
    sys.exit("the tool did not end on SIG" + signame)
if rc != -getattr(signal, "SIG" + signame):
    sys.exit("exit status %d, expected death by SIG%s" % (rc, signame))
if not echo_on():
    sys.exit("SIG%s left the terminal without echo" % signame)
print("echo restored after SIG" + signame)
EOF
            fail "$(cat "$CASE/pty-$sig.txt")"
    done
    # nothing was stored by the interrupted commands
    run info --json
    [ "$(jget "$CASE/out" symmetric.registration_id 2>/dev/null)" = tty-dev ] &&
        fail "an interrupted symmetric set stored an identity"
    return 0
}

t_activate_empty_blob() {
    : >"$CASE/empty.bin"
    printf ' \n\r\n\t' >"$CASE/blank.txt"
    expect_error 1 tpm activate --blob "$CASE/empty.bin"
    grep -q "empty" "$CASE/err" || fail "the message does not say the blob is empty"
    expect_error 1 tpm activate --blob "$CASE/blank.txt"
    grep -q "empty" "$CASE/err" || fail "a blank base64 text: $(cat "$CASE/err")"
    expect_error_stdin 1 "$CASE/empty.bin" tpm activate --blob -
    grep -q "empty" "$CASE/err" || fail "empty stdin: $(cat "$CASE/err")"
}

# openssl's SHA-256 fingerprint of the first certificate in a PEM file, without colons.
openssl_thumbprint() {
    openssl x509 -in "$1" -noout -fingerprint -sha256 | sed 's/^[^=]*=//; s/://g'
}

t_thumbprint() {
    local thumb
    expect_ok init
    expect_ok x509 generate --cn thumb-dev --self-signed
    thumb=$(sed -n 's/^thumbprint: *//p' "$CASE/out")
    [[ $thumb =~ ^[0-9A-F]{64}$ ]] || fail "thumbprint '$thumb' is not 64 uppercase hex digits"
    expect_ok export x509-cert
    cp "$CASE/out" "$CASE/generated.pem"
    expect_eq "text thumbprint" "$thumb" "$(openssl_thumbprint "$CASE/generated.pem")"

    expect_ok x509 generate --cn thumb-dev-2 --self-signed --force --json
    expect_json
    thumb=$(jget "$CASE/out" thumbprint)
    expect_ok export x509-cert
    cp "$CASE/out" "$CASE/second.pem"
    expect_eq "JSON thumbprint" "$thumb" "$(openssl_thumbprint "$CASE/second.pem")"

    # a certificate made by openssl, imported with its key
    mkcert imported "/CN=thumb-import"
    expect_ok x509 import --cert "$CASE/imported.pem" --key "$CASE/imported.key"
    expect_eq "import's thumbprint" "$(sed -n 's/^thumbprint: *//p' "$CASE/out")" \
        "$(openssl_thumbprint "$CASE/imported.pem")"
    expect_ok x509 import --cert "$CASE/imported.pem" --key "$CASE/imported.key" --json
    expect_eq "import's JSON thumbprint" "$(jget "$CASE/out" thumbprint)" \
        "$(openssl_thumbprint "$CASE/imported.pem")"
}

t_sas_far_expiry() {
    local key hex scope lifetime=5000000000 token se
    expect_ok init
    key=$(randkey 32)
    hex=$(b64_to_hex "$key")
    expect_ok symmetric set --registration-id far-dev --key "$key"
    scope="0ne00ABCDEF/registrations/far-dev"
    expect_ok sas-token --scope "$scope" --expiry "$lifetime"
    token=$(OUT)
    check_sas "$token" "$scope" "$hex" registration "$lifetime"
    se=$(printf '%s' "$token" | sed -n 's/.*&se=\([0-9]*\).*/\1/p')
    [ "$se" -gt 4294967296 ] || fail "se=$se is not beyond 2^32"
    expect_ok sas-token --scope "$scope" --expiry "$lifetime" --json
    expect_json
    expect_eq "JSON expiry" "$(jget "$CASE/out" expiry)" \
        "$(jget "$CASE/out" token | sed -n 's/.*&se=\([0-9]*\).*/\1/p')"
    [ "$(jget "$CASE/out" expiry)" -gt 4294967296 ] || fail "JSON expiry is not beyond 2^32"
}
