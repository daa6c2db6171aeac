/*
 * The provider end to end through the SDK's X.509 table, with a key of the test-only
 * "testkey" backend ([x509] backend = testkey): the store made, `x509 generate` (the key
 * made by the backend, the CSR or self-signed certificate signed through the provider),
 * the certificate imported, then hsm_client_x509_init and the table's certificate and
 * alias key, loaded by the harness's client as the SDK's OpenSSL TLS layer does, for TLS
 * 1.3 and 1.2 client-authenticated handshakes. The key's secret comes back from the store
 * (hwkey.c), as a TPM key's authorisation value does.
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

#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "backend_testkey.h"
#include "hsm_client_data.h"
#include "identity_fixture.h"
#include "keyref.h"
#include "provhsm/provhsm.h"
#include "tls_harness.h"

static identity_tls_env G;

static int group_setup(void **unused)
{
    (void)unused;
    if (provhsm_test_workdir_make(G.dir, sizeof(G.dir), "provsdk") != 0 ||
        identity_config_write(G.dir, "testkey", NULL) != 0 || provhsm_store_init() != PROVHSM_OK)
        return -1;
    G.ca = tls_ca_new("provider SDK test CA");
    G.srv = tls_server_start(G.ca);
    return G.ca != NULL && G.srv != NULL ? 0 : -1;
}

static int group_teardown(void **unused)
{
    (void)unused;
    identity_tls_env_clear(&G);
    return 0;
}

static void handshakes_sign_in_the_backend(const char *cert_pem, const char *key_pem)
{
    char err[1024];
    for (int version = TLS1_2_VERSION; version <= TLS1_3_VERSION; version++) {
        unsigned long signs = provhsm_testkey_test_signs();
        if (tls_handshake(G.srv, cert_pem, key_pem, version, err, sizeof(err)) != 0)
            fail_msg("TLS %x: %s", version, err);
        assert_int_equal(provhsm_testkey_test_signs(), signs + 1);
    }
}

static void test_csr_flow(void **unused)
{
    (void)unused;
    char *csr = NULL, *cert_pem = NULL, *key_pem = NULL;
    unsigned long signs = provhsm_testkey_test_signs();
    assert_int_equal(provhsm_x509_generate("sdk-device", PROVHSM_KEY_EC_P256, 0, 1, &csr),
                     PROVHSM_OK);
    assert_int_equal(provhsm_testkey_test_signs(), signs + 1); /* the CSR, through us */
    assert_int_equal(identity_import_cert_for_csr(G.ca, csr), 0);

    assert_int_equal(hsm_client_x509_init(), 0);
    assert_int_equal(identity_sdk_strings(&cert_pem, &key_pem), 0);
    assert_null(strstr(key_pem, "PRIVATE KEY"));
    assert_non_null(strstr(key_pem, PROVHSM_KEYREF_PEM_LABEL));
    handshakes_sign_in_the_backend(cert_pem, key_pem);
    /* a connection set up before the last deinit keeps signing after it */
    char err[1024];
    tls_client *cl = tls_client_new(G.srv, cert_pem, key_pem, TLS1_3_VERSION, err, sizeof(err));
    assert_non_null(cl);
    hsm_client_x509_deinit();
    signs = provhsm_testkey_test_signs();
    if (tls_client_handshakes(cl, 2, err, sizeof(err)) != 0)
        fail_msg("after deinit: %s", err);
    assert_int_equal(provhsm_testkey_test_signs(), signs + 2);
    tls_client_free(cl);
    free(cert_pem);
    free(key_pem);
    free(csr);
}

static void test_self_signed_flow_p384(void **unused)
{
    (void)unused;
    char *self = NULL, *leaf = NULL, *cert_pem = NULL, *key_pem = NULL;
    assert_int_equal(provhsm_x509_generate("sdk-device-384", PROVHSM_KEY_EC_P384, 30, 1, &self),
                     PROVHSM_OK);
    /* the self-signed certificate verifies with its own key */
    BIO *bio = BIO_new_mem_buf(self, -1);
    X509 *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    assert_non_null(cert);
    EVP_PKEY *pub = X509_get_pubkey(cert);
    assert_int_equal(EVP_PKEY_get_bits(pub), 384);
    assert_int_equal(X509_verify(cert, pub), 1);
    EVP_PKEY_free(pub);
    X509_free(cert);

    assert_int_equal(hsm_client_x509_init(), 0);
    assert_int_equal(identity_sdk_strings(&cert_pem, &key_pem), 0);
    /* the stored chain is the self-signed certificate: the test CA re-issues it */
    assert_int_equal(tls_ca_issue_from_cert(G.ca, cert_pem, &leaf), 0);
    handshakes_sign_in_the_backend(leaf, key_pem);
    hsm_client_x509_deinit();
    free(cert_pem);
    free(key_pem);
    free(self);
    free(leaf);
}

static void test_rsa_refused(void **unused)
{
    (void)unused;
    char *pem = NULL;
    assert_int_equal(provhsm_x509_generate("rsa-device", PROVHSM_KEY_RSA_2048, 30, 1, &pem),
                     PROVHSM_E_UNSUPPORTED);
    assert_null(pem);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_csr_flow),
        cmocka_unit_test(test_self_signed_flow_p384),
        cmocka_unit_test(test_rsa_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
