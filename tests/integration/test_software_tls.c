/*
 * A software X.509 identity ([x509] backend = software: the PKCS#8 key kept in the
 * encrypted store) through the SDK's X.509 table, with the library's OpenSSL provider
 * loaded by hsm_client_x509_init: the alias key is a plain PKCS#8 PEM that OpenSSL's
 * default provider decodes and signs with, and TLS 1.3 and 1.2 client-authenticated
 * handshakes (tls_harness.h: the client loads certificate and key as the SDK's OpenSSL TLS
 * layer does) are verified by a server that requires the client certificate. Our provider
 * must not claim the key nor take part in its signatures.
 * The identity is made the ways the tool makes one: `x509 generate --self-signed` (in
 * another process, so that hsm_client_x509_init is the test process's first use of
 * OpenSSL, as in an application that starts the SDK first), `x509 generate` with a CSR
 * then `x509 import --cert`, and `x509 import --cert --key` of a key made elsewhere.
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

#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "backend_testkey.h"
#include "hsm_client_data.h"
#include "identity_fixture.h"
#include "keyref.h"
#include "provider/provider.h"
#include "provhsm/provhsm.h"
#include "tls_harness.h"

static identity_tls_env G;

static int group_setup(void **unused)
{
    (void)unused;
    /* the store and a self-signed identity, made by another process as the tool would:
     * this process has not used OpenSSL yet when the first test starts */
    if (provhsm_test_workdir_make(G.dir, sizeof(G.dir), "swtls") != 0 ||
        identity_config_write(G.dir, "software", NULL) != 0 ||
        identity_generate_in_another_process("first-device") != 0)
        return -1;
    return 0;
}

/* The test CA and the server that verifies client certificates, made on first need. */
static void peers(void)
{
    if (G.ca == NULL)
        G.ca = tls_ca_new("software identity test CA");
    assert_non_null(G.ca);
    if (G.srv == NULL)
        G.srv = tls_server_start(G.ca);
    assert_non_null(G.srv);
}

static int group_teardown(void **unused)
{
    (void)unused;
    identity_tls_env_clear(&G);
    return 0;
}

/* TLS 1.3 and 1.2 with the SDK's strings: the key on the default provider, the client
 * certificate verified by the server, no signature through our provider's device path.
 * With reissue, the stored (self-signed) certificate is re-issued by the test CA. */
static void handshakes_on_the_default_provider(const char *cn, int reissue)
{
    char *cert_pem = NULL, *key_pem = NULL, *leaf = NULL, err[1024], seen_cn[64];
    assert_int_equal(hsm_client_x509_init(), 0);
    assert_int_equal(OSSL_PROVIDER_available(NULL, PROVHSM_PROVIDER_NAME), 1);
    assert_int_equal(identity_sdk_strings(&cert_pem, &key_pem), 0);
    assert_non_null(strstr(key_pem, "-----BEGIN PRIVATE KEY-----"));
    assert_null(strstr(key_pem, PROVHSM_KEYREF_PEM_LABEL));
    peers();
    if (reissue) {
        assert_int_equal(tls_ca_issue_from_cert(G.ca, cert_pem, &leaf), 0);
        free(cert_pem);
        cert_pem = leaf;
    }
    for (int version = TLS1_3_VERSION; version >= TLS1_2_VERSION; version--) {
        tls_client *cl = tls_client_new(G.srv, cert_pem, key_pem, version, err, sizeof(err));
        if (cl == NULL)
            fail_msg("TLS %x client: %s", version, err);
        assert_string_equal(tls_key_provider_name(SSL_CTX_get0_privatekey(tls_client_ctx(cl))),
                            "default");
        unsigned long verified = tls_server_verified_handshakes(G.srv);
        unsigned long device_signs = provhsm_testkey_test_signs();
        if (tls_client_handshakes(cl, 2, err, sizeof(err)) != 0)
            fail_msg("TLS %x handshake: %s", version, err);
        assert_int_equal(tls_server_verified_handshakes(G.srv), verified + 2);
        assert_int_equal(provhsm_testkey_test_signs(), device_signs);
        tls_server_last_client_cn(G.srv, seen_cn, sizeof(seen_cn));
        assert_string_equal(seen_cn, cn);
        tls_client_free(cl);
    }
    hsm_client_x509_deinit();
    free(cert_pem);
    free(key_pem);
}

/* `x509 generate --self-signed` by another process; here the SDK starts first */
static void test_self_signed_identity_sdk_first(void **unused)
{
    (void)unused;
    handshakes_on_the_default_provider("first-device", 1);
}

/* `x509 generate --csr` in the store, the CA's certificate imported */
static void test_generated_identity(void **unused)
{
    (void)unused;
    peers();
    char *csr = NULL;
    assert_int_equal(provhsm_x509_generate("software-device", PROVHSM_KEY_EC_P256, 0, 1, &csr),
                     PROVHSM_OK);
    assert_int_equal(identity_import_cert_for_csr(G.ca, csr), 0);
    handshakes_on_the_default_provider("software-device", 0);
    free(csr);
}

/* `x509 import --cert --key` of a PKCS#8 key made elsewhere */
static void test_imported_identity(void **unused)
{
    (void)unused;
    peers();
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(key);
    assert_string_equal(tls_key_provider_name(key), "default");
    char *leaf = NULL;
    assert_int_equal(tls_ca_issue(G.ca, key, "imported-device", &leaf), 0);
    char *key_pem = tls_key_to_pkcs8_pem(key);
    assert_non_null(key_pem);
    int expired = 1;
    assert_int_equal(provhsm_x509_import(leaf, key_pem, &expired), PROVHSM_OK);
    assert_int_equal(expired, 0);
    handshakes_on_the_default_provider("imported-device", 0);
    free(key_pem);
    free(leaf);
    EVP_PKEY_free(key);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_self_signed_identity_sdk_first),
        cmocka_unit_test(test_generated_identity),
        cmocka_unit_test(test_imported_identity),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
