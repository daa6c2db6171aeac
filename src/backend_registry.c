/*
 * The list of compiled-in backends. Adding a backend means one descriptor in its own
 * file, one line here, and one CMake option.
 */
#include <string.h>

#include "backend.h"

const provhsm_backend *const provhsm_backends[] = {
    &provhsm_backend_software,
#ifdef PROVHSM_WITH_TPM
    &provhsm_backend_tpm,
#endif
#ifdef PROVHSM_WITH_PKCS11
    &provhsm_backend_pkcs11,
#endif
#ifdef PROVHSM_TEST_HOOKS
    &provhsm_backend_testkey,
#endif
    NULL,
};

#ifdef PROVHSM_TEST_HOOKS
const provhsm_backend *provhsm_backend_test_override;
#endif

const provhsm_backend *provhsm_backend_find(const char *name)
{
    if (name == NULL)
        return NULL;
#ifdef PROVHSM_TEST_HOOKS
    if (provhsm_backend_test_override != NULL)
        return provhsm_backend_test_override;
#endif
    for (size_t i = 0; provhsm_backends[i] != NULL; i++)
        if (strcmp(provhsm_backends[i]->name, name) == 0)
            return provhsm_backends[i];
    return NULL;
}
