/*
 * A program linked the way the Azure IoT C SDK links a custom HSM: nothing but the
 * installed archive and the dependency list from hsm_custom_lib (or, in the other
 * consumers, provhsm::provhsm or pkg-config). It defines initialize_hsm_system /
 * deinitialize_hsm_system itself, as the SDK's hsm_client_data.c does, so a duplicate in
 * the archive fails the link. Run by tests/link/run_link_test.sh with PROVHSM_STORE
 * pointing at a directory that does not exist yet and PROVHSM_CONFIG at an empty file.
 *
 * Checks: init succeeds with nothing configured; the three tables are complete; the empty
 * store yields no identity (X.509 and TPM create fail; the key table fails at
 * set_symmetric_key_info(NULL, NULL) or at create, but takes an application's own key);
 * after the public API stores a symmetric key and a self-signed X.509 identity, both tables
 * hand them back. Exit 0 on success.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hsm_client_data.h"
#include "provhsm/provhsm.h"

#define APP_REG_ID "link-test-app-device"
#define REG_ID     "link-test-device"
#define X509_CN    "link-test-x509"
/* base64 of the 32 bytes 0x00..0x1f */
#define SYMM_KEY "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            printf("ok   ");                                                                       \
        } else {                                                                                   \
            printf("FAIL ");                                                                       \
            failures++;                                                                            \
        }                                                                                          \
        printf(__VA_ARGS__);                                                                       \
        printf("\n");                                                                              \
    } while (0)

/* The SDK's hsm_client_data.c, reduced to what it does for a custom HSM. */
int initialize_hsm_system(void)
{
    if (hsm_client_x509_init() != 0) {
        return __LINE__;
    }
    if (hsm_client_tpm_init() != 0) {
        hsm_client_x509_deinit();
        return __LINE__;
    }
    return 0;
}

void deinitialize_hsm_system(void)
{
    hsm_client_tpm_deinit();
    hsm_client_x509_deinit();
}

static void check_tables(const HSM_CLIENT_X509_INTERFACE *x509, const HSM_CLIENT_TPM_INTERFACE *tpm,
                         const HSM_CLIENT_KEY_INTERFACE *key)
{
    CHECK(x509 != NULL, "hsm_client_x509_interface() is not NULL");
    CHECK(tpm != NULL, "hsm_client_tpm_interface() is not NULL");
    CHECK(key != NULL, "hsm_client_key_interface() is not NULL");
    if (x509 != NULL) {
        CHECK(x509->hsm_client_x509_create && x509->hsm_client_x509_destroy &&
                  x509->hsm_client_get_cert && x509->hsm_client_get_key &&
                  x509->hsm_client_get_common_name,
              "X.509 table: all 5 members set");
    }
    if (tpm != NULL) {
        CHECK(tpm->hsm_client_tpm_create && tpm->hsm_client_tpm_destroy &&
                  tpm->hsm_client_activate_identity_key && tpm->hsm_client_get_ek &&
                  tpm->hsm_client_get_srk && tpm->hsm_client_sign_with_identity,
              "TPM table: all 6 members set");
    }
    if (key != NULL) {
        CHECK(key->hsm_client_key_create && key->hsm_client_key_destroy &&
                  key->hsm_client_get_symm_key && key->hsm_client_get_registration_name &&
                  key->hsm_client_set_symm_key_info,
              "key table: all 5 members set");
    }
}

/*
 * With no identity stored, nothing may come out of the tables. The key table may still
 * hand out a handle, because the SDK next calls set_symmetric_key_info() with what the
 * application passed to prov_dev_set_symmetric_key_info(); with (NULL, NULL) that call must
 * then fail, and with a name and key the handle must use them.
 */
static void check_empty_store(const HSM_CLIENT_X509_INTERFACE *x509,
                              const HSM_CLIENT_TPM_INTERFACE *tpm,
                              const HSM_CLIENT_KEY_INTERFACE *key)
{
    HSM_CLIENT_HANDLE h = key->hsm_client_key_create();
    if (h == NULL) {
        CHECK(1, "key create on an empty store returns NULL (no identity)");
    } else {
        CHECK(key->hsm_client_set_symm_key_info(h, NULL, NULL) != 0,
              "key create on an empty store: set_symmetric_key_info(NULL, NULL) fails "
              "(no identity)");
        key->hsm_client_key_destroy(h);
        h = key->hsm_client_key_create();
        CHECK(h != NULL, "key create on an empty store, for the application's own key");
        if (h != NULL) {
            CHECK(key->hsm_client_set_symm_key_info(h, APP_REG_ID, SYMM_KEY) == 0,
                  "set_symmetric_key_info(name, key) as prov_dev_set_symmetric_key_info does");
            char *name = key->hsm_client_get_registration_name(h);
            CHECK(name != NULL && strcmp(name, APP_REG_ID) == 0,
                  "registration name is the application's %s", APP_REG_ID);
            char *k = key->hsm_client_get_symm_key(h);
            CHECK(k != NULL && strcmp(k, SYMM_KEY) == 0, "symmetric key is the application's");
            free(name);
            provhsm_free_secret(k);
        }
    }
    key->hsm_client_key_destroy(h);
    key->hsm_client_key_destroy(NULL);

    h = x509->hsm_client_x509_create();
    CHECK(h == NULL, "X.509 create on an empty store returns NULL (no identity)");
    x509->hsm_client_x509_destroy(h);

    h = tpm->hsm_client_tpm_create();
    CHECK(h == NULL, "TPM create with no TPM configured returns NULL");
    tpm->hsm_client_tpm_destroy(h);
}

static void check_symmetric(const HSM_CLIENT_KEY_INTERFACE *key)
{
    provhsm_err err = provhsm_symmetric_set(REG_ID, SYMM_KEY);
    CHECK(err == PROVHSM_OK, "provhsm_symmetric_set: %s", provhsm_strerror(err));

    HSM_CLIENT_HANDLE h = key->hsm_client_key_create();
    CHECK(h != NULL, "key create after provhsm_symmetric_set");
    if (h == NULL) {
        return;
    }
    CHECK(key->hsm_client_set_symm_key_info(h, NULL, NULL) == 0,
          "set_symmetric_key_info(NULL, NULL) returns 0, as the SDK requires");
    char *name = key->hsm_client_get_registration_name(h);
    CHECK(name != NULL && strcmp(name, REG_ID) == 0, "registration name is %s", REG_ID);
    char *k = key->hsm_client_get_symm_key(h);
    CHECK(k != NULL && strcmp(k, SYMM_KEY) == 0, "symmetric key comes back unchanged");
    free(name);
    provhsm_free_secret(k);
    key->hsm_client_key_destroy(h);
}

static void check_x509(const HSM_CLIENT_X509_INTERFACE *x509)
{
    char *pem = NULL;
    provhsm_err err = provhsm_x509_generate(X509_CN, PROVHSM_KEY_EC_P256, 1, 0, &pem);
    CHECK(err == PROVHSM_OK, "provhsm_x509_generate (self-signed EC P-256): %s",
          provhsm_strerror(err));
    free(pem);

    HSM_CLIENT_HANDLE h = x509->hsm_client_x509_create();
    CHECK(h != NULL, "X.509 create after provhsm_x509_generate");
    if (h == NULL) {
        return;
    }
    char *cn = x509->hsm_client_get_common_name(h);
    CHECK(cn != NULL && strcmp(cn, X509_CN) == 0, "common name is %s", X509_CN);
    char *cert = x509->hsm_client_get_cert(h);
    CHECK(cert != NULL && strstr(cert, "-----BEGIN CERTIFICATE-----") == cert,
          "certificate is PEM");
    char *alias = x509->hsm_client_get_key(h);
    CHECK(alias != NULL && strstr(alias, "PRIVATE KEY-----") != NULL, "alias key is a PEM key");
    free(cn);
    free(cert);
    provhsm_free_secret(alias);
    x509->hsm_client_x509_destroy(h);
}

int main(void)
{
    const char *version = provhsm_version();
    printf("provhsm %s\n", version != NULL ? version : "(null)");

    CHECK(initialize_hsm_system() == 0, "initialize_hsm_system with nothing configured");
    /* the SDK runs it once per layer (provisioning, hub) */
    CHECK(initialize_hsm_system() == 0, "initialize_hsm_system a second time");

    const HSM_CLIENT_X509_INTERFACE *x509 = hsm_client_x509_interface();
    const HSM_CLIENT_TPM_INTERFACE *tpm = hsm_client_tpm_interface();
    const HSM_CLIENT_KEY_INTERFACE *key = hsm_client_key_interface();
    check_tables(x509, tpm, key);
    if (failures == 0) {
        check_empty_store(x509, tpm, key);
        provhsm_err err = provhsm_store_init();
        CHECK(err == PROVHSM_OK, "provhsm_store_init: %s", provhsm_strerror(err));
        if (err == PROVHSM_OK) {
            check_symmetric(key);
            check_x509(x509);
        }
    }

    deinitialize_hsm_system();
    deinitialize_hsm_system();
    printf("%s: %d failure(s)\n", failures == 0 ? "PASS" : "FAIL", failures);
    return failures == 0 ? 0 : 1;
}
