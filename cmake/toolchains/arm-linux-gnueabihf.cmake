# Cross build for arm-linux-gnueabihf with Debian's multiarch packages: crossbuild-essential-*,
# the :armhf -dev packages (libssl-dev, libtss2-dev, libcmocka-dev) and
# qemu-user-static; scripts/test-cross.sh installs them.
#   cmake -S . -B build-armhf -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/arm-linux-gnueabihf.cmake
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-linux-gnueabihf-gcc)
set(CMAKE_LIBRARY_ARCHITECTURE arm-linux-gnueabihf)
# ctest runs the test programs under qemu-user. No -L /usr/arm-linux-gnueabihf: that
# prefix holds the cross toolchain's own ld.so, while libc.so.6 and every other library
# are found in the multiarch directories (/lib/arm-linux-gnueabihf), so a program would run
# with a loader and a libc of two different glibc builds, and fork() never returns in the
# child. The multiarch packages put the target's loader where the program asks for it
# (/lib/ld-linux-armhf.so.3).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-arm-static)
# programs (bash, openssl, swtpm) are the build machine's; libraries and headers the target's
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
# pkg-config reads the target architecture's .pc files, not the build machine's
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/arm-linux-gnueabihf/pkgconfig:/usr/share/pkgconfig)
