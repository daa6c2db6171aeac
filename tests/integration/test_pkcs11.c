/*
 * The pkcs11 backend's key slots on SoftHSM2, a fresh token per test: the key made on the
 * token cannot be read out (checked through the module, not through the library), its
 * signatures verify against the reference's public key, a signature is two PKCS#11 calls
 * on the one session of the process (1,000 signatures open no other, 4 threads share it),
 * the failure paths (wrong PIN not retried, token removed, key deleted, RSA and
 * extractable keys) end in a clear error, without a hang, and the certificate chain a
 * token holds for a key is found (by id or public key, then up through its issuers).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>

#include "backend.h"
#include "keyref.h"
#include "p11_wrap.h"
#include "softhsm_fixture.h"

static const provhsm_backend *const be = &provhsm_backend_pkcs11;

typedef struct fixture {
    provhsm_test_softhsm hsm;
    provhsm_config cfg;
    provhsm_keyref ref;
    void *key;
    provhsm_test_p11 direct;
} fixture;

static int setup(void **state)
{
    static unsigned counter;
    fixture *f = calloc(1, sizeof(*f));
    char label[33];
    snprintf(label, sizeof(label), "provhsm-test-%u", ++counter);
    if (f == NULL || provhsm_test_softhsm_start(&f->hsm, label) != 0) {
        free(f);
        return -1;
    }
    provhsm_test_softhsm_config(&f->hsm, &f->cfg);
    provhsm_test_p11_log_clear();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (f->key != NULL)
        be->key_close(f->key);
    provhsm_keyref_clear(&f->ref);
    provhsm_test_p11_close(&f->direct);
    provhsm_p11_shutdown(); /* the next test's token is in another directory */
    provhsm_test_softhsm_stop(&f->hsm);
    free(f);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------ */

static void generate(fixture *f)
{
    char *secret = (char *)"unset";
    assert_int_equal(be->key_generate(&f->cfg, PROVHSM_KEY_EC_P256, 0, &f->ref, &secret),
                     PROVHSM_OK);
    assert_null(secret);
    assert_string_equal(f->ref.backend, "pkcs11");
    assert_int_equal(f->ref.curve_bits, 256);
}

static void open_key(fixture *f)
{
    assert_int_equal(be->key_open(&f->cfg, &f->ref, NULL, &f->key), PROVHSM_OK);
}

/* The CKA_ID in a key URI, read with p11-kit. */
static size_t uri_id(const char *locator, uint8_t *id, size_t room)
{
    P11KitUri *uri = p11_kit_uri_new();
    assert_int_equal(p11_kit_uri_parse(locator, P11_KIT_URI_FOR_ANY, uri), P11_KIT_URI_OK);
    CK_ATTRIBUTE *a = p11_kit_uri_get_attribute(uri, CKA_ID);
    assert_non_null(a);
    assert_true(a->ulValueLen > 0 && a->ulValueLen <= room);
    memcpy(id, a->pValue, a->ulValueLen);
    size_t len = a->ulValueLen;
    p11_kit_uri_free(uri);
    return len;
}

static void digest(const char *md, const char *msg, uint8_t *out, size_t *len)
{
    unsigned int n = 0;
    assert_int_equal(EVP_Digest(msg, strlen(msg), out, &n, EVP_get_digestbyname(md), NULL), 1);
    *len = n;
}

/* 1 when r | s verifies over the digest with the reference's public key (OpenSSL only). */
static int verifies(const provhsm_keyref *ref, const uint8_t *dg, size_t dg_len, const uint8_t *rs,
                    size_t rs_len)
{
    const unsigned char *p = ref->spki;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, (long)ref->spki_len);
    ECDSA_SIG *sig = ECDSA_SIG_new();
    size_t half = rs_len / 2;
    BIGNUM *r = BN_bin2bn(rs, (int)half, NULL), *s = BN_bin2bn(rs + half, (int)half, NULL);
    assert_non_null(pub);
    assert_int_equal(ECDSA_SIG_set0(sig, r, s), 1);
    unsigned char *der = NULL;
    int der_len = i2d_ECDSA_SIG(sig, &der);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
    int ok = ctx != NULL && EVP_PKEY_verify_init(ctx) == 1 &&
             EVP_PKEY_verify(ctx, der, (size_t)der_len, dg, dg_len) == 1;
    EVP_PKEY_CTX_free(ctx);
    OPENSSL_free(der);
    ECDSA_SIG_free(sig);
    EVP_PKEY_free(pub);
    return ok;
}

static provhsm_err sign_once(void *key, const uint8_t *dg, size_t dg_len, uint8_t *rs,
                             size_t *rs_len)
{
    *rs_len = 96;
    return be->key_sign(key, dg, dg_len, rs, rs_len);
}

/* A message's digest and the open key's r | s over it. */
typedef struct signed_digest {
    uint8_t dg[64], rs[96];
    size_t dg_len, rs_len;
} signed_digest;

/* `msg` hashed with `md`, then signed once with the open key: PROVHSM_OK. */
static void sign_message(fixture *f, const char *md, const char *msg, signed_digest *sd)
{
    digest(md, msg, sd->dg, &sd->dg_len);
    assert_int_equal(sign_once(f->key, sd->dg, sd->dg_len, sd->rs, &sd->rs_len), PROVHSM_OK);
}

/* 1 when the signature verifies with the reference's public key. */
static int signature_verifies(const fixture *f, const signed_digest *sd)
{
    return verifies(&f->ref, sd->dg, sd->dg_len, sd->rs, sd->rs_len);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- tests -------------------------------------------------------------------------- */

/* The key made on the token is a token object, sensitive and not extractable (asked of the module).
 */
static void test_generate_key_stays_on_token(void **state)
{
    fixture *f = *state;
    generate(f);
    assert_true(strncmp(f->ref.locator, "pkcs11:", 7) == 0);
    assert_non_null(strstr(f->ref.locator, "type=private"));
    assert_non_null(strstr(f->ref.locator, f->hsm.label));

    uint8_t id[64];
    size_t id_len = uri_id(f->ref.locator, id, sizeof(id));
    assert_int_equal(id_len, 16);
    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    CK_OBJECT_HANDLE priv = provhsm_test_p11_find(&f->direct, CKO_PRIVATE_KEY, id, id_len);
    assert_int_not_equal(priv, CK_INVALID_HANDLE);
    assert_int_not_equal(provhsm_test_p11_find(&f->direct, CKO_PUBLIC_KEY, id, id_len),
                         CK_INVALID_HANDLE);

    uint8_t value[256];
    CK_ATTRIBUTE get_value = {CKA_VALUE, value, sizeof(value)};
    assert_int_equal(f->direct.fl->C_GetAttributeValue(f->direct.session, priv, &get_value, 1),
                     CKR_ATTRIBUTE_SENSITIVE);
    CK_BBOOL extractable = CK_TRUE, sensitive = CK_FALSE, token = CK_FALSE, priv_obj = CK_FALSE;
    CK_ATTRIBUTE flags[] = {{CKA_EXTRACTABLE, &extractable, sizeof(CK_BBOOL)},
                            {CKA_SENSITIVE, &sensitive, sizeof(CK_BBOOL)},
                            {CKA_TOKEN, &token, sizeof(CK_BBOOL)},
                            {CKA_PRIVATE, &priv_obj, sizeof(CK_BBOOL)}};
    assert_int_equal(f->direct.fl->C_GetAttributeValue(f->direct.session, priv, flags, 4), CKR_OK);
    assert_int_equal(extractable, CK_FALSE);
    assert_int_equal(sensitive, CK_TRUE);
    assert_int_equal(token, CK_TRUE);
    assert_int_equal(priv_obj, CK_TRUE);

    /* the reference carries the token's public key and no more */
    char *pem = NULL;
    assert_int_equal(provhsm_keyref_to_pem(&f->ref, &pem), PROVHSM_OK);
    assert_null(strstr(pem, "PRIVATE KEY"));
    free(pem);

    char *line = NULL;
    assert_int_equal(be->key_describe(&f->cfg, &f->ref, &line), PROVHSM_OK);
    assert_non_null(strstr(line, f->hsm.label));
    assert_non_null(strstr(line, "sensitive, not extractable"));
    free(line);
}

/* Signatures over SHA-256 and SHA-384 digests verify with OpenSSL; each costs 2 calls. */
static void test_sign_verifies_two_calls(void **state)
{
    fixture *f = *state;
    uint64_t start = provhsm_p11_calls_total();
    generate(f);
    uint64_t opened = provhsm_p11_calls_total();
    open_key(f);
    fprintf(stderr,
            "PKCS#11 calls: key_generate %llu (module load and login included), "
            "key_open %llu\n",
            (unsigned long long)(opened - start),
            (unsigned long long)(provhsm_p11_calls_total() - opened));
    const char *mds[] = {"SHA256", "SHA384"};
    for (size_t i = 0; i < 2; i++) {
        uint8_t dg[64], rs[96];
        size_t dg_len = 0, rs_len = 0;
        digest(mds[i], "to be signed on the token", dg, &dg_len);
        uint64_t before = provhsm_p11_calls_total();
        assert_int_equal(sign_once(f->key, dg, dg_len, rs, &rs_len), PROVHSM_OK);
        assert_int_equal(provhsm_p11_calls_total() - before, 2);
        assert_int_equal(rs_len, 64);
        assert_true(verifies(&f->ref, dg, dg_len, rs, rs_len));
        rs[10] ^= 1;
        assert_false(verifies(&f->ref, dg, dg_len, rs, rs_len));
    }
    /* a room too small for r | s is refused before the token is asked */
    uint8_t dg[32] = {1}, rs[96];
    size_t small = 63;
    assert_int_equal(be->key_sign(f->key, dg, sizeof(dg), rs, &small), PROVHSM_E_INVALID_ARG);
}

/* 1,000 signatures on the session of the process: no session, no login, 2,000 calls. */
static void test_one_session_for_1000_signs(void **state)
{
    fixture *f = *state;
    generate(f);
    open_key(f);
    signed_digest sd = {0};
    digest("SHA256", "many", sd.dg, &sd.dg_len);
    uint64_t sessions = provhsm_p11_sessions_opened_total();
    uint64_t logins = provhsm_p11_logins_total();
    uint64_t calls = provhsm_p11_calls_total();
    for (int i = 0; i < 1000; i++)
        assert_int_equal(sign_once(f->key, sd.dg, sd.dg_len, sd.rs, &sd.rs_len), PROVHSM_OK);
    assert_int_equal(provhsm_p11_sessions_opened_total(), sessions);
    assert_int_equal(provhsm_p11_logins_total(), logins);
    assert_int_equal(provhsm_p11_calls_total() - calls, 2000);
    /* opening the same key again reuses the session too */
    void *again = NULL;
    assert_int_equal(be->key_open(&f->cfg, &f->ref, NULL, &again), PROVHSM_OK);
    be->key_close(again);
    assert_int_equal(provhsm_p11_sessions_opened_total(), sessions);
    assert_true(signature_verifies(f, &sd));
}

/*
 * Logged out under the library's feet (the login is the application's, shared by all its
 * sessions): the next signature opens one new session, logs in once, and succeeds.
 */
static void test_session_recovered_after_logout(void **state)
{
    fixture *f = *state;
    generate(f);
    open_key(f);
    signed_digest sd = {0};
    sign_message(f, "SHA256", "before the logout", &sd);

    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    assert_int_equal(f->direct.fl->C_Logout(f->direct.session), CKR_OK);
    uint64_t sessions = provhsm_p11_sessions_opened_total();
    uint64_t logins = provhsm_p11_logins_total();
    sign_message(f, "SHA256", "after the logout", &sd);
    assert_true(signature_verifies(f, &sd));
    assert_int_equal(provhsm_p11_sessions_opened_total() - sessions, 1);
    assert_int_equal(provhsm_p11_logins_total() - logins, 1);
    assert_true(provhsm_test_p11_log_seen("CKR_USER_NOT_LOGGED_IN; opening a new session"));
    uint64_t calls = provhsm_p11_calls_total();
    assert_int_equal(sign_once(f->key, sd.dg, sd.dg_len, sd.rs, &sd.rs_len), PROVHSM_OK);
    assert_int_equal(provhsm_p11_calls_total() - calls, 2);
}

/*
 * Every session of the token closed behind the library's back (through the module
 * itself, not p11-kit's per-caller instance): CKR_SESSION_HANDLE_INVALID, one new
 * session, the signature made.
 */
static void test_session_recovered_after_close_all(void **state)
{
    fixture *f = *state;
    generate(f);
    open_key(f);
    signed_digest sd = {0};
    sign_message(f, "SHA256", "before", &sd);

    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    CK_FUNCTION_LIST *raw = p11_kit_module_load(f->hsm.module, P11_KIT_MODULE_UNMANAGED);
    assert_non_null(raw);
    assert_int_equal(raw->C_CloseAllSessions(f->direct.slot), CKR_OK);
    p11_kit_module_release(raw); /* not finalised: the process still uses the module */

    uint64_t sessions = provhsm_p11_sessions_opened_total();
    sign_message(f, "SHA256", "after", &sd);
    assert_true(signature_verifies(f, &sd));
    assert_int_equal(provhsm_p11_sessions_opened_total() - sessions, 1);
    assert_true(provhsm_test_p11_log_seen("CKR_SESSION_HANDLE_INVALID; opening a new session"));
}

/* A P-384 key when asked for one: r | s of 96 bytes that verify over a SHA-384 digest. */
static void test_p384_key(void **state)
{
    fixture *f = *state;
    char *secret = NULL;
    assert_int_equal(be->key_generate(&f->cfg, PROVHSM_KEY_EC_P384, 0, &f->ref, &secret),
                     PROVHSM_OK);
    assert_int_equal(f->ref.curve_bits, 384);
    open_key(f);
    signed_digest sd = {0};
    sign_message(f, "SHA384", "on P-384", &sd);
    assert_int_equal(sd.rs_len, 96);
    assert_true(signature_verifies(f, &sd));
}

/* A wrong PIN is named, sent once, never again; a corrected PIN is then tried and works. */
static void test_wrong_pin_not_retried(void **state)
{
    fixture *f = *state;
    setenv(PROVHSM_TEST_PIN_ENV, "11112222", 1);
    provhsm_keyref ref = {0};
    char *secret = NULL;
    uint64_t logins = provhsm_p11_logins_total();
    assert_int_equal(be->key_generate(&f->cfg, PROVHSM_KEY_EC_P256, 0, &ref, &secret),
                     PROVHSM_E_WRONG_KEY);
    assert_true(provhsm_test_p11_log_seen("wrong PIN"));
    assert_true(provhsm_test_p11_log_seen("CKR_PIN_INCORRECT"));
    assert_int_equal(provhsm_p11_logins_total() - logins, 1);
    provhsm_test_p11_log_clear();
    assert_int_equal(be->key_generate(&f->cfg, PROVHSM_KEY_EC_P256, 0, &ref, &secret),
                     PROVHSM_E_WRONG_KEY);
    assert_true(provhsm_test_p11_log_seen("not sent again"));
    assert_int_equal(provhsm_p11_logins_total() - logins, 1); /* the token was not asked */

    setenv(PROVHSM_TEST_PIN_ENV, f->hsm.pin, 1);
    generate(f);
}

/* The PIN from pin_file, checked like the passphrase file: 0644 refused, 0600 read. */
static void test_pin_file(void **state)
{
    fixture *f = *state;
    setenv(PROVHSM_TEST_PIN_ENV, "11112222", 1); /* the file wins over the variable */
    snprintf(f->cfg.pkcs11_pin_file, sizeof(f->cfg.pkcs11_pin_file), "%s/pin", f->hsm.dir);
    FILE *pin = fopen(f->cfg.pkcs11_pin_file, "w");
    assert_non_null(pin);
    fprintf(pin, "%s\n", f->hsm.pin);
    fclose(pin);
    assert_int_equal(chmod(f->cfg.pkcs11_pin_file, 0644), 0);
    provhsm_keyref ref = {0};
    char *secret = NULL;
    uint64_t logins = provhsm_p11_logins_total();
    assert_int_equal(be->key_generate(&f->cfg, PROVHSM_KEY_EC_P256, 0, &ref, &secret),
                     PROVHSM_E_PERMISSION);
    assert_true(provhsm_test_p11_log_seen("PIN file"));
    assert_int_equal(provhsm_p11_logins_total(), logins);
    assert_int_equal(chmod(f->cfg.pkcs11_pin_file, 0600), 0);
    generate(f);
    setenv(PROVHSM_TEST_PIN_ENV, f->hsm.pin, 1);
}

/* No PIN anywhere: a configuration error that says where to put one. */
static void test_no_pin_configured(void **state)
{
    fixture *f = *state;
    unsetenv(PROVHSM_TEST_PIN_ENV);
    provhsm_keyref ref = {0};
    char *secret = NULL;
    assert_int_equal(be->key_generate(&f->cfg, PROVHSM_KEY_EC_P256, 0, &ref, &secret),
                     PROVHSM_E_CONFIG);
    assert_true(provhsm_test_p11_log_seen("pin_file"));
    setenv(PROVHSM_TEST_PIN_ENV, f->hsm.pin, 1);
}

/* The token's files deleted mid-run: signing fails with a logged reason, within seconds. */
static void test_token_removed(void **state)
{
    fixture *f = *state;
    generate(f);
    open_key(f);
    signed_digest sd = {0};
    sign_message(f, "SHA256", "before", &sd);

    assert_int_equal(provhsm_test_softhsm_remove_tokens(&f->hsm), 0);
    provhsm_test_p11_log_clear();
    double t0 = now_s();
    for (int i = 0; i < 3; i++)
        assert_int_equal(sign_once(f->key, sd.dg, sd.dg_len, sd.rs, &sd.rs_len),
                         PROVHSM_E_NO_DEVICE);
    assert_true(now_s() - t0 < 10.0);
    assert_true(provhsm_test_p11_log_seen("token not present"));
    void *again = NULL;
    assert_int_equal(be->key_open(&f->cfg, &f->ref, NULL, &again), PROVHSM_E_NO_DEVICE);
    assert_null(again);
}

/* The key destroyed on the token by someone else: signing and opening say so. */
static void test_key_deleted(void **state)
{
    fixture *f = *state;
    generate(f);
    open_key(f);
    uint8_t id[64], dg[32], rs[96];
    size_t id_len = uri_id(f->ref.locator, id, sizeof(id)), dg_len = 0, rs_len = 0;
    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    CK_OBJECT_HANDLE priv = provhsm_test_p11_find(&f->direct, CKO_PRIVATE_KEY, id, id_len);
    assert_int_equal(f->direct.fl->C_DestroyObject(f->direct.session, priv), CKR_OK);

    digest("SHA256", "after", dg, &dg_len);
    provhsm_test_p11_log_clear();
    assert_int_equal(sign_once(f->key, dg, dg_len, rs, &rs_len), PROVHSM_E_NOT_FOUND);
    assert_true(provhsm_test_p11_log_seen("no private key"));
    void *again = NULL;
    assert_int_equal(be->key_open(&f->cfg, &f->ref, NULL, &again), PROVHSM_E_NOT_FOUND);
    /* the private key is what destroy looks for: nothing to destroy */
    assert_int_equal(be->key_destroy(&f->cfg, &f->ref, NULL), PROVHSM_E_NOT_FOUND);
}

/* key_destroy removes both halves; a second destroy finds nothing. */
static void test_destroy(void **state)
{
    fixture *f = *state;
    generate(f);
    uint8_t id[64];
    size_t id_len = uri_id(f->ref.locator, id, sizeof(id));
    assert_int_equal(be->key_destroy(&f->cfg, &f->ref, NULL), PROVHSM_OK);
    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    assert_int_equal(provhsm_test_p11_find(&f->direct, CKO_PRIVATE_KEY, id, id_len),
                     CK_INVALID_HANDLE);
    assert_int_equal(provhsm_test_p11_find(&f->direct, CKO_PUBLIC_KEY, id, id_len),
                     CK_INVALID_HANDLE);
    assert_int_equal(be->key_destroy(&f->cfg, &f->ref, NULL), PROVHSM_E_NOT_FOUND);
}

/* A key made on the token by someone else, adopted by URI: the reference signs. */
static void test_adopt_by_uri(void **state)
{
    fixture *f = *state;
    static const uint8_t id[] = {0xa1, 0xb2, 0xc3};
    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    assert_int_equal(provhsm_test_p11_make_key(&f->direct, 0, 0, id, sizeof(id), "factory"), 0);

    char uri[128];
    snprintf(uri, sizeof(uri), "pkcs11:token=%s;id=%%a1%%b2%%c3;type=private", f->hsm.label);
    char *secret = (char *)"unset";
    assert_int_equal(be->key_adopt(&f->cfg, uri, &f->ref, &secret), PROVHSM_OK);
    assert_null(secret);
    assert_non_null(strstr(f->ref.locator, "object=factory"));
    uint8_t got[64];
    assert_int_equal(uri_id(f->ref.locator, got, sizeof(got)), sizeof(id));
    assert_memory_equal(got, id, sizeof(id));

    open_key(f);
    signed_digest sd = {0};
    sign_message(f, "SHA256", "adopted", &sd);
    assert_true(signature_verifies(f, &sd));

    /* by label alone too */
    provhsm_keyref by_label = {0};
    snprintf(uri, sizeof(uri), "pkcs11:object=factory;type=private");
    assert_int_equal(be->key_adopt(&f->cfg, uri, &by_label, &secret), PROVHSM_OK);
    assert_true(provhsm_keyref_equal(&by_label, &f->ref));
    provhsm_keyref_clear(&by_label);
}

/* A certificate for `ref`'s public key (issuer: a throw-away software key), DER, malloc'd. */
static unsigned char *certificate_for(const provhsm_keyref *ref, int *len)
{
    const unsigned char *p = ref->spki;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, (long)ref->spki_len);
    EVP_PKEY *issuer = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *cert = X509_new();
    assert_non_null(pub);
    assert_non_null(issuer);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"factory", -1, -1,
                               0);
    X509_set_issuer_name(cert, name);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 7);
    X509_gmtime_adj(X509_getm_notBefore(cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
    assert_int_equal(X509_set_pubkey(cert, pub), 1);
    assert_true(X509_sign(cert, issuer, EVP_sha256()) > 0);
    unsigned char *der = NULL;
    *len = i2d_X509(cert, &der);
    assert_true(*len > 0);
    X509_free(cert);
    EVP_PKEY_free(issuer);
    EVP_PKEY_free(pub);
    return der;
}

/* No public key object, a certificate with the key's id: the public half comes from it. */
static void test_adopt_public_key_from_certificate(void **state)
{
    fixture *f = *state;
    static const uint8_t id[] = {0xce, 0x27};
    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    assert_int_equal(provhsm_test_p11_make_key(&f->direct, 0, 0, id, sizeof(id), "se"), 0);
    provhsm_keyref first = {0};
    char *secret = NULL;
    assert_int_equal(be->key_adopt(&f->cfg, "pkcs11:object=se;type=private", &first, &secret),
                     PROVHSM_OK);

    /* as a secure element ships: the certificate instead of the public key object */
    int der_len = 0;
    unsigned char *der = certificate_for(&first, &der_len);
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE type = CKC_X_509;
    CK_BBOOL yes = CK_TRUE;
    uint8_t subject[] = {0x30, 0x00};
    CK_ATTRIBUTE cert[] = {
        {CKA_CLASS, &cls, sizeof(cls)},          {CKA_CERTIFICATE_TYPE, &type, sizeof(type)},
        {CKA_TOKEN, &yes, sizeof(yes)},          {CKA_ID, (void *)id, sizeof(id)},
        {CKA_SUBJECT, subject, sizeof(subject)}, {CKA_VALUE, der, (CK_ULONG)der_len}};
    CK_OBJECT_HANDLE obj;
    assert_int_equal(f->direct.fl->C_CreateObject(f->direct.session, cert, 6, &obj), CKR_OK);
    OPENSSL_free(der);
    CK_OBJECT_HANDLE pub = provhsm_test_p11_find(&f->direct, CKO_PUBLIC_KEY, id, sizeof(id));
    assert_int_equal(f->direct.fl->C_DestroyObject(f->direct.session, pub), CKR_OK);

    assert_int_equal(be->key_adopt(&f->cfg, "pkcs11:object=se;type=private", &f->ref, &secret),
                     PROVHSM_OK);
    assert_true(provhsm_keyref_equal(&first, &f->ref));
    provhsm_keyref_clear(&first);
    open_key(f);
    signed_digest sd = {0};
    sign_message(f, "SHA256", "from the certificate", &sd);
    assert_true(signature_verifies(f, &sd));
    /* destroy takes the key pair and leaves the certificate */
    assert_int_equal(be->key_destroy(&f->cfg, &f->ref, NULL), PROVHSM_OK);
    assert_int_not_equal(provhsm_test_p11_find(&f->direct, CKO_CERTIFICATE, id, sizeof(id)),
                         CK_INVALID_HANDLE);
}

/* ---- the chain a token holds for a key (key_certificates) ---------------------------- */

static EVP_PKEY *software_key(void)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(key);
    return key;
}

/* A key pair made on the token by "the factory", adopted into *ref; its public key. */
static EVP_PKEY *factory_key(fixture *f, const uint8_t *id, size_t id_len, const char *label,
                             provhsm_keyref *ref)
{
    char uri[128];
    char *secret = NULL;
    assert_int_equal(provhsm_test_p11_make_key(&f->direct, 0, 0, id, id_len, label), 0);
    snprintf(uri, sizeof(uri), "pkcs11:object=%s;type=private", label);
    assert_int_equal(be->key_adopt(&f->cfg, uri, ref, &secret), PROVHSM_OK);
    EVP_PKEY *pub = provhsm_test_p11_public_key(&f->direct, id, id_len);
    assert_non_null(pub);
    return pub;
}

static X509 *cert_for(const char *cn, EVP_PKEY *key, int ca, X509 *issuer, EVP_PKEY *signer)
{
    X509 *cert = provhsm_test_make_cert(cn, key, ca, issuer, signer);
    assert_non_null(cert);
    return cert;
}

/* key_certificates: the chain as PEM, parsed. */
static STACK_OF(X509) *token_chain(fixture *f, const provhsm_keyref *ref)
{
    char *pem = NULL;
    assert_int_equal(be->key_certificates(&f->cfg, ref, &pem), PROVHSM_OK);
    assert_non_null(pem);
    STACK_OF(X509) *chain = provhsm_test_pem_chain(pem);
    assert_non_null(chain);
    free(pem);
    return chain;
}

/*
 * Leaf, intermediate and root on the token in another order, next to a certificate of
 * another key and a second "intermediate" of the same name that did not sign the leaf:
 * the chain is leaf, intermediate, root.
 */
static void test_key_certificates_chain_in_order(void **state)
{
    fixture *f = *state;
    static const uint8_t id[] = {0x5e, 0x01};
    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    EVP_PKEY *pub = factory_key(f, id, sizeof(id), "se", &f->ref);
    EVP_PKEY *root_key = software_key(), *inter_key = software_key(), *twin_key = software_key();
    EVP_PKEY *other_key = software_key();
    X509 *root = cert_for("Test Root CA", root_key, 1, NULL, root_key);
    X509 *inter = cert_for("Test Intermediate CA", inter_key, 1, root, root_key);
    X509 *twin = cert_for("Test Intermediate CA", twin_key, 1, root, root_key);
    X509 *leaf = cert_for("se-device", pub, 0, inter, inter_key);
    X509 *other = cert_for("other-device", other_key, 0, NULL, other_key);
    assert_int_equal(provhsm_test_p11_put_cert(&f->direct, root, NULL, 0, "root"), 0);
    assert_int_equal(provhsm_test_p11_put_cert(&f->direct, twin, NULL, 0, "twin"), 0);
    assert_int_equal(provhsm_test_p11_put_cert(&f->direct, other, NULL, 0, "other"), 0);
    assert_int_equal(provhsm_test_p11_put_cert(&f->direct, leaf, id, sizeof(id), "se"), 0);
    assert_int_equal(provhsm_test_p11_put_cert(&f->direct, inter, NULL, 0, "intermediate"), 0);

    STACK_OF(X509) *chain = token_chain(f, &f->ref);
    assert_int_equal(sk_X509_num(chain), 3);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 0), leaf), 0);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 1), inter), 0);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 2), root), 0);
    sk_X509_pop_free(chain, X509_free);
    X509_free(root);
    X509_free(inter);
    X509_free(twin);
    X509_free(leaf);
    X509_free(other);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(inter_key);
    EVP_PKEY_free(twin_key);
    EVP_PKEY_free(other_key);
}

/*
 * A certificate without the key's id is found by its public key (its issuer is not on
 * the token: a chain of one); one with the key's id is then preferred to it.
 */
static void test_key_certificates_by_public_key(void **state)
{
    fixture *f = *state;
    static const uint8_t id[] = {0x5e, 0x02};
    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    EVP_PKEY *pub = factory_key(f, id, sizeof(id), "se", &f->ref);
    EVP_PKEY *ca_key = software_key();
    X509 *ca = cert_for("Test CA", ca_key, 1, NULL, ca_key);
    X509 *by_key = cert_for("by-public-key", pub, 0, ca, ca_key);
    X509 *by_id = cert_for("by-id", pub, 0, ca, ca_key);
    assert_int_equal(provhsm_test_p11_put_cert(&f->direct, by_key, NULL, 0, "no id"), 0);

    STACK_OF(X509) *chain = token_chain(f, &f->ref);
    assert_int_equal(sk_X509_num(chain), 1);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 0), by_key), 0);
    sk_X509_pop_free(chain, X509_free);

    static const uint8_t other_id[] = {0x77};
    assert_int_equal(provhsm_test_p11_put_cert(&f->direct, by_id, other_id, 1, "other id"), 0);
    assert_int_equal(provhsm_test_p11_put_cert(&f->direct, by_id, id, sizeof(id), "se"), 0);
    chain = token_chain(f, &f->ref);
    assert_int_equal(sk_X509_num(chain), 1);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 0), by_id), 0);
    sk_X509_pop_free(chain, X509_free);
    X509_free(ca);
    X509_free(by_key);
    X509_free(by_id);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(ca_key);
}

/*
 * No certificate for the key: PROVHSM_E_NOT_FOUND, saying so. Another key's certificate
 * is not taken, not even when it carries this key's id (then: another public key).
 */
static void test_key_certificates_none_for_the_key(void **state)
{
    fixture *f = *state;
    static const uint8_t id_a[] = {0xa0}, id_b[] = {0xb0};
    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    EVP_PKEY *pub_a = factory_key(f, id_a, 1, "key-a", &f->ref);
    provhsm_keyref ref_b = {0};
    EVP_PKEY *pub_b = factory_key(f, id_b, 1, "key-b", &ref_b);
    char *pem = NULL;
    provhsm_test_p11_log_clear();
    assert_int_equal(be->key_certificates(&f->cfg, &f->ref, &pem), PROVHSM_E_NOT_FOUND);
    assert_null(pem);
    assert_true(provhsm_test_p11_log_seen("holds no certificate for the key"));
    assert_true(provhsm_test_p11_log_seen("--cert"));

    EVP_PKEY *ca_key = software_key();
    X509 *cert_b = cert_for("device-b", pub_b, 0, NULL, ca_key);
    assert_int_equal(provhsm_test_p11_put_cert(&f->direct, cert_b, id_b, 1, "key-b"), 0);
    assert_int_equal(be->key_certificates(&f->cfg, &f->ref, &pem), PROVHSM_E_NOT_FOUND);
    assert_null(pem);
    assert_int_equal(provhsm_test_p11_put_cert(&f->direct, cert_b, id_a, 1, "key-a"), 0);
    provhsm_test_p11_log_clear();
    assert_int_equal(be->key_certificates(&f->cfg, &f->ref, &pem), PROVHSM_E_MISMATCH);
    assert_null(pem);
    assert_true(provhsm_test_p11_log_seen("carries another public key"));

    STACK_OF(X509) *chain = token_chain(f, &ref_b); /* B's own certificate is found */
    assert_int_equal(sk_X509_num(chain), 1);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 0), cert_b), 0);
    sk_X509_pop_free(chain, X509_free);

    /* bad arguments: an error, never a crash */
    provhsm_keyref foreign = {0};
    snprintf(foreign.backend, sizeof(foreign.backend), "tpm");
    foreign.locator = (char *)"0x81000110";
    assert_int_equal(be->key_certificates(&f->cfg, NULL, &pem), PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_certificates(&f->cfg, &f->ref, NULL), PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_certificates(&f->cfg, &foreign, &pem), PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_certificates(NULL, &f->ref, &pem), PROVHSM_E_INVALID_ARG);
    assert_null(pem);
    provhsm_keyref_clear(&ref_b);
    X509_free(cert_b);
    EVP_PKEY_free(pub_a);
    EVP_PKEY_free(pub_b);
    EVP_PKEY_free(ca_key);
}

/* RSA keys are refused at generate and adopt, with why and what instead. */
static void test_rsa_refused(void **state)
{
    fixture *f = *state;
    provhsm_keyref ref = {0};
    char *secret = NULL;
    assert_int_equal(be->key_generate(&f->cfg, PROVHSM_KEY_RSA_2048, 0, &ref, &secret),
                     PROVHSM_E_UNSUPPORTED);
    assert_true(provhsm_test_p11_log_seen("legacy RSA object"));
    assert_true(provhsm_test_p11_log_seen("EC P-256"));

    static const uint8_t id[] = {0x52, 0x53};
    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    assert_int_equal(provhsm_test_p11_make_key(&f->direct, 1, 0, id, sizeof(id), "rsa"), 0);
    provhsm_test_p11_log_clear();
    assert_int_equal(be->key_adopt(&f->cfg, "pkcs11:object=rsa;type=private", &ref, &secret),
                     PROVHSM_E_UNSUPPORTED);
    assert_true(provhsm_test_p11_log_seen("legacy RSA object"));
}

/* An EC key that could be read out of the token is not adopted. */
static void test_extractable_refused(void **state)
{
    fixture *f = *state;
    static const uint8_t id[] = {0x0e};
    assert_int_equal(provhsm_test_p11_open(&f->hsm, &f->direct), 0);
    assert_int_equal(provhsm_test_p11_make_key(&f->direct, 0, 1, id, sizeof(id), "open"), 0);
    provhsm_keyref ref = {0};
    char *secret = NULL;
    assert_int_equal(be->key_adopt(&f->cfg, "pkcs11:object=open;type=private", &ref, &secret),
                     PROVHSM_E_UNSUPPORTED);
    assert_true(provhsm_test_p11_log_seen("could leave the token"));
}

/* Bad URIs: a clear configuration error. */
static void test_bad_uris(void **state)
{
    fixture *f = *state;
    provhsm_keyref ref = {0};
    char *secret = NULL;
    assert_int_equal(be->key_adopt(&f->cfg, "file:///etc/passwd", &ref, &secret), PROVHSM_E_CONFIG);
    assert_int_equal(be->key_adopt(&f->cfg, "pkcs11:token=x", &ref, &secret), PROVHSM_E_CONFIG);
    assert_true(provhsm_test_p11_log_seen("names no object"));
    assert_int_equal(be->key_adopt(&f->cfg, "pkcs11:object=x;type=cert", &ref, &secret),
                     PROVHSM_E_CONFIG);
    assert_int_equal(be->key_adopt(&f->cfg, "pkcs11:object=missing;type=private", &ref, &secret),
                     PROVHSM_E_NOT_FOUND);
    snprintf(f->cfg.pkcs11_token, sizeof(f->cfg.pkcs11_token), "pkcs11:token=no-such-token");
    assert_int_equal(be->key_generate(&f->cfg, PROVHSM_KEY_EC_P256, 0, &ref, &secret),
                     PROVHSM_E_NO_DEVICE);
    assert_true(provhsm_test_p11_log_seen("token not present"));
}

/* NULL or foreign arguments to every slot: an error, never a crash. */
static void test_bad_arguments(void **state)
{
    fixture *f = *state;
    provhsm_keyref ref = {0}, foreign = {0};
    char *secret = NULL, *line = NULL;
    void *key = NULL;
    uint8_t dg[32] = {0}, rs[96];
    size_t rs_len = sizeof(rs);
    assert_int_equal(be->key_generate(NULL, PROVHSM_KEY_EC_P256, 0, &ref, &secret),
                     PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_generate(&f->cfg, PROVHSM_KEY_EC_P256, 0, NULL, &secret),
                     PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_adopt(&f->cfg, NULL, &ref, &secret), PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_adopt(NULL, "pkcs11:object=x", &ref, &secret), PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_open(&f->cfg, NULL, NULL, &key), PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_open(&f->cfg, &foreign, NULL, &key), PROVHSM_E_INVALID_ARG);
    snprintf(foreign.backend, sizeof(foreign.backend), "tpm");
    foreign.locator = (char *)"0x81000110";
    assert_int_equal(be->key_open(&f->cfg, &foreign, NULL, &key), PROVHSM_E_INVALID_ARG);
    assert_null(key);
    assert_int_equal(be->key_sign(NULL, dg, sizeof(dg), rs, &rs_len), PROVHSM_E_INVALID_ARG);
    be->key_close(NULL);
    assert_int_equal(be->key_destroy(NULL, &foreign, NULL), PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_destroy(&f->cfg, NULL, NULL), PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_describe(&f->cfg, NULL, &line), PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_describe(&f->cfg, &foreign, NULL), PROVHSM_E_INVALID_ARG);
    assert_null(line);
    void *st = NULL;
    assert_int_equal(be->open(&f->cfg, PROVHSM_KIND_TPM, &st), PROVHSM_E_UNSUPPORTED);
    assert_null(st);
}

/* The configuration refuses a token that is not named by a PKCS#11 URI, naming the line. */
static void test_config_token_must_be_uri(void **state)
{
    (void)state;
    provhsm_config cfg;
    char errbuf[256] = "";
    provhsm_config_defaults(&cfg);
    assert_int_equal(provhsm_config_parse(&cfg, "[pkcs11]\ntoken = token=device\n", "t.conf",
                                          errbuf, sizeof(errbuf)),
                     PROVHSM_E_CONFIG);
    assert_non_null(strstr(errbuf, "t.conf:2"));
    assert_non_null(strstr(errbuf, "not a PKCS#11 URI"));
    assert_int_equal(provhsm_config_parse(&cfg, "[pkcs11]\ntoken = pkcs11:token=device\n", "t.conf",
                                          errbuf, sizeof(errbuf)),
                     PROVHSM_OK);
    assert_string_equal(cfg.pkcs11_token, "pkcs11:token=device");
}

/* Which module and which token: each wrong choice is one clear error. */
static void test_module_and_token_selection(void **state)
{
    fixture *f = *state;
    provhsm_config cfg = f->cfg;
    provhsm_keyref ref = {0};
    char *secret = NULL;
    snprintf(cfg.pkcs11_module, sizeof(cfg.pkcs11_module), "/nonexistent/libtoken.so");
    assert_int_equal(be->key_generate(&cfg, PROVHSM_KEY_EC_P256, 0, &ref, &secret),
                     PROVHSM_E_NO_DEVICE);
    assert_true(provhsm_test_p11_log_seen("cannot load the PKCS#11 module /nonexistent"));

    /* two initialised tokens: the default "pkcs11:" selects both, which is refused */
    assert_int_equal(provhsm_test_softhsm_add_token(&f->hsm, "second"), 0);
    cfg = f->cfg;
    snprintf(cfg.pkcs11_token, sizeof(cfg.pkcs11_token), "pkcs11:");
    provhsm_test_p11_log_clear();
    assert_int_equal(be->key_generate(&cfg, PROVHSM_KEY_EC_P256, 0, &ref, &secret),
                     PROVHSM_E_CONFIG);
    assert_true(provhsm_test_p11_log_seen("2 tokens match pkcs11:"));
    snprintf(cfg.pkcs11_token, sizeof(cfg.pkcs11_token), "pkcs11:token=second");
    assert_int_equal(be->key_generate(&cfg, PROVHSM_KEY_EC_P256, 0, &f->ref, &secret), PROVHSM_OK);
    assert_non_null(strstr(f->ref.locator, "token=second"));
    /* a key URI naming another token than the configured one finds nothing */
    snprintf(cfg.pkcs11_token, sizeof(cfg.pkcs11_token), "pkcs11:token=%s", f->hsm.label);
    void *key = NULL;
    assert_int_equal(be->key_open(&cfg, &f->ref, NULL, &key), PROVHSM_E_NO_DEVICE);
    assert_null(key);
}

/*
 * module = "": the token is looked for in every module registered with p11-kit (what its
 * proxy module offers); SoftHSM2's package registers its module.
 */
static void test_registered_modules(void **state)
{
    fixture *f = *state;
    if (access("/usr/share/p11-kit/modules/softhsm2.module", R_OK) != 0) {
        fprintf(stderr, "SoftHSM2 is not registered with p11-kit here: not checked\n");
        return;
    }
    f->cfg.pkcs11_module[0] = '\0';
    char *secret = NULL;
    assert_int_equal(be->key_generate(&f->cfg, PROVHSM_KEY_EC_P256, 0, &f->ref, &secret),
                     PROVHSM_OK);
    open_key(f);
    signed_digest sd = {0};
    uint64_t calls = provhsm_p11_calls_total(); /* a digest is no PKCS#11 call */
    sign_message(f, "SHA256", "through p11-kit's registered modules", &sd);
    assert_int_equal(provhsm_p11_calls_total() - calls, 2);
    assert_true(signature_verifies(f, &sd));
}

typedef struct thread_arg {
    fixture *f;
    int failures;
} thread_arg;

static void *sign_many(void *p)
{
    thread_arg *a = p;
    uint8_t dg[32], rs[96];
    size_t dg_len = 0, rs_len = 0;
    digest("SHA256", "threads", dg, &dg_len);
    for (int i = 0; i < 250; i++)
        if (sign_once(a->f->key, dg, dg_len, rs, &rs_len) != PROVHSM_OK ||
            !verifies(&a->f->ref, dg, dg_len, rs, rs_len))
            a->failures++;
    return NULL;
}

/* 4 threads signing with the same key at once share the one session. */
static void test_four_threads(void **state)
{
    fixture *f = *state;
    generate(f);
    open_key(f);
    uint64_t sessions = provhsm_p11_sessions_opened_total();
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg){f, 0};
        assert_int_equal(pthread_create(&th[i], NULL, sign_many, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    assert_int_equal(provhsm_p11_sessions_opened_total(), sessions);
}

int main(void)
{
    if (!provhsm_test_softhsm_available()) {
        fprintf(stderr, "SoftHSM2 (module and softhsm2-util) not installed: skipped\n");
        return PROVHSM_TEST_SKIP;
    }
    provhsm_test_p11_log_capture();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_generate_key_stays_on_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sign_verifies_two_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_session_for_1000_signs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_recovered_after_logout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_recovered_after_close_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_p384_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_pin_not_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pin_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_pin_configured, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_removed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_deleted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_adopt_by_uri, setup, teardown),
        cmocka_unit_test_setup_teardown(test_adopt_public_key_from_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_certificates_chain_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_certificates_by_public_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_certificates_none_for_the_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rsa_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_extractable_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_uris, setup, teardown),
        cmocka_unit_test_setup_teardown(test_module_and_token_selection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registered_modules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_four_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
        cmocka_unit_test(test_config_token_must_be_uri),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
