/*
 * The internal backend interface. The SDK-facing front (hsm_front.c) fills the SDK's
 * three tables with trampolines; each trampoline checks its handle and dispatches to the
 * backend chosen for that attestation type by configuration. Backends never see the SDK.
 *
 * One source file per backend (backend_<name>.c) ends with one const descriptor built
 * with designated initializers. The list of compiled-in backends is in backend_registry.c.
 *
 * Contract, for every backend:
 *  - name and caps are required. A backend serves only the operation groups in caps;
 *    slots of groups it serves are required, the others stay NULL.
 *  - global_init / global_deinit are optional, called under the front's lock from
 *    hsm_client_*_init / *_deinit (reference-counted there). global_init must not fail
 *    because hardware is absent: that is reported by open().
 *  - open(cfg, kind, &state) makes one handle's state. On failure it logs why (once,
 *    where the failure happened), leaves *state untouched, and close() is NOT called.
 *  - close(state) releases one state, wiping any secret in it.
 *  - Outputs (char**, uint8_t**) are malloc'd by the backend, assigned only on success,
 *    and handed to the SDK unchanged (the SDK frees them with free()).
 *  - Different states may be used on different threads at once; one state is used by
 *    one thread at a time unless the backend says otherwise.
 */
#ifndef PROVHSM_BACKEND_H
#define PROVHSM_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include "config.h"
#include "keyref.h"

typedef enum provhsm_kind {
    PROVHSM_KIND_X509 = 0,
    PROVHSM_KIND_SYMMETRIC = 1,
    PROVHSM_KIND_TPM = 2
} provhsm_kind;

#define PROVHSM_CAP_X509      (1u << PROVHSM_KIND_X509)
#define PROVHSM_CAP_SYMMETRIC (1u << PROVHSM_KIND_SYMMETRIC)
#define PROVHSM_CAP_TPM       (1u << PROVHSM_KIND_TPM)

typedef struct provhsm_backend {
    const char *name; /* required: the name used in configuration */
    unsigned caps;    /* required: PROVHSM_CAP_* */

    provhsm_err (*global_init)(void); /* optional */
    void (*global_deinit)(void);      /* optional */

    /* required */
    provhsm_err (*open)(const provhsm_config *cfg, provhsm_kind kind, void **state);
    void (*close)(void *state);

    /* X.509 group: required with PROVHSM_CAP_X509 */
    provhsm_err (*x509_certificate)(void *state, char **pem_out);
    provhsm_err (*x509_alias_key)(void *state, char **pem_out);
    provhsm_err (*x509_common_name)(void *state, char **cn_out);

    /* symmetric-key group: required with PROVHSM_CAP_SYMMETRIC */
    provhsm_err (*symmetric_key)(void *state, char **key_b64_out);
    provhsm_err (*registration_id)(void *state, char **id_out);
    /* replaces the identity for this state only; both arguments non-NULL and validated */
    provhsm_err (*symmetric_override)(void *state, const char *registration_id,
                                      const char *key_b64);

    /* TPM group: required with PROVHSM_CAP_TPM */
    provhsm_err (*tpm_endorsement_key)(void *state, uint8_t **out, size_t *len_out);
    provhsm_err (*tpm_storage_root_key)(void *state, uint8_t **out, size_t *len_out);
    provhsm_err (*tpm_activate)(void *state, const uint8_t *blob, size_t len);
    provhsm_err (*tpm_sign)(void *state, const uint8_t *data, size_t len, uint8_t **sig_out,
                            size_t *sig_len_out);

    /*
     * Hardware X.509 keys: optional, for backends whose X.509 private key never leaves the
     * device (tpm, pkcs11). hwkey.c and the admin API call them; the OpenSSL provider
     * signs through them. Such a backend also serves the X.509 group above: the chain and
     * the key reference are kept in the store (identity.h), and x509_alias_key returns
     * the reference's PEM (keyref.h).
     *  - key_generate makes an EC key (PROVHSM_KEY_EC_P256; P-384 where the device has it)
     *    in the device and returns its reference; *secret_out (secure memory, NUL-ended
     *    text, NULL when the backend needs none) is what key_open needs besides the
     *    reference (the TPM key's random authorisation value); the admin API keeps it in
     *    the store with the identity. RSA types are refused with PROVHSM_E_UNSUPPORTED and
     *    a log line saying why (the SDK's TLS layer copies RSA keys into a legacy object
     *    that holds only the public half) and what to use instead (EC P-256).
     *    `replace`: an existing key where the new one goes may be destroyed.
     *  - key_adopt takes a key already in the device, named by `locator` (a persistent
     *    handle "0x81000110", a PKCS#11 URI), and returns its reference. RSA is refused
     *    as above. *secret_out as for key_generate (NULL when adopting needs none).
     *  - key_open resolves a reference, with its secret, to an open key, and checks that
     *    the device's public key equals the reference's (PROVHSM_E_MISMATCH otherwise).
     *  - key_sign: ECDSA over a digest the caller computed; raw r | s big-endian, each half
     *    the curve's byte size; *rs_len in: room, out: used. May be called from several
     *    threads at once on the same key: the backend serialises where its device needs.
     *  - key_close releases what key_open made (never destroys the key).
     *  - key_destroy removes the key a reference names from the device (identity removal,
     *    a replaced pending request); PROVHSM_E_NOT_FOUND when it was already gone.
     *  - key_describe (optional): one line for `provhsm info` (where the key is, that it
     *    cannot be extracted), malloc'd.
     *  - key_certificates (optional): the certificate chain the device itself holds for
     *    the key (a secure element ships with its certificate and often the
     *    intermediate), as PEM, leaf first, malloc'd: the leaf carries the reference's
     *    public key, each next certificate issued the one before, up to a self-signed
     *    root or the last one the device has. PROVHSM_E_NOT_FOUND (logged, saying the
     *    chain must then be given) when the device holds no certificate for the key.
     */
    provhsm_err (*key_generate)(const provhsm_config *cfg, provhsm_key_type type, int replace,
                                provhsm_keyref *ref_out, char **secret_out);
    provhsm_err (*key_adopt)(const provhsm_config *cfg, const char *locator,
                             provhsm_keyref *ref_out, char **secret_out);
    provhsm_err (*key_open)(const provhsm_config *cfg, const provhsm_keyref *ref,
                            const char *secret, void **key_out);
    provhsm_err (*key_sign)(void *key, const uint8_t *digest, size_t digest_len, uint8_t *rs,
                            size_t *rs_len);
    void (*key_close)(void *key);
    provhsm_err (*key_destroy)(const provhsm_config *cfg, const provhsm_keyref *ref,
                               const char *secret);
    provhsm_err (*key_describe)(const provhsm_config *cfg, const provhsm_keyref *ref,
                                char **line_out);
    provhsm_err (*key_certificates)(const provhsm_config *cfg, const provhsm_keyref *ref,
                                    char **chain_pem_out);
} provhsm_backend;

/* Compiled-in backends, NULL-terminated (backend_registry.c). */
extern const provhsm_backend *const provhsm_backends[];

/* Backend by configuration name, or NULL. */
const provhsm_backend *provhsm_backend_find(const char *name);

#ifdef PROVHSM_TEST_HOOKS
/*
 * Test hook (test build only): when non-NULL, every lookup returns this backend, so unit tests can
 * run the front against a mock descriptor. Always NULL in production.
 */
extern const provhsm_backend *provhsm_backend_test_override;
#endif

extern const provhsm_backend provhsm_backend_software;
#ifdef PROVHSM_WITH_TPM
extern const provhsm_backend provhsm_backend_tpm;
#endif
#ifdef PROVHSM_WITH_PKCS11
extern const provhsm_backend provhsm_backend_pkcs11;
#endif
#ifdef PROVHSM_TEST_HOOKS
/* A software EC key behind the hardware-key slots, for the provider's tests. */
extern const provhsm_backend provhsm_backend_testkey;
#endif

#endif
