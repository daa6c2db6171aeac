/*
 * The OpenSSL provider (src/provider/) with a key of the test-only "testkey" backend:
 * a software EC key behind the hardware-key slots, so no TPM or token is needed.
 *
 * The key reference PEM goes through PEM_read_bio_PrivateKey as the SDK does; TLS 1.2 and
 * 1.3 client-authenticated handshakes run against the harness's server
 * (tls_harness.h), which requires and verifies the client certificate; each handshake
 * costs one signature in the "device". The rest of the process must not notice the
 * provider: the tests ask OpenSSL which provider served each unqualified fetch.
 *
 * Run twice by ctest: "early" loads the provider before any other OpenSSL use, "late"
 * after the default provider has served digests, EC keys, ECDH, random numbers and a
 * TLS handshake (OpenSSL keeps what it fetched; the order providers were loaded in must
 * not matter).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "backend.h"
#include "backend_testkey.h"
#include "hwkey.h"
#include "identity_fixture.h"
#include "keyref.h"
#include "provider/provider.h"
#include "secmem.h"
#include "tls_harness.h"

/* ---- log capture ------------------------------------------------------------ */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_text[16384];

static void capture_log(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)ctx;
    if (level > PROVHSM_LOG_WARN)
        return;
    pthread_mutex_lock(&log_lock);
    size_t used = strlen(log_text);
    if (used + 2 < sizeof(log_text))
        snprintf(log_text + used, sizeof(log_text) - used, "%s: %s\n", module, message);
    pthread_mutex_unlock(&log_lock);
}

static void log_clear(void)
{
    pthread_mutex_lock(&log_lock);
    log_text[0] = '\0';
    pthread_mutex_unlock(&log_lock);
}

static int log_has(const char *needle)
{
    pthread_mutex_lock(&log_lock);
    int found = strstr(log_text, needle) != NULL;
    pthread_mutex_unlock(&log_lock);
    return found;
}

/* ---- helpers --------------------------------------------------------------- */

static const char *provider_name(const OSSL_PROVIDER *prov)
{
    return prov != NULL ? OSSL_PROVIDER_get0_name(prov) : "(none)";
}

static EVP_PKEY *software_key(const char *group)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", group);
}

/* A hardware-style key: made by the testkey backend, opened and held for the program. */
static int testkey_device_key_make(identity_hw_key *dk, provhsm_key_type type, tls_ca *ca,
                                   const char *cn)
{
    return identity_hw_key_make(dk, &provhsm_backend_testkey, NULL, type, ca, cn);
}

typedef struct fixture {
    tls_ca *ca;
    tls_server *srv;
    identity_hw_key dk; /* P-256 */
    EVP_PKEY *sw_key;   /* a software client key */
    char *sw_key_pem;   /* its PKCS#8 PEM */
    char *sw_leaf_pem;  /* its certificate */
    char tmpdir[64];
} fixture;

static fixture *fx;
static int late_mode;

/* What a process does with OpenSSL before the library is initialised ("late" mode). */
static void use_openssl_first(void)
{
    unsigned char digest[32], rnd[16];
    unsigned int len = 0;
    EVP_Digest("x", 1, digest, &len, EVP_sha256(), NULL);
    RAND_bytes(rnd, sizeof(rnd));
    EVP_PKEY *a = software_key("P-256"), *b = software_key("P-256");
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, a, NULL);
    size_t secret_len = sizeof(digest);
    EVP_PKEY_derive_init(ctx);
    EVP_PKEY_derive_set_peer(ctx, b);
    EVP_PKEY_derive(ctx, digest, &secret_len);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(a);
    EVP_PKEY_free(b);
    /* and a whole TLS handshake with software keys */
    tls_ca *ca = tls_ca_new("before the provider");
    tls_server *srv = tls_server_start(ca);
    EVP_PKEY *key = software_key("P-256");
    char *key_pem = tls_key_to_pkcs8_pem(key), *leaf = NULL, err[512];
    if (tls_ca_issue(ca, key, "early", &leaf) != 0 ||
        tls_handshake(srv, leaf, key_pem, TLS1_3_VERSION, err, sizeof(err)) != 0)
        fprintf(stderr, "software handshake before the provider failed: %s\n", err);
    free(leaf);
    free(key_pem);
    EVP_PKEY_free(key);
    tls_server_stop(srv);
    tls_ca_free(ca);
}

static int group_setup(void **state)
{
    (void)state;
    fx = calloc(1, sizeof(*fx));
    snprintf(fx->tmpdir, sizeof(fx->tmpdir), "/tmp/provhsm-prov-XXXXXX");
    if (fx == NULL || mkdtemp(fx->tmpdir) == NULL)
        return -1;
    /* no store here: a key not opened by the test belongs to no identity */
    setenv("PROVHSM_STORE", fx->tmpdir, 1);
    unsetenv("PROVHSM_CONFIG");
    provhsm_set_log_callback(capture_log, NULL);
    if (late_mode)
        use_openssl_first();
    if (provhsm_provider_load() != PROVHSM_OK)
        return -1;
    fx->ca = tls_ca_new("provider test CA");
    fx->srv = tls_server_start(fx->ca);
    if (fx->ca == NULL || fx->srv == NULL ||
        testkey_device_key_make(&fx->dk, PROVHSM_KEY_EC_P256, fx->ca, "testkey-device") != 0)
        return -1;
    fx->sw_key = software_key("P-256");
    fx->sw_key_pem = tls_key_to_pkcs8_pem(fx->sw_key);
    if (fx->sw_key_pem == NULL || tls_ca_issue(fx->ca, fx->sw_key, "software", &fx->sw_leaf_pem))
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (fx == NULL)
        return 0;
    tls_server_stop(fx->srv);
    tls_ca_free(fx->ca);
    identity_hw_key_clear(&fx->dk);
    EVP_PKEY_free(fx->sw_key);
    free(fx->sw_key_pem);
    free(fx->sw_leaf_pem);
    rmdir(fx->tmpdir);
    free(fx);
    fx = NULL;
    provhsm_provider_unload();
    provhsm_set_log_callback(NULL, NULL);
    return 0;
}

/* ---- the key ------------------------------------------------------------------ */

static void test_decode_gives_a_key_of_our_provider(void **state)
{
    (void)state;
    EVP_PKEY *key = tls_key_from_pem(fx->dk.alias_pem);
    assert_non_null(key);
    assert_string_equal(tls_key_provider_name(key), PROVHSM_PROVIDER_NAME);
    assert_true(EVP_PKEY_is_a(key, "EC"));
    assert_int_equal(EVP_PKEY_get_bits(key), 256);
    assert_int_equal(EVP_PKEY_get_security_bits(key), 128);
    assert_int_equal(EVP_PKEY_get_size(key), EVP_PKEY_get_size(fx->dk.pub));
    char group[32];
    assert_int_equal(EVP_PKEY_get_group_name(key, group, sizeof(group), NULL), 1);
    assert_string_equal(group, "prime256v1");
    /* the public half is the reference's, as encoders see it (public export) */
    unsigned char *spki = NULL;
    int len = i2d_PUBKEY(key, &spki);
    assert_int_equal(len, (int)fx->dk.ref.spki_len);
    assert_memory_equal(spki, fx->dk.ref.spki, fx->dk.ref.spki_len);
    OPENSSL_free(spki);
    /* matches its certificate's key (a default-provider key), not another one */
    assert_int_equal(EVP_PKEY_eq(key, fx->dk.pub), 1);
    assert_int_equal(EVP_PKEY_eq(fx->dk.pub, key), 1);
    assert_int_not_equal(EVP_PKEY_eq(key, fx->sw_key), 1);
    assert_int_not_equal(EVP_PKEY_eq(fx->sw_key, key), 1);
    EVP_PKEY_free(key);
}

/* The SDK sets the certificate after the key: a certificate of another key drops ours. */
static void test_certificate_of_another_key_drops_it(void **state)
{
    (void)state;
    char err[1024];
    tls_client *cl = tls_client_new(fx->srv, fx->sw_leaf_pem, fx->dk.alias_pem, TLS1_3_VERSION, err,
                                    sizeof(err));
    assert_non_null(cl);
    assert_null(SSL_CTX_get0_privatekey(tls_client_ctx(cl)));
    ERR_clear_error();
    tls_client_free(cl);
}

/* Nothing private comes into the key management: a private half would not be in hardware. */
static void test_private_import_refused(void **state)
{
    (void)state;
    OSSL_PARAM *keypair = NULL, *public_only = NULL;
    assert_int_equal(EVP_PKEY_todata(fx->sw_key, EVP_PKEY_KEYPAIR, &keypair), 1);
    assert_int_equal(EVP_PKEY_todata(fx->sw_key, EVP_PKEY_PUBLIC_KEY, &public_only), 1);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", "provider=provhsm");
    assert_non_null(ctx);
    EVP_PKEY *imported = NULL;
    assert_int_equal(EVP_PKEY_fromdata_init(ctx), 1);
    assert_int_not_equal(EVP_PKEY_fromdata(ctx, &imported, EVP_PKEY_KEYPAIR, keypair), 1);
    assert_null(imported);
    /* a public key comes in, matches, and cannot sign */
    assert_int_equal(EVP_PKEY_fromdata(ctx, &imported, EVP_PKEY_PUBLIC_KEY, public_only), 1);
    assert_string_equal(tls_key_provider_name(imported), PROVHSM_PROVIDER_NAME);
    assert_int_equal(EVP_PKEY_eq(imported, fx->sw_key), 1);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char sig[128];
    size_t sig_len = sizeof(sig);
    assert_false(EVP_DigestSignInit_ex(md, NULL, "SHA2-256", NULL, NULL, imported, NULL) == 1 &&
                 EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)"abc", 3) == 1);
    ERR_clear_error();
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(imported);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(keypair);
    OSSL_PARAM_free(public_only);
}

static void test_key_reference_round_trip(void **state)
{
    (void)state;
    provhsm_keyref back = {0};
    assert_int_equal(provhsm_keyref_from_pem(fx->dk.alias_pem, strlen(fx->dk.alias_pem), &back),
                     PROVHSM_OK);
    assert_true(provhsm_keyref_equal(&back, &fx->dk.ref));
    assert_string_equal(back.backend, "testkey");
    assert_int_equal(strncmp(back.locator, "testkey:", 8), 0);
    assert_int_equal(strlen(back.locator), 8 + 16);
    assert_int_equal(back.curve_bits, 256);
    provhsm_keyref_clear(&back);
}

static void test_private_half_cannot_be_exported(void **state)
{
    (void)state;
    EVP_PKEY *key = tls_key_from_pem(fx->dk.alias_pem);
    assert_non_null(key);
    OSSL_PARAM *params = NULL;
    assert_int_not_equal(EVP_PKEY_todata(key, EVP_PKEY_KEYPAIR, &params), 1);
    assert_null(params);
    assert_int_equal(EVP_PKEY_todata(key, EVP_PKEY_PUBLIC_KEY, &params), 1);
    assert_null(OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_PRIV_KEY));
    assert_non_null(OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_PUB_KEY));
    OSSL_PARAM_free(params);
    /* and no PKCS#8 of it can be written */
    BIO *bio = BIO_new(BIO_s_mem());
    assert_int_not_equal(PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL), 1);
    BIO_free(bio);
    ERR_clear_error();
    EVP_PKEY_free(key);
}

static void check_request_signed(EVP_PKEY *key, const EVP_MD *md)
{
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = X509_NAME_new();
    assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                                (const unsigned char *)"csr-device", -1, -1, 0),
                     1);
    assert_int_equal(X509_REQ_set_subject_name(req, name), 1);
    assert_int_equal(X509_REQ_set_pubkey(req, key), 1);
    unsigned long before = provhsm_testkey_test_signs();
    assert_true(X509_REQ_sign(req, key, md) > 0);
    assert_int_equal(provhsm_testkey_test_signs(), before + 1);
    assert_int_equal(X509_REQ_verify(req, fx->dk.pub), 1);
    assert_int_not_equal(X509_REQ_verify(req, fx->sw_key), 1);
    ERR_clear_error();
    X509_NAME_free(name);
    X509_REQ_free(req);
}

static void test_csr_signed_in_the_device_verifies(void **state)
{
    (void)state;
    EVP_PKEY *key = tls_key_from_pem(fx->dk.alias_pem);
    assert_non_null(key);
    check_request_signed(key, EVP_sha256());
    check_request_signed(key, EVP_sha384());
    check_request_signed(key, EVP_sha512());
    check_request_signed(key, EVP_sha1());
    EVP_PKEY_free(key);
}

static void test_key_from_pem_api(void **state)
{
    (void)state;
    EVP_PKEY *key = NULL;
    assert_int_equal(provhsm_provider_key_from_pem(fx->dk.alias_pem, &key), PROVHSM_OK);
    assert_string_equal(tls_key_provider_name(key), PROVHSM_PROVIDER_NAME);
    /* a self-signed certificate as the admin API makes it */
    X509 *cert = X509_new();
    assert_int_equal(X509_set_pubkey(cert, key), 1);
    assert_int_equal(X509_set_version(cert, X509_VERSION_3), 1);
    assert_true(X509_sign(cert, key, EVP_sha256()) > 0);
    assert_int_equal(X509_verify(cert, fx->dk.pub), 1);
    X509_free(cert);
    EVP_PKEY_free(key);
    assert_int_equal(provhsm_provider_key_from_pem("not a key", &key), PROVHSM_E_CRYPTO);
}

/* The signature of `msg` under digest `md_name` verifies with the device key's public
 * half, on the default provider. */
static void verifies_with_device_public_key(const char *md_name, const unsigned char *sig,
                                            size_t sig_len, const char *msg)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit_ex(md, NULL, md_name, NULL, NULL, fx->dk.pub, NULL), 1);
    assert_int_equal(EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)msg, strlen(msg)),
                     1);
    EVP_MD_CTX_free(md);
}

static void test_signature_context_served_by_our_provider(void **state)
{
    (void)state;
    EVP_PKEY *key = tls_key_from_pem(fx->dk.alias_pem);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    assert_int_equal(EVP_DigestSignInit_ex(md, &pctx, "SHA2-384", NULL, NULL, key, NULL), 1);
    assert_string_equal(provider_name(EVP_PKEY_CTX_get0_provider(pctx)), PROVHSM_PROVIDER_NAME);
    unsigned char aid[64];
    size_t aid_len = 0;
    OSSL_PARAM params[] = {
        OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, aid, sizeof(aid)),
        OSSL_PARAM_END,
    };
    assert_int_equal(EVP_PKEY_CTX_get_params(pctx, params), 1);
    aid_len = params[0].return_size;
    /* SEQUENCE { OID ecdsa-with-SHA384 (1.2.840.10045.4.3.3) } */
    static const unsigned char expected[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86,
                                             0x48, 0xce, 0x3d, 0x04, 0x03, 0x03};
    assert_int_equal(aid_len, sizeof(expected));
    assert_memory_equal(aid, expected, sizeof(expected));
    unsigned char sig[128];
    size_t sig_len = sizeof(sig);
    assert_int_equal(EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)"abc", 3), 1);
    EVP_MD_CTX_free(md);
    /* verified by the default provider with the certificate's key */
    verifies_with_device_public_key("SHA2-384", sig, sig_len, "abc");
    EVP_PKEY_free(key);
}

/* A digest-sign context copied half way (dupctx) and a pre-hashed sign with a set digest. */
static void test_copied_context_and_prehashed_sign(void **state)
{
    (void)state;
    EVP_PKEY *key = tls_key_from_pem(fx->dk.alias_pem);
    assert_non_null(key);
    EVP_MD_CTX *md = EVP_MD_CTX_new(), *copy = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit_ex(md, NULL, "SHA2-256", NULL, NULL, key, NULL), 1);
    assert_int_equal(EVP_DigestSignUpdate(md, "hello ", 6), 1);
    assert_int_equal(EVP_MD_CTX_copy_ex(copy, md), 1);
    assert_int_equal(EVP_DigestSignUpdate(md, "world", 5), 1);
    assert_int_equal(EVP_DigestSignUpdate(copy, "there", 5), 1);
    unsigned char sig1[80], sig2[80];
    size_t len1 = 0, len2 = sizeof(sig2);
    assert_int_equal(EVP_DigestSignFinal(md, NULL, &len1), 1); /* size query first */
    assert_int_equal(len1, (size_t)EVP_PKEY_get_size(key));
    assert_int_equal(EVP_DigestSignFinal(md, sig1, &len1), 1);
    assert_int_equal(EVP_DigestSignFinal(copy, sig2, &len2), 1);
    EVP_MD_CTX_free(md);
    EVP_MD_CTX_free(copy);
    verifies_with_device_public_key("SHA2-256", sig1, len1, "hello world");
    verifies_with_device_public_key("SHA2-256", sig2, len2, "hello there");

    /* pre-hashed: SHA-384 digest, signed as such, a digest of another size refused */
    unsigned char digest[48], sig[120];
    size_t sig_len = sizeof(sig);
    unsigned int digest_len = 0;
    assert_int_equal(EVP_Digest("abc", 3, digest, &digest_len, EVP_sha384(), NULL), 1);
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    assert_int_equal(EVP_PKEY_sign_init(pctx), 1);
    assert_string_equal(provider_name(EVP_PKEY_CTX_get0_provider(pctx)), PROVHSM_PROVIDER_NAME);
    assert_int_equal(EVP_PKEY_CTX_set_signature_md(pctx, EVP_sha384()), 1);
    assert_int_not_equal(EVP_PKEY_sign(pctx, sig, &sig_len, digest, 32), 1);
    ERR_clear_error();
    sig_len = sizeof(sig);
    assert_int_equal(EVP_PKEY_sign(pctx, sig, &sig_len, digest, digest_len), 1);
    EVP_PKEY_CTX_free(pctx);
    pctx = EVP_PKEY_CTX_new_from_pkey(NULL, fx->dk.pub, NULL);
    assert_int_equal(EVP_PKEY_verify_init(pctx), 1);
    assert_int_equal(EVP_PKEY_verify(pctx, sig, sig_len, digest, digest_len), 1);
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_free(key);
}

/* ---- TLS ---------------------------------------------------------------------- */

static void handshake_costs_one_signature(const identity_hw_key *dk, int version)
{
    char err[1024];
    unsigned long signs = provhsm_testkey_test_signs();
    unsigned long verified = tls_server_verified_handshakes(fx->srv);
    int rc = tls_handshake(fx->srv, dk->leaf_pem, dk->alias_pem, version, err, sizeof(err));
    if (rc != 0)
        fail_msg("handshake failed: %s", err);
    assert_int_equal(provhsm_testkey_test_signs(), signs + 1);
    assert_int_equal(tls_server_verified_handshakes(fx->srv), verified + 1);
}

static void test_tls13_client_auth(void **state)
{
    (void)state;
    handshake_costs_one_signature(&fx->dk, TLS1_3_VERSION);
}

static void test_tls12_client_auth(void **state)
{
    (void)state;
    handshake_costs_one_signature(&fx->dk, TLS1_2_VERSION);
}

static void test_client_context_holds_our_key(void **state)
{
    (void)state;
    char err[1024];
    tls_client *cl = tls_client_new(fx->srv, fx->dk.leaf_pem, fx->dk.alias_pem, TLS1_3_VERSION, err,
                                    sizeof(err));
    assert_non_null(cl);
    EVP_PKEY *held = SSL_CTX_get0_privatekey(tls_client_ctx(cl));
    assert_non_null(held); /* the certificate set after the key matched it */
    assert_string_equal(tls_key_provider_name(held), PROVHSM_PROVIDER_NAME);
    assert_int_equal(SSL_CTX_check_private_key(tls_client_ctx(cl)), 1);
    unsigned long signs = provhsm_testkey_test_signs();
    assert_int_equal(tls_client_handshakes(cl, 10, err, sizeof(err)), 0);
    assert_int_equal(provhsm_testkey_test_signs(), signs + 10);
    tls_client_free(cl);
}

static void test_p384_key(void **state)
{
    (void)state;
    identity_hw_key dk;
    assert_int_equal(testkey_device_key_make(&dk, PROVHSM_KEY_EC_P384, fx->ca, "p384-device"), 0);
    EVP_PKEY *key = tls_key_from_pem(dk.alias_pem);
    assert_non_null(key);
    assert_int_equal(EVP_PKEY_get_bits(key), 384);
    EVP_PKEY_free(key);
    handshake_costs_one_signature(&dk, TLS1_3_VERSION);
    handshake_costs_one_signature(&dk, TLS1_2_VERSION);
    identity_hw_key_clear(&dk);
}

typedef struct worker {
    int version;
    int failures;
    char err[512];
} worker;

#define THREADS               4
#define HANDSHAKES_PER_THREAD 8

static void *handshake_worker(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < HANDSHAKES_PER_THREAD; i++)
        if (tls_handshake(fx->srv, fx->dk.leaf_pem, fx->dk.alias_pem, w->version, w->err,
                          sizeof(w->err)) != 0)
            w->failures++;
    return NULL;
}

static void test_four_threads_at_once(void **state)
{
    (void)state;
    pthread_t threads[THREADS];
    worker workers[THREADS];
    unsigned long signs = provhsm_testkey_test_signs();
    for (int i = 0; i < THREADS; i++) {
        memset(&workers[i], 0, sizeof(workers[i]));
        workers[i].version = i % 2 ? TLS1_2_VERSION : TLS1_3_VERSION;
        assert_int_equal(pthread_create(&threads[i], NULL, handshake_worker, &workers[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < THREADS; i++) {
        if (workers[i].failures != 0)
            fail_msg("thread %d: %d failures, last: %s", i, workers[i].failures, workers[i].err);
    }
    assert_int_equal(provhsm_testkey_test_signs(), signs + THREADS * HANDSHAKES_PER_THREAD);
}

/* ---- the rest of the process -------------------------------------------------- */

static void test_software_tls_unaffected(void **state)
{
    (void)state;
    char err[1024];
    unsigned long signs = provhsm_testkey_test_signs();
    for (int version = TLS1_2_VERSION; version <= TLS1_3_VERSION; version++)
        if (tls_handshake(fx->srv, fx->sw_leaf_pem, fx->sw_key_pem, version, err, sizeof(err)) != 0)
            fail_msg("software-key handshake (version %x) failed: %s", version, err);
    assert_int_equal(provhsm_testkey_test_signs(), signs);
    EVP_PKEY *key = tls_key_from_pem(fx->sw_key_pem);
    assert_string_equal(tls_key_provider_name(key), "default");
    EVP_PKEY_free(key);
}

static void test_unqualified_fetches_served_by_default(void **state)
{
    (void)state;
    /* digests */
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    assert_string_equal(provider_name(EVP_MD_get0_provider(md)), "default");
    EVP_MD_free(md);
    md = EVP_MD_fetch(NULL, "SHA1", NULL);
    assert_string_equal(provider_name(EVP_MD_get0_provider(md)), "default");
    EVP_MD_free(md);
    /* random numbers */
    unsigned char rnd[8];
    assert_int_equal(RAND_bytes(rnd, sizeof(rnd)), 1);
    EVP_RAND_CTX *primary = RAND_get0_primary(NULL);
    assert_non_null(primary);
    assert_string_equal(provider_name(EVP_RAND_get0_provider(EVP_RAND_CTX_get0_rand(primary))),
                        "default");
    /* the "EC" key management an unqualified fetch gets */
    EVP_KEYMGMT *km = EVP_KEYMGMT_fetch(NULL, "EC", NULL);
    assert_string_equal(provider_name(EVP_KEYMGMT_get0_provider(km)), "default");
    EVP_KEYMGMT_free(km);
    /* EC key generation */
    EVP_PKEY *a = software_key("P-256"), *b = software_key("P-384"), *c = software_key("P-256");
    assert_string_equal(tls_key_provider_name(a), "default");
    assert_string_equal(tls_key_provider_name(b), "default");
    /* ECDH */
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, a, NULL);
    unsigned char secret[32];
    size_t secret_len = sizeof(secret);
    assert_int_equal(EVP_PKEY_derive_init(ctx), 1);
    assert_string_equal(provider_name(EVP_PKEY_CTX_get0_provider(ctx)), "default");
    assert_int_equal(EVP_PKEY_derive_set_peer(ctx, c), 1);
    assert_int_equal(EVP_PKEY_derive(ctx, secret, &secret_len), 1);
    EVP_PKEY_CTX_free(ctx);
    EVP_KEYEXCH *kex = EVP_KEYEXCH_fetch(NULL, "ECDH", NULL);
    assert_string_equal(provider_name(EVP_KEYEXCH_get0_provider(kex)), "default");
    EVP_KEYEXCH_free(kex);
    /* ECDSA with a software key */
    EVP_MD_CTX *sctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    assert_int_equal(EVP_DigestSignInit_ex(sctx, &pctx, "SHA2-256", NULL, NULL, a, NULL), 1);
    assert_string_equal(provider_name(EVP_PKEY_CTX_get0_provider(pctx)), "default");
    EVP_MD_CTX_free(sctx);
    EVP_SIGNATURE *sig = EVP_SIGNATURE_fetch(NULL, "ECDSA", NULL);
    assert_string_equal(provider_name(EVP_SIGNATURE_get0_provider(sig)), "default");
    EVP_SIGNATURE_free(sig);
    /* a key generated through a context made by name */
    EVP_PKEY_CTX *gen = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *d = NULL;
    assert_int_equal(EVP_PKEY_keygen_init(gen), 1);
    assert_string_equal(provider_name(EVP_PKEY_CTX_get0_provider(gen)), "default");
    assert_int_equal(EVP_PKEY_CTX_set_group_name(gen, "P-256"), 1);
    assert_int_equal(EVP_PKEY_keygen(gen, &d), 1);
    EVP_PKEY_CTX_free(gen);
    EVP_PKEY_free(a);
    EVP_PKEY_free(b);
    EVP_PKEY_free(c);
    EVP_PKEY_free(d);
    /* the provider offers nothing of the kind, whoever asks for it by name */
    OSSL_PROVIDER *ours = OSSL_PROVIDER_load(NULL, PROVHSM_PROVIDER_NAME);
    assert_non_null(ours);
    int no_cache = 0;
    assert_null(OSSL_PROVIDER_query_operation(ours, OSSL_OP_DIGEST, &no_cache));
    assert_null(OSSL_PROVIDER_query_operation(ours, OSSL_OP_RAND, &no_cache));
    assert_null(OSSL_PROVIDER_query_operation(ours, OSSL_OP_CIPHER, &no_cache));
    assert_null(OSSL_PROVIDER_query_operation(ours, OSSL_OP_KEYEXCH, &no_cache));
    EVP_PKEY_CTX *ours_gen = EVP_PKEY_CTX_new_from_name(NULL, "EC", "provider=provhsm");
    assert_true(ours_gen == NULL || EVP_PKEY_keygen_init(ours_gen) != 1);
    EVP_PKEY_CTX_free(ours_gen);
    ERR_clear_error();
    OSSL_PROVIDER_unload(ours);
}

static void test_alias_pem_holds_no_private_key(void **state)
{
    (void)state;
    OSSL_LIB_CTX *libctx = OSSL_LIB_CTX_new();
    OSSL_PROVIDER *dflt = OSSL_PROVIDER_load(libctx, "default");
    assert_non_null(dflt);
    assert_int_equal(OSSL_PROVIDER_available(libctx, PROVHSM_PROVIDER_NAME), 0);
    BIO *bio = BIO_new_mem_buf(fx->dk.alias_pem, -1);
    EVP_PKEY *key = PEM_read_bio_PrivateKey_ex(bio, NULL, NULL, NULL, libctx, NULL);
    assert_null(key);
    BIO_free(bio);
    /* nor does any PEM block in it parse as a private key the legacy way */
    bio = BIO_new_mem_buf(fx->dk.alias_pem, -1);
    char *name = NULL, *header = NULL;
    unsigned char *der = NULL;
    long len = 0;
    assert_int_equal(PEM_read_bio(bio, &name, &header, &der, &len), 1);
    assert_string_equal(name, PROVHSM_KEYREF_PEM_LABEL);
    const unsigned char *p = der;
    EVP_PKEY *raw = d2i_AutoPrivateKey_ex(NULL, &p, len, libctx, NULL);
    assert_null(raw);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(der);
    BIO_free(bio);
    ERR_clear_error();
    OSSL_PROVIDER_unload(dflt);
    OSSL_LIB_CTX_free(libctx);
}

static void test_other_pem_keys_still_decode(void **state)
{
    (void)state;
    /* PKCS#8 */
    EVP_PKEY *key = tls_key_from_pem(fx->sw_key_pem);
    assert_non_null(key);
    assert_string_equal(tls_key_provider_name(key), "default");
    assert_int_equal(EVP_PKEY_eq(key, fx->sw_key), 1);
    EVP_PKEY_free(key);
    /* traditional "EC PRIVATE KEY" */
    BIO *bio = BIO_new(BIO_s_mem());
    assert_int_equal(
        PEM_write_bio_PrivateKey_traditional(bio, fx->sw_key, NULL, NULL, 0, NULL, NULL), 1);
    key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    assert_non_null(key);
    assert_int_equal(EVP_PKEY_eq(key, fx->sw_key), 1);
    EVP_PKEY_free(key);
    BIO_free(bio);
    /* one BIO, our block then a PKCS#8 block: each read takes one key, nothing is lost */
    size_t both_len = strlen(fx->dk.alias_pem) + strlen(fx->sw_key_pem) + 1;
    char *both = malloc(both_len);
    snprintf(both, both_len, "%s%s", fx->dk.alias_pem, fx->sw_key_pem);
    bio = BIO_new_mem_buf(both, -1);
    EVP_PKEY *first = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    EVP_PKEY *second = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    assert_non_null(first);
    assert_non_null(second);
    assert_string_equal(tls_key_provider_name(first), PROVHSM_PROVIDER_NAME);
    assert_string_equal(tls_key_provider_name(second), "default");
    assert_int_equal(EVP_PKEY_eq(second, fx->sw_key), 1);
    EVP_PKEY_free(first);
    EVP_PKEY_free(second);
    BIO_free(bio);
    /* and the other way round */
    snprintf(both, both_len, "%s%s", fx->sw_key_pem, fx->dk.alias_pem);
    bio = BIO_new_mem_buf(both, -1);
    first = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    second = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    assert_non_null(first);
    assert_non_null(second);
    assert_string_equal(tls_key_provider_name(first), "default");
    assert_string_equal(tls_key_provider_name(second), PROVHSM_PROVIDER_NAME);
    EVP_PKEY_free(first);
    EVP_PKEY_free(second);
    BIO_free(bio);
    free(both);
    /* a public key PEM */
    bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(bio, fx->sw_key), 1);
    key = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    assert_non_null(key);
    assert_string_equal(tls_key_provider_name(key), "default");
    EVP_PKEY_free(key);
    BIO_free(bio);
}

static void test_other_providers_loaded_too(void **state)
{
    (void)state;
    OSSL_PROVIDER *base = OSSL_PROVIDER_load(NULL, "base");
    OSSL_PROVIDER *legacy = OSSL_PROVIDER_load(NULL, "legacy");
    assert_non_null(base);
    if (legacy == NULL)
        ERR_clear_error(); /* a build without the legacy module: base alone then */
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    assert_string_equal(provider_name(EVP_MD_get0_provider(md)), "default");
    EVP_MD_free(md);
    EVP_KEYMGMT *km = EVP_KEYMGMT_fetch(NULL, "EC", NULL);
    assert_string_equal(provider_name(EVP_KEYMGMT_get0_provider(km)), "default");
    EVP_KEYMGMT_free(km);
    handshake_costs_one_signature(&fx->dk, TLS1_3_VERSION);
    handshake_costs_one_signature(&fx->dk, TLS1_2_VERSION);
    test_software_tls_unaffected(state);
    test_other_pem_keys_still_decode(state);
    if (legacy != NULL) {
        md = EVP_MD_fetch(NULL, "MD4", NULL);
        assert_string_equal(provider_name(EVP_MD_get0_provider(md)), "legacy");
        EVP_MD_free(md);
        OSSL_PROVIDER_unload(legacy);
    }
    OSSL_PROVIDER_unload(base);
}

/* ---- failures ----------------------------------------------------------------- */

static int device_back(void **state)
{
    (void)state;
    provhsm_testkey_test_fail_signing(0);
    return 0;
}

static void test_device_failure_fails_the_handshake_with_a_reason(void **state)
{
    (void)state;
    char err[2048];
    log_clear();
    provhsm_testkey_test_fail_signing(1);
    for (int version = TLS1_2_VERSION; version <= TLS1_3_VERSION; version++) {
        unsigned long verified = tls_server_verified_handshakes(fx->srv);
        assert_int_not_equal(
            tls_handshake(fx->srv, fx->dk.leaf_pem, fx->dk.alias_pem, version, err, sizeof(err)),
            0);
        assert_int_equal(tls_server_verified_handshakes(fx->srv), verified);
        assert_non_null(strstr(err, "hardware signing failed"));
    }
    provhsm_testkey_test_fail_signing(0);
    assert_true(log_has("testkey: the testkey device is gone"));
    assert_true(log_has("signing with the testkey key"));
    /* back to normal afterwards */
    handshake_costs_one_signature(&fx->dk, TLS1_3_VERSION);
}

static void test_key_of_no_identity_is_refused(void **state)
{
    (void)state;
    /* a reference to a key nobody opened: hwkey looks for it in the (absent) store */
    EVP_PKEY *pub = software_key("P-256");
    unsigned char *spki = NULL;
    int len = i2d_PUBKEY(pub, &spki);
    provhsm_keyref ref = {0};
    char *pem = NULL;
    assert_int_equal(
        provhsm_keyref_make("testkey", "testkey:0011223344556677", spki, (size_t)len, &ref),
        PROVHSM_OK);
    assert_int_equal(provhsm_keyref_to_pem(&ref, &pem), PROVHSM_OK);
    log_clear();
    assert_null(tls_key_from_pem(pem));
    unsigned long code = ERR_peek_last_error();
    assert_int_not_equal(code, 0);
    ERR_clear_error();
    assert_true(log_has("testkey:0011223344556677"));
    char err[1024];
    assert_int_not_equal(
        tls_handshake(fx->srv, fx->dk.leaf_pem, pem, TLS1_3_VERSION, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "PEM_read_bio_PrivateKey"));
    /* a reference naming a backend this build does not have */
    provhsm_keyref other = {0};
    char *other_pem = NULL;
    assert_int_equal(provhsm_keyref_make("nosuch", "x", spki, (size_t)len, &other), PROVHSM_OK);
    assert_int_equal(provhsm_keyref_to_pem(&other, &other_pem), PROVHSM_OK);
    log_clear();
    assert_null(tls_key_from_pem(other_pem));
    ERR_clear_error();
    assert_true(log_has("nosuch"));
    free(other_pem);
    provhsm_keyref_clear(&other);
    free(pem);
    provhsm_keyref_clear(&ref);
    OPENSSL_free(spki);
    EVP_PKEY_free(pub);
}

static void test_malformed_reference_is_refused(void **state)
{
    (void)state;
    /* our label around a PKCS#8 body: ours, malformed, refused (not decoded by default) */
    const char *body = strstr(fx->sw_key_pem, "\n") + 1;
    const char *end = strstr(body, "-----END");
    char pem[2048];
    snprintf(pem, sizeof(pem),
             "-----BEGIN " PROVHSM_KEYREF_PEM_LABEL "-----\n%.*s-----END " PROVHSM_KEYREF_PEM_LABEL
             "-----\n",
             (int)(end - body), body);
    log_clear();
    assert_null(tls_key_from_pem(pem));
    ERR_clear_error();
    assert_true(log_has("malformed " PROVHSM_KEYREF_PEM_LABEL));
}

static void test_load_is_counted(void **state)
{
    (void)state;
    assert_int_equal(provhsm_provider_load(), PROVHSM_OK);
    assert_int_equal(provhsm_provider_load(), PROVHSM_OK);
    provhsm_provider_unload();
    provhsm_provider_unload();
    /* still loaded: the group's count remains */
    assert_int_equal(OSSL_PROVIDER_available(NULL, PROVHSM_PROVIDER_NAME), 1);
    EVP_PKEY *key = tls_key_from_pem(fx->dk.alias_pem);
    assert_non_null(key);
    EVP_PKEY_free(key);
}

int main(int argc, char **argv)
{
    late_mode = argc > 1 && strcmp(argv[1], "late") == 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_gives_a_key_of_our_provider),
        cmocka_unit_test(test_certificate_of_another_key_drops_it),
        cmocka_unit_test(test_private_import_refused),
        cmocka_unit_test(test_key_reference_round_trip),
        cmocka_unit_test(test_private_half_cannot_be_exported),
        cmocka_unit_test(test_csr_signed_in_the_device_verifies),
        cmocka_unit_test(test_key_from_pem_api),
        cmocka_unit_test(test_signature_context_served_by_our_provider),
        cmocka_unit_test(test_copied_context_and_prehashed_sign),
        cmocka_unit_test(test_tls13_client_auth),
        cmocka_unit_test(test_tls12_client_auth),
        cmocka_unit_test(test_client_context_holds_our_key),
        cmocka_unit_test(test_p384_key),
        cmocka_unit_test(test_four_threads_at_once),
        cmocka_unit_test(test_software_tls_unaffected),
        cmocka_unit_test(test_unqualified_fetches_served_by_default),
        cmocka_unit_test(test_alias_pem_holds_no_private_key),
        cmocka_unit_test(test_other_pem_keys_still_decode),
        cmocka_unit_test_teardown(test_device_failure_fails_the_handshake_with_a_reason,
                                  device_back),
        cmocka_unit_test(test_key_of_no_identity_is_refused),
        cmocka_unit_test(test_malformed_reference_is_refused),
        cmocka_unit_test(test_load_is_counted),
        cmocka_unit_test(test_other_providers_loaded_too),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
