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
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "backend_testkey.h"
#include "hsm_client_data.h"
#include "keyref.h"
#include "provider/provider.h"
#include "provhsm/provhsm.h"
#include "tls_harness.h"

static struct {
    char dir[64];
    tls_ca *ca;
    tls_server *srv;
} G;

static int write_config(void)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/provhsm.conf", G.dir);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "[store]\npath = %s/store\n[x509]\nbackend = software\n", G.dir);
    fclose(f);
    chmod(path, 0600);
    setenv("PROVHSM_CONFIG", path, 1);
    unsetenv("PROVHSM_STORE");
    return 0;
}

/* The store and a self-signed software identity, made by another process as the tool
 * would: this process has not used OpenSSL yet when the first test starts. */
static int provision_in_another_process(void)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        char *self_signed = NULL;
        int ok = provhsm_store_init() == PROVHSM_OK &&
                 provhsm_x509_generate("first-device", PROVHSM_KEY_EC_P256, 30, 1, &self_signed) ==
                     PROVHSM_OK;
        free(self_signed);
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0
                                                                                            : -1;
}

static int group_setup(void **unused)
{
    (void)unused;
    snprintf(G.dir, sizeof(G.dir), "/tmp/provhsm-swtls-XXXXXX");
    if (mkdtemp(G.dir) == NULL || write_config() != 0 || provision_in_another_process() != 0)
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
    tls_server_stop(G.srv);
    tls_ca_free(G.ca);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", G.dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", G.dir);
    return 0;
}

static const char *key_provider(const EVP_PKEY *key)
{
    const OSSL_PROVIDER *prov = key != NULL ? EVP_PKEY_get0_provider(key) : NULL;
    return prov != NULL ? OSSL_PROVIDER_get0_name(prov) : "(none)";
}

/* The certificate and alias key as the SDK gets them, after hsm_client_x509_init. */
static void sdk_strings(char **cert_pem, char **key_pem)
{
    const HSM_CLIENT_X509_INTERFACE *x509 = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE handle = x509->hsm_client_x509_create();
    assert_non_null(handle);
    *cert_pem = x509->hsm_client_get_cert(handle);
    *key_pem = x509->hsm_client_get_key(handle);
    assert_non_null(*cert_pem);
    assert_non_null(*key_pem);
    x509->hsm_client_x509_destroy(handle);
}

/* TLS 1.3 and 1.2 with the SDK's strings: the key on the default provider, the client
 * certificate verified by the server, no signature through our provider's device path.
 * With reissue, the stored (self-signed) certificate is re-issued by the test CA. */
static void handshakes_on_the_default_provider(const char *cn, int reissue)
{
    char *cert_pem = NULL, *key_pem = NULL, *leaf = NULL, err[1024], seen_cn[64];
    assert_int_equal(hsm_client_x509_init(), 0);
    assert_int_equal(OSSL_PROVIDER_available(NULL, PROVHSM_PROVIDER_NAME), 1);
    sdk_strings(&cert_pem, &key_pem);
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
        assert_string_equal(key_provider(SSL_CTX_get0_privatekey(tls_client_ctx(cl))), "default");
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
    char *csr = NULL, *leaf = NULL;
    int expired = 1;
    assert_int_equal(provhsm_x509_generate("software-device", PROVHSM_KEY_EC_P256, 0, 1, &csr),
                     PROVHSM_OK);
    assert_int_equal(tls_ca_issue_from_csr(G.ca, csr, &leaf), 0);
    assert_int_equal(provhsm_x509_import(leaf, NULL, &expired), PROVHSM_OK);
    assert_int_equal(expired, 0);
    handshakes_on_the_default_provider("software-device", 0);
    free(csr);
    free(leaf);
}

/* `x509 import --cert --key` of a PKCS#8 key made elsewhere */
static void test_imported_identity(void **unused)
{
    (void)unused;
    peers();
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(key);
    assert_string_equal(key_provider(key), "default");
    char *leaf = NULL, *data = NULL;
    assert_int_equal(tls_ca_issue(G.ca, key, "imported-device", &leaf), 0);
    BIO *bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL), 1);
    long len = BIO_get_mem_data(bio, &data);
    char *key_pem = calloc(1, (size_t)len + 1);
    assert_non_null(key_pem);
    memcpy(key_pem, data, (size_t)len);
    BIO_free(bio);
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
