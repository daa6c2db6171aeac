# Cross build for aarch64-linux-gnu with Debian's multiarch packages: crossbuild-essential-*,
# the :arm64 -dev packages (libssl-dev, libtss2-dev, libcmocka-dev) and
# qemu-user-static; scripts/test-cross.sh installs them.
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# ctest runs the test programs under qemu-user. No -L /usr/aarch64-linux-gnu: that prefix holds the
# cross toolchain's own ld.so, while libc.so.6 and every other library are found in the
# multiarch directories (/lib/aarch64-linux-gnu), so a program would run with a loader and a libc
# of two different glibc builds, and fork() never returns in the child. The multiarch
# packages put the target's loader where the program asks for it (/lib/ld-linux-aarch64.so.1).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64-static)
# programs (bash, openssl, swtpm) are the build machine's; libraries and headers the target's
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
# pkg-config reads the target architecture's .pc files, not the build machine's
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
