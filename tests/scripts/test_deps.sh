#!/usr/bin/env bash
# scripts/deps.sh --check against a fake dpkg, as a machine with a foreign architecture
# enabled answers: one status line per installed architecture of a package. A package
# installed for the native architecture (and another) counts as installed; one installed
# only for the foreign architecture does not.
set -u
here=$(cd "$(dirname "$0")" && pwd)
deps=$here/../../scripts/deps.sh
fake=$(mktemp -d)
trap 'rm -rf "$fake"' EXIT

# The fake dpkg-query: every package is installed for amd64 and arm64, except
# libcmocka-dev, which is installed for arm64 only, when FOREIGN_ONLY is set.
cat >"$fake/dpkg-query" <<'FAKE'
#!/usr/bin/env bash
pkg=${!#}
if [[ -n ${FOREIGN_ONLY:-} && $pkg == libcmocka-dev ]]; then
    printf 'installed arm64\n'
else
    printf 'installed amd64\ninstalled arm64\n'
fi
FAKE
printf '#!/bin/sh\necho amd64\n' >"$fake/dpkg"
chmod +x "$fake/dpkg-query" "$fake/dpkg"

failed=0
out=$(PATH=$fake:$PATH bash "$deps" --check 2>&1)
if [[ $? -ne 0 || $out != *"all"*"installed"* ]]; then
    echo "FAIL: packages installed for two architectures read as missing: $out"
    failed=1
fi
out=$(FOREIGN_ONLY=1 PATH=$fake:$PATH bash "$deps" --check 2>&1)
if [[ $? -eq 0 || $out != *"missing: libcmocka-dev"* ]]; then
    echo "FAIL: a package installed only for the foreign architecture read as installed: $out"
    failed=1
fi
((failed == 0)) && echo "deps.sh: multiarch status read correctly"
exit $failed
