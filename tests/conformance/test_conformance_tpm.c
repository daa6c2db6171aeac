/*
 * TPM conformance: a whole provisioning driven through the SDK's TPM table exactly as
 * prov_device_ll_client and prov_auth_client drive it, on a fresh swtpm started by the
 * fixture: init (twice, as the SDK does), create, EK and SRK (registration id the SDK's
 * way), activate the service's blob, sign the SAS string, the second activation that
 * comes with the assignment, sign again, and a new handle (as after a reboot) signing
 * with the persisted key. Every signature is checked against the service's copy of the
 * key with OpenSSL; every buffer is released with free(). Skipped (77) without swtpm.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "dps_service.h"
#include "hsm_client_data.h"
#include "provhsm/provhsm.h"
#include "swtpm_fixture.h"

/* initialize_hsm_system and deinitialize_hsm_system: tests/common/sdk_hsm_system.c */

static provhsm_test_swtpm tpm;

/* What the SDK signs for the provisioning service: "<url-encoded scope>\n<expiry>". */
static void sas_payload(const char *registration_id, char *out, size_t len)
{
    snprintf(out, len, "0ne00ABC123%%2fregistrations%%2f%s\n1767225600", registration_id);
}

static void expect_hmac(const unsigned char *sig, size_t sig_len, const uint8_t *key,
                        const char *payload)
{
    unsigned char want[32];
    size_t want_len = 0;
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, 32,
                              (const unsigned char *)payload, strlen(payload), want, sizeof(want),
                              &want_len));
    assert_int_equal(sig_len, 32);
    assert_memory_equal(sig, want, 32);
}

static void activate_with_new_key(const HSM_CLIENT_TPM_INTERFACE *t, HSM_CLIENT_HANDLE h,
                                  const unsigned char *ek, size_t ek_len, uint8_t key[32])
{
    unsigned char *srk = NULL, *blob = NULL;
    size_t srk_len = 0, blob_len = 0;
    assert_int_equal(t->hsm_client_get_srk(h, &srk, &srk_len), 0);
    assert_int_equal(RAND_bytes(key, 32), 1);
    assert_int_equal(
        provhsm_test_dps_make_blob(ek, ek_len, srk, srk_len, key, 32, &blob, &blob_len), 0);
    assert_int_equal(t->hsm_client_activate_identity_key(h, blob, blob_len), 0);
    free(blob);
    free(srk);
}

static void whole_provisioning(void **state)
{
    (void)state;
    uint8_t key1[32], key2[32];
    char payload[256];
    unsigned char *ek = NULL, *sig = NULL;
    size_t ek_len = 0, sig_len = 0;

    /* prov_dev_security_init and the IoT Hub security init */
    assert_int_equal(initialize_hsm_system(), 0);
    assert_int_equal(initialize_hsm_system(), 0);
    const HSM_CLIENT_TPM_INTERFACE *t = hsm_client_tpm_interface();
    void (*const *slots)(void) = (void (*const *)(void))t;
    for (size_t i = 0; i < sizeof(*t) / sizeof(void (*)(void)); i++)
        assert_non_null(slots[i]);

    HSM_CLIENT_HANDLE h = t->hsm_client_tpm_create();
    assert_non_null(h);
    assert_int_equal(t->hsm_client_get_ek(h, &ek, &ek_len), 0);
    char *regid = provhsm_test_registration_id(ek, ek_len);
    assert_int_equal(strlen(regid), 52);

    /* before activation there is nothing to sign with */
    sas_payload(regid, payload, sizeof(payload));
    assert_int_not_equal(t->hsm_client_sign_with_identity(h, (const unsigned char *)payload,
                                                          strlen(payload), &sig, &sig_len),
                         0);
    assert_null(sig);

    /* 401 with authenticationKey: activate, then sign the SAS string */
    activate_with_new_key(t, h, ek, ek_len, key1);
    assert_int_equal(t->hsm_client_sign_with_identity(h, (const unsigned char *)payload,
                                                      strlen(payload), &sig, &sig_len),
                     0);
    expect_hmac(sig, sig_len, key1, payload);
    free(sig);
    sig = NULL;

    /* the assignment carries a second authenticationKey: activate again */
    activate_with_new_key(t, h, ek, ek_len, key2);
    assert_int_equal(t->hsm_client_sign_with_identity(h, (const unsigned char *)payload,
                                                      strlen(payload), &sig, &sig_len),
                     0);
    expect_hmac(sig, sig_len, key2, payload);
    free(sig);
    sig = NULL;
    t->hsm_client_tpm_destroy(h);

    /* the IoT Hub connection, later or after a reboot: a new handle, the persisted key */
    h = t->hsm_client_tpm_create();
    assert_non_null(h);
    const char *hub = "myhub.azure-devices.net/devices/dev\n1767225600";
    assert_int_equal(t->hsm_client_sign_with_identity(h, (const unsigned char *)hub, strlen(hub),
                                                      &sig, &sig_len),
                     0);
    expect_hmac(sig, sig_len, key2, hub);
    free(sig);
    t->hsm_client_tpm_destroy(h);

    free(regid);
    free(ek);
    deinitialize_hsm_system();
    deinitialize_hsm_system();
}

static int setup(void **state)
{
    (void)state;
    if (provhsm_test_swtpm_start(&tpm, NULL) != 0)
        return -1;
    setenv("PROVHSM_CONFIG", "/dev/null", 1);
    setenv("PROVHSM_STORE", "/nonexistent/provhsm-conformance-tpm", 1);
    setenv("PROVHSM_TCTI", tpm.tcti, 1);
    setenv("TSS2_LOG", "all+none", 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    provhsm_test_swtpm_stop(&tpm);
    return 0;
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "swtpm is not installed: skipped\n");
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(whole_provisioning),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
