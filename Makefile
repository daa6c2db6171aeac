# Entry points for developers and CI. Builds go to build/ (plain), build-asan/ and
# build-fuzz/; nothing is installed outside the tree.
#   make deps    install (as root) or list the Debian packages needed
#   make build   configure and build build/ (RelWithDebInfo)
#   make test    plain + ASan/UBSan + fuzz builds and their tests (scripts/test.sh)
#   make test-cross  arm64 and armhf builds tested under qemu-user (scripts/test-cross.sh)
#   make demo    a software store in .demo/, the CLI, and the SDK walkthrough
#   make deb     Debian packages libprovhsm-dev and provhsm for amd64 and arm64 in
#                build-deb-out/, lintian, and their install test in a clean root (scripts/deb.sh)
#   make size    archive size and what provhsm adds to a consumer, per architecture
#                (scripts/size.sh)
#   make clean   remove the build directories and the demo store
SHELL := /bin/bash
JOBS ?= 2
export JOBS

.PHONY: all deps build test test-cross demo deb size clean

all: build

deps:
	@bash scripts/deps.sh

build:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build -j$(JOBS)

test:
	@bash scripts/test.sh

test-cross:
	@bash scripts/test-cross.sh

demo: deps build
	@bash scripts/demo.sh

deb:
	@bash scripts/deb.sh

size:
	@bash scripts/size.sh

clean:
	rm -rf build build-asan build-fuzz .demo
