/*
 * Error strings and version. Static text only, safe from any thread.
 */
#include "provhsm/provhsm.h"

static const char *const error_text[PROVHSM_E__COUNT] = {
    [PROVHSM_OK] = "success",
    [PROVHSM_E_INVALID_ARG] = "invalid argument",
    [PROVHSM_E_NOMEM] = "out of memory",
    [PROVHSM_E_CONFIG] = "invalid configuration",
    [PROVHSM_E_IO] = "file input/output error",
    [PROVHSM_E_PERMISSION] = "a file provhsm trusts has unsafe permissions or owner",
    [PROVHSM_E_NOT_FOUND] = "not found",
    [PROVHSM_E_EXISTS] = "already exists",
    [PROVHSM_E_WRONG_KEY] = "wrong store key, passphrase or token PIN",
    [PROVHSM_E_TAMPERED] = "store entry failed authentication (tampered or corrupted)",
    [PROVHSM_E_CORRUPT] = "malformed data",
    [PROVHSM_E_CRYPTO] = "cryptographic operation failed",
    [PROVHSM_E_MISMATCH] = "private key and certificate do not match",
    [PROVHSM_E_NO_CN] = "certificate subject has no common name",
    [PROVHSM_E_UNSUPPORTED] = "operation not supported by the configured backend",
    [PROVHSM_E_BAD_HANDLE] = "invalid, destroyed or foreign handle",
    [PROVHSM_E_TPM] = "the TPM failed the command",
    [PROVHSM_E_NO_DEVICE] = "the TPM or token cannot be reached",
};

const char *provhsm_strerror(provhsm_err err)
{
    if ((unsigned)err >= PROVHSM_E__COUNT || error_text[err] == 0)
        return "unknown error";
    return error_text[err];
}

const char *provhsm_version(void)
{
    return PROVHSM_VERSION_STRING;
}
