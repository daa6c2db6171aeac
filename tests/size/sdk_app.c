/*
 * The smallest program that uses a custom HSM the way the Azure IoT C SDK does: the init
 * and deinit functions, the three table getters, and create/destroy through each table.
 * scripts/size.sh links it twice, with libprovhsm.a and with hsm_stubs.c (the same
 * functions doing nothing), and reports the difference between the stripped binaries:
 * what provhsm adds to a device's program. Not run.
 */
#include <stdio.h>

#include "hsm_client_data.h"

int main(void)
{
    if (hsm_client_x509_init() != 0 || hsm_client_tpm_init() != 0) {
        return 1;
    }
    const HSM_CLIENT_X509_INTERFACE *x509 = hsm_client_x509_interface();
    const HSM_CLIENT_TPM_INTERFACE *tpm = hsm_client_tpm_interface();
    const HSM_CLIENT_KEY_INTERFACE *key = hsm_client_key_interface();
    if (x509 != NULL && x509->hsm_client_x509_create != NULL) {
        x509->hsm_client_x509_destroy(x509->hsm_client_x509_create());
    }
    if (tpm != NULL && tpm->hsm_client_tpm_create != NULL) {
        tpm->hsm_client_tpm_destroy(tpm->hsm_client_tpm_create());
    }
    if (key != NULL && key->hsm_client_key_create != NULL) {
        key->hsm_client_key_destroy(key->hsm_client_key_create());
    }
    printf("tables: %d %d %d\n", x509 != NULL, tpm != NULL, key != NULL);
    hsm_client_tpm_deinit();
    hsm_client_x509_deinit();
    return 0;
}
