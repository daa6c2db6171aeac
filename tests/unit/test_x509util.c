/*
 * Tests for src/x509util.c. Every certificate, key and request is built here with
 * OpenSSL, so no fixture files are needed; expected values (names, fingerprints,
 * validity) are computed independently of the code under test.
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
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "secmem.h"
#include "x509util.h"

/* "Gerät-ü-東京" and the like, spelled as bytes so the source encoding cannot matter. */
#define CN_UTF8 "Ger\xc3\xa4t-\xc3\xbc-\xe6\x9d\xb1\xe4\xba\xac"

/* ---- log capture ------------------------------------------------------------ */

static char log_text[8192];

static void capture_log(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)level;
    (void)ctx;
    size_t used = strlen(log_text);
    snprintf(log_text + used, sizeof(log_text) - used, "[%s] %s\n", module, message);
}

static void log_reset(void)
{
    log_text[0] = '\0';
}

/* ---- keys shared by the tests (RSA generation is slow) ------------------------ */

typedef struct keys {
    EVP_PKEY *ec1, *ec2, *rsa1, *rsa2;
} keys;

static int setup_keys(void **state)
{
    keys *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return -1;
    k->ec1 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    k->ec2 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    k->rsa1 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    k->rsa2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    if (k->ec1 == NULL || k->ec2 == NULL || k->rsa1 == NULL || k->rsa2 == NULL)
        return -1;
    provhsm_set_log_level(PROVHSM_LOG_WARN);
    provhsm_set_log_callback(capture_log, NULL);
    *state = k;
    return 0;
}

static int teardown_keys(void **state)
{
    keys *k = *state;
    EVP_PKEY_free(k->ec1);
    EVP_PKEY_free(k->ec2);
    EVP_PKEY_free(k->rsa1);
    EVP_PKEY_free(k->rsa2);
    free(k);
    provhsm_set_log_callback(NULL, NULL);
    return 0;
}

/* ---- certificate builders ------------------------------------------------------- */

static void add_utf8(X509_NAME *name, const char *field, const char *value)
{
    assert_int_equal(X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
                                                (const unsigned char *)value, -1, -1, 0),
                     1);
}

/* Adds a CN of a given ASN.1 string type with raw content bytes (no conversion). */
static void add_raw_cn(X509_NAME *name, int type, const void *bytes, int len)
{
    assert_int_equal(X509_NAME_add_entry_by_NID(name, NID_commonName, type, bytes, len, -1, 0), 1);
}

/* A v3 certificate for `key`, issued under `issuer` (NULL: self-issued), signed by `signer`. */
static X509 *make_cert_signed(EVP_PKEY *key, X509_NAME *subject, X509_NAME *issuer,
                              EVP_PKEY *signer, long not_before, long not_after)
{
    X509 *cert = X509_new();
    assert_non_null(cert);
    assert_int_equal(X509_set_version(cert, X509_VERSION_3), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(cert), 4242), 1);
    assert_int_equal(X509_set_subject_name(cert, subject), 1);
    assert_int_equal(X509_set_issuer_name(cert, issuer != NULL ? issuer : subject), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(cert), not_before));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(cert), not_after));
    assert_int_equal(X509_set_pubkey(cert, key), 1);
    assert_true(X509_sign(cert, signer, EVP_sha256()) > 0);
    return cert;
}

static X509 *make_cert(EVP_PKEY *key, X509_NAME *subject)
{
    return make_cert_signed(key, subject, NULL, key, 0, 86400L * 10);
}

static X509 *cert_with_cn(EVP_PKEY *key, const char *cn)
{
    X509_NAME *name = X509_NAME_new();
    assert_non_null(name);
    add_utf8(name, "CN", cn);
    X509 *cert = make_cert(key, name);
    X509_NAME_free(name);
    return cert;
}

/* An unsigned certificate carrying only a subject: enough for reading the CN. */
static X509 *cert_with_subject(X509_NAME *name)
{
    X509 *cert = X509_new();
    assert_non_null(cert);
    assert_int_equal(X509_set_subject_name(cert, name), 1);
    return cert;
}

static char *bio_string(BIO *bio)
{
    char *data = NULL;
    long len = BIO_get_mem_data(bio, &data);
    assert_true(len >= 0);
    char *s = malloc((size_t)len + 1);
    assert_non_null(s);
    memcpy(s, data, (size_t)len);
    s[len] = '\0';
    return s;
}

static char *cert_pem(X509 *cert)
{
    BIO *bio = BIO_new(BIO_s_mem());
    assert_non_null(bio);
    assert_int_equal(PEM_write_bio_X509(bio, cert), 1);
    char *s = bio_string(bio);
    BIO_free(bio);
    return s;
}

static char *key_pem_plain(EVP_PKEY *key)
{
    BIO *bio = BIO_new(BIO_s_mem());
    assert_non_null(bio);
    assert_int_equal(PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL), 1);
    char *s = bio_string(bio);
    BIO_free(bio);
    return s;
}

static char *concat(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    assert_non_null(s);
    snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

/* The CN through the code under test, asserting success. */
static void assert_cn(X509 *cert, const char *expected)
{
    char *cn = NULL;
    assert_int_equal(provhsm_x509_common_name(cert, &cn), PROVHSM_OK);
    assert_non_null(cn);
    assert_string_equal(cn, expected);
    free(cn);
}

static void assert_no_cn(X509 *cert)
{
    char *cn = (char *)"untouched";
    log_reset();
    assert_int_equal(provhsm_x509_common_name(cert, &cn), PROVHSM_E_NO_CN);
    assert_string_equal(cn, "untouched");
    assert_non_null(strstr(log_text, "common name"));
    assert_int_equal(ERR_peek_error(), 0);
}

/* ---- common name --------------------------------------------------------------- */

static void test_cn_utf8(void **state)
{
    keys *k = *state;
    X509 *cert = cert_with_cn(k->ec1, CN_UTF8);
    assert_cn(cert, CN_UTF8);
    X509_free(cert);
}

static void test_cn_among_rdns(void **state)
{
    keys *k = *state;
    X509_NAME *name = X509_NAME_new();
    assert_non_null(name);
    add_utf8(name, "C", "DE");
    add_utf8(name, "O", "Acme Devices");
    add_utf8(name, "CN", "device-0042");
    add_utf8(name, "OU", "Line 3");
    add_utf8(name, "L", "M\xc3\xbcnchen");
    X509 *cert = make_cert(k->ec1, name);
    assert_cn(cert, "device-0042");
    X509_free(cert);
    X509_NAME_free(name);
}

static void test_cn_last_of_several(void **state)
{
    (void)state;
    X509_NAME *name = X509_NAME_new();
    assert_non_null(name);
    add_utf8(name, "CN", "Acme Root Group");
    add_utf8(name, "O", "Acme");
    add_utf8(name, "CN", "device-most-specific");
    add_utf8(name, "OU", "after");
    X509 *cert = cert_with_subject(name);
    assert_cn(cert, "device-most-specific");
    X509_free(cert);
    X509_NAME_free(name);
}

static void test_cn_string_types(void **state)
{
    /* BMPString (UTF-16BE) "Gerät東" and a PrintableString. */
    static const unsigned char bmp[] = {0x00, 'G',  0x00, 'e', 0x00, 'r',
                                        0x00, 0xe4, 0x00, 't', 0x67, 0x71};
    (void)state;
    X509_NAME *name = X509_NAME_new();
    assert_non_null(name);
    add_raw_cn(name, V_ASN1_BMPSTRING, bmp, (int)sizeof(bmp));
    X509 *cert = cert_with_subject(name);
    assert_int_equal(ASN1_STRING_type(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, 0))),
                     V_ASN1_BMPSTRING);
    assert_cn(cert, "Ger\xc3\xa4t\xe6\x9d\xb1");
    X509_free(cert);
    X509_NAME_free(name);

    name = X509_NAME_new();
    assert_non_null(name);
    add_raw_cn(name, V_ASN1_PRINTABLESTRING, "device-01", -1);
    cert = cert_with_subject(name);
    assert_cn(cert, "device-01");
    X509_free(cert);
    X509_NAME_free(name);
}

static void test_cn_missing_or_bad(void **state)
{
    keys *k = *state;

    /* No CN at all. */
    X509_NAME *name = X509_NAME_new();
    assert_non_null(name);
    add_utf8(name, "C", "DE");
    add_utf8(name, "O", "Acme");
    X509 *cert = make_cert(k->ec1, name);
    assert_no_cn(cert);
    X509_free(cert);
    X509_NAME_free(name);

    /* Empty subject. */
    name = X509_NAME_new();
    assert_non_null(name);
    cert = cert_with_subject(name);
    assert_no_cn(cert);
    X509_free(cert);
    X509_NAME_free(name);

    /* Empty CN. */
    name = X509_NAME_new();
    assert_non_null(name);
    add_raw_cn(name, V_ASN1_UTF8STRING, "", 0);
    cert = cert_with_subject(name);
    assert_no_cn(cert);
    X509_free(cert);
    X509_NAME_free(name);

    /* A NUL byte inside the CN (the classic "good.example\0.evil" trick). */
    name = X509_NAME_new();
    assert_non_null(name);
    add_raw_cn(name, V_ASN1_UTF8STRING, "dev\0ice", 7);
    cert = cert_with_subject(name);
    assert_no_cn(cert);
    X509_free(cert);
    X509_NAME_free(name);

    /*
     * A UTF8String that is not UTF-8. OpenSSL 3 refuses to decode such a name, so it
     * cannot come from a parsed certificate; it is put straight into the subject here.
     */
    cert = X509_new();
    assert_non_null(cert);
    add_raw_cn(X509_get_subject_name(cert), V_ASN1_UTF8STRING, "dev\xff\xfe", 5);
    assert_no_cn(cert);
    X509_free(cert);

    /* A valid CN first does not rescue an invalid last one: the last one is used. */
    name = X509_NAME_new();
    assert_non_null(name);
    add_utf8(name, "CN", "good");
    add_raw_cn(name, V_ASN1_UTF8STRING, "", 0);
    cert = cert_with_subject(name);
    assert_no_cn(cert);
    X509_free(cert);
    X509_NAME_free(name);

    char *cn = NULL;
    assert_int_equal(provhsm_x509_common_name(NULL, &cn), PROVHSM_E_INVALID_ARG);
}

/* ---- chain parsing ------------------------------------------------------------ */

typedef struct three {
    X509 *certs[3];
    char *pems[3];
} three;

static void make_three(keys *k, three *t)
{
    static const char *const cns[] = {"leaf-device", "intermediate-ca", "root-ca"};
    EVP_PKEY *ks[] = {k->ec1, k->ec2, k->rsa1};
    for (int i = 0; i < 3; i++) {
        t->certs[i] = cert_with_cn(ks[i], cns[i]);
        t->pems[i] = cert_pem(t->certs[i]);
    }
}

static void free_three(three *t)
{
    for (int i = 0; i < 3; i++) {
        X509_free(t->certs[i]);
        free(t->pems[i]);
    }
}

static void test_parse_one_and_three(void **state)
{
    keys *k = *state;
    three t;
    STACK_OF(X509) *chain = NULL;
    make_three(k, &t);

    assert_int_equal(provhsm_x509_parse_chain(t.pems[0], &chain), PROVHSM_OK);
    assert_int_equal(sk_X509_num(chain), 1);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 0), t.certs[0]), 0);
    assert_int_equal(ERR_peek_error(), 0);
    sk_X509_pop_free(chain, X509_free);

    char *all = concat(t.pems[0], t.pems[1], t.pems[2]);
    chain = NULL;
    assert_int_equal(provhsm_x509_parse_chain(all, &chain), PROVHSM_OK);
    assert_int_equal(sk_X509_num(chain), 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(X509_cmp(sk_X509_value(chain, i), t.certs[i]), 0);
    assert_cn(sk_X509_value(chain, 0), "leaf-device");
    assert_cn(sk_X509_value(chain, 2), "root-ca");
    assert_int_equal(ERR_peek_error(), 0);

    /* Back to PEM: identical text, leaf first. */
    char *pem = NULL;
    assert_int_equal(provhsm_x509_chain_to_pem(chain, &pem), PROVHSM_OK);
    assert_string_equal(pem, all);
    free(pem);
    sk_X509_pop_free(chain, X509_free);
    free(all);
    free_three(&t);
}

static void test_parse_whitespace_and_crlf(void **state)
{
    keys *k = *state;
    three t;
    make_three(k, &t);

    /* Blank lines and spaces around and between blocks are fine. */
    char *ab = concat("\n  \n", t.pems[0], "\n\n\t \n");
    char *spaced = concat(ab, t.pems[1], "  \n\n");
    STACK_OF(X509) *chain = NULL;
    assert_int_equal(provhsm_x509_parse_chain(spaced, &chain), PROVHSM_OK);
    assert_int_equal(sk_X509_num(chain), 2);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 1), t.certs[1]), 0);
    sk_X509_pop_free(chain, X509_free);

    /* CRLF line ends (a chain edited on Windows), blank CRLF lines included. */
    char *two = concat(t.pems[0], "\n", t.pems[1]);
    char *crlf = malloc(strlen(two) * 2 + 1);
    assert_non_null(crlf);
    size_t o = 0;
    for (const char *p = two; *p != '\0'; p++) {
        if (*p == '\n')
            crlf[o++] = '\r';
        crlf[o++] = *p;
    }
    crlf[o] = '\0';
    chain = NULL;
    assert_int_equal(provhsm_x509_parse_chain(crlf, &chain), PROVHSM_OK);
    assert_int_equal(sk_X509_num(chain), 2);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 0), t.certs[0]), 0);
    sk_X509_pop_free(chain, X509_free);

    free(crlf);
    free(two);
    free(spaced);
    free(ab);
    free_three(&t);
}

static void test_parse_rejects(void **state)
{
    keys *k = *state;
    three t;
    make_three(k, &t);
    const char *c0 = t.pems[0];
    char *key = key_pem_plain(k->ec1);

    BIO *bio = BIO_new(BIO_s_mem());
    assert_non_null(bio);
    X509_REQ *req = X509_REQ_new();
    assert_non_null(req);
    assert_int_equal(X509_REQ_set_pubkey(req, k->ec1), 1);
    assert_true(X509_REQ_sign(req, k->ec1, EVP_sha256()) > 0);
    assert_int_equal(PEM_write_bio_X509_REQ(bio, req), 1);
    char *csr = bio_string(bio);
    BIO_free(bio);
    X509_REQ_free(req);

    char *truncated = strdup(c0);
    assert_non_null(truncated);
    truncated[strlen(truncated) / 2] = '\0';
    char *corrupt = strdup(c0);
    assert_non_null(corrupt);
    corrupt[40] = '*'; /* inside the base64 body */

    char *bad[] = {
        strdup(""),
        strdup(" \n\t\n"),
        strdup("this is not a certificate\n"),
        concat("garbage\n", c0, ""),
        concat(c0, "garbage\n", ""),
        concat(c0, "\nx\n", t.pems[1]),
        concat(c0, t.pems[1], "."),
        strdup(key),
        concat(c0, key, ""),
        concat(key, c0, ""),
        strdup(csr),
        concat(c0, csr, ""),
        strdup(truncated),
        concat(truncated, "\n", t.pems[1]),
        strdup(corrupt),
        strdup("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"),
        concat("-----BEGIN CERTIFICATE-----\n", c0 + strlen("-----BEGIN CERTIFICATE-----\n"),
               "-----END PRIVATE KEY-----\n"),
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_non_null(bad[i]);
        STACK_OF(X509) *sentinel = (STACK_OF(X509) *)&t;
        STACK_OF(X509) *chain = sentinel;
        log_reset();
        provhsm_err err = provhsm_x509_parse_chain(bad[i], &chain);
        if (err == PROVHSM_OK)
            fail_msg("malformed chain #%zu accepted", i);
        assert_int_equal(err, PROVHSM_E_CORRUPT);
        assert_ptr_equal(chain, sentinel);
        assert_true(log_text[0] != '\0');
        assert_int_equal(ERR_peek_error(), 0);
        free(bad[i]);
    }

    STACK_OF(X509) *chain = NULL;
    assert_int_equal(provhsm_x509_parse_chain(NULL, &chain), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_x509_parse_chain(c0, NULL), PROVHSM_E_INVALID_ARG);

    free(corrupt);
    free(truncated);
    free(csr);
    free(key);
    free_three(&t);
}

/* ---- keys ------------------------------------------------------------------------ */

static void test_key_matches(void **state)
{
    keys *k = *state;
    X509 *ec = cert_with_cn(k->ec1, "ec-device");
    X509 *rsa = cert_with_cn(k->rsa1, "rsa-device");

    assert_int_equal(provhsm_x509_key_matches(k->ec1, ec), PROVHSM_OK);
    assert_int_equal(provhsm_x509_key_matches(k->ec2, ec), PROVHSM_E_MISMATCH);
    assert_int_equal(provhsm_x509_key_matches(k->rsa1, rsa), PROVHSM_OK);
    assert_int_equal(provhsm_x509_key_matches(k->rsa2, rsa), PROVHSM_E_MISMATCH);
    /* Different key types: a mismatch, and no stale OpenSSL error left behind. */
    assert_int_equal(provhsm_x509_key_matches(k->rsa1, ec), PROVHSM_E_MISMATCH);
    assert_int_equal(provhsm_x509_key_matches(k->ec1, rsa), PROVHSM_E_MISMATCH);
    assert_int_equal(ERR_peek_error(), 0);
    assert_int_equal(provhsm_x509_key_matches(NULL, ec), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_x509_key_matches(k->ec1, NULL), PROVHSM_E_INVALID_ARG);

    X509_free(ec);
    X509_free(rsa);
}

static void test_generate_key_types(void **state)
{
    static const struct {
        provhsm_key_type type;
        const char *name;
        int bits;
    } cases[] = {
        {PROVHSM_KEY_EC_P256, "EC", 256},
        {PROVHSM_KEY_RSA_2048, "RSA", 2048},
        {PROVHSM_KEY_RSA_3072, "RSA", 3072},
        {PROVHSM_KEY_RSA_4096, "RSA", 4096},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        EVP_PKEY *key = NULL;
        assert_int_equal(provhsm_x509_generate_key(cases[i].type, &key), PROVHSM_OK);
        assert_non_null(key);
        assert_true(EVP_PKEY_is_a(key, cases[i].name));
        assert_int_equal(EVP_PKEY_get_bits(key), cases[i].bits);
        if (cases[i].type == PROVHSM_KEY_EC_P256) {
            char group[64];
            assert_int_equal(EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                                            sizeof(group), NULL),
                             1);
            assert_string_equal(group, "prime256v1");
        }
        EVP_PKEY_free(key);
    }
    EVP_PKEY *key = NULL;
    assert_int_equal(provhsm_x509_generate_key((provhsm_key_type)99, &key), PROVHSM_E_INVALID_ARG);
    assert_null(key);
}

static void assert_same_private_key(EVP_PKEY *a, EVP_PKEY *b)
{
    unsigned char *da = NULL, *db = NULL;
    int la = i2d_PrivateKey(a, &da);
    int lb = i2d_PrivateKey(b, &db);
    assert_true(la > 0);
    assert_int_equal(la, lb);
    assert_memory_equal(da, db, (size_t)la);
    OPENSSL_clear_free(da, (size_t)la);
    OPENSSL_clear_free(db, (size_t)lb);
}

static void key_pem_round_trip(EVP_PKEY *key)
{
    char *pem = NULL;
    assert_int_equal(provhsm_x509_key_to_pem(key, &pem), PROVHSM_OK);
    assert_non_null(pem);
    assert_true(strncmp(pem, "-----BEGIN PRIVATE KEY-----\n", 28) == 0);
    assert_non_null(strstr(pem, "\n-----END PRIVATE KEY-----\n"));
    EVP_PKEY *back = NULL;
    assert_int_equal(provhsm_x509_key_from_pem(pem, &back), PROVHSM_OK);
    assert_same_private_key(key, back);
    EVP_PKEY_free(back);
    /* provhsm_secure_free() aborts on memory that is not from provhsm_secure_alloc(). */
    provhsm_secure_free(pem);
}

static void test_key_pem_round_trip(void **state)
{
    keys *k = *state;
    key_pem_round_trip(k->ec1);
    key_pem_round_trip(k->rsa1);

    /* Traditional ("EC PRIVATE KEY") PEM is read as well. */
    BIO *bio = BIO_new(BIO_s_mem());
    assert_non_null(bio);
    assert_int_equal(PEM_write_bio_PrivateKey_traditional(bio, k->ec2, NULL, NULL, 0, NULL, NULL),
                     1);
    char *trad = bio_string(bio);
    BIO_free(bio);
    assert_true(strncmp(trad, "-----BEGIN EC PRIVATE KEY-----", 30) == 0);
    EVP_PKEY *back = NULL;
    assert_int_equal(provhsm_x509_key_from_pem(trad, &back), PROVHSM_OK);
    assert_same_private_key(k->ec2, back);
    EVP_PKEY_free(back);
    free(trad);
}

/* The store's fast path: PKCS#8 PEM of a known type. */
static void test_stored_key_typed(void **state)
{
    keys *k = *state;
    char *ec_pem = NULL, *rsa_pem = NULL;
    EVP_PKEY *back = NULL;
    assert_int_equal(provhsm_x509_key_to_pem(k->ec1, &ec_pem), PROVHSM_OK);
    assert_int_equal(provhsm_x509_key_to_pem(k->rsa1, &rsa_pem), PROVHSM_OK);

    assert_int_equal(provhsm_x509_stored_key_from_pem(ec_pem, "EC", &back), PROVHSM_OK);
    assert_same_private_key(k->ec1, back);
    EVP_PKEY_free(back);
    back = NULL;
    assert_int_equal(provhsm_x509_stored_key_from_pem(rsa_pem, "RSA", &back), PROVHSM_OK);
    assert_same_private_key(k->rsa1, back);
    EVP_PKEY_free(back);
    back = NULL;

    /* a key of another type than the certificate's is a mismatch, output untouched */
    assert_int_equal(provhsm_x509_stored_key_from_pem(ec_pem, "RSA", &back), PROVHSM_E_MISMATCH);
    assert_int_equal(provhsm_x509_stored_key_from_pem(rsa_pem, "EC", &back), PROVHSM_E_MISMATCH);
    assert_int_equal(provhsm_x509_stored_key_from_pem("garbage", "EC", &back), PROVHSM_E_MISMATCH);
    assert_null(back);
    assert_int_equal(provhsm_x509_stored_key_from_pem(NULL, "EC", &back), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_x509_stored_key_from_pem(ec_pem, NULL, &back), PROVHSM_E_INVALID_ARG);
    assert_int_equal(ERR_peek_error(), 0);
    provhsm_secure_free(ec_pem);
    provhsm_secure_free(rsa_pem);
}

static void test_key_from_pem_rejects(void **state)
{
    keys *k = *state;
    static const unsigned char pass[] = "correct horse";

    /* Encrypted PKCS#8 and encrypted traditional PEM: refused without prompting. */
    BIO *bio = BIO_new(BIO_s_mem());
    assert_non_null(bio);
    assert_int_equal(PEM_write_bio_PKCS8PrivateKey(bio, k->ec1, EVP_aes_256_cbc(), (char *)pass,
                                                   (int)strlen((const char *)pass), NULL, NULL),
                     1);
    char *enc8 = bio_string(bio);
    BIO_free(bio);
    assert_non_null(strstr(enc8, "ENCRYPTED PRIVATE KEY"));

    bio = BIO_new(BIO_s_mem());
    assert_non_null(bio);
    assert_int_equal(PEM_write_bio_PrivateKey_traditional(bio, k->rsa1, EVP_aes_256_cbc(), pass,
                                                          (int)strlen((const char *)pass), NULL,
                                                          NULL),
                     1);
    char *enc_trad = bio_string(bio);
    BIO_free(bio);
    assert_non_null(strstr(enc_trad, "Proc-Type: 4,ENCRYPTED"));

    const char *encrypted[] = {enc8, enc_trad};
    for (size_t i = 0; i < 2; i++) {
        EVP_PKEY *key = NULL;
        log_reset();
        assert_int_equal(provhsm_x509_key_from_pem(encrypted[i], &key), PROVHSM_E_INVALID_ARG);
        assert_null(key);
        assert_non_null(strstr(log_text, "encrypted keys are not supported"));
        assert_int_equal(ERR_peek_error(), 0);
    }

    X509 *cert = cert_with_cn(k->ec1, "not-a-key");
    char *certpem = cert_pem(cert);
    const char *garbage[] = {"", "garbage", certpem,
                             "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"};
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        EVP_PKEY *key = NULL;
        log_reset();
        assert_int_equal(provhsm_x509_key_from_pem(garbage[i], &key), PROVHSM_E_CORRUPT);
        assert_null(key);
        assert_true(log_text[0] != '\0');
        assert_int_equal(ERR_peek_error(), 0);
    }
    EVP_PKEY *key = NULL;
    assert_int_equal(provhsm_x509_key_from_pem(NULL, &key), PROVHSM_E_INVALID_ARG);
    char *pem = NULL;
    assert_int_equal(provhsm_x509_key_to_pem(NULL, &pem), PROVHSM_E_INVALID_ARG);

    free(certpem);
    X509_free(cert);
    free(enc_trad);
    free(enc8);
}

/* ---- self-signed certificates and requests -------------------------------------- */

static void self_signed_round_trip(EVP_PKEY *key, const char *cn, int is_rsa)
{
    char *pem = NULL;
    STACK_OF(X509) *chain = NULL;

    assert_int_equal(provhsm_x509_self_signed(key, cn, 30, &pem), PROVHSM_OK);
    assert_true(strncmp(pem, "-----BEGIN CERTIFICATE-----\n", 28) == 0);
    assert_int_equal(provhsm_x509_parse_chain(pem, &chain), PROVHSM_OK);
    assert_int_equal(sk_X509_num(chain), 1);
    X509 *cert = sk_X509_value(chain, 0);

    assert_cn(cert, cn);
    assert_int_equal(provhsm_x509_key_matches(key, cert), PROVHSM_OK);
    assert_int_equal(X509_verify(cert, key), 1);
    assert_int_equal(X509_NAME_cmp(X509_get_subject_name(cert), X509_get_issuer_name(cert)), 0);
    assert_int_equal(X509_get_version(cert), X509_VERSION_3);
    assert_int_equal(X509_get_signature_nid(cert),
                     is_rsa ? NID_sha256WithRSAEncryption : NID_ecdsa_with_SHA256);

    /* Serial: positive, 127 random bits with the top one set (16 DER octets). */
    BIGNUM *serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    assert_non_null(serial);
    assert_false(BN_is_negative(serial));
    assert_int_equal(BN_num_bits(serial), 127);
    BN_free(serial);

    /* Valid from now for exactly 30 days. */
    int days = -1, secs = -1;
    assert_int_equal(
        ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert), X509_get0_notAfter(cert)), 1);
    assert_int_equal(days, 30);
    assert_int_equal(secs, 0);
    assert_int_equal(ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notBefore(cert)), 1);
    assert_int_equal(days, 0);
    assert_true(secs <= 0 && secs > -120);

    /* Extensions: end entity, client authentication, key identifier. */
    uint32_t flags = X509_get_extension_flags(cert);
    assert_true(flags & EXFLAG_BCONS);
    assert_false(flags & EXFLAG_CA);
    int idx = X509_get_ext_by_NID(cert, NID_basic_constraints, -1);
    assert_true(idx >= 0);
    assert_int_equal(X509_EXTENSION_get_critical(X509_get_ext(cert, idx)), 1);
    idx = X509_get_ext_by_NID(cert, NID_key_usage, -1);
    assert_true(idx >= 0);
    assert_int_equal(X509_EXTENSION_get_critical(X509_get_ext(cert, idx)), 1);
    assert_int_equal(X509_get_key_usage(cert),
                     is_rsa ? (KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT) : KU_DIGITAL_SIGNATURE);
    assert_int_equal(X509_get_extended_key_usage(cert), XKU_SSL_CLIENT);
    const ASN1_OCTET_STRING *skid = X509_get0_subject_key_id(cert);
    assert_non_null(skid);
    assert_int_equal(ASN1_STRING_length(skid), 20);
    assert_int_equal(ERR_peek_error(), 0);

    /* A second certificate gets another serial. */
    char *pem2 = NULL;
    STACK_OF(X509) *chain2 = NULL;
    assert_int_equal(provhsm_x509_self_signed(key, cn, 30, &pem2), PROVHSM_OK);
    assert_int_equal(provhsm_x509_parse_chain(pem2, &chain2), PROVHSM_OK);
    assert_int_not_equal(ASN1_INTEGER_cmp(X509_get0_serialNumber(cert),
                                          X509_get0_serialNumber(sk_X509_value(chain2, 0))),
                         0);
    sk_X509_pop_free(chain2, X509_free);
    free(pem2);

    sk_X509_pop_free(chain, X509_free);
    free(pem);
}

static void test_self_signed(void **state)
{
    keys *k = *state;
    self_signed_round_trip(k->ec1, "device-ec-01", 0);
    self_signed_round_trip(k->rsa1, "device-rsa-01", 1);
    self_signed_round_trip(k->ec2, CN_UTF8, 0);
}

static void test_self_signed_rejects(void **state)
{
    keys *k = *state;
    char *pem = (char *)"untouched";
    char long_cn[66];
    memset(long_cn, 'a', 65);
    long_cn[65] = '\0';

    assert_int_equal(provhsm_x509_self_signed(k->ec1, "dev", 0, &pem), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_x509_self_signed(k->ec1, "", 30, &pem), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_x509_self_signed(k->ec1, NULL, 30, &pem), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_x509_self_signed(NULL, "dev", 30, &pem), PROVHSM_E_INVALID_ARG);
    /* X.520 limits a CN to 64 characters. */
    log_reset();
    assert_int_equal(provhsm_x509_self_signed(k->ec1, long_cn, 30, &pem), PROVHSM_E_CRYPTO);
    assert_true(log_text[0] != '\0');
    assert_int_equal(ERR_peek_error(), 0);
    assert_string_equal(pem, "untouched");
}

static void test_csr(void **state)
{
    keys *k = *state;
    EVP_PKEY *ks[] = {k->ec1, k->rsa1};
    for (int i = 0; i < 2; i++) {
        char *pem = NULL;
        assert_int_equal(provhsm_x509_csr(ks[i], CN_UTF8, &pem), PROVHSM_OK);
        assert_true(strncmp(pem, "-----BEGIN CERTIFICATE REQUEST-----\n", 36) == 0);
        BIO *bio = BIO_new_mem_buf(pem, -1);
        assert_non_null(bio);
        X509_REQ *req = PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL);
        BIO_free(bio);
        assert_non_null(req);
        assert_int_equal(X509_REQ_verify(req, X509_REQ_get0_pubkey(req)), 1);
        assert_int_equal(X509_REQ_verify(req, ks[i]), 1);
        assert_int_equal(X509_REQ_verify(req, ks[1 - i]) == 1, 0);
        ERR_clear_error();
        assert_int_equal(EVP_PKEY_eq(X509_REQ_get0_pubkey(req), ks[i]), 1);
        assert_int_equal(X509_REQ_get_signature_nid(req),
                         i == 0 ? NID_ecdsa_with_SHA256 : NID_sha256WithRSAEncryption);

        const X509_NAME *subject = X509_REQ_get_subject_name(req);
        assert_int_equal(X509_NAME_entry_count(subject), 1);
        int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
        assert_int_equal(idx, 0);
        unsigned char *utf8 = NULL;
        int len =
            ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
        assert_int_equal(len, (int)strlen(CN_UTF8));
        assert_memory_equal(utf8, CN_UTF8, (size_t)len);
        OPENSSL_free(utf8);
        X509_REQ_free(req);
        free(pem);
    }
    char *pem = NULL;
    assert_int_equal(provhsm_x509_csr(k->ec1, "", &pem), PROVHSM_E_INVALID_ARG);
}

/* ---- describe ------------------------------------------------------------------- */

static void expected_fingerprint(X509 *cert, char *out, size_t size)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    assert_int_equal(X509_digest(cert, EVP_sha256(), md, &len), 1);
    assert_int_equal(len, 32);
    size_t o = 0;
    for (unsigned int i = 0; i < len; i++)
        o += (size_t)snprintf(out + o, size - o, i == 0 ? "%02X" : ":%02X", md[i]);
}

static void test_describe(void **state)
{
    keys *k = *state;
    X509_NAME *subject = X509_NAME_new(), *issuer = X509_NAME_new();
    assert_non_null(subject);
    assert_non_null(issuer);
    add_utf8(subject, "C", "DE");
    add_utf8(subject, "O", "Acme, Devices");
    add_utf8(subject, "CN", "Ger\xc3\xa4t-01");
    add_utf8(issuer, "CN", "Acme Test CA");

    X509 *cert = make_cert_signed(k->ec1, subject, issuer, k->ec2, 0, 1);
    /* A UTCTime notBefore and, past 2049, a GeneralizedTime notAfter. */
    assert_int_equal(ASN1_TIME_set_string_X509(X509_getm_notBefore(cert), "20200102030405Z"), 1);
    assert_int_equal(ASN1_TIME_set_string_X509(X509_getm_notAfter(cert), "20500101000000Z"), 1);
    assert_int_equal(ASN1_STRING_type(X509_get0_notBefore(cert)), V_ASN1_UTCTIME);
    assert_int_equal(ASN1_STRING_type(X509_get0_notAfter(cert)), V_ASN1_GENERALIZEDTIME);
    assert_true(X509_sign(cert, k->ec2, EVP_sha256()) > 0);

    provhsm_cert_info info;
    assert_int_equal(provhsm_x509_describe(cert, &info), PROVHSM_OK);
    assert_string_equal(info.subject, "CN=Ger\xc3\xa4t-01,O=Acme\\, Devices,C=DE");
    assert_string_equal(info.issuer, "CN=Acme Test CA");
    assert_string_equal(info.not_before, "2020-01-02T03:04:05Z");
    assert_string_equal(info.not_after, "2050-01-01T00:00:00Z");
    char fp[128];
    expected_fingerprint(cert, fp, sizeof(fp));
    assert_int_equal(strlen(fp), 95);
    assert_string_equal(info.fingerprint, fp);
    assert_int_equal(info.expired, 0);
    assert_int_equal(info.not_yet_valid, 0);

    assert_int_equal(provhsm_x509_describe(NULL, &info), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_x509_describe(cert, NULL), PROVHSM_E_INVALID_ARG);
    X509_free(cert);
    X509_NAME_free(subject);
    X509_NAME_free(issuer);
}

static void test_describe_validity_flags(void **state)
{
    keys *k = *state;
    X509_NAME *name = X509_NAME_new();
    assert_non_null(name);
    add_utf8(name, "CN", "validity");
    provhsm_cert_info info;

    /* Expired an hour ago. */
    X509 *cert = make_cert_signed(k->ec1, name, NULL, k->ec1, -7200, -3600);
    assert_int_equal(provhsm_x509_describe(cert, &info), PROVHSM_OK);
    assert_int_equal(info.expired, 1);
    assert_int_equal(info.not_yet_valid, 0);
    X509_free(cert);

    /* Valid only from an hour from now. */
    cert = make_cert_signed(k->ec1, name, NULL, k->ec1, 3600, 7200);
    assert_int_equal(provhsm_x509_describe(cert, &info), PROVHSM_OK);
    assert_int_equal(info.expired, 0);
    assert_int_equal(info.not_yet_valid, 1);
    X509_free(cert);

    /* Valid now. */
    cert = make_cert_signed(k->ec1, name, NULL, k->ec1, -60, 3600);
    assert_int_equal(provhsm_x509_describe(cert, &info), PROVHSM_OK);
    assert_int_equal(info.expired, 0);
    assert_int_equal(info.not_yet_valid, 0);
    X509_free(cert);
    X509_NAME_free(name);
}

/* 1 when s is well-formed UTF-8 (no cut multi-byte sequence). */
static int utf8_complete(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p != '\0') {
        int n = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 ? 1 : (*p & 0xf0) == 0xe0 ? 2 : 3;
        p++;
        for (int i = 0; i < n; i++, p++)
            if ((*p & 0xc0) != 0x80)
                return 0;
    }
    return 1;
}

static void test_describe_long_subject(void **state)
{
    keys *k = *state;
    X509_NAME *name = X509_NAME_new();
    assert_non_null(name);
    /* 12 OUs of 30 two-byte characters: about 750 bytes, more than the field holds. */
    char ou[61];
    for (int i = 0; i < 30; i++)
        memcpy(ou + 2 * i, "\xc3\xa4", 2);
    ou[60] = '\0';
    for (int i = 0; i < 12; i++)
        add_utf8(name, "OU", ou);
    add_utf8(name, "CN", "x");
    X509 *cert = make_cert(k->ec1, name);

    provhsm_cert_info info;
    assert_int_equal(provhsm_x509_describe(cert, &info), PROVHSM_OK);
    assert_true(strlen(info.subject) < sizeof(info.subject));
    assert_true(strlen(info.subject) > 400);
    assert_true(strncmp(info.subject, "CN=x,OU=\xc3\xa4", 10) == 0);
    assert_true(utf8_complete(info.subject));
    X509_free(cert);
    X509_NAME_free(name);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cn_utf8),
        cmocka_unit_test(test_cn_among_rdns),
        cmocka_unit_test(test_cn_last_of_several),
        cmocka_unit_test(test_cn_string_types),
        cmocka_unit_test(test_cn_missing_or_bad),
        cmocka_unit_test(test_parse_one_and_three),
        cmocka_unit_test(test_parse_whitespace_and_crlf),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_key_matches),
        cmocka_unit_test(test_generate_key_types),
        cmocka_unit_test(test_stored_key_typed),
        cmocka_unit_test(test_key_pem_round_trip),
        cmocka_unit_test(test_key_from_pem_rejects),
        cmocka_unit_test(test_self_signed),
        cmocka_unit_test(test_self_signed_rejects),
        cmocka_unit_test(test_csr),
        cmocka_unit_test(test_describe),
        cmocka_unit_test(test_describe_validity_flags),
        cmocka_unit_test(test_describe_long_subject),
    };
    return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}
