/*
 * The encrypted software key store. A directory (0700, owned by the caller) with one
 * file per entry (0600). Each entry is AES-256-GCM encrypted under the store key with
 * the entry's name (and the format header) as associated data. The store key is either
 * a random 32-byte key in a separate key file (0600), or derived from a passphrase with
 * scrypt, whose salt and cost sit in the store's public header file.
 *
 * Writes are atomic: temp file, fsync, rename, fsync of the directory, so a crash
 * leaves either the old entry or the new one, never a torn one.
 *
 * Opening verifies the key against a check entry made at init, so a wrong key is told
 * apart from a tampered entry. Who calls it: the software backend and the admin API.
 */
#ifndef PROVHSM_STORE_H
#define PROVHSM_STORE_H

#include <stddef.h>
#include <stdint.h>
#include "config.h"

typedef struct provhsm_store provhsm_store;

/* Creates store dir, key (file or scrypt header) and check entry. PROVHSM_E_EXISTS if present. */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_create(const provhsm_config *cfg);

/*
 * Opens an existing store: checks permissions (dir 0700, files 0600, owner = euid),
 * loads the key into secure memory and verifies it. PROVHSM_E_NOT_FOUND when there is
 * no store, PROVHSM_E_WRONG_KEY, PROVHSM_E_PERMISSION, PROVHSM_E_CORRUPT otherwise.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_open(const provhsm_config *cfg, provhsm_store **out);

/* Wipes the key and frees. NULL is fine. */
void provhsm_store_close(provhsm_store *st);

/*
 * Reads and decrypts entry `name` ([a-z0-9_-]{1,64}). *data_out is secure memory
 * (free with provhsm_secure_free()). PROVHSM_E_NOT_FOUND, PROVHSM_E_TAMPERED,
 * PROVHSM_E_CORRUPT, PROVHSM_E_PERMISSION.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_get(provhsm_store *st, const char *name,
                                                 uint8_t **data_out, size_t *len_out);

/* Encrypts and atomically writes (creates or replaces) entry `name`. */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_put(provhsm_store *st, const char *name,
                                                 const uint8_t *data, size_t len);

/* Removes entry `name`; PROVHSM_E_NOT_FOUND if absent. */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_remove(provhsm_store *st, const char *name);

/* 1 if an entry file exists (no decryption), else 0. */
int provhsm_store_has(provhsm_store *st, const char *name);

#ifdef PROVHSM_TEST_HOOKS
/* Test hook (test build only): when set, provhsm_store_put stops after writing the temp file and
 * before the rename, returning PROVHSM_E_IO, as a crash there would. */
extern int provhsm_store_test_fail_before_rename;
#endif

#endif
