# The Debian package: `cpack -G DEB` in a build directory configured with
# -DCMAKE_INSTALL_PREFIX=/usr (the unit's ExecStart= is /usr/bin/mqtt-gateway, and the settings
# file then lands in /etc). scripts/test-package.sh builds, installs and removes it.
#
# Besides what CMakeLists.txt installs (binary, unit, schema, .env.example), the package has the
# settings file /etc/mqtt-gateway/mqtt-gateway.env as a conffile (kept on remove and on upgrade
# when changed, deleted on purge) and maintainer scripts (packaging/) that create the system user
# and its directories.

if(NOT CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  message(STATUS "packaging: CMAKE_INSTALL_PREFIX is ${CMAKE_INSTALL_PREFIX}; a Debian package "
                 "(cpack -G DEB) needs -DCMAKE_INSTALL_PREFIX=/usr")
endif()

# /etc for the prefix /usr, <prefix>/etc otherwise (GNUInstallDirs), so that a
# `cmake --install --prefix /tmp/x` stays inside /tmp/x.
set(GATEWAY_PACKAGE_CONFFILE "${CMAKE_INSTALL_FULL_SYSCONFDIR}/mqtt-gateway/mqtt-gateway.env")
install(FILES packaging/mqtt-gateway.env
        DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/mqtt-gateway
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ)
configure_file(packaging/conffiles.in ${PROJECT_BINARY_DIR}/packaging/conffiles @ONLY)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME mqtt-gateway)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "mqtt-gateway maintainers <root@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "MQTT to MariaDB/HTTP gateway daemon")
set(CPACK_PACKAGE_DESCRIPTION
    "Subscribes to MQTT topics, spools every message to disk and stores it in MariaDB or POSTs it
to an HTTP endpoint, as the flows in the database say. Runs under systemd (Type=notify,
watchdog) and serves Prometheus metrics.")
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# The shared libraries are found by dpkg-shlibdeps (dpkg-dev); adduser is for postinst. Paho C is
# pinned above what shlibdeps asks for (>= 1.3.0): at-least-once needs the PUBACK after the
# message callback, GATEWAY_MIN_PAHO_C_VERSION (CMakeLists.txt).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
if(NOT GATEWAY_MIN_PAHO_C_VERSION)
  message(FATAL_ERROR "packaging: GATEWAY_MIN_PAHO_C_VERSION is not set (CMakeLists.txt)")
endif()
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser, libpaho-mqtt1.3 (>= ${GATEWAY_MIN_PAHO_C_VERSION})")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "mariadb-server, mosquitto")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/packaging/postinst ${PROJECT_SOURCE_DIR}/packaging/prerm
    ${PROJECT_SOURCE_DIR}/packaging/postrm ${PROJECT_BINARY_DIR}/packaging/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
# RelWithDebInfo binaries are large; the package ships them stripped.
set(CPACK_STRIP_FILES TRUE)
include(CPack)
