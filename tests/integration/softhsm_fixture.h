/*
 * The PKCS#11 integration tests' fixture: a fresh SoftHSM2 token per test. Each token
 * lives in a temporary directory of its own, with a softhsm2.conf there that
 * SOFTHSM2_CONF points at; softhsm2-util initialises the token. Also: a configuration for
 * the pkcs11 backend on that token, direct access to the module (the test's own
 * p11-kit instance of it, separate from the library's) to check what the library did,
 * and a capture of the library's log lines.
 * Test code only; never linked into the library. Functions return 0 on success and -1
 * on failure with a line on stderr.
 */
#ifndef PROVHSM_SOFTHSM_FIXTURE_H
#define PROVHSM_SOFTHSM_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#include "config.h"

/* Exit code that CTest reads as "skipped" (SKIP_RETURN_CODE). */
#define PROVHSM_TEST_SKIP 77

/* The variable the fixture's configurations name for the PIN. */
#define PROVHSM_TEST_PIN_ENV "PROVHSM_TEST_PKCS11_PIN"

typedef struct provhsm_test_softhsm {
    char dir[256];      /* temporary directory: softhsm2.conf and tokens/ */
    char tokendir[300]; /* <dir>/tokens */
    char label[33];     /* the token's label */
    const char *module; /* path of libsofthsm2.so */
    const char *pin, *so_pin;
} provhsm_test_softhsm;

/* The SoftHSM2 module's path ($PROVHSM_TEST_SOFTHSM_MODULE, else the usual places), or NULL. */
const char *provhsm_test_softhsm_module(void);

/* 1 when the module and softhsm2-util are there. */
int provhsm_test_softhsm_available(void);

/*
 * A temporary directory with a softhsm2.conf (file object store, errors only in the log),
 * SOFTHSM2_CONF set to it, and one token labelled `label` initialised in it with the
 * fixture's user PIN (also put in $PROVHSM_TEST_PIN_ENV). The module must not be
 * initialised in this process yet (SoftHSM reads its configuration at C_Initialize).
 */
int provhsm_test_softhsm_start(provhsm_test_softhsm *h, const char *label);

/* Initialises one more token, labelled `label`, in the same directory. */
int provhsm_test_softhsm_add_token(provhsm_test_softhsm *h, const char *label);

/* Removes the temporary directory. Safe to call twice. */
void provhsm_test_softhsm_stop(provhsm_test_softhsm *h);

/* Deletes the token directory (the token "removed"): the module's files are gone. */
int provhsm_test_softhsm_remove_tokens(provhsm_test_softhsm *h);

/* Defaults plus [x509] backend = pkcs11 on this module and token, PIN from the variable. */
void provhsm_test_softhsm_config(const provhsm_test_softhsm *h, provhsm_config *cfg);

/* The test's own way to the module: its own p11-kit instance and a logged-in session. */
typedef struct provhsm_test_p11 {
    CK_FUNCTION_LIST *fl;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE session;
} provhsm_test_p11;

int provhsm_test_p11_open(const provhsm_test_softhsm *h, provhsm_test_p11 *p);
void provhsm_test_p11_close(provhsm_test_p11 *p);

/*
 * The one object of class `cls` with this CKA_ID; CK_INVALID_HANDLE when there is none
 * (or several).
 */
CK_OBJECT_HANDLE provhsm_test_p11_find(provhsm_test_p11 *p, CK_OBJECT_CLASS cls, const uint8_t *id,
                                       size_t id_len);

/*
 * Makes an EC P-256 (bits 256) or RSA (bits 2048) key pair on the token with this id,
 * the private key sensitive and not extractable unless `extractable`.
 */
int provhsm_test_p11_make_key(provhsm_test_p11 *p, int rsa, int extractable, const uint8_t *id,
                              size_t id_len, const char *label);

/* The EC P-256 public key of the pair with this id, read from its public key object. */
EVP_PKEY *provhsm_test_p11_public_key(provhsm_test_p11 *p, const uint8_t *id, size_t id_len);

/*
 * A certificate CN=cn for `subject_key` (its public half), valid for a day, signed by
 * `signer` in the name of `issuer` (issuer NULL: self-signed, signer is then the
 * subject's own private key). `ca` adds basicConstraints CA:TRUE. NULL on failure.
 */
X509 *provhsm_test_make_cert(const char *cn, EVP_PKEY *subject_key, int ca, X509 *issuer,
                             EVP_PKEY *signer);

/* The certificates of a PEM text, in order (none: an empty stack); NULL on failure. */
STACK_OF(X509) *provhsm_test_pem_chain(const char *pem);

/*
 * Puts `cert` on the token as a CKO_CERTIFICATE (CKC_X_509) token object with its
 * CKA_SUBJECT, CKA_ISSUER, CKA_VALUE, a label, and CKA_ID when id is not NULL.
 */
int provhsm_test_p11_put_cert(provhsm_test_p11 *p, X509 *cert, const uint8_t *id, size_t id_len,
                              const char *label);

/* Log capture: provhsm_test_log_capture, _clear and _seen of testutil.h. */
void provhsm_test_p11_log_capture(void);
void provhsm_test_p11_log_clear(void);
int provhsm_test_p11_log_seen(const char *text);

#endif
