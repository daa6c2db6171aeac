/*
 * Tests for src/keyref.c: the PROVHSM KEY REFERENCE format. Keys and DER are built here
 * with OpenSSL; each malformed case changes one thing of a valid reference.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "keyref.h"
#include "log.h"

static void quiet(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)level;
    (void)module;
    (void)message;
    (void)ctx;
}

typedef struct der {
    unsigned char *bytes;
    int len;
} der;

static der spki_of(EVP_PKEY *key)
{
    der d = {NULL, 0};
    d.len = i2d_PUBKEY(key, &d.bytes);
    return d;
}

static der ec_spki(const char *group)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", group);
    der d = spki_of(key);
    EVP_PKEY_free(key);
    return d;
}

/* DER of a reference with the given fields, written by hand (not by the code under test). */
static der reference_der(long version, const char *backend, const char *locator, der spki)
{
    ASN1_INTEGER *v = ASN1_INTEGER_new();
    ASN1_UTF8STRING *b = ASN1_UTF8STRING_new(), *l = ASN1_UTF8STRING_new();
    ASN1_INTEGER_set(v, version);
    ASN1_STRING_set(b, backend, -1);
    ASN1_STRING_set(l, locator, -1);
    unsigned char *vb = NULL, *bb = NULL, *lb = NULL;
    int vl = i2d_ASN1_INTEGER(v, &vb), bl = i2d_ASN1_UTF8STRING(b, &bb),
        ll = i2d_ASN1_UTF8STRING(l, &lb);
    int body = vl + bl + ll + spki.len;
    der d;
    d.bytes = malloc((size_t)body + 4);
    int hdr = 0;
    d.bytes[hdr++] = 0x30;
    if (body < 128) {
        d.bytes[hdr++] = (unsigned char)body;
    } else if (body < 256) {
        d.bytes[hdr++] = 0x81;
        d.bytes[hdr++] = (unsigned char)body;
    } else {
        d.bytes[hdr++] = 0x82;
        d.bytes[hdr++] = (unsigned char)(body >> 8);
        d.bytes[hdr++] = (unsigned char)body;
    }
    memcpy(d.bytes + hdr, vb, (size_t)vl);
    memcpy(d.bytes + hdr + vl, bb, (size_t)bl);
    memcpy(d.bytes + hdr + vl + bl, lb, (size_t)ll);
    memcpy(d.bytes + hdr + vl + bl + ll, spki.bytes, (size_t)spki.len);
    d.len = hdr + body;
    OPENSSL_free(vb);
    OPENSSL_free(bb);
    OPENSSL_free(lb);
    ASN1_INTEGER_free(v);
    ASN1_UTF8STRING_free(b);
    ASN1_UTF8STRING_free(l);
    return d;
}

static char *pem_of(const char *label, const unsigned char *bytes, long len)
{
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio(bio, label, "", bytes, len);
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    char *pem = calloc(1, (size_t)n + 1);
    memcpy(pem, data, (size_t)n);
    BIO_free(bio);
    return pem;
}

static provhsm_err parse_der(der d, provhsm_keyref *out)
{
    return provhsm_keyref_from_der(d.bytes, (size_t)d.len, out);
}

static void test_make_and_round_trip(void **state)
{
    (void)state;
    const char *groups[] = {"P-256", "P-384"};
    const int bits[] = {256, 384};
    for (int i = 0; i < 2; i++) {
        der spki = ec_spki(groups[i]);
        provhsm_keyref ref = {0}, back = {0};
        char *pem = NULL;
        assert_int_equal(provhsm_keyref_make("pkcs11", "pkcs11:token=a;object=b", spki.bytes,
                                             (size_t)spki.len, &ref),
                         PROVHSM_OK);
        assert_int_equal(ref.curve_bits, bits[i]);
        assert_int_equal(provhsm_keyref_to_pem(&ref, &pem), PROVHSM_OK);
        assert_non_null(strstr(pem, "-----BEGIN " PROVHSM_KEYREF_PEM_LABEL "-----\n"));
        assert_int_equal(provhsm_keyref_from_pem(pem, strlen(pem), &back), PROVHSM_OK);
        assert_true(provhsm_keyref_equal(&ref, &back));
        assert_string_equal(back.backend, "pkcs11");
        assert_string_equal(back.locator, "pkcs11:token=a;object=b");
        assert_int_equal(back.spki_len, (size_t)spki.len);
        assert_memory_equal(back.spki, spki.bytes, (size_t)spki.len);
        /* the body is the DER the format describes, byte for byte */
        der expected = reference_der(1, "pkcs11", "pkcs11:token=a;object=b", spki);
        char *expected_pem = pem_of(PROVHSM_KEYREF_PEM_LABEL, expected.bytes, expected.len);
        assert_string_equal(pem, expected_pem);
        free(expected_pem);
        free(expected.bytes);
        free(pem);
        provhsm_keyref_clear(&ref);
        provhsm_keyref_clear(&back);
        OPENSSL_free(spki.bytes);
    }
}

static void test_make_refuses_rsa_and_bad_names(void **state)
{
    (void)state;
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    der rsa_spki = spki_of(rsa);
    der ec = ec_spki("P-256");
    provhsm_keyref ref = {0};
    assert_int_equal(
        provhsm_keyref_make("tpm", "0x81000110", rsa_spki.bytes, (size_t)rsa_spki.len, &ref),
        PROVHSM_E_UNSUPPORTED);
    assert_int_equal(provhsm_keyref_make("TPM", "0x81000110", ec.bytes, (size_t)ec.len, &ref),
                     PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_keyref_make("tpm", "a\nb", ec.bytes, (size_t)ec.len, &ref),
                     PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_keyref_make("tpm", "", ec.bytes, (size_t)ec.len, &ref),
                     PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_keyref_make("0123456789abcdef", "x", ec.bytes, (size_t)ec.len, &ref),
                     PROVHSM_E_INVALID_ARG);
    assert_null(ref.locator);
    OPENSSL_free(rsa_spki.bytes);
    OPENSSL_free(ec.bytes);
    EVP_PKEY_free(rsa);
}

static void expect_corrupt(der d)
{
    provhsm_keyref ref;
    memset(&ref, 0x5a, sizeof(ref));
    provhsm_keyref untouched = ref;
    assert_int_equal(parse_der(d, &ref), PROVHSM_E_CORRUPT);
    assert_memory_equal(&ref, &untouched, sizeof(ref));
}

static void test_from_der_checks_every_field(void **state)
{
    (void)state;
    der ec = ec_spki("P-256");
    der good = reference_der(1, "tpm", "0x81000110", ec);
    provhsm_keyref ref = {0};
    assert_int_equal(parse_der(good, &ref), PROVHSM_OK);
    provhsm_keyref_clear(&ref);

    der cases[] = {
        reference_der(2, "tpm", "0x81000110", ec), reference_der(1, "Tpm", "0x81000110", ec),
        reference_der(1, "", "0x81000110", ec),    reference_der(1, "tpm", "", ec),
        reference_der(1, "tpm", "0x8100\x01", ec), reference_der(1, "tpm", "caf\xc3\xa9", ec),
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        expect_corrupt(cases[i]);
        free(cases[i].bytes);
    }
    /* trailing byte, truncation */
    der longer = {malloc((size_t)good.len + 1), good.len + 1};
    memcpy(longer.bytes, good.bytes, (size_t)good.len);
    longer.bytes[good.len] = 0;
    expect_corrupt(longer);
    der shorter = {good.bytes, good.len - 1};
    expect_corrupt(shorter);
    /* a point off the curve */
    der off = {malloc((size_t)good.len), good.len};
    memcpy(off.bytes, good.bytes, (size_t)good.len);
    off.bytes[good.len - 1] ^= 1;
    expect_corrupt(off);
    free(longer.bytes);
    free(off.bytes);
    free(good.bytes);
    OPENSSL_free(ec.bytes);
}

static void test_from_der_refuses_other_keys(void **state)
{
    (void)state;
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    der rsa_spki = spki_of(rsa);
    der p521 = ec_spki("P-521");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    der ed_spki = spki_of(ed);
    /* a P-256 key with a compressed point */
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY_set_utf8_string_param(key, "point-format", "compressed");
    der compressed = spki_of(key);
    der others[] = {rsa_spki, p521, ed_spki, compressed};
    for (size_t i = 0; i < 4; i++) {
        der d = reference_der(1, "tpm", "0x81000110", others[i]);
        expect_corrupt(d);
        free(d.bytes);
        OPENSSL_free(others[i].bytes);
    }
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ed);
    EVP_PKEY_free(key);
}

static void test_from_pem_labels(void **state)
{
    (void)state;
    der ec = ec_spki("P-384");
    der good = reference_der(1, "pkcs11", "pkcs11:object=k", ec);
    provhsm_keyref ref = {0};
    /* another label: not ours */
    char *other = pem_of("PRIVATE KEY", good.bytes, good.len);
    assert_int_equal(provhsm_keyref_from_pem(other, strlen(other), &ref), PROVHSM_E_MISMATCH);
    assert_int_equal(provhsm_keyref_from_pem("hello", 5, &ref), PROVHSM_E_MISMATCH);
    /* ours with a broken body */
    const char *broken = "-----BEGIN " PROVHSM_KEYREF_PEM_LABEL "-----\n!!!!\n"
                         "-----END " PROVHSM_KEYREF_PEM_LABEL "-----\n";
    assert_int_equal(provhsm_keyref_from_pem(broken, strlen(broken), &ref), PROVHSM_E_CORRUPT);
    /* ours, with text before it and a length that stops at its end */
    char *pem = pem_of(PROVHSM_KEYREF_PEM_LABEL, good.bytes, good.len);
    size_t len = strlen(pem);
    char *with_text = malloc(len + 32);
    int n = snprintf(with_text, len + 32, "alias key:\n%s", pem);
    assert_int_equal(provhsm_keyref_from_pem(with_text, (size_t)n, &ref), PROVHSM_OK);
    assert_int_equal(ref.curve_bits, 384);
    provhsm_keyref_clear(&ref);
    /* cut short: the end line is not within the given length */
    assert_int_equal(provhsm_keyref_from_pem(pem, len - 10, &ref), PROVHSM_E_CORRUPT);
    /* an encrypted-looking header is refused */
    char *headed = malloc(len + 64);
    const char *body = strchr(pem, '\n') + 1;
    snprintf(headed, len + 64, "-----BEGIN " PROVHSM_KEYREF_PEM_LABEL "-----\nX-Note: a\n\n%s",
             body);
    assert_int_equal(provhsm_keyref_from_pem(headed, strlen(headed), &ref), PROVHSM_E_CORRUPT);
    free(headed);
    free(with_text);
    free(pem);
    free(other);
    free(good.bytes);
    OPENSSL_free(ec.bytes);
}

static void test_equal(void **state)
{
    (void)state;
    der a = ec_spki("P-256"), b = ec_spki("P-256");
    provhsm_keyref r1 = {0}, r2 = {0}, r3 = {0}, r4 = {0};
    assert_int_equal(provhsm_keyref_make("tpm", "0x81000110", a.bytes, (size_t)a.len, &r1), 0);
    assert_int_equal(provhsm_keyref_make("tpm", "0x81000110", a.bytes, (size_t)a.len, &r2), 0);
    assert_int_equal(provhsm_keyref_make("tpm", "0x81000111", a.bytes, (size_t)a.len, &r3), 0);
    assert_int_equal(provhsm_keyref_make("tpm", "0x81000110", b.bytes, (size_t)b.len, &r4), 0);
    assert_true(provhsm_keyref_equal(&r1, &r2));
    assert_false(provhsm_keyref_equal(&r1, &r3));
    assert_false(provhsm_keyref_equal(&r1, &r4));
    assert_false(provhsm_keyref_equal(&r1, NULL));
    provhsm_keyref_clear(&r1);
    provhsm_keyref_clear(&r2);
    provhsm_keyref_clear(&r3);
    provhsm_keyref_clear(&r4);
    provhsm_keyref_clear(NULL);
    OPENSSL_free(a.bytes);
    OPENSSL_free(b.bytes);
}

int main(void)
{
    provhsm_set_log_callback(quiet, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_make_and_round_trip),
        cmocka_unit_test(test_make_refuses_rsa_and_bad_names),
        cmocka_unit_test(test_from_der_checks_every_field),
        cmocka_unit_test(test_from_der_refuses_other_keys),
        cmocka_unit_test(test_from_pem_labels),
        cmocka_unit_test(test_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
