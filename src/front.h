/*
 * Process-wide state owned by the SDK-facing front (hsm_front.c) that other library
 * modules (admin API, backends) may read: the loaded configuration.
 */
#ifndef PROVHSM_FRONT_H
#define PROVHSM_FRONT_H

#include "config.h"

/*
 * Loads the configuration into *out, afresh at every call so that a changed file or
 * environment takes effect (explicit file from provhsm_config_use_file(), else
 * PROVHSM_CONFIG / /etc/provhsm/provhsm.conf, then the environment), and applies its
 * [log] level. Thread-safe. Errors are logged with file and line.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_front_config(provhsm_config *out);

#endif
