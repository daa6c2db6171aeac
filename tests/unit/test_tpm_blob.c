/*
 * Unit tests for the activation-blob parser (src/tpm_blob.c) against the known-answer
 * blobs in tests/fixtures/tpm-activation: both parse, and every truncation, every bad
 * size field and every unacceptable identity-key public area is refused with
 * PROVHSM_E_CORRUPT and a log line naming the field, leaving the output untouched.
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
#include "testutil.h"
#include "tpm_blob.h"

/* Field order of the contract; the last one is the encrypted-data size. */
enum { F_CRED, F_SECRET, F_DUP, F_SEED, F_PUBLIC, F_ENC, F_COUNT };
static const char *const field_names[F_COUNT] = {"credentialBlob", "secret",       "duplicate",
                                                 "inSymSeed",      "objectPublic", "encrypted"};

typedef struct blob_fixture {
    uint8_t *blob;
    size_t len;
    size_t field_off[F_COUNT]; /* offset of each size field, found by walking the sizes */
} blob_fixture;

static char last_log[512];
static int log_count;

static void capture_log(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)level;
    (void)ctx;
    snprintf(last_log, sizeof(last_log), "%s: %s", module, message);
    log_count++;
}

static unsigned be16(const uint8_t *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

static void put_be16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static int load_blob(const char *name, blob_fixture *f)
{
    if (provhsm_test_read_fixture(name, &f->blob, &f->len) != 0)
        return -1;
    size_t off = 0;
    for (int i = 0; i < F_COUNT; i++) {
        if (off + 2 > f->len)
            return -1;
        f->field_off[i] = off;
        off += 2 + be16(f->blob + off);
    }
    return off == f->len ? 0 : -1;
}

static int setup(void **state)
{
    blob_fixture *f = calloc(1, sizeof(*f));
    if (f == NULL || load_blob("tpm-activation/blob1.bin", f) != 0) {
        fprintf(stderr, "cannot read tpm-activation/blob1.bin (is PROVHSM_FIXTURES set?)\n");
        if (f != NULL)
            free(f->blob);
        free(f);
        return -1;
    }
    provhsm_set_log_callback(capture_log, NULL);
    last_log[0] = '\0';
    log_count = 0;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    blob_fixture *f = *state;
    provhsm_set_log_callback(NULL, NULL);
    free(f->blob);
    free(f);
    return 0;
}

/* Parses a modified copy; asserts CORRUPT, an untouched output and one log line. */
static void assert_rejected(const uint8_t *buf, size_t len, const char *field)
{
    provhsm_activation_blob out;
    memset(&out, 0xA5, sizeof(out));
    log_count = 0;
    last_log[0] = '\0';
    assert_int_equal(provhsm_tpm_blob_parse(buf, len, &out), PROVHSM_E_CORRUPT);
    const uint8_t *p = (const uint8_t *)&out;
    for (size_t i = 0; i < sizeof(out); i++)
        if (p[i] != 0xA5)
            fail_msg("output modified at byte %zu on failure", i);
    assert_int_equal(log_count, 1);
    assert_non_null(strstr(last_log, "tpm-blob"));
    if (field != NULL && strstr(last_log, field) == NULL)
        fail_msg("log line \"%s\" does not name %s", last_log, field);
}

static void check_fixture_fields(const blob_fixture *f, const provhsm_activation_blob *b)
{
    assert_int_equal(b->credential_blob.size, be16(f->blob + f->field_off[F_CRED]));
    assert_int_equal(b->secret.size, 256);
    assert_int_equal(b->duplicate.size, be16(f->blob + f->field_off[F_DUP]));
    assert_int_equal(b->in_sym_seed.size, 256);
    assert_true(b->credential_blob.size > 0);
    assert_true(b->duplicate.size > 0);
    assert_int_equal(b->object_public.size, be16(f->blob + f->field_off[F_PUBLIC]));
    assert_memory_equal(b->credential_blob.credential, f->blob + f->field_off[F_CRED] + 2,
                        b->credential_blob.size);
    assert_memory_equal(b->in_sym_seed.secret, f->blob + f->field_off[F_SEED] + 2, 256);

    const TPMT_PUBLIC *p = &b->object_public.publicArea;
    assert_int_equal(p->type, TPM2_ALG_KEYEDHASH);
    assert_int_equal(p->nameAlg, TPM2_ALG_SHA256);
    assert_int_equal(p->objectAttributes,
                     TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA | TPMA_OBJECT_SIGN_ENCRYPT);
    assert_int_equal(p->parameters.keyedHashDetail.scheme.scheme, TPM2_ALG_HMAC);
    assert_int_equal(p->parameters.keyedHashDetail.scheme.details.hmac.hashAlg, TPM2_ALG_SHA256);
    assert_int_equal(p->unique.keyedHash.size, 32);
}

static void test_parse_blob1(void **state)
{
    blob_fixture *f = *state;
    provhsm_activation_blob b;
    assert_int_equal(provhsm_tpm_blob_parse(f->blob, f->len, &b), PROVHSM_OK);
    check_fixture_fields(f, &b);
    assert_int_equal(b.trailing_len, 0);
    /* the contract's layout with an empty encrypted-data field */
    assert_int_equal(be16(f->blob + f->field_off[F_ENC]), 0);
    assert_int_equal(log_count, 0);
}

static void test_parse_blob2(void **state)
{
    (void)state;
    blob_fixture f2;
    memset(&f2, 0, sizeof(f2));
    assert_int_equal(load_blob("tpm-activation/blob2.bin", &f2), 0);
    provhsm_activation_blob b;
    assert_int_equal(provhsm_tpm_blob_parse(f2.blob, f2.len, &b), PROVHSM_OK);
    check_fixture_fields(&f2, &b);
    assert_int_equal(b.trailing_len, 0);
    free(f2.blob);
}

static void test_every_truncation_fails(void **state)
{
    blob_fixture *f = *state;
    for (size_t n = 0; n < f->len; n++) {
        /* an exact-size heap copy, so ASan catches any read past the end */
        uint8_t *copy = malloc(n == 0 ? 1 : n);
        assert_non_null(copy);
        memcpy(copy, f->blob, n);
        assert_rejected(copy, n, NULL);
        free(copy);
    }
}

static void test_truncation_names_field(void **state)
{
    blob_fixture *f = *state;
    for (int i = 0; i < F_COUNT; i++) {
        /* cut inside the size field, then inside the body */
        assert_rejected(f->blob, f->field_off[i] + 1, field_names[i]);
        if (i != F_ENC)
            assert_rejected(f->blob, f->field_off[i] + 3, field_names[i]);
    }
}

static void test_bad_sizes_fail(void **state)
{
    blob_fixture *f = *state;
    uint8_t *copy = malloc(f->len);
    assert_non_null(copy);
    for (int i = 0; i < F_COUNT; i++) {
        size_t at = f->field_off[i];
        unsigned size = be16(f->blob + at);
        const unsigned bad[] = {size + 1, 0xFFFF, 0};
        for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
            if (i == F_ENC && bad[k] == 0)
                continue; /* an empty encrypted-data field is what the fixture has */
            memcpy(copy, f->blob, f->len);
            put_be16(copy + at, bad[k]);
            /* size+1 in an early field shifts the rest; only the outcome is fixed */
            assert_rejected(copy, f->len,
                            bad[k] == size + 1 && i < F_PUBLIC ? NULL : field_names[i]);
        }
    }
    /* an objectPublic one byte short of its area */
    memcpy(copy, f->blob, f->len);
    put_be16(copy + f->field_off[F_PUBLIC], be16(f->blob + f->field_off[F_PUBLIC]) - 1);
    assert_rejected(copy, f->len, NULL);
    free(copy);
}

static void test_trailing_bytes_allowed(void **state)
{
    blob_fixture *f = *state;
    uint8_t *big = calloc(1, f->len + 12);
    assert_non_null(big);
    memcpy(big, f->blob, f->len);
    memset(big + f->len, 0x5A, 7);
    provhsm_activation_blob b;
    assert_int_equal(provhsm_tpm_blob_parse(big, f->len + 7, &b), PROVHSM_OK);
    assert_int_equal(b.trailing_len, 7);
    check_fixture_fields(f, &b);

    /* a non-empty encrypted-data field is skipped, and what follows it is trailing */
    put_be16(big + f->field_off[F_ENC], 5);
    assert_int_equal(provhsm_tpm_blob_parse(big, f->len + 12, &b), PROVHSM_OK);
    assert_int_equal(b.trailing_len, 12 - 5);
    assert_int_equal(provhsm_tpm_blob_parse(big, f->len + 5, &b), PROVHSM_OK);
    assert_int_equal(b.trailing_len, 0);
    assert_rejected(big, f->len + 4, "encrypted");
    free(big);
}

/* Offsets inside objectPublic's TPMT_PUBLIC (after its size field). */
#define PUB_TYPE   0
#define PUB_NAME   2
#define PUB_ATTR   4
#define PUB_SCHEME 10
#define PUB_HASH   12

static void test_identity_public_checked(void **state)
{
    blob_fixture *f = *state;
    uint8_t *copy = malloc(f->len);
    assert_non_null(copy);
    size_t pub = f->field_off[F_PUBLIC] + 2;

    struct {
        size_t at;
        unsigned value;
        const char *field;
    } cases[] = {
        {PUB_TYPE, TPM2_ALG_RSA, "objectPublic"},    {PUB_TYPE, TPM2_ALG_SYMCIPHER, "objectPublic"},
        {PUB_TYPE, 0x7777, "objectPublic"},          {PUB_NAME, TPM2_ALG_SHA1, "nameAlg"},
        {PUB_NAME, TPM2_ALG_SHA384, "nameAlg"},      {PUB_SCHEME, TPM2_ALG_XOR, "objectPublic"},
        {PUB_SCHEME, TPM2_ALG_NULL, "objectPublic"}, {PUB_HASH, TPM2_ALG_SHA1, "hash"},
        {PUB_HASH, TPM2_ALG_SHA512, "hash"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memcpy(copy, f->blob, f->len);
        assert_int_equal(be16(copy + pub + cases[i].at) != cases[i].value, 1);
        put_be16(copy + pub + cases[i].at, cases[i].value);
        assert_rejected(copy, f->len, cases[i].field);
    }

    /* sign attribute cleared (byte 1 of the big-endian TPMA_OBJECT holds bit 18) */
    memcpy(copy, f->blob, f->len);
    assert_true(copy[pub + PUB_ATTR + 1] & 0x04);
    copy[pub + PUB_ATTR + 1] &= (uint8_t)~0x04;
    assert_rejected(copy, f->len, "sign");

    /* every attribute the signing path needs set, or clear, and no reserved bit */
    static const struct {
        uint32_t flip;
        const char *log;
    } attrs[] = {
        {TPMA_OBJECT_USERWITHAUTH, "userWithAuth"},
        {TPMA_OBJECT_RESTRICTED, "restricted"},
        {TPMA_OBJECT_DECRYPT, "decrypt"},
        {TPMA_OBJECT_FIXEDTPM, "fixedTPM"},
        {TPMA_OBJECT_FIXEDPARENT, "fixedParent"},
        {TPMA_OBJECT_STCLEAR, "stClear"},
        {TPMA_OBJECT_X509SIGN, "reserved"},
        {TPMA_OBJECT_RESERVED1_MASK, "reserved"},
        {0x00000100 /* reserved 8-9 */, "reserved"},
        {0x80000000, "reserved"},
    };
    for (size_t i = 0; i < sizeof(attrs) / sizeof(attrs[0]); i++) {
        memcpy(copy, f->blob, f->len);
        uint8_t *a = copy + pub + PUB_ATTR;
        uint32_t v = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];
        v ^= attrs[i].flip;
        a[0] = (uint8_t)(v >> 24);
        a[1] = (uint8_t)(v >> 16);
        a[2] = (uint8_t)(v >> 8);
        a[3] = (uint8_t)v;
        assert_rejected(copy, f->len, attrs[i].log);
    }
    /* attributes a signing key may carry either way are accepted */
    const uint32_t either[] = {TPMA_OBJECT_NODA, TPMA_OBJECT_SENSITIVEDATAORIGIN,
                               TPMA_OBJECT_ADMINWITHPOLICY, TPMA_OBJECT_ENCRYPTEDDUPLICATION};
    for (size_t i = 0; i < sizeof(either) / sizeof(either[0]); i++) {
        memcpy(copy, f->blob, f->len);
        uint8_t *a = copy + pub + PUB_ATTR;
        a[2] ^= (uint8_t)(either[i] >> 8);
        a[3] ^= (uint8_t)either[i];
        provhsm_activation_blob ok;
        assert_int_equal(provhsm_tpm_blob_parse(copy, f->len, &ok), PROVHSM_OK);
    }

    /* the untouched copy still parses: the cases above fail for their own reason */
    memcpy(copy, f->blob, f->len);
    provhsm_activation_blob b;
    assert_int_equal(provhsm_tpm_blob_parse(copy, f->len, &b), PROVHSM_OK);
    free(copy);
}

static void test_null_args(void **state)
{
    blob_fixture *f = *state;
    provhsm_activation_blob b;
    assert_int_equal(provhsm_tpm_blob_parse(NULL, f->len, &b), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_tpm_blob_parse(f->blob, f->len, NULL), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_tpm_blob_parse(NULL, 0, NULL), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_tpm_blob_parse(f->blob, 0, &b), PROVHSM_E_CORRUPT);
}

/* Authorisation values as files and variables hold them. */
static void test_auth_values(void **state)
{
    (void)state;
    TPM2B_AUTH a;
    const char plain[] = "owner secret\r\n";
    assert_int_equal(provhsm_tpm_auth_parse(plain, strlen(plain), "t", &a), PROVHSM_OK);
    assert_int_equal(a.size, 12);
    assert_memory_equal(a.buffer, "owner secret", 12);

    const char hex[] = "hex:00aBfF\n";
    const uint8_t want[] = {0x00, 0xab, 0xff};
    assert_int_equal(provhsm_tpm_auth_parse(hex, strlen(hex), "t", &a), PROVHSM_OK);
    assert_int_equal(a.size, 3);
    assert_memory_equal(a.buffer, want, 3);

    assert_int_equal(provhsm_tpm_auth_parse("", 0, "t", &a), PROVHSM_OK);
    assert_int_equal(a.size, 0);

    const char *bad[] = {"hex:abc", "hex:0g", "hex:-1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(provhsm_tpm_auth_parse(bad[i], strlen(bad[i]), "t", &a), PROVHSM_E_CONFIG);
    char big[sizeof(a.buffer) + 2];
    memset(big, 'x', sizeof(big));
    assert_int_equal(provhsm_tpm_auth_parse(big, sizeof(big), "t", &a), PROVHSM_E_CONFIG);
    assert_int_equal(provhsm_tpm_auth_parse(big, sizeof(a.buffer), "t", &a), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_auth_parse(NULL, 0, "t", &a), PROVHSM_E_INVALID_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_parse_blob1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_blob2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_truncation_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncation_names_field, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_sizes_fail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trailing_bytes_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identity_public_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_null_args, setup, teardown),
        cmocka_unit_test(test_auth_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
