/*
 * Key references: what provhsm hands out as the "private key" of an X.509 identity whose
 * key stays in hardware. A PEM block of our own label carrying which backend holds the
 * key, where it is there, and its public key; no private key material and no secret.
 * The OpenSSL provider (src/provider/) decodes it when the SDK's TLS layer calls
 * PEM_read_bio_PrivateKey on the alias key. The format is specified in
 * docs/key-reference.md:
 *
 *   -----BEGIN PROVHSM KEY REFERENCE-----      (base64 of the DER below)
 *   ProvhsmKeyReference ::= SEQUENCE {
 *       version   INTEGER (1),
 *       backend   UTF8String,            -- "tpm" | "pkcs11"
 *       locator   UTF8String,            -- "0x81000110" | an RFC 7512 PKCS#11 URI
 *       publicKey SubjectPublicKeyInfo   -- EC P-256 or P-384
 *   }
 *
 * The DER is read and written by OpenSSL's ASN.1 templates, the PEM armour by OpenSSL's
 * PEM code. Callers: keyref users are the provider's decoder, hwkey.c, the hardware
 * backends (which make references) and the admin API.
 */
#ifndef PROVHSM_KEYREF_H
#define PROVHSM_KEYREF_H

#include <stddef.h>
#include <stdint.h>
#include "provhsm/provhsm.h"

#define PROVHSM_KEYREF_PEM_LABEL   "PROVHSM KEY REFERENCE"
#define PROVHSM_KEYREF_VERSION     1
#define PROVHSM_KEYREF_BACKEND_MAX 16   /* bytes, with the NUL */
#define PROVHSM_KEYREF_LOCATOR_MAX 1024 /* bytes, with the NUL */

typedef struct provhsm_keyref {
    char backend[PROVHSM_KEYREF_BACKEND_MAX]; /* backend name as in the configuration */
    char *locator;                            /* malloc: handle or URI */
    uint8_t *spki;                            /* malloc: DER SubjectPublicKeyInfo */
    size_t spki_len;
    int curve_bits; /* 256 or 384, from the public key */
} provhsm_keyref;

/*
 * Makes a reference; copies its arguments. The public key must be an EC P-256 or P-384
 * SubjectPublicKeyInfo (anything else, RSA included, is PROVHSM_E_UNSUPPORTED).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_keyref_make(const char *backend, const char *locator,
                                                   const uint8_t *spki, size_t spki_len,
                                                   provhsm_keyref *out);

/* PEM text of a reference (malloc'd, NUL-terminated). */
PROVHSM_MUST_CHECK provhsm_err provhsm_keyref_to_pem(const provhsm_keyref *ref, char **pem_out);

/*
 * Parses DER (the body of the PEM block). Every field is checked: version 1, a backend
 * name of [a-z0-9], a locator of printable ASCII, an EC P-256/P-384 public key; trailing
 * bytes are refused. PROVHSM_E_CORRUPT for anything else; *out untouched on error.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_keyref_from_der(const uint8_t *der, size_t len,
                                                       provhsm_keyref *out);

/*
 * Parses PEM text holding one PROVHSM KEY REFERENCE block. PROVHSM_E_MISMATCH (not
 * logged) when the text is PEM of another label, PROVHSM_E_CORRUPT when it is ours but
 * malformed.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_keyref_from_pem(const char *pem, size_t len,
                                                       provhsm_keyref *out);

/* 1 when both name the same backend, locator and public key. */
int provhsm_keyref_equal(const provhsm_keyref *a, const provhsm_keyref *b);

/* Frees the fields; the struct may be reused. NULL is fine. */
void provhsm_keyref_clear(provhsm_keyref *ref);

#endif
