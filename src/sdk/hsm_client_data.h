/*
 * provhsm's own declaration of the Azure IoT C SDK's custom-HSM interface, written from
 * shared/docs/sdk-contract.md. It must stay layout-identical to the SDK's
 * provisioning_client/adapters/hsm_client_data.h: building with
 * -DPROVHSM_SDK_DIR=<sdk checkout> compiles hsm_front.c against the SDK's header instead
 * (this directory is then not on the include path), so any difference in a type or
 * member name fails the build.
 */
#ifndef HSM_CLIENT_DATA_H
#define HSM_CLIENT_DATA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void *HSM_CLIENT_HANDLE;

typedef HSM_CLIENT_HANDLE (*HSM_CLIENT_CREATE)(void);
typedef void (*HSM_CLIENT_DESTROY)(HSM_CLIENT_HANDLE handle);

typedef int (*HSM_CLIENT_ACTIVATE_IDENTITY_KEY)(HSM_CLIENT_HANDLE handle, const unsigned char *key,
                                                size_t key_len);
typedef int (*HSM_CLIENT_GET_ENDORSEMENT_KEY)(HSM_CLIENT_HANDLE handle, unsigned char **key,
                                              size_t *key_len);
typedef int (*HSM_CLIENT_GET_STORAGE_ROOT_KEY)(HSM_CLIENT_HANDLE handle, unsigned char **key,
                                               size_t *key_len);
typedef int (*HSM_CLIENT_SIGN_WITH_IDENTITY)(HSM_CLIENT_HANDLE handle, const unsigned char *data,
                                             size_t data_len, unsigned char **signed_value,
                                             size_t *signed_len);

typedef char *(*HSM_CLIENT_GET_CERTIFICATE)(HSM_CLIENT_HANDLE handle);
typedef char *(*HSM_CLIENT_GET_ALIAS_KEY)(HSM_CLIENT_HANDLE handle);
typedef char *(*HSM_CLIENT_GET_COMMON_NAME)(HSM_CLIENT_HANDLE handle);

typedef char *(*HSM_CLIENT_GET_SYMMETRICAL_KEY)(HSM_CLIENT_HANDLE handle);
typedef char *(*HSM_CLIENT_GET_REGISTRATION_NAME)(HSM_CLIENT_HANDLE handle);
typedef int (*HSM_CLIENT_SET_SYMMETRICAL_KEY_INFO)(HSM_CLIENT_HANDLE handle,
                                                   const char *registration_name,
                                                   const char *symmetric_key);

/* Member order is the ABI: the SDK calls through these by position. */
typedef struct HSM_CLIENT_TPM_INTERFACE_TAG {
    HSM_CLIENT_CREATE hsm_client_tpm_create;
    HSM_CLIENT_DESTROY hsm_client_tpm_destroy;
    HSM_CLIENT_ACTIVATE_IDENTITY_KEY hsm_client_activate_identity_key;
    HSM_CLIENT_GET_ENDORSEMENT_KEY hsm_client_get_ek;
    HSM_CLIENT_GET_STORAGE_ROOT_KEY hsm_client_get_srk;
    HSM_CLIENT_SIGN_WITH_IDENTITY hsm_client_sign_with_identity;
} HSM_CLIENT_TPM_INTERFACE;

typedef struct HSM_CLIENT_X509_INTERFACE_TAG {
    HSM_CLIENT_CREATE hsm_client_x509_create;
    HSM_CLIENT_DESTROY hsm_client_x509_destroy;
    HSM_CLIENT_GET_CERTIFICATE hsm_client_get_cert;
    HSM_CLIENT_GET_ALIAS_KEY hsm_client_get_key;
    HSM_CLIENT_GET_COMMON_NAME hsm_client_get_common_name;
} HSM_CLIENT_X509_INTERFACE;

typedef struct HSM_CLIENT_KEY_INTERFACE_TAG {
    HSM_CLIENT_CREATE hsm_client_key_create;
    HSM_CLIENT_DESTROY hsm_client_key_destroy;
    HSM_CLIENT_GET_SYMMETRICAL_KEY hsm_client_get_symm_key;
    HSM_CLIENT_GET_REGISTRATION_NAME hsm_client_get_registration_name;
    HSM_CLIENT_SET_SYMMETRICAL_KEY_INFO hsm_client_set_symm_key_info;
} HSM_CLIENT_KEY_INTERFACE;

/* Defined by the SDK (hsm_client_data.c), never by a custom HSM library. */
extern int initialize_hsm_system(void);
extern void deinitialize_hsm_system(void);

extern const HSM_CLIENT_TPM_INTERFACE *hsm_client_tpm_interface(void);
extern const HSM_CLIENT_X509_INTERFACE *hsm_client_x509_interface(void);
extern const HSM_CLIENT_KEY_INTERFACE *hsm_client_key_interface(void);

extern int hsm_client_x509_init(void);
extern void hsm_client_x509_deinit(void);
extern int hsm_client_tpm_init(void);
extern void hsm_client_tpm_deinit(void);

#ifdef __cplusplus
}
#endif

#endif
