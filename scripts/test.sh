#!/usr/bin/env bash
# `make test`: every check the project has, in three builds, each in its own directory:
#   plain   build/       RelWithDebInfo; all ctest tests (unit, conformance, tool, link,
#                        symbols, integration with swtpm, valgrind runs)
#   asan    build-asan/  -fsanitize=address,undefined; all ctest tests except label noasan
#   fuzz    build-fuzz/  clang, -DPROVHSM_FUZZ=ON; only the fuzz.* tests (FUZZ_SECONDS each)
# A failing stage does not stop the later ones; the summary at the end lists each, and the
# exit status is non-zero when any failed. JOBS (default 2) sets build and ctest parallelism.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
jobs=${JOBS:-2}
stages=()
ctest_log=$(mktemp)
trap 'rm -f "$ctest_log"' EXIT
results=()
times=()
failed=0

banner() {
    printf '\n==== %s ====\n' "$*"
}

# run_stage NAME COMMAND...: runs the command, records pass/fail and duration.
run_stage() {
    local name=$1
    shift
    local start=$SECONDS rc
    banner "$name"
    "$@"
    rc=$?
    stages+=("$name")
    times+=("$((SECONDS - start))s")
    if ((rc == 0)); then
        results+=("PASS")
    else
        results+=("FAIL (exit $rc)")
        failed=1
    fi
    return 0
}

configure_build() { # DIR CMAKE-ARGS...
    local dir=$1
    shift
    cmake -S . -B "$dir" "$@" && cmake --build "$dir" -j "$jobs"
}

stage_plain() {
    configure_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
        ctest --test-dir build --output-on-failure -j "$jobs" --timeout 1200 | tee -a "$ctest_log"
}

stage_asan() {
    configure_build build-asan -DCMAKE_BUILD_TYPE=Debug \
        -DPROVHSM_SANITIZE=address,undefined -DPROVHSM_BUILD_BENCH=OFF &&
        ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1} \
            UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
            ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 1200 -LE noasan |
            tee -a "$ctest_log"
}

# Every fuzz target runs FUZZ_SECONDS (default 25: thirteen targets, two at a time, and the
# build fit in three minutes on two cores). Passed on every run, because the value cached
# in build-fuzz/ would otherwise win over a changed default.
stage_fuzz() {
    CC=clang configure_build build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DPROVHSM_FUZZ=ON -DPROVHSM_BUILD_BENCH=OFF \
        -DPROVHSM_FUZZ_SECONDS="${FUZZ_SECONDS:-25}" &&
        ctest --test-dir build-fuzz --output-on-failure -j "$jobs" -R '^fuzz\.' \
            --no-tests=error | tee -a "$ctest_log"
}

run_stage "dependencies" bash scripts/deps.sh --check
if ((failed)); then
    echo "test: packages are missing; run 'make deps' first" >&2
    exit 1
fi
run_stage "plain build + ctest (build/)" stage_plain
run_stage "ASan+UBSan build + ctest -LE noasan (build-asan/)" stage_asan
run_stage "fuzz build + ctest -R ^fuzz. (build-fuzz/)" stage_fuzz

banner "summary"
for i in "${!stages[@]}"; do
    printf '  %-55s %-14s %s\n' "${stages[$i]}" "${results[$i]}" "${times[$i]}"
done
# one closing count over the three ctest runs ("N tests failed out of T" each)
total=0
bad=0
while read -r line; do
    if [[ $line =~ tests\ passed,\ ([0-9]+)\ tests?\ failed\ out\ of\ ([0-9]+) ]]; then
        bad=$((bad + BASH_REMATCH[1]))
        total=$((total + BASH_REMATCH[2]))
    fi
done <"$ctest_log"
passed=$((total - bad))
if ((failed && bad == 0)); then
    bad=1 # a stage failed outside ctest (configure or build)
fi
if ((failed)); then
    echo "make test: FAILED"
    echo "tests: $passed passed, $bad failed"
    exit 1
fi
echo "make test: all stages passed"
echo "tests: $passed passed, $bad failed"
