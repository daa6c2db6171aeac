/*
 * `x509 adopt` of a key a secure element was shipped with, without a chain file: the key
 * pair and its certificates are put on a SoftHSM2 token through the module (as the
 * factory would), then provhsm_x509_adopt(uri, NULL, 0) reads the chain from the token.
 * Checked through the store and the SDK's X.509 table: the chain comes back leaf first,
 * and the alias key, loaded the SDK's way after hsm_client_x509_init, signs on the token
 * with the key the leaf certifies. A token without a certificate for the key, or with
 * only another key's, adopts nothing and says why; a backend that cannot read
 * certificates asks for the chain.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "hsm_client_data.h"
#include "p11_wrap.h"
#include "provhsm/provhsm.h"
#include "softhsm_fixture.h"

static struct {
    provhsm_test_softhsm hsm;
    provhsm_test_p11 direct;
    char config[320];
} G;

static int write_config(const char *path, const char *backend)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f,
            "[store]\npath = %s/store-%s\n[x509]\nbackend = %s\n[pkcs11]\nmodule = %s\n"
            "token = pkcs11:token=%s\npin_env = %s\n",
            G.hsm.dir, backend, backend, G.hsm.module, G.hsm.label, PROVHSM_TEST_PIN_ENV);
    fclose(f);
    chmod(path, 0600);
    setenv("PROVHSM_CONFIG", path, 1);
    return 0;
}

static int group_teardown(void **unused)
{
    (void)unused;
    provhsm_test_p11_close(&G.direct);
    hsm_client_x509_deinit();
    provhsm_test_softhsm_stop(&G.hsm);
    memset(&G, 0, sizeof(G));
    return 0;
}

static int group_setup(void **unused)
{
    (void)unused;
    provhsm_test_p11_log_capture();
    unsetenv("PROVHSM_STORE");
    if (provhsm_test_softhsm_start(&G.hsm, "secure-element") == 0) {
        snprintf(G.config, sizeof(G.config), "%s/provhsm.conf", G.hsm.dir);
        if (write_config(G.config, "pkcs11") == 0 && provhsm_store_init() == PROVHSM_OK &&
            hsm_client_x509_init() == 0 && provhsm_test_p11_open(&G.hsm, &G.direct) == 0)
            return 0;
    }
    fprintf(stderr, "setup failed\n");
    group_teardown(NULL);
    return -1;
}

/* ---- helpers ------------------------------------------------------------------------ */

/* A key pair made on the token "at the factory"; its public key as the module gives it. */
static EVP_PKEY *factory_key(const uint8_t *id, size_t id_len, const char *label)
{
    assert_int_equal(provhsm_test_p11_make_key(&G.direct, 0, 0, id, id_len, label), 0);
    EVP_PKEY *pub = provhsm_test_p11_public_key(&G.direct, id, id_len);
    assert_non_null(pub);
    return pub;
}

static void key_uri(const char *label, char *uri, size_t len)
{
    snprintf(uri, len, "pkcs11:token=%s;object=%s;type=private", G.hsm.label, label);
}

static EVP_PKEY *software_key(void)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(key);
    return key;
}

/* The stored chain and common name, as the SDK's X.509 table gives them (NULL: none). */
static char *sdk_certificate(char **cn_out)
{
    const HSM_CLIENT_X509_INTERFACE *t = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = t->hsm_client_x509_create();
    char *pem = NULL;
    if (cn_out != NULL)
        *cn_out = NULL;
    if (h != NULL) {
        pem = t->hsm_client_get_cert(h);
        if (cn_out != NULL)
            *cn_out = t->hsm_client_get_common_name(h);
        t->hsm_client_x509_destroy(h);
    }
    return pem;
}

static char *sdk_alias_key(void)
{
    const HSM_CLIENT_X509_INTERFACE *t = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = t->hsm_client_x509_create();
    assert_non_null(h);
    char *pem = t->hsm_client_get_key(h);
    t->hsm_client_x509_destroy(h);
    assert_non_null(pem);
    return pem;
}

/* Signs with the alias key loaded as the SDK's TLS layer loads it; verifies with `cert`. */
static void alias_key_signs_for(const char *key_pem, X509 *cert)
{
    BIO *bio = BIO_new_mem_buf(key_pem, -1);
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    assert_non_null(key);
    static const unsigned char msg[] = "handshake transcript";
    unsigned char sig[128];
    size_t sig_len = sizeof(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    uint64_t calls = provhsm_p11_calls_total();
    assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key), 1);
    assert_int_equal(EVP_DigestSign(md, sig, &sig_len, msg, sizeof(msg)), 1);
    assert_true(provhsm_p11_calls_total() - calls >= 2); /* C_SignInit + C_Sign on the token */
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);

    md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, X509_get0_pubkey(cert)), 1);
    assert_int_equal(EVP_DigestVerify(md, sig, sig_len, msg, sizeof(msg)), 1);
    EVP_MD_CTX_free(md);
}

/* ---- tests -------------------------------------------------------------------------- */

/* No certificate for the key on the token: not found, the chain asked for, nothing stored. */
static void test_no_certificate_on_token(void **unused)
{
    (void)unused;
    static const uint8_t id[] = {0x0b, 0xa4};
    EVP_PKEY *pub = factory_key(id, sizeof(id), "bare");
    char uri[160];
    key_uri("bare", uri, sizeof(uri));
    provhsm_test_p11_log_clear();
    assert_int_equal(provhsm_x509_adopt(uri, NULL, 0), PROVHSM_E_NOT_FOUND);
    assert_true(provhsm_test_p11_log_seen("holds no certificate for the key"));
    assert_true(provhsm_test_p11_log_seen("--cert"));
    char *cn = NULL, *pem = sdk_certificate(&cn);
    assert_null(pem);
    free(cn);
    EVP_PKEY_free(pub);
}

/* Only another key's certificate on the token (with that key's id): it is not taken. */
static void test_other_keys_certificate_not_taken(void **unused)
{
    (void)unused;
    static const uint8_t id[] = {0x10}, owner_id[] = {0x20};
    EVP_PKEY *pub = factory_key(id, sizeof(id), "lonely");
    EVP_PKEY *owner = factory_key(owner_id, sizeof(owner_id), "owner");
    EVP_PKEY *ca_key = software_key();
    X509 *ca = provhsm_test_make_cert("Other CA", ca_key, 1, NULL, ca_key);
    X509 *cert = provhsm_test_make_cert("owner-device", owner, 0, ca, ca_key);
    assert_non_null(cert);
    assert_int_equal(provhsm_test_p11_put_cert(&G.direct, cert, owner_id, 1, "owner"), 0);
    assert_int_equal(provhsm_test_p11_put_cert(&G.direct, ca, NULL, 0, "Other CA"), 0);
    char uri[160];
    key_uri("lonely", uri, sizeof(uri));
    provhsm_test_p11_log_clear();
    assert_int_equal(provhsm_x509_adopt(uri, NULL, 0), PROVHSM_E_NOT_FOUND);
    assert_true(provhsm_test_p11_log_seen("holds no certificate for the key"));
    char *cn = NULL, *pem = sdk_certificate(&cn);
    assert_null(pem);
    free(cn);
    X509_free(ca);
    X509_free(cert);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(owner);
    EVP_PKEY_free(ca_key);
}

/* A backend that cannot read certificates from its device asks for the chain. */
static void test_backend_without_certificates_asks_for_chain(void **unused)
{
    (void)unused;
    char path[320];
    snprintf(path, sizeof(path), "%s/testkey.conf", G.hsm.dir);
    assert_int_equal(write_config(path, "testkey"), 0);
    provhsm_test_p11_log_clear();
    provhsm_err err = provhsm_x509_adopt("testkey:0", NULL, 0);
    setenv("PROVHSM_CONFIG", G.config, 1);
    assert_int_equal(err, PROVHSM_E_UNSUPPORTED);
    assert_true(provhsm_test_p11_log_seen("cannot read the key's certificate"));
    assert_true(provhsm_test_p11_log_seen("--cert"));
}

/*
 * Key, leaf (with the key's id) and the CA's certificate on the token, the CA's put first:
 * adopted without a chain file, the SDK's table gives leaf then CA, the CN is the leaf's,
 * and the alias key signs on the token with the leaf's key.
 */
static void test_adopt_chain_from_token(void **unused)
{
    (void)unused;
    static const uint8_t id[] = {0x5e, 0xc0, 0x01};
    EVP_PKEY *pub = factory_key(id, sizeof(id), "se");
    EVP_PKEY *ca_key = software_key();
    X509 *ca = provhsm_test_make_cert("Factory CA", ca_key, 1, NULL, ca_key);
    X509 *leaf = provhsm_test_make_cert("se-device", pub, 0, ca, ca_key);
    assert_non_null(leaf);
    assert_int_equal(provhsm_test_p11_put_cert(&G.direct, ca, NULL, 0, "Factory CA"), 0);
    assert_int_equal(provhsm_test_p11_put_cert(&G.direct, leaf, id, sizeof(id), "se"), 0);
    char uri[160];
    key_uri("se", uri, sizeof(uri));

    assert_int_equal(provhsm_x509_adopt(uri, NULL, 0), PROVHSM_OK);

    char *cn = NULL, *pem = sdk_certificate(&cn);
    assert_non_null(pem);
    assert_non_null(cn);
    assert_string_equal(cn, "se-device");
    STACK_OF(X509) *chain = provhsm_test_pem_chain(pem);
    assert_non_null(chain);
    assert_int_equal(sk_X509_num(chain), 2);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 0), leaf), 0);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 1), ca), 0);
    char *key_pem = sdk_alias_key();
    assert_null(strstr(key_pem, "PRIVATE KEY"));
    alias_key_signs_for(key_pem, leaf);
    char *line = NULL;
    assert_int_equal(provhsm_x509_key_location(&line), PROVHSM_OK);
    assert_non_null(strstr(line, "object se"));
    free(line);
    free(key_pem);
    sk_X509_pop_free(chain, X509_free);
    free(pem);
    free(cn);
    X509_free(ca);
    X509_free(leaf);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(ca_key);
}

int main(void)
{
    if (!provhsm_test_softhsm_available()) {
        fprintf(stderr, "SoftHSM2 (module and softhsm2-util) not installed: skipped\n");
        return PROVHSM_TEST_SKIP;
    }
    /* the failures first: each must leave the store without an identity */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_certificate_on_token),
        cmocka_unit_test(test_other_keys_certificate_not_taken),
        cmocka_unit_test(test_backend_without_certificates_asks_for_chain),
        cmocka_unit_test(test_adopt_chain_from_token),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
