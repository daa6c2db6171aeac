/*
 * The one place provhsm calls a PKCS#11 module. Modules are loaded with p11-kit (each
 * load is p11-kit's "managed" instance, so another part of the process may use the same
 * module), initialised with CKF_OS_LOCKING_OK, and tokens and objects are named by
 * RFC 7512 URIs parsed and matched by p11-kit.
 *
 * Per process and per token: one read/write session, logged in once as the user with
 * the PIN from [pkcs11] pin_env / pin_file, shared by every key on that token. PKCS#11
 * sessions are single-threaded, so every operation holds the token's mutex. A session
 * that the token or the module lost (closed, token removed and put back, logged out) is
 * dropped and opened again once; what cannot be recovered is one error line naming the
 * cause ("token not present", "wrong PIN", the CK_RV by name). A PIN the token refused
 * is never sent again by this process (tokens lock after a few wrong PINs): a different
 * PIN in the file or the variable is tried, the same one is refused here.
 *
 * The backend (backend_pkcs11.c) sees no PKCS#11 type but the numbers it reads.
 */
#ifndef PROVHSM_P11_WRAP_H
#define PROVHSM_P11_WRAP_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* A token selected by the configuration; lives until provhsm_p11_shutdown(). */
typedef struct provhsm_p11_token provhsm_p11_token;

#define PROVHSM_P11_ID_MAX    64  /* CKA_ID bytes kept */
#define PROVHSM_P11_LABEL_MAX 128 /* CKA_LABEL bytes kept, with the NUL */

/* Which object a key is: CKA_ID and/or CKA_LABEL (at least one is set). */
typedef struct provhsm_p11_keyname {
    uint8_t id[PROVHSM_P11_ID_MAX];
    size_t id_len; /* 0: no CKA_ID given */
    char label[PROVHSM_P11_LABEL_MAX];
    int has_label;
} provhsm_p11_keyname;

/* An open private key on a token; its object handle is found again after a reconnect. */
typedef struct provhsm_p11_key {
    provhsm_p11_token *token;
    provhsm_p11_keyname name;
    unsigned long handle; /* CK_OBJECT_HANDLE, valid for `generation` */
    unsigned long generation;
    int curve_bits; /* 256 or 384: size of r | s */
} provhsm_p11_key;

/* What the token says about a private key and its public half. */
typedef struct provhsm_p11_key_facts {
    unsigned long key_type; /* CKK_EC, CKK_RSA, ... */
    int sensitive, extractable, always_sensitive, never_extractable, can_sign;
    uint8_t id[PROVHSM_P11_ID_MAX]; /* the private key's CKA_ID */
    size_t id_len;
    char label[PROVHSM_P11_LABEL_MAX]; /* its CKA_LABEL ("" when none) */
    /* public half, from the public key object ... */
    uint8_t *ec_params, *ec_point; /* malloc'd: DER as the token gives them */
    size_t ec_params_len, ec_point_len;
    /* ... or, when there is none, from a certificate object with the same CKA_ID */
    uint8_t *cert_der;
    size_t cert_der_len;
} provhsm_p11_key_facts;

void provhsm_p11_key_facts_clear(provhsm_p11_key_facts *f);

/*
 * The token that cfg->pkcs11_token selects among the initialised tokens of
 * cfg->pkcs11_module ("" = every module registered with p11-kit, what p11-kit's proxy
 * module would offer) and that, when object_uri is not
 * NULL, the token attributes of that URI select too. Loads and initialises the module,
 * opens the session and logs in on first use; later calls return the same token.
 * Errors: PROVHSM_E_CONFIG (bad URI, no PIN configured), PROVHSM_E_NO_DEVICE (module
 * cannot load, no such token), PROVHSM_E_WRONG_KEY (wrong or locked PIN), logged.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_token_get(const provhsm_config *cfg,
                                                     const char *object_uri,
                                                     provhsm_p11_token **out);

/* The token's label, manufacturer and model, for messages ("" fields left out). */
void provhsm_p11_token_describe(const provhsm_p11_token *token, char *buf, size_t len);

/*
 * Parses a key URI (pkcs11:...;object=...;id=...;type=private). PROVHSM_E_CONFIG, logged,
 * when it is not a PKCS#11 URI, names neither id nor object, or a type other than private.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_parse_key_uri(const char *uri, provhsm_p11_keyname *out);

/*
 * The RFC 7512 URI of a private key on the token (token label, manufacturer, model,
 * serial; object, id; type=private), formatted by p11-kit. malloc'd.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_key_uri(const provhsm_p11_token *token,
                                                   const provhsm_p11_keyname *name, char **uri_out);

/*
 * Makes an EC key pair on the token (curve_bits 256 or 384): the private key is a token
 * object, private, sensitive, not extractable, for signing only; the public key is a
 * token object too. Both carry `name`'s CKA_ID and CKA_LABEL.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_generate_ec(provhsm_p11_token *token, int curve_bits,
                                                       const provhsm_p11_keyname *name);

/*
 * Finds the one private key `name` selects and reads what the backend checks. Its
 * public half comes from the public key with the same CKA_ID, else a certificate with
 * that CKA_ID. PROVHSM_E_NOT_FOUND (logged) when there is no such private key, or none
 * of its public half; PROVHSM_E_INVALID_ARG when `name` selects several.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_key_facts_get(provhsm_p11_token *token,
                                                         const provhsm_p11_keyname *name,
                                                         provhsm_p11_key_facts *out);

/* An X.509 certificate object on the token. */
typedef struct provhsm_p11_cert {
    uint8_t id[PROVHSM_P11_ID_MAX]; /* its CKA_ID; id_len 0 when it has none (or a longer one) */
    size_t id_len;
    uint8_t *der; /* CKA_VALUE, the certificate's DER, malloc'd */
    size_t der_len;
} provhsm_p11_cert;

#define PROVHSM_P11_CERTS_MAX 64 /* certificate objects read from one token */

/*
 * Every X.509 certificate object on the token (CKO_CERTIFICATE, CKC_X_509), up to
 * PROVHSM_P11_CERTS_MAX, as the token gives them; the caller decides which belong to a
 * key. *certs_out is NULL and *count_out 0 when there is none. Free with
 * provhsm_p11_certs_free().
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_certificates(provhsm_p11_token *token,
                                                        provhsm_p11_cert **certs_out,
                                                        size_t *count_out);
void provhsm_p11_certs_free(provhsm_p11_cert *certs, size_t count);

/*
 * Opens the private key `name` selects (its handle is kept in *key) and reads in the
 * same lookup what provhsm_p11_key_facts_get() reads, into *facts_out (cleared on
 * failure; the caller clears it after use), so that opening finds the key once.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_key_open(provhsm_p11_token *token,
                                                    const provhsm_p11_keyname *name, int curve_bits,
                                                    provhsm_p11_key *key,
                                                    provhsm_p11_key_facts *facts_out);

/*
 * CKM_ECDSA over the digest: C_SignInit + C_Sign on the shared session (two calls in
 * the steady state). rs: r | s, each half the curve's size; *rs_len in: room, out: used.
 * Safe from several threads at once.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_sign(provhsm_p11_key *key, const uint8_t *digest,
                                                size_t digest_len, uint8_t *rs, size_t *rs_len);

/*
 * Destroys the private key `name` selects and the public key and nothing else with its
 * CKA_ID. PROVHSM_E_NOT_FOUND (not logged) when the private key is not there.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_destroy_key(provhsm_p11_token *token,
                                                       const provhsm_p11_keyname *name);

/* Every PKCS#11 function called by this process, and the C_OpenSession / C_Login calls. */
uint64_t provhsm_p11_calls_total(void);
uint64_t provhsm_p11_sessions_opened_total(void);
uint64_t provhsm_p11_logins_total(void);

/* The name of a CK_RV ("CKR_PIN_INCORRECT"), or "CKR_0x..." for one not known. */
const char *provhsm_p11_rv_name(unsigned long rv, char *buf, size_t len);

/*
 * Closes every session, finalises and releases every module, forgets every token:
 * for tests (a new token directory between tests) and process exit. Keys opened before
 * must be closed first.
 */
void provhsm_p11_shutdown(void);

#endif
