/*
 * Small utilities shared by the test programs: reading fixture files, decoding hex, a
 * test's private directory and its config file. Test code only; never linked into the library.
 * Buffers are malloc'd for the caller.
 */
#ifndef PROVHSM_TESTUTIL_H
#define PROVHSM_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/*
 * Reads a whole file into a malloc'd buffer (one spare NUL byte after the data, so text
 * files can be used as strings). 0 on success, -1 on failure (nothing allocated).
 */
int provhsm_test_read_file(const char *path, uint8_t **buf_out, size_t *len_out);

/*
 * Reads $PROVHSM_FIXTURES/<relpath>. -1 when PROVHSM_FIXTURES is unset or the file
 * cannot be read.
 */
int provhsm_test_read_fixture(const char *relpath, uint8_t **buf_out, size_t *len_out);

/*
 * Decodes hex (either case; trailing whitespace ignored) into a malloc'd buffer.
 * -1 on odd length or a non-hex character.
 */
int provhsm_test_hex_decode(const char *hex, uint8_t **buf_out, size_t *len_out);

/*
 * mkdtemp of /tmp/provhsm-<tag>-XXXXXX into dir (len bytes). 0, or -1 with dir set to ""
 * (so that a group teardown after a failed setup removes nothing) and the reason on stderr.
 */
int provhsm_test_workdir_make(char *dir, size_t len, const char *tag);

/*
 * Removes path and everything below it, in this process (no shell, so any name will do);
 * nothing for NULL or "" (a setup that failed before making its directory).
 */
void provhsm_test_remove_tree(const char *path);

/*
 * Writes the printf-style text to path with mode 0600 (private, as a deployment keeps its
 * config) and makes it the library's config (provhsm_config_use_file).
 * 0, or -1 with the step that failed on stderr.
 */
int provhsm_test_config_use(const char *path, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * Captures the library's log lines (instead of stderr) from now on; lines are still
 * echoed to stderr when PROVHSM_TEST_VERBOSE is set. provhsm_test_log_seen() tells
 * whether a captured line (since the last provhsm_test_log_clear()) contains `text`.
 */
void provhsm_test_log_capture(void);
void provhsm_test_log_clear(void);
int provhsm_test_log_seen(const char *text);

#endif
