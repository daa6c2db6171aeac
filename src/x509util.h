/*
 * X.509 glue over OpenSSL: parsing chains, reading the subject CN, checking that a key
 * and a certificate belong together, generating device keys, self-signed certificates
 * and CSRs, and describing a certificate for `provhsm info`. All parsing and encoding is
 * OpenSSL's; this file only wires it together and maps errors.
 * Callers: the software backend, the admin API.
 */
#ifndef PROVHSM_X509UTIL_H
#define PROVHSM_X509UTIL_H

#include <stddef.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include "keyref.h"
#include "provhsm/provhsm.h"

/*
 * Parses one or more PEM certificates (leaf first). Rejects empty input, trailing
 * garbage that is not whitespace, and non-certificate PEM blocks.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_parse_chain(const char *pem, STACK_OF(X509) **out);

/*
 * The subject's common name as a malloc'd UTF-8 string. With several CN attributes the
 * most specific (last) one is used, as TLS libraries do. PROVHSM_E_NO_CN when absent
 * or empty or not convertible to UTF-8.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_common_name(X509 *cert, char **cn_out);

/* PROVHSM_OK when the public half of `key` equals the certificate's public key. */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_key_matches(EVP_PKEY *key, X509 *cert);

/* Generates a key of the given type. */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_generate_key(provhsm_key_type type, EVP_PKEY **out);

/* PKCS#8 PEM of a private key, in secure memory (provhsm_secure_free()). */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_key_to_pem(EVP_PKEY *key, char **pem_out);

/* Reads a PEM private key (PKCS#8 or traditional, unencrypted). */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_key_from_pem(const char *pem, EVP_PKEY **out);

/*
 * Reads a private key as the store keeps it (unencrypted PKCS#8 PEM) when its type is
 * known, e.g. "EC" or "RSA" from the certificate's public key: much faster than
 * provhsm_x509_key_from_pem(). A key of another type is PROVHSM_E_MISMATCH (not logged).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_stored_key_from_pem(const char *pem,
                                                                const char *key_type,
                                                                EVP_PKEY **out);

/*
 * PROVHSM_OK when the stored key (unencrypted PKCS#8 PEM) is the private half of the
 * certificate's public key, or is a key reference (keyref.h) carrying that public key;
 * PROVHSM_E_MISMATCH otherwise. Logs nothing: a mismatch means
 * different things to different callers, and they say which.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_stored_key_matches(const char *key_pem, X509 *cert);

/*
 * PROVHSM_OK when the key reference carries the certificate's public key,
 * PROVHSM_E_MISMATCH otherwise; logs nothing. For a reference at hand, without a trip
 * through its PEM.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_keyref_matches(const provhsm_keyref *ref, X509 *cert);

/* Self-signed certificate, CN=cn, valid from now for `days`, as malloc'd PEM. */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_self_signed(EVP_PKEY *key, const char *cn, int days,
                                                        char **pem_out);

/* PKCS#10 request with subject CN=cn, as malloc'd PEM. */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_csr(EVP_PKEY *key, const char *cn, char **pem_out);

/* Chain back to PEM, leaf first, malloc'd. */
/*
 * A chain as `x509 import` takes it: leaf first, each certificate issued by the next.
 * PROVHSM_E_INVALID_ARG (logged, naming the first pair out of order) otherwise.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_check_chain_order(STACK_OF(X509) *chain);

PROVHSM_MUST_CHECK provhsm_err provhsm_x509_chain_to_pem(STACK_OF(X509) *chain, char **pem_out);

typedef struct provhsm_cert_info {
    char subject[512]; /* RFC 2253, UTF-8 */
    char issuer[512];
    char not_before[32]; /* ISO 8601 UTC: 2026-11-28T07:00:00Z */
    char not_after[32];
    char fingerprint[96]; /* SHA-256, colon-separated uppercase hex */
    int expired;          /* notAfter < now */
    int not_yet_valid;    /* notBefore > now */
} provhsm_cert_info;

PROVHSM_MUST_CHECK provhsm_err provhsm_x509_describe(X509 *cert, provhsm_cert_info *info);

#endif
