/*
 * libFuzzer target for the encodings (src/encoding.c) and the checks applied to the
 * registration ids and symmetric keys an application hands over (src/identity.c).
 * The input is used both as text (base64 decoding, URL encoding, the checks) and as
 * bytes (the encoders). Properties: base64 decoding accepts exactly the canonical
 * encoding of some byte string (decode then encode gives the text back), the strict
 * decoders agree, the line-tolerant decoder (provhsm_base64_decode_text) agrees with them
 * once whitespace is taken out, decode(encode(x)) == x, base32 and hex have the documented
 * lengths and alphabets, and URL encoding leaves only unreserved characters and %xx.
 */
#include <stdlib.h>
#include <string.h>

#include "encoding.h"
#include "fuzz_common.h"
#include "identity.h"
#include "secmem.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

static int only_chars(const char *s, const char *allowed)
{
    return strspn(s, allowed) == strlen(s);
}

static int one_of(char c, const char *allowed)
{
    return c != '\0' && strchr(allowed, c) != NULL;
}

static void base64_text(const char *text)
{
    size_t len = 0, into_len = 0;
    uint8_t *raw = provhsm_base64_decode(text, &len);
    size_t cap = strlen(text) / 4 * 3;
    uint8_t *into = malloc(cap + 1);
    FUZZ_CHECK(into != NULL);
    int into_rc = provhsm_base64_decode_into(text, into, cap, &into_len);

    FUZZ_CHECK((raw != NULL) == (into_rc == 0));
    if (raw != NULL) {
        FUZZ_CHECK(into_len == len && (len == 0 || memcmp(raw, into, len) == 0));
        char *again = provhsm_base64_encode(raw, len);
        FUZZ_CHECK(again != NULL && strcmp(again, text) == 0);
        free(again);
    }
    provhsm_secure_free(raw);
    free(into);
}

static int is_ascii_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/*
 * provhsm_base64_decode_text (base64 broken into lines, as files hold it) agrees with the
 * strict decoder on the same text with its whitespace taken out, and refuses a NUL byte
 * and text with nothing to decode.
 */
static void base64_lines(const uint8_t *data, size_t size)
{
    char *packed = malloc(size + 1);
    size_t n = 0, strict_len = 0, len = 0;
    uint8_t *out = NULL;
    FUZZ_CHECK(packed != NULL);
    for (size_t i = 0; i < size; i++)
        if (!is_ascii_space(data[i]))
            packed[n++] = (char)data[i];
    packed[n] = '\0';

    provhsm_err rc = provhsm_base64_decode_text((const char *)data, size, &out, &len);
    uint8_t *strict = provhsm_base64_decode(packed, &strict_len);
    if (memchr(packed, '\0', n) != NULL || n == 0)
        FUZZ_CHECK(rc != PROVHSM_OK);
    else
        FUZZ_CHECK((rc == PROVHSM_OK) == (strict != NULL));
    if (rc == PROVHSM_OK) {
        FUZZ_CHECK(strict != NULL && len == strict_len && len > 0);
        FUZZ_CHECK(memcmp(out, strict, len) == 0);
    }
    free(out);
    provhsm_secure_free(strict);
    free(packed);
}

static void base64_bytes(const uint8_t *data, size_t size)
{
    char *text = provhsm_base64_encode(data, size);
    FUZZ_CHECK(text != NULL && strlen(text) == (size + 2) / 3 * 4);
    size_t len = 0;
    uint8_t *raw = provhsm_base64_decode(text, &len);
    FUZZ_CHECK(raw != NULL && len == size && (size == 0 || memcmp(raw, data, size) == 0));
    provhsm_secure_free(raw);
    free(text);
}

static void base32_and_hex(const uint8_t *data, size_t size)
{
    char *b32 = provhsm_base32_encode_lower_nopad(data, size);
    FUZZ_CHECK(b32 != NULL && strlen(b32) == (size * 8 + 4) / 5);
    FUZZ_CHECK(only_chars(b32, "abcdefghijklmnopqrstuvwxyz234567"));
    free(b32);

    char *hex = provhsm_hex_encode(data, size, 0);
    FUZZ_CHECK(hex != NULL && strlen(hex) == 2 * size && only_chars(hex, "0123456789abcdef"));
    free(hex);
    hex = provhsm_hex_encode(data, size, 1);
    FUZZ_CHECK(hex != NULL && strlen(hex) == (size > 0 ? 3 * size - 1 : 0));
    FUZZ_CHECK(only_chars(hex, "0123456789ABCDEF:"));
    free(hex);
}

static void url_text(const char *text)
{
    char *url = provhsm_url_encode(text);
    FUZZ_CHECK(url != NULL);
    for (const char *p = url; *p != '\0'; p++) {
        if (*p != '%') {
            FUZZ_CHECK(one_of(*p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789!()*-._"));
            continue;
        }
        FUZZ_CHECK(one_of(p[1], "0123456789abcdef") && one_of(p[2], "0123456789abcdef"));
        p += 2;
    }
    free(url);
}

static void identity_checks(const char *text)
{
    if (provhsm_identity_check_registration_id(text) == PROVHSM_OK) {
        size_t n = strlen(text);
        FUZZ_CHECK(n >= 1 && n <= 128);
        FUZZ_CHECK(only_chars(text, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                    "0123456789-._:"));
    }
    if (provhsm_identity_check_symmetric_key(text) == PROVHSM_OK) {
        size_t len = 0;
        uint8_t *raw = provhsm_base64_decode(text, &len);
        FUZZ_CHECK(raw != NULL && len >= 16);
        provhsm_secure_free(raw);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_text(data, size);
    base64_text(text);
    base64_lines(data, size);
    base64_bytes(data, size);
    base32_and_hex(data, size);
    url_text(text);
    identity_checks(text);
    free(text);
    return 0;
}
