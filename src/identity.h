/*
 * The identities the software store holds, and their serialized form inside a store
 * entry. The store encrypts and authenticates; this file only lays fields out.
 *
 * Record format (inside the encrypted entry): "PHI1", one kind byte, then fields as
 * tag (1 byte) | length (4 bytes, big-endian) | bytes. A tag that does not belong to the
 * record's kind is an error, each tag appears at most once. Strings are stored without
 * their NUL. Loading never aborts on a bad record: it is PROVHSM_E_CORRUPT.
 *
 * Callers: the software backend (read) and the admin API (read and write).
 */
#ifndef PROVHSM_IDENTITY_H
#define PROVHSM_IDENTITY_H

#include <stddef.h>
#include <stdint.h>
#include "store.h"

#define PROVHSM_ENTRY_X509         "x509"
#define PROVHSM_ENTRY_X509_PENDING "x509-pending" /* key generated for a CSR, no cert yet */
#define PROVHSM_ENTRY_SYMMETRIC    "symmetric"

typedef struct provhsm_x509_identity {
    /* PKCS#8 PEM (software key) or a PROVHSM KEY REFERENCE (keyref.h: a key that stays in
     * the TPM or on a PKCS#11 token); secure memory */
    char *key_pem;
    char *chain_pem;  /* PEM, leaf first; NULL for a pending key; plain malloc */
    char *key_secret; /* a hardware key's secret (backend.h key_generate), or NULL; secure */
} provhsm_x509_identity;

typedef struct provhsm_symmetric_identity {
    char *registration_id; /* plain malloc */
    char *key_b64;         /* secure memory */
} provhsm_symmetric_identity;

/* Loads and decodes an entry. PROVHSM_E_NOT_FOUND when absent. */
PROVHSM_MUST_CHECK provhsm_err provhsm_identity_x509_load(provhsm_store *st, const char *entry,
                                                          provhsm_x509_identity *out);
PROVHSM_MUST_CHECK provhsm_err provhsm_identity_x509_save(provhsm_store *st, const char *entry,
                                                          const provhsm_x509_identity *id);
void provhsm_identity_x509_clear(provhsm_x509_identity *id);

PROVHSM_MUST_CHECK provhsm_err provhsm_identity_symmetric_load(provhsm_store *st,
                                                               provhsm_symmetric_identity *out);
PROVHSM_MUST_CHECK provhsm_err
provhsm_identity_symmetric_save(provhsm_store *st, const provhsm_symmetric_identity *id);
void provhsm_identity_symmetric_clear(provhsm_symmetric_identity *id);

/*
 * Registration ids as the provisioning service accepts them: 1..128 characters of
 * a-z A-Z 0-9 - . _ : (the service lowercases). PROVHSM_E_INVALID_ARG otherwise.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_identity_check_registration_id(const char *id);

/* A symmetric key: valid padded base64 of at least 16 bytes. */
PROVHSM_MUST_CHECK provhsm_err provhsm_identity_check_symmetric_key(const char *key_b64);

#endif
