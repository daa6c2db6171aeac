/*
 * The X.509 device key in the TPM end to end, as a device uses it ([x509] backend = tpm,
 * on a private swtpm): the store made, `x509 generate` (the key made in the TPM, the CSR
 * signed in the TPM through the provider), the certificate imported, then
 * hsm_client_x509_init and the SDK's X.509 table: its certificate and alias key, loaded
 * by the harness's client as the SDK's OpenSSL TLS layer does, for TLS 1.3 and 1.2
 * client-authenticated handshakes. The key's authorisation value comes back from the
 * store. Then a key made by tpm2-tools is adopted with its certificate and used the same
 * way. Skips (77) without swtpm (and the adoption without tpm2-tools).
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

#include "backend.h"
#include "hsm_client_data.h"
#include "identity_fixture.h"
#include "keyref.h"
#include "provhsm/provhsm.h"
#include "swtpm_fixture.h"
#include "tls_harness.h"
#include "tpm_esys.h"

static struct {
    provhsm_test_swtpm swtpm;
    char dir[64];
    tls_ca *ca;
    tls_server *srv;
} G;

static int write_config(void)
{
    char tpm_section[256];
    snprintf(tpm_section, sizeof(tpm_section), "[tpm]\ntcti = %s\n", G.swtpm.tcti);
    if (identity_config_write(G.dir, "tpm", tpm_section) != 0)
        return -1;
    unsetenv("PROVHSM_TCTI");
    return provhsm_store_init() == PROVHSM_OK ? 0 : -1;
}

static int group_teardown(void **unused)
{
    (void)unused;
    tls_server_stop(G.srv);
    tls_ca_free(G.ca);
    provhsm_test_swtpm_stop(&G.swtpm);
    provhsm_test_remove_tree(G.dir);
    return 0;
}

/* A setup that fails is not followed by the teardown: clean up here. */
static int group_setup(void **unused)
{
    provhsm_test_log_capture();
    if (provhsm_test_swtpm_start(&G.swtpm, NULL) == 0 &&
        provhsm_test_workdir_make(G.dir, sizeof(G.dir), "tpmsdk") == 0 && write_config() == 0 &&
        (G.ca = tls_ca_new("TPM SDK test CA")) != NULL && (G.srv = tls_server_start(G.ca)) != NULL)
        return 0;
    fprintf(stderr, "setup failed\n");
    (void)group_teardown(unused);
    return -1;
}

/* TLS 1.2 and 1.3, a client each: after the client's first handshake one command each. */
static void handshakes_sign_in_the_tpm(const char *cert_pem, const char *key_pem)
{
    char err[1024];
    for (int version = TLS1_2_VERSION; version <= TLS1_3_VERSION; version++) {
        tls_client *cl = tls_client_new(G.srv, cert_pem, key_pem, version, err, sizeof(err));
        if (cl == NULL)
            fail_msg("TLS %x client: %s", version, err);
        if (tls_client_handshake(cl, err, sizeof(err)) != 0)
            fail_msg("TLS %x: %s", version, err);
        uint64_t before = provhsm_tpm_commands_total();
        if (tls_client_handshakes(cl, 5, err, sizeof(err)) != 0)
            fail_msg("TLS %x: %s", version, err);
        uint64_t cost = provhsm_tpm_commands_total() - before;
        printf("# TLS %x: 5 handshakes, %llu TPM commands\n", version, (unsigned long long)cost);
        assert_int_equal(cost, 5);
        tls_client_free(cl);
    }
}

/* hsm_client_x509_init, then the SDK's certificate and alias key (a reference, not a
 * key) sign TLS handshakes in the TPM; hsm_client_x509_deinit. */
static void sdk_identity_handshakes_sign_in_the_tpm(void)
{
    char *cert_pem = NULL, *key_pem = NULL;
    assert_int_equal(hsm_client_x509_init(), 0);
    assert_int_equal(identity_sdk_strings(&cert_pem, &key_pem), 0);
    assert_null(strstr(key_pem, "PRIVATE KEY"));
    assert_non_null(strstr(key_pem, PROVHSM_KEYREF_PEM_LABEL));
    handshakes_sign_in_the_tpm(cert_pem, key_pem);
    hsm_client_x509_deinit();
    free(cert_pem);
    free(key_pem);
}

static void test_generate_import_handshake(void **unused)
{
    (void)unused;
    char *csr = NULL, *where = NULL;
    uint64_t before = provhsm_tpm_commands_total();
    assert_int_equal(provhsm_x509_generate("tpm-device", PROVHSM_KEY_EC_P256, 0, 0, &csr),
                     PROVHSM_OK);
    printf("# x509 generate (SRK made, key made and persisted, CSR signed): %llu TPM commands\n",
           (unsigned long long)(provhsm_tpm_commands_total() - before));
    /* the CSR verifies with the key it carries (signed in the TPM) */
    assert_int_equal(identity_import_cert_for_csr(G.ca, csr), 0);

    assert_int_equal(provhsm_x509_key_location(&where), PROVHSM_OK);
    printf("# key location: %s\n", where);
    assert_non_null(strstr(where, "0x81000110"));
    assert_non_null(strstr(where, "fixedTPM: cannot leave this TPM"));

    sdk_identity_handshakes_sign_in_the_tpm();
    free(where);
    free(csr);
}

static void test_adopt_tools_key(void **unused)
{
    (void)unused;
    if (!provhsm_test_programs_available("tpm2_create", "tpm2_load", "tpm2_evictcontrol",
                                         "tpm2_flushcontext", NULL))
        skip();
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "set -e; cd '%s'; export TPM2TOOLS_TCTI='%s';"
             "tpm2_create -Q -C 0x81000001 -G ecc256"
             " -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign'"
             " -u ec.pub -r ec.priv;"
             "tpm2_load -Q -C 0x81000001 -u ec.pub -r ec.priv -c ec.ctx;"
             "tpm2_evictcontrol -Q -C o -c ec.ctx 0x81000120; tpm2_flushcontext -t",
             G.swtpm.dir, G.swtpm.tcti);
    assert_int_equal(system(cmd), 0);

    /* the factory's certificate for that key: issued by the test CA for its public key */
    provhsm_config cfg;
    provhsm_test_tpm_config(&cfg, G.swtpm.tcti);
    provhsm_keyref ref = {0};
    char *secret = NULL, *leaf = NULL, *where = NULL;
    assert_int_equal(provhsm_backend_tpm.key_adopt(&cfg, "0x81000120", &ref, &secret), PROVHSM_OK);
    assert_int_equal(identity_issue_for_keyref(G.ca, &ref, "factory-device", &leaf), 0);
    provhsm_keyref_clear(&ref);

    assert_int_equal(provhsm_x509_adopt("0x81000120", leaf, 1), PROVHSM_OK);
    assert_int_equal(provhsm_x509_key_location(&where), PROVHSM_OK);
    printf("# key location: %s\n", where);
    assert_non_null(strstr(where, "0x81000120"));

    sdk_identity_handshakes_sign_in_the_tpm();
    free(where);
    free(leaf);
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_import_handshake),
        cmocka_unit_test(test_adopt_tools_key),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
