#!/usr/bin/env bash
# A TPM test program whose swtpm cannot start must fail its group setup cleanly: a
# non-zero cmocka result and "GROUP SETUP" in its output, never a crash (cmocka runs the
# group teardown after a failed group setup, so a setup that also cleaned up freed
# everything twice). PROVHSM_TEST_SWTPM points the fixture at a program that exits at once.
# Registered by tests/integration/CMakeLists.txt:
#   setup_failure.sh EMULATOR PROGRAM...   (EMULATOR: "" natively, else a ;-separated command)
set -uo pipefail

IFS=';' read -r -a emulator <<<"${1:-}"
shift
failed=0
for program in "$@"; do
    name=$(basename "$program")
    out=$(PROVHSM_TEST_SWTPM=/bin/false "${emulator[@]}" "$program" 2>&1)
    rc=$?
    if ((rc == 77)); then
        echo "skip: $name: skipped before its setup (something it needs is not installed)"
    elif ((rc == 0 || rc >= 126)); then
        echo "FAIL: $name exited $rc with a swtpm that cannot start (expected a cmocka failure)"
        printf '%s\n' "$out" | tail -5 | sed 's/^/    | /'
        failed=$((failed + 1))
    elif ! grep -q 'GROUP SETUP' <<<"$out"; then
        echo "FAIL: $name did not report its group setup as failed"
        printf '%s\n' "$out" | tail -5 | sed 's/^/    | /'
        failed=$((failed + 1))
    else
        echo "ok: $name: group setup failed cleanly (exit $rc)"
    fi
done
echo "$(($# - failed)) passed, $failed failed"
((failed == 0))
