/*
 * Parser for the provisioning service's activation blob (sdk-contract.md, "The
 * activation blob"). Pure: no TPM commands, no allocation. Every size is checked against
 * what remains before it is used, and a blob that is structurally wrong, or whose
 * identity key is not a KEYEDHASH HMAC-SHA256 object that can sign arbitrary data with
 * a password (sign and userWithAuth set; restricted, decrypt, fixedTPM, fixedParent,
 * stClear and reserved bits clear), is rejected here, before any TPM command is sent. Unmarshaling
 * is tpm2-tss's libtss2-mu. Callers: the TPM backend, the fuzz target, the tool.
 */
#ifndef PROVHSM_TPM_BLOB_H
#define PROVHSM_TPM_BLOB_H

#include <stddef.h>
#include <stdint.h>
#include <tss2/tss2_tpm2_types.h>
#include "provhsm/provhsm.h"

typedef struct provhsm_activation_blob {
    TPM2B_ID_OBJECT credential_blob;    /* ActivateCredential input */
    TPM2B_ENCRYPTED_SECRET secret;      /* ActivateCredential input */
    TPM2B_PRIVATE duplicate;            /* Import input */
    TPM2B_ENCRYPTED_SECRET in_sym_seed; /* Import input */
    TPM2B_PUBLIC object_public;         /* Import input: the identity key's public area */
    size_t trailing_len;                /* bytes after the encrypted-data field (ignored) */
} provhsm_activation_blob;

/*
 * Parses `len` bytes. PROVHSM_E_CORRUPT (with a log line naming the field) when any
 * field is truncated, oversized, or the identity key's public area is not a KEYEDHASH
 * HMAC-SHA256 signing key (see above); PROVHSM_E_INVALID_ARG for NULL.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_blob_parse(const uint8_t *buf, size_t len,
                                                      provhsm_activation_blob *out);

/*
 * A hierarchy authorisation value as configured (a file's bytes or an environment
 * variable): the bytes without one trailing "\n" or "\r\n"; "hex:" followed by an even
 * number of hex digits gives raw bytes (as tpm2-tools reads them). At most
 * sizeof(auth->buffer) bytes. PROVHSM_E_CONFIG (logged, naming `what`) otherwise. Also pure:
 * it reads outside bytes, so it sits beside the blob parser and has its own fuzz target.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_auth_parse(const char *text, size_t len,
                                                      const char *what, TPM2B_AUTH *auth);

#endif
