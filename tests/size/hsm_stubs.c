/*
 * The custom HSM functions sdk_app.c calls, doing nothing: the baseline scripts/size.sh
 * compares libprovhsm.a against.
 */
#include <stddef.h>

#include "hsm_client_data.h"

int hsm_client_x509_init(void)
{
    return 0;
}

void hsm_client_x509_deinit(void)
{
}

int hsm_client_tpm_init(void)
{
    return 0;
}

void hsm_client_tpm_deinit(void)
{
}

const HSM_CLIENT_X509_INTERFACE *hsm_client_x509_interface(void)
{
    return NULL;
}

const HSM_CLIENT_TPM_INTERFACE *hsm_client_tpm_interface(void)
{
    return NULL;
}

const HSM_CLIENT_KEY_INTERFACE *hsm_client_key_interface(void)
{
    return NULL;
}
