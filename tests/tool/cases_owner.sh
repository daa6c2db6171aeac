# Cases of test_tool.sh (sourced by it; uses its helpers: run, expect_ok, expect_error,
# expect_eq, expect_grep, jget, fail): a device's service user. The SDK application runs as
# its own user, the factory line as root.
#   t_service_user   init --owner as root; root's later commands act as the store's owner
#                    (every file stays the owner's); the owner reads the store; another
#                    non-root user is refused; a directory holding something is not given away
# Needs root (to make users); prints a note and passes when not root, as a developer's run.

# as_user USER ARGS...: runs the tool copy as USER (its gid and groups); like run().
as_user() {
    local user=$1
    shift
    setpriv --reuid="$user" --regid="$user" --init-groups "$OWNER_BASE/provhsm" "$@" \
        >"$CASE/out" 2>"$CASE/err" </dev/null
    RC=$?
}

t_service_user() {
    if [ "$(id -u)" != 0 ]; then
        echo "note: not root: the service-user case needs root to make users; not run"
        return 0
    fi
    for need in useradd userdel setpriv; do
        command -v "$need" >/dev/null 2>&1 || fail "$need is missing"
    done
    local svc=phsvc$$ other=phother$$
    OWNER_BASE=$(mktemp -d /tmp/provhsm-owner.XXXXXX)
    # shellcheck disable=SC2064 # the names are fixed now
    trap "userdel $svc 2>/dev/null; userdel $other 2>/dev/null; rm -rf '$OWNER_BASE'" EXIT
    useradd --system --no-create-home --shell /usr/sbin/nologin "$svc" || fail "useradd $svc"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$other" || fail "useradd $other"
    # a place both users can reach: the tool, an empty configuration (root's, 0644) and the store
    chmod 755 "$OWNER_BASE"
    cp "$TOOL" "$OWNER_BASE/provhsm" && chmod 755 "$OWNER_BASE/provhsm" || fail "copy the tool"
    install -m 0644 /dev/null "$OWNER_BASE/empty.conf" || fail "make the configuration"
    export PROVHSM_CONFIG=$OWNER_BASE/empty.conf PROVHSM_STORE=$OWNER_BASE/store
    local store=$PROVHSM_STORE

    # init --owner as root: the store is the service user's, 0700
    expect_ok init --owner "$svc"
    expect_eq "init prints" "$(cat "$CASE/out")" "$store"
    expect_eq "store directory" "$(stat -c %U:%a "$store")" "$svc:700"
    [ -z "$(find "$store" ! -user "$svc")" ] || fail "files not owned by $svc: $(find "$store" ! -user "$svc")"

    # root's later commands run as the owner: nothing becomes root's
    expect_ok -v x509 generate --cn owner-device --self-signed --days 30
    expect_grep "acting as $svc" "$CASE/err"
    [ -z "$(find "$store" ! -user "$svc")" ] || fail "root's generate left files of another owner: $(find "$store" ! -user "$svc" -printf '%p %u\n')"
    expect_ok export x509-cert
    cp "$CASE/out" "$CASE/cert-root.pem"

    # the owner reads it through the SDK's tables, and gets the same certificate
    as_user "$svc" export x509-cert
    [ "$RC" = 0 ] || fail "$svc cannot read its store: $(cat "$CASE/err")"
    cmp -s "$CASE/out" "$CASE/cert-root.pem" || fail "$svc read another certificate than root"
    as_user "$svc" info --json
    [ "$RC" = 0 ] || fail "$svc: info failed: $(cat "$CASE/err")"
    expect_eq "x509 identity seen by $svc" "$(jget "$CASE/out" x509.present)" true

    # another non-root user is refused, with an error, and cannot change the store
    as_user "$other" export x509-cert
    [ "$RC" = 1 ] || fail "$other reading $svc's store exited $RC, expected 1"
    grep -q '^provhsm: error: ' "$CASE/err" || fail "$other: no error line"
    as_user "$other" symmetric set --registration-id intruder --key "$(head -c 32 /dev/urandom | base64)"
    [ "$RC" = 1 ] || fail "$other writing $svc's store exited $RC, expected 1"

    # a directory of root's that holds something is not given away, nor is its mode changed
    mkdir -m 0700 "$OWNER_BASE/busy" && echo data >"$OWNER_BASE/busy/file"
    PROVHSM_STORE=$OWNER_BASE/busy expect_error 1 init --owner "$svc"
    expect_grep "not an empty directory" "$CASE/err"
    expect_eq "busy directory" "$(stat -c %U:%a "$OWNER_BASE/busy")" "root:700"

    # an empty directory of root's (as a package makes it) is handed over
    mkdir -m 0700 "$OWNER_BASE/empty"
    PROVHSM_STORE=$OWNER_BASE/empty expect_ok init --owner "$svc:$other"
    expect_eq "handed-over directory" "$(stat -c %U:%G:%a "$OWNER_BASE/empty")" "$svc:$other:700"

    # not root: --owner is refused
    as_user "$other" init --owner "$svc"
    [ "$RC" = 1 ] || fail "init --owner by $other exited $RC, expected 1"
    expect_grep "must be run as root" "$CASE/err"
}
