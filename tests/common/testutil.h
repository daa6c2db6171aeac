/*
 * Small utilities shared by the test programs: reading fixture files and decoding hex.
 * Test code only; never linked into the library. Buffers are malloc'd for the caller.
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

#endif
