/*
 * The provider in a process that also loads other providers: tpm2-openssl (Debian package
 * tpm2-openssl, its module in OpenSSL's MODULESDIR) on a private swtpm, next to OpenSSL's
 * default provider, both loaded explicitly into the default library context as an
 * application using tpm2-openssl does, with the default properties tpm2-openssl
 * recommends (TPM2_APP_PROPERTIES). pkcs11-provider is not packaged for Debian 12, so it
 * is not part of this test.
 *
 * Run twice by ctest: "tpm2-first" loads tpm2-openssl before hsm_client_x509_init,
 * "provhsm-first" after it. Either way:
 *   (a/b) the SDK's X.509 identity (a key of the test-only "testkey" backend, made by the
 *         store in another process as the tool would) does TLS 1.3 and 1.2
 *         client-authenticated handshakes through the SDK's X.509 table, each signed by
 *         our provider;
 *   (c)   a TSS2 PEM key made by tpm2-openssl (`openssl genpkey -provider tpm2`) still
 *         decodes to a tpm2-openssl key and signs in the TPM, and our key reference still
 *         decodes to a key of ours;
 *   (d)   a TLS server and client with software EC keys still handshake (1.2 and 1.3).
 *
 * What belongs to tpm2-openssl and not to us (measured with tpm2-openssl 1.1.1 on OpenSSL
 * 3.0 and swtpm): loaded before the default provider, it answers unqualified EC fetches
 * itself (key generation, ECDH, ECDSA). A software EC key then cannot sign: OpenSSL hands
 * it to tpm2-openssl's ECDSA, which loads its public half into the TPM and fails with
 * TPM_RC_AUTH_UNAVAILABLE; every key it verifies with takes one of the three transient
 * object slots a TPM without a resource manager has ("out of memory for object
 * contexts"). So TLS with software keys in such a process fails whether our provider is
 * there or not. The test measures that before our provider is loaded (the "baseline":
 * does a default-provider EC key sign with no property query?), and when the baseline
 * already fails, a handshake that fails is reported and skipped, not failed. The checks
 * that do not need a TLS peer (our key signs in our provider, the TSS2 key decodes and
 * signs, the software ECDSA is still whoever served it before us) run in both orders.
 * The test's own peers (CA, server and software client keys) are made on the default
 * provider, so they hold no TPM object.
 *
 * Skips (77) when swtpm or the tpm2-openssl module is not installed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "backend_testkey.h"
#include "hsm_client_data.h"
#include "identity_fixture.h"
#include "keyref.h"
#include "provider/provider.h"
#include "swtpm_fixture.h"
#include "tls_harness.h"

#define TPM2_PROVIDER       "tpm2"
#define TPM2_APP_PROPERTIES "?tpm2.digest=no,?tpm2.cipher=no,?tpm2.rand=no"
#define DEVICE_CN           "coexist-device"
#define SOFTWARE_CN         "software-client"

static struct {
    int provhsm_first;
    provhsm_test_swtpm swtpm;
    char dir[64];
    char tpm2_key_path[128];
    OSSL_PROVIDER *tpm2, *dflt;
    int x509_initialised;
    /* without our provider: which provider signs with a software EC key, and whether */
    int baseline_measured, baseline_signs;
    const char *baseline_signer;
    char baseline_error[512];
    char *cert_pem, *key_pem; /* what the SDK's X.509 table hands the SDK */
    char *leaf_pem;           /* the device certificate re-issued by the test CA */
    tls_ca *ca;
    tls_server *srv;
    char *sw_key_pem, *sw_leaf_pem; /* a software client identity */
} G;

/* ---- helpers --------------------------------------------------------------------- */

static char *read_text_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    char *text = calloc(1, 16384);
    size_t n = text != NULL ? fread(text, 1, 16383, f) : 0;
    fclose(f);
    if (text != NULL && n == 0) {
        free(text);
        text = NULL;
    }
    return text;
}

/* 1 when OpenSSL's module directory holds tpm2-openssl's module. */
static int tpm2_module_installed(void)
{
    const char *modules = OPENSSL_info(OPENSSL_INFO_MODULES_DIR);
    char path[512];
    if (modules == NULL)
        return 0;
    snprintf(path, sizeof(path), "%s/%s.so", modules, TPM2_PROVIDER);
    return access(path, R_OK) == 0;
}

/* A software EC P-256 key, explicitly of the default provider: with tpm2-openssl loaded
 * first, an unqualified EC key generation would make a TPM key. */
static EVP_PKEY *software_key(void)
{
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *gen = EVP_PKEY_CTX_new_from_name(NULL, "EC", "provider=default");
    if (gen == NULL || EVP_PKEY_keygen_init(gen) != 1 ||
        EVP_PKEY_CTX_set_group_name(gen, "P-256") != 1 || EVP_PKEY_keygen(gen, &key) != 1)
        key = NULL;
    EVP_PKEY_CTX_free(gen);
    return key;
}

/* ---- what happens before the test process touches OpenSSL ---------------------------- */

/* A TSS2 key made by tpm2-openssl's own command line, in another process (the swtpm
 * serves one client at a time: this runs before the test process connects to it). */
static int make_tpm2_key_with_openssl_cli(void)
{
    char cmd[512];
    snprintf(G.tpm2_key_path, sizeof(G.tpm2_key_path), "%s/tpm2-key.pem", G.dir);
    snprintf(cmd, sizeof(cmd),
             "openssl genpkey -provider tpm2 -provider default -algorithm EC "
             "-pkeyopt group:P-256 -out '%s' 2>'%s/genpkey.err'",
             G.tpm2_key_path, G.dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "setup: openssl genpkey -provider tpm2 failed (see %s/genpkey.err)\n",
                G.dir);
        return -1;
    }
    return 0;
}

/* ---- the application's side ----------------------------------------------------------- */

/* What an application using tpm2-openssl does at start: both providers explicitly (an
 * explicit load stops OpenSSL from loading the default provider implicitly), then the
 * properties that keep digests, ciphers and random numbers off the TPM. */
static int application_loads_tpm2(void)
{
    G.tpm2 = OSSL_PROVIDER_load(NULL, TPM2_PROVIDER);
    G.dflt = OSSL_PROVIDER_load(NULL, "default");
    if (G.tpm2 == NULL || G.dflt == NULL) {
        fprintf(stderr, "setup: loading the tpm2 and default providers failed\n");
        ERR_print_errors_fp(stderr);
        return -1;
    }
    if (EVP_set_default_properties(NULL, TPM2_APP_PROPERTIES) != 1)
        return -1;
    return 0;
}

/* OpenSSL's error queue as text (the queue is emptied). */
static void errors_to_text(char *buf, size_t len)
{
    unsigned long code;
    size_t used = 0;
    buf[0] = '\0';
    const char *data = NULL;
    int flags = 0;
    while ((code = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0 && used + 2 < len) {
        char line[256];
        ERR_error_string_n(code, line, sizeof(line));
        int n = snprintf(buf + used, len - used, "%s%s%s%s", used > 0 ? "; " : "", line,
                         (flags & ERR_TXT_STRING) != 0 ? ": " : "",
                         (flags & ERR_TXT_STRING) != 0 ? data : "");
        used = n > 0 && (size_t)n < len - used ? used + (size_t)n : len - 1;
    }
}

/* Signs with a fresh default-provider EC key, no property query (as libssl does): which
 * provider's ECDSA got it, and did it sign. */
static int software_ec_signs(const char **signer, char *why, size_t whylen)
{
    EVP_PKEY *key = software_key();
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    unsigned char sig[128];
    size_t sig_len = sizeof(sig);
    int ok = key != NULL && md != NULL &&
             EVP_DigestSignInit_ex(md, &pctx, "SHA2-256", NULL, NULL, key, NULL) == 1;
    *signer = ok ? OSSL_PROVIDER_get0_name(EVP_PKEY_CTX_get0_provider(pctx)) : "(none)";
    ok = ok && EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)"baseline", 8) == 1;
    errors_to_text(why, whylen);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    return ok;
}

static int load_in_order_under_test(void)
{
    if (!G.provhsm_first) {
        if (application_loads_tpm2() != 0)
            return -1;
        G.baseline_measured = 1;
        G.baseline_signs =
            software_ec_signs(&G.baseline_signer, G.baseline_error, sizeof(G.baseline_error));
        printf("# without our provider, a software EC key is signed by %s: %s%s\n",
               G.baseline_signer, G.baseline_signs ? "ok" : "failed: ", G.baseline_error);
    }
    if (hsm_client_x509_init() != 0) {
        fprintf(stderr, "setup: hsm_client_x509_init failed\n");
        return -1;
    }
    G.x509_initialised = 1;
    if (G.provhsm_first && application_loads_tpm2() != 0)
        return -1;
    return identity_sdk_strings(&G.cert_pem, &G.key_pem);
}

static int make_peers_on_default(void)
{
    G.ca = tls_ca_new("coexist test CA");
    if (G.ca == NULL || tls_ca_issue_from_cert(G.ca, G.cert_pem, &G.leaf_pem) != 0)
        return -1;
    G.srv = tls_server_start(G.ca);
    EVP_PKEY *sw = software_key();
    int ok = G.srv != NULL && sw != NULL && (G.sw_key_pem = tls_key_to_pkcs8_pem(sw)) != NULL &&
             tls_ca_issue(G.ca, sw, SOFTWARE_CN, &G.sw_leaf_pem) == 0;
    EVP_PKEY_free(sw);
    return ok ? 0 : -1;
}

/* The test's own peers (CA, server certificate key, a software client key) stand for
 * other processes: their keys are made on the default provider, so that they hold no TPM
 * object (tpm2-openssl, when loaded first, would make every unqualified EC key in the
 * TPM, where three transient slots are all there is without a resource manager). */
static int make_peers(void)
{
    if (EVP_set_default_properties(NULL, "?provider=default") != 1)
        return -1;
    int ok = make_peers_on_default();
    return EVP_set_default_properties(NULL, TPM2_APP_PROPERTIES) == 1 && ok == 0 ? 0 : -1;
}

static int prepare(void)
{
    /* the device's identity made by the store in a process of its own (as `provhsm x509
     * generate --self-signed` would), so that the test process's OpenSSL is untouched
     * until it loads its providers in the order under test */
    if (provhsm_test_workdir_make(G.dir, sizeof(G.dir), "coexist") != 0 ||
        identity_config_write(G.dir, "testkey", NULL) != 0 ||
        identity_generate_in_another_process(DEVICE_CN) != 0)
        return -1;
    if (provhsm_test_swtpm_start(&G.swtpm, NULL) != 0)
        return -1;
    setenv("TPM2OPENSSL_TCTI", G.swtpm.tcti, 1);
    if (make_tpm2_key_with_openssl_cli() != 0 || load_in_order_under_test() != 0)
        return -1;
    if (make_peers() != 0) {
        fprintf(stderr, "setup: the test CA, server or software client key failed\n");
        ERR_print_errors_fp(stderr);
        return -1;
    }
    return 0;
}

static int group_teardown(void **unused)
{
    (void)unused;
    tls_server_stop(G.srv);
    tls_ca_free(G.ca);
    free(G.cert_pem);
    free(G.key_pem);
    free(G.leaf_pem);
    free(G.sw_key_pem);
    free(G.sw_leaf_pem);
    if (G.x509_initialised)
        hsm_client_x509_deinit();
    provhsm_test_swtpm_stop(&G.swtpm);
    provhsm_test_remove_tree(G.dir);
    return 0;
}

/* A setup that fails is not followed by the teardown: clean up here. */
static int group_setup(void **unused)
{
    if (prepare() == 0)
        return 0;
    (void)group_teardown(unused);
    return -1;
}

/* ---- tests ---------------------------------------------------------------------------- */

/*
 * A handshake failed. When tpm2-openssl already broke software EC signatures before our
 * provider was loaded (the baseline), and the handshake failed inside tpm2-openssl, it is
 * reported and the test skipped: no provider loaded after it can change that. Any other
 * failure fails the test.
 */
static void fail_unless_tpm2_broke_it_first(const char *what, int version, const char *err)
{
    if (G.baseline_measured && !G.baseline_signs && strstr(err, "tpm2::") != NULL) {
        printf("# SKIPPED %s (TLS %x): tpm2-openssl, loaded ahead of the default provider, "
               "serves ECDSA for software EC keys and cannot sign with them even without our "
               "provider (%s: %s); here: %s\n",
               what, version, G.baseline_signer, G.baseline_error, err);
        skip();
    }
    fail_msg("%s (TLS %x): %s", what, version, err);
}

/* Our provider changed nothing for software EC keys: the same provider's ECDSA gets them
 * as before it was loaded, with the same outcome; with the default provider ahead of
 * tpm2-openssl, that is the default provider and it signs. */
static void test_software_ec_signer_unchanged(void **unused)
{
    (void)unused;
    const char *signer = NULL;
    char why[512];
    int signs = software_ec_signs(&signer, why, sizeof(why));
    if (G.baseline_measured) {
        assert_string_equal(signer, G.baseline_signer);
        assert_int_equal(signs, G.baseline_signs);
    } else {
        assert_string_equal(signer, "default");
        if (!signs)
            fail_msg("a software EC key does not sign: %s", why);
    }
}

static void test_three_providers_loaded(void **unused)
{
    (void)unused;
    assert_int_equal(OSSL_PROVIDER_available(NULL, TPM2_PROVIDER), 1);
    assert_int_equal(OSSL_PROVIDER_available(NULL, "default"), 1);
    assert_int_equal(OSSL_PROVIDER_available(NULL, PROVHSM_PROVIDER_NAME), 1);
    /* the application's properties still keep digests off the TPM */
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    assert_non_null(md);
    assert_string_equal(OSSL_PROVIDER_get0_name(EVP_MD_get0_provider(md)), "default");
    EVP_MD_free(md);
}

/* The SHA-256 signature of `msg` verifies with the public key `spki` (DER), decoded and
 * checked by the default provider (an unqualified decode could give tpm2-openssl's key). */
static void verifies_on_default_provider(const unsigned char *spki, int spki_len,
                                         const unsigned char *sig, size_t sig_len, const char *msg)
{
    const unsigned char *p = spki;
    EVP_PKEY *pub = d2i_PUBKEY_ex(NULL, &p, spki_len, NULL, "provider=default");
    assert_non_null(pub);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(
        EVP_DigestVerifyInit_ex(md, NULL, "SHA2-256", NULL, "provider=default", pub, NULL), 1);
    assert_int_equal(EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)msg, strlen(msg)),
                     1);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pub);
}

/* (a) and (b) without TLS: the SDK's alias key decodes to our provider and signs there,
 * unqualified as libssl asks, with tpm2-openssl's ECDSA in the process */
static void test_sdk_alias_key_signs_in_our_provider(void **unused)
{
    (void)unused;
    EVP_PKEY *key = tls_key_from_pem(G.key_pem);
    assert_non_null(key);
    assert_string_equal(tls_key_provider_name(key), PROVHSM_PROVIDER_NAME);
    unsigned char sig[128];
    size_t sig_len = sizeof(sig);
    unsigned long signs = provhsm_testkey_test_signs();
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    assert_int_equal(EVP_DigestSignInit_ex(md, &pctx, "SHA2-256", NULL, NULL, key, NULL), 1);
    assert_string_equal(OSSL_PROVIDER_get0_name(EVP_PKEY_CTX_get0_provider(pctx)),
                        PROVHSM_PROVIDER_NAME);
    assert_int_equal(EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)"sdk", 3), 1);
    EVP_MD_CTX_free(md);
    assert_int_equal(provhsm_testkey_test_signs(), signs + 1);
    /* verified with the certificate's public key on the default provider */
    BIO *bio = BIO_new_mem_buf(G.cert_pem, -1);
    X509 *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    assert_non_null(cert);
    unsigned char *spki = NULL;
    int spki_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &spki);
    verifies_on_default_provider(spki, spki_len, sig, sig_len, "sdk");
    OPENSSL_free(spki);
    X509_free(cert);
    EVP_PKEY_free(key);
}

/* (a) and (b): the SDK's identity, signed by our provider, on TLS 1.3 and 1.2 */
static void test_sdk_identity_handshakes(void **unused)
{
    (void)unused;
    char err[1024], cn[64];
    assert_null(strstr(G.key_pem, "PRIVATE KEY"));
    for (int version = TLS1_3_VERSION; version >= TLS1_2_VERSION; version--) {
        tls_client *cl = tls_client_new(G.srv, G.leaf_pem, G.key_pem, version, err, sizeof(err));
        if (cl == NULL)
            fail_msg("TLS %x client: %s", version, err);
        assert_string_equal(tls_key_provider_name(SSL_CTX_get0_privatekey(tls_client_ctx(cl))),
                            PROVHSM_PROVIDER_NAME);
        unsigned long signs = provhsm_testkey_test_signs();
        unsigned long verified = tls_server_verified_handshakes(G.srv);
        if (tls_client_handshakes(cl, 2, err, sizeof(err)) != 0) {
            tls_client_free(cl);
            fail_unless_tpm2_broke_it_first("the SDK identity's handshake", version, err);
        }
        assert_int_equal(provhsm_testkey_test_signs(), signs + 2);
        assert_int_equal(tls_server_verified_handshakes(G.srv), verified + 2);
        tls_server_last_client_cn(G.srv, cn, sizeof(cn));
        assert_string_equal(cn, DEVICE_CN);
        tls_client_free(cl);
    }
}

/*
 * The property query to sign with a tpm2-openssl key. With tpm2-openssl loaded before any
 * other use of OpenSSL, none: its ECDSA is the one an unqualified fetch finds. Loaded
 * after OpenSSL has served anything (here hsm_client_x509_init, but a single SHA-256
 * does the same, measured with tpm2-openssl 1.1.1 on OpenSSL 3.0), the default
 * provider's ECDSA comes first, OpenSSL 3.0 exports the key to the default provider,
 * tpm2-openssl's export hands over the public half and reports success, and the default
 * provider fails with "missing private key". Such an application has to ask for
 * tpm2-openssl's signature itself, as done here.
 */
static const char *tpm2_sign_query(void)
{
    return G.provhsm_first ? "?provider=" TPM2_PROVIDER : NULL;
}

/* (c) a tpm2-openssl key still decodes, to tpm2-openssl, and signs; ours still to ours */
static void test_tpm2_pem_key_still_decodes(void **unused)
{
    (void)unused;
    char *pem = read_text_file(G.tpm2_key_path);
    assert_non_null(pem);
    assert_non_null(strstr(pem, "-----BEGIN TSS2 PRIVATE KEY-----"));
    EVP_PKEY *tpm_key = tls_key_from_pem(pem);
    if (tpm_key == NULL) {
        ERR_print_errors_fp(stderr);
        fail_msg("PEM_read_bio_PrivateKey gave no key for tpm2-openssl's PEM");
    }
    assert_string_equal(tls_key_provider_name(tpm_key), TPM2_PROVIDER);
    /* it signs (in the TPM) and the signature verifies with its public half */
    unsigned long signs = provhsm_testkey_test_signs();
    unsigned char sig[128];
    size_t sig_len = sizeof(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    assert_int_equal(
        EVP_DigestSignInit_ex(md, &pctx, "SHA2-256", NULL, tpm2_sign_query(), tpm_key, NULL), 1);
    assert_string_equal(OSSL_PROVIDER_get0_name(EVP_PKEY_CTX_get0_provider(pctx)), TPM2_PROVIDER);
    if (EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)"coexist", 7) != 1) {
        ERR_print_errors_fp(stderr);
        fail_msg("signing with the tpm2-openssl key failed");
    }
    EVP_MD_CTX_free(md);
    assert_int_equal(provhsm_testkey_test_signs(), signs);
    unsigned char *spki = NULL;
    int spki_len = i2d_PUBKEY(tpm_key, &spki);
    assert_true(spki_len > 0);
    verifies_on_default_provider(spki, spki_len, sig, sig_len, "coexist");
    OPENSSL_free(spki);
    EVP_PKEY_free(tpm_key);
    free(pem);

    EVP_PKEY *ours = tls_key_from_pem(G.key_pem);
    assert_non_null(ours);
    assert_string_equal(tls_key_provider_name(ours), PROVHSM_PROVIDER_NAME);
    EVP_PKEY_free(ours);
    /* and a software PKCS#8 key still goes to the default provider */
    EVP_PKEY *sw = tls_key_from_pem(G.sw_key_pem);
    assert_non_null(sw);
    assert_string_equal(tls_key_provider_name(sw), "default");
    EVP_PKEY_free(sw);
}

/* (d) a software server and client in the same process, all three providers loaded */
static void test_software_tls_still_works(void **unused)
{
    (void)unused;
    char err[1024], cn[64];
    for (int version = TLS1_3_VERSION; version >= TLS1_2_VERSION; version--) {
        unsigned long signs = provhsm_testkey_test_signs();
        unsigned long verified = tls_server_verified_handshakes(G.srv);
        if (tls_handshake(G.srv, G.sw_leaf_pem, G.sw_key_pem, version, err, sizeof(err)) != 0)
            fail_unless_tpm2_broke_it_first("the software keys' handshake", version, err);
        assert_int_equal(tls_server_verified_handshakes(G.srv), verified + 1);
        assert_int_equal(provhsm_testkey_test_signs(), signs);
        tls_server_last_client_cn(G.srv, cn, sizeof(cn));
        assert_string_equal(cn, SOFTWARE_CN);
    }
}

int main(int argc, char **argv)
{
    G.provhsm_first = argc > 1 && strcmp(argv[1], "provhsm-first") == 0;
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    if (!tpm2_module_installed() || !provhsm_test_programs_available("openssl", NULL)) {
        fprintf(stderr, "skip: the tpm2-openssl provider (package tpm2-openssl) is not "
                        "installed in OpenSSL's module directory\n");
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        /* TPM-backed work first, while the TPM's object slots are free */
        cmocka_unit_test(test_three_providers_loaded),
        cmocka_unit_test(test_tpm2_pem_key_still_decodes),
        cmocka_unit_test(test_sdk_alias_key_signs_in_our_provider),
        cmocka_unit_test(test_software_ec_signer_unchanged),
        cmocka_unit_test(test_sdk_identity_handshakes),
        cmocka_unit_test(test_software_tls_still_works),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
