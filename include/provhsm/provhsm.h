/*
 * provhsm public API: what an application or the provhsm tool may call besides the
 * SDK's three HSM tables. Version, error strings, logging, the administration calls
 * the factory line uses to put identities into the store, and the encodings the
 * provisioning service uses (base64, the TPM registration id).
 *
 * Everything returning provhsm_err returns PROVHSM_OK (0) on success. Strings handed
 * back to the caller are allocated with malloc() and released with free() (or with
 * provhsm_free_secret() when they hold key material).
 */
#ifndef PROVHSM_PROVHSM_H
#define PROVHSM_PROVHSM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define PROVHSM_MUST_CHECK __attribute__((warn_unused_result))
#else
#define PROVHSM_MUST_CHECK
#endif

/* One error enum for the whole library; provhsm_strerror() names each. */
typedef enum provhsm_err {
    PROVHSM_OK = 0,
    PROVHSM_E_INVALID_ARG, /* NULL or malformed argument */
    PROVHSM_E_NOMEM,       /* allocation failed */
    PROVHSM_E_CONFIG,      /* configuration file or environment is invalid */
    PROVHSM_E_IO,          /* a file operation failed */
    PROVHSM_E_PERMISSION,  /* a trusted file is accessible to others, a link, or not ours */
    PROVHSM_E_NOT_FOUND,   /* no such identity / store / file */
    PROVHSM_E_EXISTS,      /* would overwrite something that exists */
    PROVHSM_E_WRONG_KEY,   /* the store key or passphrase does not open this store, or the
                              PKCS#11 token refused the PIN */
    PROVHSM_E_TAMPERED,    /* an entry failed authentication */
    PROVHSM_E_CORRUPT,     /* a file or blob is structurally malformed */
    PROVHSM_E_CRYPTO,      /* a cryptographic library call failed */
    PROVHSM_E_MISMATCH,    /* private key and certificate do not belong together */
    PROVHSM_E_NO_CN,       /* certificate subject has no common name */
    PROVHSM_E_UNSUPPORTED, /* the configured backend cannot do this */
    PROVHSM_E_BAD_HANDLE,  /* handle is NULL, destroyed, or from another table */
    PROVHSM_E_TPM,         /* the TPM refused or failed a command */
    PROVHSM_E_NO_DEVICE,   /* the TPM or token cannot be reached */
    PROVHSM_E__COUNT
} provhsm_err;

/* Static English text for an error code; never NULL. */
const char *provhsm_strerror(provhsm_err err);

/* "MAJOR.MINOR.PATCH" of the library that is linked. */
const char *provhsm_version(void);

/* ---- logging ---------------------------------------------------------- */

typedef enum provhsm_log_level {
    PROVHSM_LOG_ERROR = 0,
    PROVHSM_LOG_WARN = 1,
    PROVHSM_LOG_INFO = 2,
    PROVHSM_LOG_DEBUG = 3
} provhsm_log_level;

/*
 * Receives every log line at or above the current level instead of stderr. `module` is a
 * short tag ("store", "x509", ...). Log lines never carry secrets. The callback may be
 * called from any thread that uses the library, with no library lock held: it may call
 * provhsm functions (a line it causes comes back to it, so beware of endless recursion).
 * A line being delivered while the callback is replaced may still reach the old one.
 */
typedef void (*provhsm_log_fn)(provhsm_log_level level, const char *module, const char *message,
                               void *ctx);

/* NULL restores logging to stderr. */
void provhsm_set_log_callback(provhsm_log_fn fn, void *ctx);

/* Overrides PROVHSM_LOG and the configuration file's [log] level. */
void provhsm_set_log_level(provhsm_log_level level);

/* ---- configuration ------------------------------------------------------ */

/*
 * Uses `path` as the configuration file instead of $PROVHSM_CONFIG or
 * /etc/provhsm/provhsm.conf, and reads it now so that errors surface here
 * (NULL forgets any earlier choice). Later create() calls use the new configuration.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_config_use_file(const char *path);

/*
 * The store directory the current configuration names, as a malloc'd string.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_config_store_dir(char **dir_out);

/* ---- administration: the factory line and the developer ---------------- */

/* Wipes and frees a string that held key material. NULL is fine. */
void provhsm_free_secret(char *secret);

/*
 * Creates the store directory (0700) and its key: a random key file (0600), or,
 * when a passphrase is configured, scrypt parameters for it. Fails with
 * PROVHSM_E_EXISTS when a store is already there.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_init(void);

typedef enum provhsm_key_type {
    PROVHSM_KEY_EC_P256 = 0,
    PROVHSM_KEY_RSA_2048,
    PROVHSM_KEY_RSA_3072,
    PROVHSM_KEY_RSA_4096,
    PROVHSM_KEY_EC_P384
} provhsm_key_type;

/*
 * Generates a device key into the store (it is never written in clear), or, with
 * [x509] backend = tpm or pkcs11, in the TPM or on the token (it never leaves it; the
 * store keeps a reference, and the TPM key's random authorisation value), and returns
 * either a self-signed certificate (days > 0), which is stored as the identity's chain,
 * or a PKCS#10 request (days == 0) to be signed by a CA and brought back with
 * provhsm_x509_import(). The returned PEM is malloc'd.
 * Replaces an existing X.509 identity (days > 0), or the key of a request still waiting
 * for its certificate (days == 0), only when `replace` is non-zero; otherwise
 * PROVHSM_E_EXISTS, and the log names the pending request (its CN and when it was made).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_generate(const char *common_name, provhsm_key_type type,
                                                     int days, int replace, char **pem_out);

/*
 * Imports a certificate chain (leaf first). With key_pem == NULL the leaf must match the
 * key generated earlier; otherwise key and chain replace the identity together. A
 * mismatched pair or a leaf without CN is refused; *expired_out (optional) is set when
 * the leaf's notAfter lies in the past.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_import(const char *chain_pem, const char *key_pem,
                                                   int *expired_out);

/*
 * X.509 with a key that stays in hardware ([x509] backend = tpm or pkcs11): takes a key
 * that is already in the device, named by `locator` (a TPM persistent handle such as
 * "0x81000110", or a PKCS#11 URI "pkcs11:token=...;id=...;type=private"), with its
 * certificate chain (leaf first), as the X.509 identity. With chain_pem == NULL the chain
 * is read from the device (pkcs11: the token's certificate with the key's CKA_ID or
 * public key, then the certificates on the token that issued it; PROVHSM_E_NOT_FOUND
 * when the token holds none for the key; PROVHSM_E_UNSUPPORTED where the device keeps
 * no certificate, as with tpm).
 * The leaf must carry the key's public key; RSA keys are refused (the SDK's TLS layer
 * cannot sign with them in hardware). Replaces an existing identity only when `replace`
 * is non-zero. The key is never deleted by provhsm later (it was made by someone else).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_adopt(const char *locator, const char *chain_pem,
                                                  int replace);

/*
 * One line saying where the stored X.509 identity's private key is: "software: in the
 * encrypted store", or the hardware backend's account (handle or URI, and that it cannot
 * be extracted). malloc'd.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_key_location(char **line_out);

/* Stores a symmetric-key identity. key_b64 must be valid base64 of at least 16 bytes. */
PROVHSM_MUST_CHECK provhsm_err provhsm_symmetric_set(const char *registration_id,
                                                     const char *key_b64);

/*
 * Group enrollment: device key = base64(HMAC-SHA256(base64decode(group key), registration
 * id)). Returns it in *device_key_out (free with provhsm_free_secret()).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_symmetric_derive(const char *registration_id,
                                                        const char *group_key_b64,
                                                        char **device_key_out);

/*
 * Builds a SharedAccessSignature exactly as the SDK does: scope is URL-encoded the SDK's
 * way, the string signed is "<encoded scope>\n<expiry>", and the signature comes from the
 * same table the SDK uses (key table for "symmetric", TPM table for "tpm").
 * expiry is seconds since the epoch.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_sas_token(const char *attestation, const char *scope,
                                                 uint64_t expiry, const char *key_name,
                                                 char **token_out);

/* Removes the stored identity of one attestation ("x509", "symmetric"). */
PROVHSM_MUST_CHECK provhsm_err provhsm_identity_remove(const char *attestation);

/*
 * TPM: evicts the persistent identity key at the configured handle, so the device must
 * activate again. PROVHSM_E_NOT_FOUND when there is none; PROVHSM_E_UNSUPPORTED when the
 * library was built without TPM support.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_clear_identity(void);

/* ---- encodings the provisioning service uses ----------------------------- */

/* Padded base64 (RFC 4648) on one line, malloc'd; NULL for NULL data or no memory. */
char *provhsm_base64_encode(const uint8_t *data, size_t len);

/*
 * Decodes padded base64 that may be broken into lines, as the service, PEM and
 * `openssl base64` write it: ASCII whitespace is skipped; any other character outside the
 * alphabet, misplaced padding or a non-canonical last symbol is refused, and so is text
 * with nothing to decode (PROVHSM_E_INVALID_ARG). *out is malloc'd: free() it (wipe it
 * first when it holds a secret).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_base64_decode_text(const char *text, size_t len,
                                                          uint8_t **out, size_t *out_len);

/*
 * The registration id of a TPM device, as the SDK and the provisioning service derive it:
 * lowercase unpadded base32 of SHA-256 over the endorsement key exactly as the TPM table's
 * get_ek returns it. *id_out is malloc'd (52 characters).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_registration_id(const uint8_t *ek, size_t len,
                                                           char **id_out);

/* Name of the backend configured for an attestation ("x509", "symmetric", "tpm"). */
const char *provhsm_backend_name(const char *attestation);

#ifdef __cplusplus
}
#endif

#endif
