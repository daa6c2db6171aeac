# Packaging: what `cmake --install` puts under the prefix, and the three ways a consumer
# finds it afterwards.
#   - find_package(provhsm): imported target provhsm::provhsm with its dependencies
#     (lib/cmake/provhsm/provhsmConfig.cmake, provhsmConfigVersion.cmake, provhsmTargets.cmake).
#   - pkg-config provhsm (lib/pkgconfig/provhsm.pc).
#   - the Azure IoT C SDK's -Dhsm_custom_lib=<list>: the value is the variable
#     hsm_custom_lib in provhsm.pc and the file share/provhsm/hsm_custom_lib.txt. It is a
#     CMake list: the installed archive, then what it needs in link order as -l flags
#     (never a path of the build machine). In provhsm.pc the archive is ${libdir}/...,
#     which pkg-config prefixes with PKG_CONFIG_SYSROOT_DIR when one is set.
# Included at the end of the top-level CMakeLists.txt; reads PROVHSM_LINK_DEPS,
# PROVHSM_PC_REQUIRES and PROVHSM_WITH_TPM from there. The SDK's hsm_client_data.h is not
# installed: the SDK brings its own.
#
# provhsm.pc and hsm_custom_lib.txt hold absolute paths, so they are written at install
# time, when the final prefix is known (`cmake --install <build> --prefix <dir>` may differ
# from CMAKE_INSTALL_PREFIX at configure time); DESTDIR is honoured.

include(CMakePackageConfigHelpers)

# Consumers inside this build (tests, examples) may use the same name as outside.
if(NOT TARGET provhsm::provhsm)
  add_library(provhsm::provhsm ALIAS provhsm)
endif()

set(PROVHSM_CMAKE_INSTALL_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/provhsm)
set(PROVHSM_PKGCONFIG_INSTALL_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
set(PROVHSM_DATA_INSTALL_DIR ${CMAKE_INSTALL_DATADIR}/provhsm)

install(TARGETS provhsm EXPORT provhsmTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/provhsm
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h")
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE DESTINATION ${CMAKE_INSTALL_DOCDIR})

# ---- CMake package -------------------------------------------------------
install(EXPORT provhsmTargets NAMESPACE provhsm:: DESTINATION ${PROVHSM_CMAKE_INSTALL_DIR})
set(PROVHSM_CONFIG_WITH_TPM 0)
if(PROVHSM_WITH_TPM)
  set(PROVHSM_CONFIG_WITH_TPM 1)
endif()
set(PROVHSM_CONFIG_WITH_PKCS11 0)
if(PROVHSM_WITH_PKCS11)
  set(PROVHSM_CONFIG_WITH_PKCS11 1)
endif()
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/provhsmConfig.cmake.in
  ${PROJECT_BINARY_DIR}/provhsmConfig.cmake
  INSTALL_DESTINATION ${PROVHSM_CMAKE_INSTALL_DIR}
  NO_SET_AND_CHECK_MACRO NO_CHECK_REQUIRED_COMPONENTS_MACRO)
# 0.x: a minor release may change the API, so only the same MAJOR.MINOR is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/provhsmConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/provhsmConfig.cmake
              ${PROJECT_BINARY_DIR}/provhsmConfigVersion.cmake
        DESTINATION ${PROVHSM_CMAKE_INSTALL_DIR})

# ---- hsm_custom_lib: the archive, then its dependencies in link order -------------------
# Threads::Threads means nothing outside CMake; on glibc it is -lpthread.
set(PROVHSM_CUSTOM_LIB_DEPS "")
foreach(dep IN LISTS PROVHSM_LINK_DEPS)
  if(dep STREQUAL "Threads::Threads")
    list(APPEND PROVHSM_CUSTOM_LIB_DEPS "-lpthread")
  elseif(TARGET ${dep})
    message(FATAL_ERROR "provhsm: PROVHSM_LINK_DEPS holds the target '${dep}'; "
                        "hsm_custom_lib needs -l flags")
  elseif(NOT dep MATCHES "^-l")
    message(FATAL_ERROR "provhsm: PROVHSM_LINK_DEPS holds '${dep}'; hsm_custom_lib names "
                        "dependencies by -l flags only, so that it holds in any sysroot")
  else()
    list(APPEND PROVHSM_CUSTOM_LIB_DEPS "${dep}")
  endif()
endforeach()
set(PROVHSM_ARCHIVE_NAME
    ${CMAKE_STATIC_LIBRARY_PREFIX}provhsm${CMAKE_STATIC_LIBRARY_SUFFIX})

set(PROVHSM_PC_CFLAGS "")
if(PROVHSM_WITH_TPM)
  set(PROVHSM_PC_CFLAGS "-DPROVHSM_WITH_TPM=1")
endif()

# Install time: configure-time values first, then the logic, which must see the final
# CMAKE_INSTALL_PREFIX (both run in the same cmake_install.cmake scope).
install(CODE "
set(_provhsm_libdir \"${CMAKE_INSTALL_LIBDIR}\")
set(_provhsm_includedir \"${CMAKE_INSTALL_INCLUDEDIR}\")
set(_provhsm_datadir \"${CMAKE_INSTALL_DATADIR}\")
set(_provhsm_archive \"${PROVHSM_ARCHIVE_NAME}\")
set(_provhsm_deps \"${PROVHSM_CUSTOM_LIB_DEPS}\")
set(_provhsm_pc_in \"${PROJECT_SOURCE_DIR}/cmake/provhsm.pc.in\")
set(_provhsm_stage_root \"${PROJECT_BINARY_DIR}/provhsm-install-stage\")
set(PC_VERSION \"${PROJECT_VERSION}\")
set(PC_REQUIRES \"${PROVHSM_PC_REQUIRES}\")
set(PC_CFLAGS \"${PROVHSM_PC_CFLAGS}\")
")
install(CODE [=[
# provhsm.pc names its directories relative to ${prefix} where it can, so pkg-config can
# relocate it; hsm_custom_lib.txt holds the absolute value.
set(PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
foreach(_d libdir includedir datadir)
  if(IS_ABSOLUTE "${_provhsm_${_d}}")
    set(_abs_${_d} "${_provhsm_${_d}}")
    set(_pc_${_d} "${_provhsm_${_d}}")
  else()
    set(_abs_${_d} "${CMAKE_INSTALL_PREFIX}/${_provhsm_${_d}}")
    set(_pc_${_d} "\${prefix}/${_provhsm_${_d}}")
  endif()
endforeach()
set(PC_LIBDIR "${_pc_libdir}")
set(PC_INCLUDEDIR "${_pc_includedir}")
set(_custom "${_abs_libdir}/${_provhsm_archive}")
set(PC_HSM_CUSTOM_LIB "\${libdir}/${_provhsm_archive}")
foreach(_dep IN LISTS _provhsm_deps)
  string(APPEND _custom ";${_dep}")
  string(APPEND PC_HSM_CUSTOM_LIB ";${_dep}")
endforeach()
# one staging directory per destination, so that parallel installs do not collide
string(MD5 _tag "$ENV{DESTDIR}${CMAKE_INSTALL_PREFIX}")
set(_stage "${_provhsm_stage_root}/${_tag}")
file(MAKE_DIRECTORY "${_stage}")
configure_file("${_provhsm_pc_in}" "${_stage}/provhsm.pc" @ONLY)
file(WRITE "${_stage}/hsm_custom_lib.txt" "${_custom}\n")
file(INSTALL DESTINATION "${_abs_libdir}/pkgconfig" TYPE FILE FILES "${_stage}/provhsm.pc")
file(INSTALL DESTINATION "${_abs_datadir}/provhsm" TYPE FILE
     FILES "${_stage}/hsm_custom_lib.txt")
]=])
