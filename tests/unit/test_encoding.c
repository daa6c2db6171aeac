/*
 * Known-answer and round-trip tests for src/encoding.c: RFC 4648 vectors for base64 and
 * (lowercase, unpadded) base32, strict base64 rejection, the public decoder that skips line
 * breaks, the TPM registration id, the SDK's URL encoding of every byte value checked
 * against a table built here independently, and hex.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "encoding.h"
#include "secmem.h"

/* Deterministic generator so a failing length/content is reproducible. */
static uint32_t rng_state = 0x1234abcdu;

static uint8_t next_byte(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return (uint8_t)(rng_state >> 11);
}

static const char *const rfc_in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};

/* ---- base64 ------------------------------------------------------------- */

static void test_base64_rfc4648_vectors(void **state)
{
    static const char *const b64[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    (void)state;
    for (size_t i = 0; i < sizeof(rfc_in) / sizeof(rfc_in[0]); i++) {
        size_t n = strlen(rfc_in[i]);
        char *enc = provhsm_base64_encode((const uint8_t *)rfc_in[i], n);
        assert_non_null(enc);
        assert_string_equal(enc, b64[i]);
        free(enc);

        size_t len = 999;
        uint8_t *dec = provhsm_base64_decode(b64[i], &len);
        assert_non_null(dec);
        assert_int_equal(len, n);
        assert_memory_equal(dec, rfc_in[i], n);
        provhsm_secure_free(dec);
    }
}

static void test_base64_all_symbols(void **state)
{
    /* 0x00..0x27 covers the start of the alphabet; fb ff bf gives '+' and '/'. */
    uint8_t data[40];
    static const uint8_t tail[] = {0xfb, 0xff, 0xbf};
    (void)state;
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)i;
    char *enc = provhsm_base64_encode(data, sizeof(data));
    assert_non_null(enc);
    assert_string_equal(enc, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJw==");
    free(enc);
    enc = provhsm_base64_encode(tail, sizeof(tail));
    assert_non_null(enc);
    assert_string_equal(enc, "+/+/");
    size_t len = 0;
    uint8_t *dec = provhsm_base64_decode(enc, &len);
    assert_non_null(dec);
    assert_int_equal(len, 3);
    assert_memory_equal(dec, tail, 3);
    provhsm_secure_free(dec);
    free(enc);
}

static void test_base64_decode_rejects_malformed(void **state)
{
    static const char *const bad[] = {
        "Zg",           /* length not a multiple of 4 */
        "Zg=",          /* idem */
        "Zm9vY",        /* idem */
        "Zm9v\n",       /* trailing newline */
        " Zm9v",        /* leading space */
        "Zm9v Zm9v",    /* inner space */
        "Zm 9",         /* space inside a group */
        "Zm9v\r\n",     /* CRLF */
        "Zm\t9v",       /* tab */
        "Zm$v",         /* outside the alphabet */
        "Zm9-",         /* base64url symbol */
        "Zm9_",         /* base64url symbol */
        "Zm9v\xc3\xa9", /* non-ASCII */
        "Z===",         /* three padding characters */
        "====",         /* only padding */
        "=Zg=",         /* padding at the start */
        "Zm=v",         /* padding in the middle of a group */
        "Zg==Zm9v",     /* data after padding */
        "Zg==Zg==",     /* two padded groups */
        "Zm9v====",     /* a whole group of padding */
        "Zh==",         /* non-zero bits under the padding (canonical is Zg==) */
        "Zm9=",         /* idem (canonical is Zm8=) */
    };
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len = 12345;
        uint8_t *dec = provhsm_base64_decode(bad[i], &len);
        if (dec != NULL)
            fail_msg("accepted malformed base64 #%zu \"%s\"", i, bad[i]);
        assert_int_equal(len, 12345); /* output untouched on failure */
    }
    size_t len = 0;
    assert_null(provhsm_base64_decode(NULL, &len));
    assert_null(provhsm_base64_decode("Zm9v", NULL));
    assert_null(provhsm_base64_encode(NULL, 0));
}

/* The public decoder: whitespace between symbols is skipped, everything else is strict. */
static void test_base64_decode_text(void **state)
{
    static const char *const good[] = {"Zm9vYmFy",         "Zm9v\nYmFy\n", " Zm9vYmFy",
                                       "Zm9v\r\nYmFy\r\n", "Zm\t9vY mFy",  "Zm9vYmFy\v\f"};
    static const char *const bad[] = {
        "",         "  \n", "Zg",         "Zm 9",    "Zm9v$mFy", "Zm9-YmFy", "Zg==Zg==",
        "Zm9v====", "Zh==", "Z\xc3\xa9v", "Zm9vYmF", "=Zg=",     "Zm=v",
    };
    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint8_t *out = NULL;
        size_t len = 0;
        if (provhsm_base64_decode_text(good[i], strlen(good[i]), &out, &len) != PROVHSM_OK)
            fail_msg("refused good base64 #%zu", i);
        assert_int_equal(len, 6);
        assert_memory_equal(out, "foobar", 6);
        free(out);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t *out = (uint8_t *)"untouched";
        size_t len = 12345;
        if (provhsm_base64_decode_text(bad[i], strlen(bad[i]), &out, &len) == PROVHSM_OK)
            fail_msg("accepted bad base64 #%zu \"%s\"", i, bad[i]);
        assert_int_equal(len, 12345);
        assert_string_equal((const char *)out, "untouched");
    }
    /* a NUL inside the given length is not the end of the text */
    uint8_t *out = NULL;
    size_t len = 0;
    assert_int_not_equal(provhsm_base64_decode_text("Zm9v\0YmFy", 9, &out, &len), PROVHSM_OK);
    /* only the given length counts */
    assert_int_equal(provhsm_base64_decode_text("Zm9vYmFy!!!", 8, &out, &len), PROVHSM_OK);
    assert_int_equal(len, 6);
    free(out);
    assert_int_not_equal(provhsm_base64_decode_text(NULL, 0, &out, &len), PROVHSM_OK);
    assert_int_not_equal(provhsm_base64_decode_text("Zm9v", 4, NULL, &len), PROVHSM_OK);
    assert_int_not_equal(provhsm_base64_decode_text("Zm9v", 4, &out, NULL), PROVHSM_OK);
}

static void test_base64_round_trip_lengths(void **state)
{
    uint8_t data[301];
    (void)state;
    for (size_t n = 0; n <= 300; n++) {
        for (size_t i = 0; i < n; i++)
            data[i] = next_byte();
        char *enc = provhsm_base64_encode(data, n);
        assert_non_null(enc);
        assert_int_equal(strlen(enc), (n + 2) / 3 * 4);
        size_t len = 0;
        uint8_t *dec = provhsm_base64_decode(enc, &len);
        assert_non_null(dec);
        assert_int_equal(len, n);
        assert_memory_equal(dec, data, n);
        provhsm_secure_free(dec);
        free(enc);
    }
}

/* ---- base32 ------------------------------------------------------------- */

/* Independent decoder for the round trip: lowercase alphabet, no padding. */
static size_t b32_decode_test(const char *text, uint8_t *out)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
    unsigned long acc = 0;
    int bits = 0;
    size_t o = 0;
    for (const char *p = text; *p != '\0'; p++) {
        const char *at = strchr(alphabet, *p);
        assert_non_null(at);
        acc = (acc << 5) | (unsigned long)(at - alphabet);
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1ul << bits) - 1;
        }
    }
    assert_true(bits < 5);
    assert_int_equal(acc, 0); /* leftover bits must be zero */
    return o;
}

static void test_base32_rfc4648_vectors(void **state)
{
    /* RFC 4648 section 10, lowercased and with the '=' padding removed. */
    static const char *const b32[] = {"",        "my",       "mzxq",      "mzxw6",
                                      "mzxw6yq", "mzxw6ytb", "mzxw6ytboi"};
    (void)state;
    for (size_t i = 0; i < sizeof(rfc_in) / sizeof(rfc_in[0]); i++) {
        char *enc =
            provhsm_base32_encode_lower_nopad((const uint8_t *)rfc_in[i], strlen(rfc_in[i]));
        assert_non_null(enc);
        assert_string_equal(enc, b32[i]);
        free(enc);
    }
    assert_null(provhsm_base32_encode_lower_nopad(NULL, 0));
}

static void test_base32_sha256_registration_id(void **state)
{
    /* SHA-256("") and SHA-256("abc"): the shape of a TPM registration id. */
    static const uint8_t empty[32] = {0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14,
                                      0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
                                      0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c,
                                      0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
    static const uint8_t abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
                                    0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
                                    0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
                                    0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    (void)state;
    char *enc = provhsm_base32_encode_lower_nopad(empty, sizeof(empty));
    assert_non_null(enc);
    assert_int_equal(strlen(enc), 52);
    assert_string_equal(enc, "4oymiquy7qobjgx36tejs35zeqt24qpemsnzgtfeswmrw6csxbkq");
    free(enc);
    enc = provhsm_base32_encode_lower_nopad(abc, sizeof(abc));
    assert_non_null(enc);
    assert_string_equal(enc, "xj4bnp4pahh6uqkbidpf3lrceoyagyndsylxvhfucd7wd4qacwwq");
    free(enc);
}

/*
 * The registration id from an EK: base32 of SHA-256 over the bytes as given. SHA-256("abc")
 * is the FIPS 180-2 example; its base32 is checked above.
 */
static void test_tpm_registration_id(void **state)
{
    (void)state;
    char *id = NULL;
    assert_int_equal(provhsm_tpm_registration_id((const uint8_t *)"abc", 3, &id), PROVHSM_OK);
    assert_non_null(id);
    assert_string_equal(id, "xj4bnp4pahh6uqkbidpf3lrceoyagyndsylxvhfucd7wd4qacwwq");
    free(id);
    id = (char *)"untouched";
    assert_int_not_equal(provhsm_tpm_registration_id(NULL, 3, &id), PROVHSM_OK);
    assert_int_not_equal(provhsm_tpm_registration_id((const uint8_t *)"abc", 0, &id), PROVHSM_OK);
    assert_int_not_equal(provhsm_tpm_registration_id((const uint8_t *)"abc", 3, NULL), PROVHSM_OK);
    assert_string_equal(id, "untouched");
}

static void test_base32_round_trip_lengths(void **state)
{
    uint8_t data[301], back[301];
    (void)state;
    for (size_t n = 0; n <= 300; n++) {
        for (size_t i = 0; i < n; i++)
            data[i] = next_byte();
        char *enc = provhsm_base32_encode_lower_nopad(data, n);
        assert_non_null(enc);
        assert_int_equal(strlen(enc), (n * 8 + 4) / 5);
        assert_null(strchr(enc, '='));
        assert_int_equal(b32_decode_test(enc, back), n);
        assert_memory_equal(back, data, n);
        free(enc);
    }
}

/* ---- URL encoding --------------------------------------------------------- */

/*
 * The expected encoding of each byte, built without the library: explicit literals for
 * the characters that matter in scopes and signatures and at the range edges, and the
 * SDK's rule for the rest (filled in by build_expected()).
 */
static const char *const url_literals[][2] = {
    {"/", "%2f"},       {"=", "%3d"},       {"+", "%2b"},       {" ", "%20"},
    {"~", "%7e"},       {"\n", "%0a"},      {"\x01", "%01"},    {"\x1f", "%1f"},
    {"\x7f", "%7f"},    {"%", "%25"},       {"&", "%26"},       {"'", "%27"},
    {"\"", "%22"},      {":", "%3a"},       {"?", "%3f"},       {"#", "%23"},
    {"@", "%40"},       {"[", "%5b"},       {"]", "%5d"},       {"{", "%7b"},
    {"}", "%7d"},       {"|", "%7c"},       {"\\", "%5c"},      {"^", "%5e"},
    {"`", "%60"},       {",", "%2c"},       {";", "%3b"},       {"<", "%3c"},
    {">", "%3e"},       {"$", "%24"},       {"!", "!"},         {"(", "("},
    {")", ")"},         {"*", "*"},         {"-", "-"},         {".", "."},
    {"_", "_"},         {"A", "A"},         {"Z", "Z"},         {"a", "a"},
    {"z", "z"},         {"0", "0"},         {"9", "9"},         {"\x80", "%c2%80"},
    {"\xa9", "%c2%a9"}, {"\xbf", "%c2%bf"}, {"\xc0", "%c3%80"}, {"\xe9", "%c3%a9"},
    {"\xfc", "%c3%bc"}, {"\xff", "%c3%bf"},
};

static char expected_url[256][8];

static void build_expected(void)
{
    for (int c = 1; c < 256; c++) {
        int keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   strchr("!()*-._", c) != NULL;
        if (keep)
            snprintf(expected_url[c], sizeof(expected_url[c]), "%c", c);
        else if (c < 0x80)
            snprintf(expected_url[c], sizeof(expected_url[c]), "%%%02x", c);
        else if (c < 0xc0)
            snprintf(expected_url[c], sizeof(expected_url[c]), "%%c2%%%02x", c);
        else
            snprintf(expected_url[c], sizeof(expected_url[c]), "%%c3%%%02x", c - 0x40);
    }
    /* The hand-written literals and the rule must agree, or the test itself is wrong. */
    for (size_t i = 0; i < sizeof(url_literals) / sizeof(url_literals[0]); i++) {
        unsigned char c = (unsigned char)url_literals[i][0][0];
        assert_string_equal(expected_url[c], url_literals[i][1]);
    }
}

static void test_url_encode_each_byte(void **state)
{
    (void)state;
    build_expected();
    for (int c = 1; c < 256; c++) {
        char in[2] = {(char)c, '\0'};
        char *enc = provhsm_url_encode(in);
        assert_non_null(enc);
        if (strcmp(enc, expected_url[c]) != 0)
            fail_msg("byte 0x%02x: got \"%s\", expected \"%s\"", c, enc, expected_url[c]);
        free(enc);
    }
    for (size_t i = 0; i < sizeof(url_literals) / sizeof(url_literals[0]); i++) {
        char *enc = provhsm_url_encode(url_literals[i][0]);
        assert_non_null(enc);
        assert_string_equal(enc, url_literals[i][1]);
        free(enc);
    }
}

static void test_url_encode_all_bytes_string(void **state)
{
    char in[256];
    char expected[256 * 6 + 1] = "";
    (void)state;
    build_expected();
    for (int c = 1; c < 256; c++) {
        in[c - 1] = (char)c;
        strcat(expected, expected_url[c]);
    }
    in[255] = '\0';
    char *enc = provhsm_url_encode(in);
    assert_non_null(enc);
    assert_string_equal(enc, expected);
    free(enc);
}

static void test_url_encode_realistic(void **state)
{
    (void)state;
    char *enc = provhsm_url_encode("0ne00000A0A/registrations/my-device~1");
    assert_non_null(enc);
    assert_string_equal(enc, "0ne00000A0A%2fregistrations%2fmy-device%7e1");
    free(enc);

    /* A base64 HMAC-SHA256 signature with '+', '/' and '='. */
    enc = provhsm_url_encode("Jq1r+/Xp3Y0m8cX5WkL2Pz7g9QfH0bDk4sV6nRtU8eA=");
    assert_non_null(enc);
    assert_string_equal(enc, "Jq1r%2b%2fXp3Y0m8cX5WkL2Pz7g9QfH0bDk4sV6nRtU8eA%3d");
    free(enc);

    enc = provhsm_url_encode("global.azure-devices-provisioning.net/0ne1 2?a=b&c");
    assert_non_null(enc);
    assert_string_equal(enc, "global.azure-devices-provisioning.net%2f0ne1%202%3fa%3db%26c");
    free(enc);

    enc = provhsm_url_encode("");
    assert_non_null(enc);
    assert_string_equal(enc, "");
    free(enc);
    assert_null(provhsm_url_encode(NULL));
}

/* ---- hex ---------------------------------------------------------------- */

static void test_hex_encode(void **state)
{
    static const uint8_t data[] = {0x00, 0xab, 0xcd, 0xef, 0x10, 0x9f};
    (void)state;
    char *h = provhsm_hex_encode(data, sizeof(data), 0);
    assert_non_null(h);
    assert_string_equal(h, "00abcdef109f");
    free(h);
    h = provhsm_hex_encode(data, sizeof(data), 1);
    assert_non_null(h);
    assert_string_equal(h, "00:AB:CD:EF:10:9F");
    free(h);
    h = provhsm_hex_encode(data + 1, 1, 1);
    assert_non_null(h);
    assert_string_equal(h, "AB");
    free(h);
    h = provhsm_hex_encode(data, 0, 0);
    assert_non_null(h);
    assert_string_equal(h, "");
    free(h);
    h = provhsm_hex_encode(data, 0, 1);
    assert_non_null(h);
    assert_string_equal(h, "");
    free(h);
    assert_null(provhsm_hex_encode(NULL, 0, 0));
}

static void base64_decode_into_caller_buffer(void **state)
{
    (void)state;
    uint8_t buf[6];
    size_t len = 99;
    assert_int_equal(provhsm_base64_decode_into("Zm9vYmFy", buf, sizeof(buf), &len), 0);
    assert_int_equal(len, 6);
    assert_memory_equal(buf, "foobar", 6);
    assert_int_equal(provhsm_base64_decode_into("Zm9vYg==", buf, sizeof(buf), &len), 0);
    assert_int_equal(len, 4);
    assert_memory_equal(buf, "foob", 4);
    /* too small a buffer, malformed input, NULLs: -1 and the length untouched */
    len = 99;
    assert_int_equal(provhsm_base64_decode_into("Zm9vYmFyYmF6", buf, sizeof(buf), &len), -1);
    assert_int_equal(provhsm_base64_decode_into("Zm9v!mFy", buf, sizeof(buf), &len), -1);
    assert_int_equal(provhsm_base64_decode_into("Zm9", buf, sizeof(buf), &len), -1);
    assert_int_equal(provhsm_base64_decode_into(NULL, buf, sizeof(buf), &len), -1);
    assert_int_equal(provhsm_base64_decode_into("Zm9v", NULL, sizeof(buf), &len), -1);
    assert_int_equal(len, 99);
    /* and nothing written into the buffer either (encoding.h) */
    memcpy(buf, "kept!!", 6);
    assert_int_equal(provhsm_base64_decode_into("Zm9vYmFyYmF6", buf, sizeof(buf), &len), -1);
    assert_int_equal(provhsm_base64_decode_into("Zm9v!mFy", buf, sizeof(buf), &len), -1);
    assert_memory_equal(buf, "kept!!", 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(base64_decode_into_caller_buffer),
        cmocka_unit_test(test_base64_rfc4648_vectors),
        cmocka_unit_test(test_base64_all_symbols),
        cmocka_unit_test(test_base64_decode_rejects_malformed),
        cmocka_unit_test(test_base64_round_trip_lengths),
        cmocka_unit_test(test_base64_decode_text),
        cmocka_unit_test(test_tpm_registration_id),
        cmocka_unit_test(test_base32_rfc4648_vectors),
        cmocka_unit_test(test_base32_sha256_registration_id),
        cmocka_unit_test(test_base32_round_trip_lengths),
        cmocka_unit_test(test_url_encode_each_byte),
        cmocka_unit_test(test_url_encode_all_bytes_string),
        cmocka_unit_test(test_url_encode_realistic),
        cmocka_unit_test(test_hex_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
