/*
 * Internal logging. Every module logs through these macros with its own tag; the level
 * comes from provhsm_set_log_level(), else PROVHSM_LOG, else the configuration, else warn.
 * Lines go to the callback set with provhsm_set_log_callback() or to stderr, never stdout.
 * Never pass a secret to these functions.
 */
#ifndef PROVHSM_LOG_H
#define PROVHSM_LOG_H

#include "provhsm/provhsm.h"

#if defined(__GNUC__) || defined(__clang__)
#define PROVHSM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define PROVHSM_PRINTF(a, b)
#endif

void provhsm_log(provhsm_log_level level, const char *module, const char *fmt, ...)
    PROVHSM_PRINTF(3, 4);

/* 1 when a line at `level` would be emitted: lets callers skip costly formatting. */
int provhsm_log_enabled(provhsm_log_level level);

/*
 * Sets the level from configuration, used unless the API or PROVHSM_LOG chose one. A
 * value outside error..debug (the configuration's -1) means the file sets none.
 */
void provhsm_log_set_config_level(provhsm_log_level level);

/* Parses "error|warn|info|debug"; returns -1 for anything else. */
int provhsm_log_parse_level(const char *text);

/* Logs OpenSSL's error queue (and clears it) after a failed call named `what`. */
void provhsm_log_openssl(const char *module, const char *what);

#define PH_ERR(mod, ...)   provhsm_log(PROVHSM_LOG_ERROR, mod, __VA_ARGS__)
#define PH_WARN(mod, ...)  provhsm_log(PROVHSM_LOG_WARN, mod, __VA_ARGS__)
#define PH_INFO(mod, ...)  provhsm_log(PROVHSM_LOG_INFO, mod, __VA_ARGS__)
#define PH_DEBUG(mod, ...) provhsm_log(PROVHSM_LOG_DEBUG, mod, __VA_ARGS__)

#endif
