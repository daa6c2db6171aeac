/*
 * libFuzzer target for the TPM hierarchy authorisation parser (provhsm_tpm_auth_parse in
 * src/tpm_blob.c), which reads the bytes of an owner or endorsement authorisation file, or
 * of an environment variable, as the TPM backend and the sealed store do.
 * Properties: an accepted value fits the TPM2B; a plain value is the input without one
 * trailing line ending; a "hex:" value is the digits as strtoul reads them, and it parses
 * back the same when written out again in lower case.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "tpm_blob.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

/* The input without one trailing "\n" and then one trailing "\r", as the parser strips. */
static size_t stripped_len(const char *text, size_t len)
{
    if (len > 0 && text[len - 1] == '\n')
        len--;
    if (len > 0 && text[len - 1] == '\r')
        len--;
    return len;
}

/* Every pair of digits is what the C library reads it as. */
static void check_hex_digits(const char *digits, const TPM2B_AUTH *auth)
{
    for (size_t i = 0; i < auth->size; i++) {
        char pair[3] = {digits[2 * i], digits[2 * i + 1], '\0'};
        char *end = NULL;
        FUZZ_CHECK(isxdigit((unsigned char)pair[0]) && isxdigit((unsigned char)pair[1]));
        FUZZ_CHECK(strtoul(pair, &end, 16) == auth->buffer[i] && *end == '\0');
    }
}

static void check_hex_round_trip(const TPM2B_AUTH *auth)
{
    char text[4 + 2 * sizeof(auth->buffer) + 1];
    TPM2B_AUTH again;
    size_t n = 4;

    memcpy(text, "hex:", 4);
    for (size_t i = 0; i < auth->size; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "%02x", auth->buffer[i]);
    FUZZ_CHECK(provhsm_tpm_auth_parse(text, n, "fuzz", &again) == PROVHSM_OK);
    FUZZ_CHECK(again.size == auth->size && memcmp(again.buffer, auth->buffer, auth->size) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    TPM2B_AUTH auth;

    memset(&auth, 0xa5, sizeof(auth));
    if (provhsm_tpm_auth_parse(text, size, "fuzz", &auth) != PROVHSM_OK)
        return 0;
    FUZZ_CHECK(auth.size <= sizeof(auth.buffer));
    size_t len = stripped_len(text, size);
    if (len >= 4 && memcmp(text, "hex:", 4) == 0) {
        FUZZ_CHECK(auth.size * 2 == len - 4);
        check_hex_digits(text + 4, &auth);
        check_hex_round_trip(&auth);
    } else {
        FUZZ_CHECK(auth.size == len && memcmp(auth.buffer, text, len) == 0);
    }
    return 0;
}
