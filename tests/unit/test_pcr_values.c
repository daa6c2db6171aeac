/*
 * Unit tests for the parser of `provhsm store reseal --pcr-values` (src/store.c,
 * provhsm_store_parse_pcr_values) and the check of parsed values against [store]
 * seal_pcrs (provhsm_store_check_pcr_values): every accepted form gives the bank, the
 * PCRs named and their bytes; every refused string is PROVHSM_E_INVALID_ARG with a log
 * line saying what is wrong (and never the text itself), and leaves the output zeroed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "log.h"
#include "store.h"
#include "testutil.h"

#define SHA1_ALG   0x0004
#define SHA256_ALG 0x000b
#define SHA384_ALG 0x000c
#define SHA512_ALG 0x000d

static char last_log[1024];
static int log_count;

static void capture_log(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)level;
    (void)ctx;
    snprintf(last_log, sizeof(last_log), "%s: %s", module, message);
    log_count++;
}

static int setup(void **state)
{
    (void)state;
    last_log[0] = '\0';
    log_count = 0;
    provhsm_set_log_callback(capture_log, NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    provhsm_set_log_callback(NULL, NULL);
    return 0;
}

/* `digits` hex digits, each the low nibble of (seed + i), upper case when asked. */
static void hex_run(char *out, size_t digits, unsigned seed, int upper)
{
    static const char lower_digits[] = "0123456789abcdef", upper_digits[] = "0123456789ABCDEF";
    for (size_t i = 0; i < digits; i++)
        out[i] = (upper ? upper_digits : lower_digits)[(seed + i) & 0xf];
    out[digits] = '\0';
}

/* The bytes hex_run() writes for the same seed. */
static void hex_run_bytes(uint8_t *out, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)(((seed + 2 * i) & 0xf) << 4 | ((seed + 2 * i + 1) & 0xf));
}

static int all_zero(const void *p, size_t len)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < len; i++)
        if (b[i] != 0)
            return 0;
    return 1;
}

/* Refused with a log line holding `why`; the output is zeroed even from a dirty start. */
static void expect_refused(const char *text, const char *why)
{
    provhsm_pcr_values v;
    memset(&v, 0xa5, sizeof(v));
    last_log[0] = '\0';
    assert_int_equal(provhsm_store_parse_pcr_values(text, &v), PROVHSM_E_INVALID_ARG);
    assert_true(all_zero(&v, sizeof(v)));
    if (strstr(last_log, why) == NULL)
        fail_msg("\"%.80s\": expected a log with \"%s\", got \"%s\"", text, why, last_log);
}

static void test_one_sha256_value(void **state)
{
    (void)state;
    char text[128], hex[65];
    uint8_t want[32];
    provhsm_pcr_values v;
    hex_run(hex, 64, 3, 0);
    hex_run_bytes(want, 32, 3);
    snprintf(text, sizeof(text), "sha256:7=%s", hex);
    assert_int_equal(provhsm_store_parse_pcr_values(text, &v), PROVHSM_OK);
    assert_int_equal(v.bank, SHA256_ALG);
    assert_int_equal(v.digest_len, 32);
    assert_int_equal(v.named, 1u << 7);
    assert_memory_equal(v.value[7], want, 32);
    assert_int_equal(log_count, 0);
}

/* Any order, either case, one- and two-digit PCR numbers (a leading zero too). */
static void test_several_values(void **state)
{
    (void)state;
    char text[256], a[65], b[65], c[65];
    uint8_t want_a[32], want_b[32], want_c[32];
    provhsm_pcr_values v;
    hex_run(a, 64, 1, 1);
    hex_run(b, 64, 9, 0);
    hex_run(c, 64, 14, 1);
    hex_run_bytes(want_a, 32, 1);
    hex_run_bytes(want_b, 32, 9);
    hex_run_bytes(want_c, 32, 14);
    snprintf(text, sizeof(text), "sha256:23=%s,0=%s,07=%s", a, b, c);
    assert_int_equal(provhsm_store_parse_pcr_values(text, &v), PROVHSM_OK);
    assert_int_equal(v.named, 1u << 23 | 1u << 0 | 1u << 7);
    assert_memory_equal(v.value[23], want_a, 32);
    assert_memory_equal(v.value[0], want_b, 32);
    assert_memory_equal(v.value[7], want_c, 32);
    assert_true(all_zero(v.value[16], sizeof(v.value[16])));
}

/* Each bank takes exactly its digest size. */
static void test_every_bank(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        uint16_t alg;
        size_t len;
    } banks[] = {{"sha1", SHA1_ALG, 20},
                 {"sha256", SHA256_ALG, 32},
                 {"sha384", SHA384_ALG, 48},
                 {"sha512", SHA512_ALG, 64}};
    for (size_t i = 0; i < sizeof(banks) / sizeof(banks[0]); i++) {
        char text[200], hex[129];
        uint8_t want[64];
        provhsm_pcr_values v;
        hex_run(hex, 2 * banks[i].len, (unsigned)i, 0);
        hex_run_bytes(want, banks[i].len, (unsigned)i);
        snprintf(text, sizeof(text), "%s:16=%s", banks[i].name, hex);
        assert_int_equal(provhsm_store_parse_pcr_values(text, &v), PROVHSM_OK);
        assert_int_equal(v.bank, banks[i].alg);
        assert_int_equal(v.digest_len, banks[i].len);
        assert_memory_equal(v.value[16], want, banks[i].len);
        /* one digit more or less: refused, naming the size */
        char expected[64];
        snprintf(expected, sizeof(expected), "must be %zu hex digits", 2 * banks[i].len);
        snprintf(text, sizeof(text), "%s:16=%s0", banks[i].name, hex);
        expect_refused(text, expected);
        hex[2 * banks[i].len - 1] = '\0';
        snprintf(text, sizeof(text), "%s:16=%s", banks[i].name, hex);
        expect_refused(text, expected);
    }
}

/* All 24 PCRs of the largest bank: the longest text there can be. */
static void test_all_pcrs_sha512(void **state)
{
    (void)state;
    char *text = malloc(PROVHSM_PCR_VALUES_MAX_TEXT + 2);
    assert_non_null(text);
    size_t n = (size_t)snprintf(text, 16, "sha512:");
    for (unsigned pcr = 0; pcr < 24; pcr++) {
        n += (size_t)snprintf(text + n, 8, "%s%u=", pcr == 0 ? "" : ",", pcr);
        hex_run(text + n, 128, pcr, pcr % 2);
        n += 128;
    }
    assert_true(n <= PROVHSM_PCR_VALUES_MAX_TEXT);
    provhsm_pcr_values v;
    assert_int_equal(provhsm_store_parse_pcr_values(text, &v), PROVHSM_OK);
    assert_int_equal(v.named, 0xffffffu);
    uint8_t want[64];
    hex_run_bytes(want, 64, 23);
    assert_memory_equal(v.value[23], want, 64);
    /* past the bound: refused before it is read */
    memset(text, 'a', PROVHSM_PCR_VALUES_MAX_TEXT + 1);
    text[PROVHSM_PCR_VALUES_MAX_TEXT + 1] = '\0';
    expect_refused(text, "more than 24 PCRs can take");
    free(text);
}

static void test_malformed_refused(void **state)
{
    (void)state;
    char hex[65], text[256];
    hex_run(hex, 64, 5, 0);

    expect_refused("", "does not start with a PCR bank");
    expect_refused("sha256", "does not start with a PCR bank");
    expect_refused("SHA256:7=00", "does not start with a PCR bank");
    expect_refused("sha257:7=00", "does not start with a PCR bank");
    snprintf(text, sizeof(text), ":7=%s", hex);
    expect_refused(text, "does not start with a PCR bank");
    expect_refused("sha256:", "expected a PCR number (0..23) at character 8");
    snprintf(text, sizeof(text), "sha256:24=%s", hex);
    expect_refused(text, "expected a PCR number");
    snprintf(text, sizeof(text), "sha256:007=%s", hex);
    expect_refused(text, "expected a PCR number");
    snprintf(text, sizeof(text), "sha256:-1=%s", hex);
    expect_refused(text, "expected a PCR number");
    snprintf(text, sizeof(text), "sha256: 7=%s", hex);
    expect_refused(text, "expected a PCR number");
    expect_refused("sha256:7", "expected '=' and a value after PCR 7");
    snprintf(text, sizeof(text), "sha256:7:%s", hex);
    expect_refused(text, "expected '=' and a value after PCR 7");
    expect_refused("sha256:7=", "PCR 7: the value must be 64 hex digits");
    snprintf(text, sizeof(text), "sha256:7=%s ", hex);
    expect_refused(text, "the value must be 64 hex digits");
    snprintf(text, sizeof(text), "sha256:7=0x%.62s", hex);
    expect_refused(text, "character 2 of its value is not a hex digit");
    snprintf(text, sizeof(text), "sha256:7=%.63sg", hex);
    expect_refused(text, "character 64 of its value is not a hex digit");
    snprintf(text, sizeof(text), "sha256:7=%s,", hex);
    expect_refused(text, "expected a PCR number");
    snprintf(text, sizeof(text), "sha256:7=%s,,16=%s", hex, hex);
    expect_refused(text, "expected a PCR number");
    snprintf(text, sizeof(text), "sha256:7=%s,7=%s", hex, hex);
    expect_refused(text, "PCR 7 is named twice");
    /* a SHA-256 value for a SHA-1 bank: the size says so */
    snprintf(text, sizeof(text), "sha1:7=%s", hex);
    expect_refused(text, "must be 40 hex digits (a sha1 digest is 20 bytes); 64 characters");
    /* the log never carries the text it refuses */
    expect_refused("sha256:7=\x1b[2Jhello", "the value must be");
    assert_null(strstr(last_log, "hello"));
    assert_null(strchr(last_log, '\x1b'));

    provhsm_pcr_values v;
    assert_int_equal(provhsm_store_parse_pcr_values(NULL, &v), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_store_parse_pcr_values("sha256:7=00", NULL), PROVHSM_E_INVALID_ARG);
}

/* Parsed values against [store] seal_pcrs = sha256:0,7. */
static void test_check_against_seal_pcrs(void **state)
{
    (void)state;
    provhsm_config cfg;
    provhsm_pcr_values v;
    char text[256], hex[65];
    hex_run(hex, 64, 2, 0);
    memset(&cfg, 0, sizeof(cfg));
    snprintf(cfg.seal_pcrs, sizeof(cfg.seal_pcrs), "sha256:0,7");
    cfg.seal_pcr_bank = SHA256_ALG;
    cfg.seal_pcr_mask = 1u << 0 | 1u << 7;

    /* a subset: the others keep their current values */
    snprintf(text, sizeof(text), "sha256:7=%s", hex);
    assert_int_equal(provhsm_store_parse_pcr_values(text, &v), PROVHSM_OK);
    assert_int_equal(provhsm_store_check_pcr_values(&cfg, &v), PROVHSM_OK);
    snprintf(text, sizeof(text), "sha256:0=%s,7=%s", hex, hex);
    assert_int_equal(provhsm_store_parse_pcr_values(text, &v), PROVHSM_OK);
    assert_int_equal(provhsm_store_check_pcr_values(&cfg, &v), PROVHSM_OK);

    /* a PCR outside seal_pcrs: named */
    snprintf(text, sizeof(text), "sha256:7=%s,16=%s,23=%s", hex, hex, hex);
    assert_int_equal(provhsm_store_parse_pcr_values(text, &v), PROVHSM_OK);
    assert_int_equal(provhsm_store_check_pcr_values(&cfg, &v), PROVHSM_E_INVALID_ARG);
    assert_non_null(strstr(last_log, "PCRs 16,23 are not in [store] seal_pcrs = sha256:0,7"));

    /* another bank */
    snprintf(text, sizeof(text), "sha384:7=%s%.32s", hex, hex);
    assert_int_equal(provhsm_store_parse_pcr_values(text, &v), PROVHSM_OK);
    assert_int_equal(provhsm_store_check_pcr_values(&cfg, &v), PROVHSM_E_INVALID_ARG);
    assert_non_null(strstr(last_log, "values of the sha384 bank, but [store] seal_pcrs = "
                                     "sha256:0,7 binds to the sha256 bank"));

    /* no seal_pcrs at all */
    memset(&cfg, 0, sizeof(cfg));
    snprintf(text, sizeof(text), "sha256:7=%s", hex);
    assert_int_equal(provhsm_store_parse_pcr_values(text, &v), PROVHSM_OK);
    assert_int_equal(provhsm_store_check_pcr_values(&cfg, &v), PROVHSM_E_CONFIG);
    assert_non_null(strstr(last_log, "seal_pcrs is not set"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_sha256_value, setup, teardown),
        cmocka_unit_test_setup_teardown(test_several_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_bank, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_pcrs_sha512, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_against_seal_pcrs, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
