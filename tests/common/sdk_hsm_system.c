/*
 * What the SDK's hsm_client_data.c defines: the X.509 and TPM tables brought up and down
 * together. Test programs that call these as the SDK does link this from the test library;
 * it is a file of its own so that a program defining its own pair never pulls it in.
 */
#include "hsm_client_data.h"

int initialize_hsm_system(void)
{
    int r = hsm_client_x509_init();
    return r == 0 ? hsm_client_tpm_init() : r;
}

void deinitialize_hsm_system(void)
{
    hsm_client_x509_deinit();
    hsm_client_tpm_deinit();
}
