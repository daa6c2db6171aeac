/*
 * Stored identity records (identity.c) and SAS assembly (sas.c): round trips through a
 * real store in a temporary directory, malformed records, input validation, and the
 * SAS known answer from tests/fixtures/sas (computed by an independent implementation).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>

#include "encoding.h"
#include "identity.h"
#include "sas.h"
#include "secmem.h"
#include "store.h"

static char dir[64];
static provhsm_config cfg;
static provhsm_store *st;

static int setup(void **state)
{
    (void)state;
    strcpy(dir, "/tmp/provhsm-identity-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    memset(&cfg, 0, sizeof(cfg));
    snprintf(cfg.store_dir, sizeof(cfg.store_dir), "%s/store", dir);
    strcpy(cfg.passphrase_env, "PROVHSM_TEST_NO_PASSPHRASE");
    unsetenv("PROVHSM_TEST_NO_PASSPHRASE");
    cfg.scrypt_log2_n = 10;
    cfg.scrypt_r = 8;
    cfg.scrypt_p = 1;
    if (provhsm_store_create(&cfg) != PROVHSM_OK)
        return -1;
    return provhsm_store_open(&cfg, &st) == PROVHSM_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    provhsm_store_close(st);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void x509_round_trip(void **state)
{
    (void)state;
    provhsm_x509_identity in = {provhsm_secure_strdup("KEY PEM"), strdup("CHAIN PEM"), NULL};
    provhsm_x509_identity out = {0};
    assert_int_equal(provhsm_identity_x509_save(st, PROVHSM_ENTRY_X509, &in), PROVHSM_OK);
    assert_int_equal(provhsm_identity_x509_load(st, PROVHSM_ENTRY_X509, &out), PROVHSM_OK);
    assert_string_equal(out.key_pem, "KEY PEM");
    assert_string_equal(out.chain_pem, "CHAIN PEM");
    provhsm_identity_x509_clear(&out);
    provhsm_identity_x509_clear(&in);
    assert_null(in.key_pem);

    /* a pending key has no chain */
    provhsm_x509_identity pending = {provhsm_secure_strdup("KEY2"), NULL, NULL};
    assert_int_equal(provhsm_identity_x509_save(st, PROVHSM_ENTRY_X509_PENDING, &pending),
                     PROVHSM_OK);
    assert_int_equal(provhsm_identity_x509_load(st, PROVHSM_ENTRY_X509_PENDING, &out), PROVHSM_OK);
    assert_string_equal(out.key_pem, "KEY2");
    assert_null(out.chain_pem);
    provhsm_identity_x509_clear(&out);
    provhsm_identity_x509_clear(&pending);
}

static void symmetric_round_trip(void **state)
{
    (void)state;
    provhsm_symmetric_identity in = {strdup("dev-1"),
                                     provhsm_secure_strdup("a2V5a2V5a2V5a2V5a2V5a2V5")};
    provhsm_symmetric_identity out = {0};
    assert_int_equal(provhsm_identity_symmetric_load(st, &out), PROVHSM_E_NOT_FOUND);
    assert_int_equal(provhsm_identity_symmetric_save(st, &in), PROVHSM_OK);
    assert_int_equal(provhsm_identity_symmetric_load(st, &out), PROVHSM_OK);
    assert_string_equal(out.registration_id, "dev-1");
    assert_string_equal(out.key_b64, in.key_b64);
    provhsm_identity_symmetric_clear(&out);
    provhsm_identity_symmetric_clear(&in);
}

static void put_raw(const char *entry, const void *data, size_t len)
{
    assert_int_equal(provhsm_store_put(st, entry, data, len), PROVHSM_OK);
}

static void malformed_records(void **state)
{
    (void)state;
    provhsm_x509_identity x = {0};
    provhsm_symmetric_identity s = {0};
    /* wrong magic, wrong kind, truncated length, unknown tag, duplicate tag, NUL inside */
    put_raw("x509", "XXXX\x01", 5);
    assert_int_equal(provhsm_identity_x509_load(st, "x509", &x), PROVHSM_E_CORRUPT);
    put_raw("x509", "PHI1\x02\x01\x00\x00\x00\x01K", 11);
    assert_int_equal(provhsm_identity_x509_load(st, "x509", &x), PROVHSM_E_CORRUPT);
    put_raw("x509", "PHI1\x01\x01\x00\x00\x00\x09K", 11);
    assert_int_equal(provhsm_identity_x509_load(st, "x509", &x), PROVHSM_E_CORRUPT);
    put_raw("x509", "PHI1\x01\x07\x00\x00\x00\x01K", 11);
    assert_int_equal(provhsm_identity_x509_load(st, "x509", &x), PROVHSM_E_CORRUPT);
    put_raw("x509", "PHI1\x01\x01\x00\x00\x00\x01K\x01\x00\x00\x00\x01L", 17);
    assert_int_equal(provhsm_identity_x509_load(st, "x509", &x), PROVHSM_E_CORRUPT);
    put_raw("x509", "PHI1\x01\x01\x00\x00\x00\x02K\x00", 12);
    assert_int_equal(provhsm_identity_x509_load(st, "x509", &x), PROVHSM_E_CORRUPT);
    put_raw("x509", "PHI1\x01\x01\x00\x00", 9);
    assert_int_equal(provhsm_identity_x509_load(st, "x509", &x), PROVHSM_E_CORRUPT);
    /* an X.509 record without its key, a symmetric record without its key */
    put_raw("x509", "PHI1\x01\x02\x00\x00\x00\x01C", 11);
    assert_int_equal(provhsm_identity_x509_load(st, "x509", &x), PROVHSM_E_CORRUPT);
    put_raw("symmetric", "PHI1\x02\x03\x00\x00\x00\x01R", 11);
    assert_int_equal(provhsm_identity_symmetric_load(st, &s), PROVHSM_E_CORRUPT);
    assert_null(x.key_pem);
    assert_null(s.registration_id);
}

/* A record of `kind` whose fields are given as (tag, value) pairs; returns its length. */
static size_t make_record(uint8_t *buf, uint8_t kind, const uint8_t *tags,
                          const char *const *values, size_t n)
{
    size_t off = 0;
    memcpy(buf, "PHI1", 4);
    off += 4;
    buf[off++] = kind;
    for (size_t i = 0; i < n; i++) {
        uint32_t len = (uint32_t)strlen(values[i]);
        buf[off++] = tags[i];
        buf[off++] = (uint8_t)(len >> 24);
        buf[off++] = (uint8_t)(len >> 16);
        buf[off++] = (uint8_t)(len >> 8);
        buf[off++] = (uint8_t)len;
        memcpy(buf + off, values[i], len);
        off += len;
    }
    return off;
}

static void expect_x509_corrupt(const uint8_t *rec, size_t len)
{
    provhsm_x509_identity x = {0};
    put_raw("x509", rec, len);
    assert_int_equal(provhsm_identity_x509_load(st, "x509", &x), PROVHSM_E_CORRUPT);
    assert_null(x.key_pem);
    assert_null(x.chain_pem);
}

static void expect_symmetric_corrupt(const uint8_t *rec, size_t len)
{
    provhsm_symmetric_identity s = {0};
    put_raw("symmetric", rec, len);
    assert_int_equal(provhsm_identity_symmetric_load(st, &s), PROVHSM_E_CORRUPT);
    assert_null(s.registration_id);
    assert_null(s.key_b64);
}

/*
 * Records that carry every other kind's fields, each tag twice, and every truncation of a
 * well-formed record: each is PROVHSM_E_CORRUPT, whatever mix of secret and public fields
 * was decoded before the parser stopped (freeing one of them the wrong way aborts).
 */
static void foreign_duplicate_and_truncated_fields(void **state)
{
    (void)state;
    enum { KEY = 1, CHAIN = 2, REGID = 3, SYMKEY = 4 };
    static const uint8_t tags[] = {KEY, CHAIN, REGID, SYMKEY};
    const char *const values[] = {"KEY", "CHAIN", "dev-1", "c2VjcmV0"};
    uint8_t rec[256];

    for (size_t i = 0; i < 4; i++) {
        /* an X.509 record (key and chain) plus one more field: foreign or duplicated */
        const uint8_t x_tags[] = {KEY, CHAIN, tags[i]};
        const char *const x_values[] = {"KEY", "CHAIN", values[i]};
        expect_x509_corrupt(rec, make_record(rec, 1, x_tags, x_values, 3));
        /* the extra field first, before the record's own */
        const uint8_t x_first[] = {tags[i], KEY, CHAIN};
        const char *const x_first_values[] = {values[i], "KEY", "CHAIN"};
        if (tags[i] != KEY && tags[i] != CHAIN)
            expect_x509_corrupt(rec, make_record(rec, 1, x_first, x_first_values, 3));

        /* a symmetric record (registration id and key) plus one more field */
        const uint8_t s_tags[] = {REGID, SYMKEY, tags[i]};
        const char *const s_values[] = {"dev-1", "c2VjcmV0", values[i]};
        expect_symmetric_corrupt(rec, make_record(rec, 2, s_tags, s_values, 3));
    }

    /* every strict prefix of a complete record is refused, of either kind */
    size_t key_only = make_record(rec, 1, tags, values, 1);
    size_t full = make_record(rec, 1, tags, values, 2);
    for (size_t cut = 0; cut < full; cut++)
        if (cut != key_only) /* a key without its chain is a complete pending-key record */
            expect_x509_corrupt(rec, cut);
    const uint8_t s_tags[] = {REGID, SYMKEY};
    const char *const s_values[] = {"dev-1", "c2VjcmV0"};
    full = make_record(rec, 2, s_tags, s_values, 2);
    for (size_t cut = 0; cut < full; cut++)
        expect_symmetric_corrupt(rec, cut);

    /* what was refused left the loader usable: a good record still loads */
    provhsm_x509_identity x = {0};
    put_raw("x509", rec, make_record(rec, 1, tags, values, 2));
    assert_int_equal(provhsm_identity_x509_load(st, "x509", &x), PROVHSM_OK);
    assert_string_equal(x.key_pem, "KEY");
    assert_string_equal(x.chain_pem, "CHAIN");
    provhsm_identity_x509_clear(&x);
}

static void validation(void **state)
{
    (void)state;
    assert_int_equal(provhsm_identity_check_registration_id("device-01.a_b:c"), PROVHSM_OK);
    assert_int_not_equal(provhsm_identity_check_registration_id(""), PROVHSM_OK);
    assert_int_not_equal(provhsm_identity_check_registration_id(NULL), PROVHSM_OK);
    assert_int_not_equal(provhsm_identity_check_registration_id("a b"), PROVHSM_OK);
    assert_int_not_equal(provhsm_identity_check_registration_id("a/b"), PROVHSM_OK);
    char long_id[130];
    memset(long_id, 'a', 129);
    long_id[129] = '\0';
    assert_int_not_equal(provhsm_identity_check_registration_id(long_id), PROVHSM_OK);
    long_id[128] = '\0';
    assert_int_equal(provhsm_identity_check_registration_id(long_id), PROVHSM_OK);

    assert_int_equal(provhsm_identity_check_symmetric_key("MDEyMzQ1Njc4OWFiY2RlZg=="), PROVHSM_OK);
    assert_int_not_equal(provhsm_identity_check_symmetric_key("MDEyMzQ1Njc4OWFiY2Rl"),
                         PROVHSM_OK); /* 15 bytes */
    assert_int_not_equal(provhsm_identity_check_symmetric_key("not base64!!"), PROVHSM_OK);
    assert_int_not_equal(provhsm_identity_check_symmetric_key(NULL), PROVHSM_OK);
}

static void sas_known_answer(void **state)
{
    (void)state;
    /* tests/fixtures/sas/vectors.txt */
    const char *key = "pZf3Qw0mIbq9H8l6E2sW1xNcYvR4tKoUjA7eLg5dMhI=";
    const char *scope = "0ne00ABC123%2fregistrations%2fdevice-01";
    char *payload = NULL, *token = NULL;
    uint8_t mac[32];
    assert_int_equal(provhsm_sas_string_to_sign(scope, 1767225600, &payload), PROVHSM_OK);
    assert_string_equal(payload, "0ne00ABC123%2fregistrations%2fdevice-01\n1767225600");
    assert_int_equal(provhsm_sas_hmac_b64key(key, (uint8_t *)payload, strlen(payload), mac),
                     PROVHSM_OK);
    assert_int_equal(provhsm_sas_format(scope, mac, 32, 1767225600, "registration", &token),
                     PROVHSM_OK);
    assert_string_equal(token, "SharedAccessSignature sr=0ne00ABC123%2fregistrations%2fdevice-01"
                               "&sig=mm3901z6Z7zCMdmDPD7by6l5qJ1NcF1kCANcCKe1W1k%3d"
                               "&se=1767225600&skn=registration");
    free(payload);
    free(token);
    assert_int_not_equal(provhsm_sas_hmac_b64key("@@@", (uint8_t *)"x", 1, mac), PROVHSM_OK);

    /* a key longer than the stack buffer takes the secure-heap path: same HMAC as OpenSSL */
    uint8_t long_key[120], expected[32];
    size_t expected_len = 0;
    for (size_t i = 0; i < sizeof(long_key); i++)
        long_key[i] = (uint8_t)(i * 7 + 1);
    char *long_b64 = provhsm_base64_encode(long_key, sizeof(long_key));
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, long_key, sizeof(long_key),
                              (const uint8_t *)"payload", 7, expected, 32, &expected_len));
    assert_int_equal(provhsm_sas_hmac_b64key(long_b64, (const uint8_t *)"payload", 7, mac),
                     PROVHSM_OK);
    assert_memory_equal(mac, expected, 32);
    free(long_b64);
    assert_int_not_equal(provhsm_sas_format(scope, NULL, 32, 1, "registration", &token),
                         PROVHSM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(x509_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(symmetric_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(malformed_records, setup, teardown),
        cmocka_unit_test_setup_teardown(foreign_duplicate_and_truncated_fields, setup, teardown),
        cmocka_unit_test(validation),
        cmocka_unit_test(sas_known_answer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
