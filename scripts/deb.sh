#!/usr/bin/env bash
# Builds the Debian packages (make deb): libprovhsm-dev (static library, headers, provhsm.pc,
# CMake package, hsm_custom_lib.txt) and provhsm (the tool, its documentation, the default
# /etc/provhsm/provhsm.conf as a conffile, the store directory made by postinst), for amd64
# and arm64 (cross-compiled with cmake/toolchains/aarch64-linux-gnu.cmake). Then runs
# lintian on all four; tests/deb/install_test.sh, which installs the amd64 pair into a
# clean Debian root and builds the link-test consumer against them; and
# tests/deb/cross_test.sh, which cross-builds the consumer against the arm64 pair unpacked
# as a sysroot and runs it under qemu-user.
#
#   scripts/deb.sh [--no-test] [ARCH...]     ARCH: amd64, arm64 (default: both)
#
# Packaging files: packaging/deb/ (its README.md says what goes where and why each lintian
# override exists). Builds go to build-deb-<arch>/, packages to build-deb-out/. Nothing is
# installed on this machine except the Debian packages the build needs (as root, as
# scripts/deps.sh does).
set -euo pipefail

cd "$(dirname "$0")/.."
src=$PWD
pkgdir=$src/packaging/deb
out=$src/build-deb-out
JOBS=${JOBS:-2}

run_test=1
archs=()
for arg in "$@"; do
    case $arg in
    --no-test) run_test=0 ;;
    amd64 | arm64) archs+=("$arg") ;;
    *)
        echo "usage: $0 [--no-test] [amd64] [arm64]" >&2
        exit 2
        ;;
    esac
done
((${#archs[@]} > 0)) || archs=(amd64 arm64)

fail() {
    echo "deb: $*" >&2
    exit 1
}

version=$(sed -n 's/^project(provhsm VERSION \([0-9][0-9.]*\).*/\1/p' CMakeLists.txt)
[[ -n $version ]] || fail "no project(provhsm VERSION ...) in CMakeLists.txt"
maintainer="The provhsm authors <maintainers@users.noreply.r-seed-db58a3e6.example>"
# file dates, archive dates and the changelog's date: the last commit's, so that the same
# tree gives the same packages
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

# ---- what the build needs ---------------------------------------------------------------
# installed PACKAGE[:ARCH]: true when PACKAGE is installed for ARCH (default: this machine's
# architecture) or for all. dpkg-query prints one line per installed architecture, so a
# -dev package installed only for a foreign architecture must not count for the native one.
installed() {
    local name=${1%%:*} want status arch
    want=$(dpkg --print-architecture)
    if [[ $1 == *:* ]]; then
        want=${1#*:}
    fi
    while read -r status arch; do
        if [[ $status == installed && ($arch == "$want" || $arch == all) ]]; then
            return 0
        fi
    done < <(dpkg-query -W -f='${db:Status-Status} ${Architecture}\n' "$name" 2>/dev/null || true)
    return 1
}

ensure_packages() {
    local needed=(cmake pkg-config dpkg-dev lintian libssl-dev libtss2-dev libp11-kit-dev debootstrap)
    local a
    for a in "${archs[@]}"; do
        if [[ $a != "$(dpkg --print-architecture)" ]]; then
            needed+=("crossbuild-essential-$a" "libssl-dev:$a" "libtss2-dev:$a" "libp11-kit-dev:$a" qemu-user-static file)
        fi
    done
    local missing=() p
    for p in "${needed[@]}"; do
        installed "$p" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) -ne 0 ]]; then
        fail "missing packages: ${missing[*]}; as root run: apt-get install ${missing[*]}" \
            "(after dpkg --add-architecture for a foreign architecture)"
    fi
    echo "deb: installing ${missing[*]}"
    for a in "${archs[@]}"; do
        if [[ $a != "$(dpkg --print-architecture)" ]] &&
            ! dpkg --print-foreign-architectures | grep -qx "$a"; then
            dpkg --add-architecture "$a"
        fi
    done
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ---- one architecture --------------------------------------------------------------------
# build_tree ARCH: configure and build build-deb-ARCH with Debian's build flags, install it
# into build-deb-ARCH/stage (prefix /usr).
build_tree() {
    local arch=$1 build=$src/build-deb-$1
    local toolchain=()
    if [[ $arch == arm64 ]]; then
        toolchain=(-DCMAKE_TOOLCHAIN_FILE="$src/cmake/toolchains/aarch64-linux-gnu.cmake")
    fi
    local cflags ldflags triplet
    triplet=$(dpkg-architecture -a"$arch" -qDEB_HOST_MULTIARCH 2>/dev/null)
    cflags="$(DEB_HOST_ARCH=$arch DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get CFLAGS)"
    cflags+=" $(DEB_HOST_ARCH=$arch DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get CPPFLAGS)"
    ldflags="$(DEB_HOST_ARCH=$arch DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get LDFLAGS)"
    echo "deb: building $arch in ${build#"$src"/}"
    mkdir -p "$build"
    # CMAKE_BUILD_TYPE=None: the flags are Debian's, nothing added by a build type.
    # GNUInstallDirs picks the multiarch lib/<triplet> only for native builds: set it.
    cmake -S "$src" -B "$build" "${toolchain[@]}" -DCMAKE_BUILD_TYPE=None \
        -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_INSTALL_LIBDIR="lib/$triplet" \
        -DCMAKE_C_FLAGS="$cflags" \
        -DCMAKE_EXE_LINKER_FLAGS="$ldflags" -DPROVHSM_BUILD_TESTS=OFF \
        -DPROVHSM_BUILD_BENCH=OFF >"$build/deb-configure.log" 2>&1 ||
        {
            cat "$build/deb-configure.log" >&2
            fail "configuring $arch failed"
        }
    cmake --build "$build" -j"$JOBS" >"$build/deb-build.log" 2>&1 ||
        {
            tail -40 "$build/deb-build.log" >&2
            fail "building $arch failed"
        }
    rm -rf "$build/stage"
    DESTDIR="$build/stage" cmake --install "$build" >/dev/null
}

# take STAGE ROOT PATH: move PATH (file or directory) from the install stage into a
# package root.
take() {
    local stage=$1 root=$2 path=$3
    [[ -e $stage/$path ]] || fail "the install did not produce /$path"
    mkdir -p "$(dirname "$root/$path")"
    mv "$stage/$path" "$root/$path"
}

# doc_files ROOT PACKAGE: copyright and changelog, as Debian wants them.
doc_files() {
    local root=$1 package=$2 docdir=$1/usr/share/doc/$2
    mkdir -p "$docdir"
    cp "$pkgdir/copyright" "$docdir/copyright"
    sed -e "s/@VERSION@/$version/" -e "s/@MAINTAINER@/$maintainer/" \
        -e "s/@DATE@/$(date -u -R -d "@$SOURCE_DATE_EPOCH")/" "$pkgdir/changelog" |
        gzip -9n >"$docdir/changelog.gz"
}

# finish_package ROOT PACKAGE ARCH DEPENDS: modes, dates, md5sums, control; then the .deb.
finish_package() {
    local root=$1 package=$2 arch=$3 depends=$4
    find "$root" -type d -exec chmod 0755 {} +
    find "$root" -type f -exec chmod 0644 {} +
    local exe
    for exe in usr/bin/provhsm DEBIAN/postinst DEBIAN/postrm; do
        if [[ -f $root/$exe ]]; then
            chmod 0755 "$root/$exe"
        fi
    done
    mkdir -p "$root/DEBIAN"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
        xargs -0 md5sum >DEBIAN/md5sums)
    chmod 0644 "$root/DEBIAN/md5sums"
    local size
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@MAINTAINER@/$maintainer/" \
        -e "s/@INSTALLED_SIZE@/$size/" -e "s/@DEPENDS@/$depends/" \
        "$pkgdir/control.$package" >"$root/DEBIAN/control"
    chmod 0644 "$root/DEBIAN/control"
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    dpkg-deb --root-owner-group -Zxz --build "$root" "$out/${package}_${version}_$arch.deb" \
        >/dev/null
    echo "deb: built ${out#"$src"/}/${package}_${version}_$arch.deb"
}

# shlib_depends ARCH BINARY: the Depends that BINARY's shared libraries need, from the
# shlibs/symbols files of the installed (multiarch, for a foreign ARCH) library packages.
shlib_depends() {
    local arch=$1 binary=$2 work
    work=$(mktemp -d)
    mkdir "$work/debian"
    printf 'Source: provhsm\n\nPackage: provhsm\nArchitecture: any\n' >"$work/debian/control"
    local line
    if ! line=$(cd "$work" && DEB_HOST_ARCH=$arch dpkg-shlibdeps -O -e"$binary" 2>"$work/err"); then
        cat "$work/err" >&2
        rm -rf "$work"
        fail "dpkg-shlibdeps failed for $arch"
    fi
    rm -rf "$work"
    line=${line#shlibs:Depends=}
    [[ $line == *libc6* && $line == *libssl3* && $line == *libtss2-esys* ]] ||
        fail "dpkg-shlibdeps gave an unlikely Depends for $arch: $line"
    echo "$line"
}

package_arch() {
    local arch=$1 build=$src/build-deb-$1
    local triplet strip=strip
    triplet=$(dpkg-architecture -a"$arch" -qDEB_HOST_MULTIARCH 2>/dev/null)
    if [[ $arch != "$(dpkg --print-architecture)" ]]; then
        strip=$triplet-strip
    fi
    local stage=$build/stage libdir=usr/lib/$triplet
    local dev=$build/pkg/libprovhsm-dev tool=$build/pkg/provhsm
    rm -rf "$build/pkg"
    mkdir -p "$dev" "$tool"

    # libprovhsm-dev: what `cmake --install` puts under the prefix for a consumer
    take "$stage" "$dev" usr/include/provhsm
    take "$stage" "$dev" "$libdir/libprovhsm.a"
    take "$stage" "$dev" "$libdir/pkgconfig/provhsm.pc"
    take "$stage" "$dev" "$libdir/cmake/provhsm"
    take "$stage" "$dev" usr/share/provhsm/hsm_custom_lib.txt
    # as dh_strip does for static libraries: no debug info, no compiler notes
    "$strip" --strip-debug --remove-section=.comment --remove-section=.note \
        --enable-deterministic-archives "$dev/$libdir/libprovhsm.a"
    doc_files "$dev" libprovhsm-dev
    mkdir -p "$dev/usr/share/lintian/overrides"
    cp "$pkgdir/libprovhsm-dev.lintian-overrides" "$dev/usr/share/lintian/overrides/libprovhsm-dev"

    # provhsm: the tool, its documentation, configuration and man page
    take "$stage" "$tool" usr/bin/provhsm
    "$strip" --strip-unneeded --remove-section=.comment --remove-section=.note \
        "$tool/usr/bin/provhsm"
    doc_files "$tool" provhsm
    gzip -9n <README.md >"$tool/usr/share/doc/provhsm/README.md.gz"
    gzip -9n <docs/configuration.md >"$tool/usr/share/doc/provhsm/configuration.md.gz"
    mkdir -p "$tool/usr/share/man/man1" "$tool/etc/provhsm"
    gzip -9n <"$pkgdir/provhsm.1" >"$tool/usr/share/man/man1/provhsm.1.gz"
    cp "$pkgdir/provhsm.conf" "$tool/etc/provhsm/provhsm.conf"
    mkdir -p "$tool/DEBIAN"
    echo /etc/provhsm/provhsm.conf >"$tool/DEBIAN/conffiles"
    cp "$pkgdir/provhsm.postinst" "$tool/DEBIAN/postinst"
    cp "$pkgdir/provhsm.postrm" "$tool/DEBIAN/postrm"

    # The LICENSE install() puts in the doc directory is the copyright file instead.
    rm -f "$stage/usr/share/doc/provhsm/LICENSE"
    local left
    left=$(cd "$stage" && find . -type f)
    [[ -z $left ]] || fail "installed files that no package takes (add them to scripts/deb.sh): $left"

    local depends
    depends=$(shlib_depends "$arch" "$tool/usr/bin/provhsm")
    finish_package "$dev" libprovhsm-dev "$arch" ""
    finish_package "$tool" provhsm "$arch" "$depends"
}

# lint_package DEB: lintian with the overrides shipped in the package (each explained in
# packaging/deb/README.md). Errors and warnings fail; info and pedantic tags are shown, and
# the packages have none either.
lint_package() {
    local deb=$1
    echo "deb: lintian ${deb##*/}"
    lintian --allow-root --fail-on error,warning --display-info --pedantic "$deb"
}

ensure_packages
mkdir -p "$out"
for arch in "${archs[@]}"; do
    rm -f "$out"/*_"$arch".deb
done
start=$SECONDS
for arch in "${archs[@]}"; do
    build_tree "$arch"
    package_arch "$arch"
done
for arch in "${archs[@]}"; do
    for deb in "$out"/*_"$arch".deb; do
        lint_package "$deb"
    done
done
echo "deb: packages built and lint-clean in $((SECONDS - start)) s"

if ((run_test)); then
    if [[ " ${archs[*]} " == *" amd64 "* ]]; then
        bash "$src/tests/deb/install_test.sh" "$out/libprovhsm-dev_${version}_amd64.deb" \
            "$out/provhsm_${version}_amd64.deb"
    fi
    if [[ " ${archs[*]} " == *" arm64 "* ]]; then
        bash "$src/tests/deb/cross_test.sh" "$out/libprovhsm-dev_${version}_arm64.deb" \
            "$out/provhsm_${version}_arm64.deb"
    fi
fi
