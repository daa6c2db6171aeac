/*
 * Hardware X.509 keys in use in this process: the glue between a key reference (keyref.h)
 * and the backend that holds the key. The OpenSSL provider (src/provider/) and the admin
 * API use it; backends implement the key_* slots of backend.h.
 *
 * A key is opened once per process and shared: acquiring the same reference again (the
 * SDK decodes the alias key once per connection) takes another count on the open key,
 * so that steady-state signing costs what the device's sign costs (one TPM2_Sign, one
 * C_SignInit + C_Sign) and nothing else. Thread-safe; signing is serialised per backend
 * where the device needs it (the backend's business).
 */
#ifndef PROVHSM_HWKEY_H
#define PROVHSM_HWKEY_H

#include <stddef.h>
#include <stdint.h>
#include "keyref.h"
#include "provhsm/provhsm.h"

typedef struct provhsm_hwkey provhsm_hwkey;

/* Largest raw ECDSA signature (r | s) a backend returns: P-384, 2 x 48 bytes. */
#define PROVHSM_HWKEY_SIG_MAX 96

/*
 * The open key for `ref`. Loads the configuration as the front does, finds the backend
 * the reference names, takes the key's secret (the TPM key's authorisation value) from
 * the stored X.509 identity (or pending request) whose key is this reference, opens the
 * key and checks that the device's public key is the reference's. Errors are logged with
 * the cause (no such backend, no identity in the store for this key, device absent,
 * key gone, public key differs).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_hwkey_acquire(const provhsm_keyref *ref,
                                                     provhsm_hwkey **out);

/*
 * Opens a key whose secret is not in the store yet (the admin API, between making a key
 * and storing the identity) and makes it the open key for its reference, so that
 * provhsm_hwkey_acquire() and the provider find it. secret (backend.h key_generate) may be
 * NULL.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_hwkey_register(const provhsm_keyref *ref, const char *secret,
                                                      provhsm_hwkey **out);

/* Drops one count; the key is closed with the last. NULL is fine. */
void provhsm_hwkey_release(provhsm_hwkey *key);

/* The reference the key was opened for (valid while the key is held). */
const provhsm_keyref *provhsm_hwkey_ref(const provhsm_hwkey *key);

/*
 * ECDSA over `digest` (computed by the caller; 20, 32, 48 or 64 bytes) in the device.
 * rs receives r | s, big-endian, each half the curve's size; *rs_len: in, room; out, used.
 * A failure is logged with its cause (device gone, key deleted, wrong PIN, ...).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_hwkey_sign(provhsm_hwkey *key, const uint8_t *digest,
                                                  size_t digest_len, uint8_t *rs, size_t *rs_len);

#endif
