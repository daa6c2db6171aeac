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

/*
 * Takes the store's write lock: an exclusive flock on the store directory, held through
 * this handle until provhsm_store_close(). It excludes every other handle, in this
 * process or another, and provhsm_store_create(). Every sequence that reads entries and
 * then writes or removes some (the administration API: x509 generate and import,
 * symmetric set, identity remove) holds it from before its first read to its last write,
 * so that two such sequences never interleave (an import removing the pending key that a
 * concurrent generate has just written). Waits while another holder works. Readers (the
 * backends) do not lock: every single write is atomic on its own.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_lock(provhsm_store *st);

/* Wipes the key and frees (which releases the lock). NULL is fine. */
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

/*
 * The entry format's two halves, exposed so that a fuzz target calls exactly what the
 * store calls (store.c's opening comment has the byte layout).
 *
 * provhsm_store_unseal parses the bytes of an entry file (header, nonce, ciphertext, tag)
 * and decrypts them under the 32-byte store key `key`, with `name` (at most 255 bytes) and
 * `extra` as associated data, as provhsm_store_get does. *out is secure memory.
 * PROVHSM_E_CORRUPT (logged, naming `path`) for malformed bytes, PROVHSM_E_TAMPERED (not
 * logged) when authentication fails, PROVHSM_E_INVALID_ARG for bad arguments.
 *
 * provhsm_store_seal builds those bytes (plain malloc: nothing in them is secret).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_unseal(const uint8_t *key, const char *name,
                                                    const uint8_t *extra, size_t extra_len,
                                                    const uint8_t *file, size_t file_len,
                                                    const char *path, uint8_t **out,
                                                    size_t *out_len);
PROVHSM_MUST_CHECK provhsm_err provhsm_store_seal(const uint8_t *key, const char *name,
                                                  const uint8_t *extra, size_t extra_len,
                                                  const uint8_t *data, size_t len, uint8_t **out,
                                                  size_t *out_len);

/*
 * provhsm_store_create, choosing the key mode: seal_to_tpm non-zero makes a random store
 * key sealed to the configured TPM (store.sealed in the store directory); 0 is what
 * provhsm_store_create does (passphrase when one is configured, else a key file).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_create_mode(const provhsm_config *cfg,
                                                         int seal_to_tpm);

/* What protects the store's key, as text (see provhsm_store_key_mode()). No TPM command. */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_describe_key(const provhsm_config *cfg, char *out,
                                                          size_t outlen);

/* provhsm_store_reseal() with a given configuration. */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_reseal_with(const provhsm_config *cfg, int unbound);

/*
 * The PCR values the store key is to be sealed to, given on the command line (provhsm
 * store reseal --pcr-values): a bank and, for the PCRs it names, each one's value.
 */
#define PROVHSM_PCR_DIGEST_MAX      64   /* SHA-512 */
#define PROVHSM_PCR_VALUES_MAX_TEXT 4096 /* "sha512:" and 24 "nn=<128 hex>," fit */
typedef struct provhsm_pcr_values {
    uint16_t bank;     /* TPM2_ALG_SHA1, _SHA256, _SHA384 or _SHA512 */
    size_t digest_len; /* the bank's digest size: each value's length */
    uint32_t named;    /* bit n: PCR n's value is in value[n] */
    uint8_t value[24][PROVHSM_PCR_DIGEST_MAX];
} provhsm_pcr_values;

/*
 * Parses "<bank>:<pcr>=<hex>[,<pcr>=<hex>...]" (bank sha1, sha256, sha384 or sha512; PCR
 * 0..23 in one or two decimal digits, each named once; each value exactly the bank's
 * digest size in hex digits of either case; nothing else: no spaces, no empty item). No
 * TPM command, no file: the fuzz target's entry. PROVHSM_E_INVALID_ARG (logged, saying
 * what is wrong and where, never echoing the text) for anything else; *out is then zeroed.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_parse_pcr_values(const char *text,
                                                              provhsm_pcr_values *out);

/*
 * Whether parsed values fit the configuration's [store] seal_pcrs: the same bank, and
 * only PCRs of seal_pcrs (those not named keep their current values when sealing).
 * PROVHSM_E_CONFIG when seal_pcrs is not set, PROVHSM_E_INVALID_ARG naming the bank or
 * the PCRs that differ (logged).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_check_pcr_values(const provhsm_config *cfg,
                                                              const provhsm_pcr_values *values);

/*
 * provhsm_store_reseal_to() with a given configuration: the text is parsed and checked
 * before anything is read or written, then the store key is sealed as
 * provhsm_store_reseal_with() does, to a policy for those values.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_reseal_to_with(const provhsm_config *cfg,
                                                            const char *pcr_values);

/*
 * Parses the bytes of store.sealed (the sealed store key) as opening does, with no TPM
 * command: PROVHSM_E_CORRUPT (logged, naming `path`) for anything malformed. The fuzz
 * target's entry.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_parse_sealed(const uint8_t *buf, size_t len,
                                                          const char *path);

/* provhsm_store_rekey() with a given configuration ("tpm", "key-file", "passphrase"). */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_rekey_with(const provhsm_config *cfg, const char *to);

#ifdef PROVHSM_TEST_HOOKS
/* Test hook (test build only): when set, provhsm_store_put stops after writing the temp file and
 * before the rename, returning PROVHSM_E_IO, as a crash there would. */
extern int provhsm_store_test_fail_before_rename;
/* Test hook (test build only): called by provhsm_store_remove just before it removes the
 * entry, so that a test can make another process act in the middle of a write sequence. */
extern void (*provhsm_store_test_before_remove)(const char *name);
/* Test hook (test build only): the rekey stops as a crash would at its nth step (1 = the
 * first): each entry staged, store.check.new staged, store.meta.new staged, the switch,
 * each entry renamed into place, the key holders swapped. 0 disarms. */
extern int provhsm_store_test_rekey_fail_at;
#endif

#endif
