/*
 * libFuzzer target for certificate and key import (src/x509util.c), called as the admin
 * API's `x509 import` and the software backend's open call it. The first input byte picks
 * how the rest is used:
 *   0  PEM text: a chain (provhsm_x509_parse_chain, the leaf's CN,
 *      provhsm_x509_check_chain_order, provhsm_x509_describe, back to PEM and parsed
 *      again) and a private key read from the same text and matched against the leaf
 *   1  DER of a certificate, wrapped in PEM and followed by a valid certificate: the same
 *      chain path, with the mutations landing inside the DER instead of the base64
 *   2  DER of a private key wrapped as PKCS#8 PEM: read as an imported key and as the
 *      store keeps it, each matched against a valid certificate
 *   3  a common name for `x509 generate`: a CSR and a self-signed certificate
 * Properties: a chain written back parses to the same certificates; an imported key
 * matches a certificate exactly when its stored PKCS#8 form does; a generated CSR verifies
 * and a generated certificate carries the CN it was asked for.
 */
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "encoding.h"
#include "fuzz_common.h"
#include "secmem.h"
#include "x509util.h"

static EVP_PKEY *fixed_key;
static X509 *fixed_cert;
static char *fixed_cert_pem;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    STACK_OF(X509) *chain = NULL;
    FUZZ_CHECK(provhsm_x509_generate_key(PROVHSM_KEY_EC_P256, &fixed_key) == PROVHSM_OK);
    FUZZ_CHECK(provhsm_x509_self_signed(fixed_key, "fuzz-device", 30, &fixed_cert_pem) ==
               PROVHSM_OK);
    FUZZ_CHECK(provhsm_x509_parse_chain(fixed_cert_pem, &chain) == PROVHSM_OK);
    fixed_cert = sk_X509_shift(chain);
    sk_X509_pop_free(chain, X509_free);
    return 0;
}

/* PEM armour around DER, 64 base64 characters a line, followed by `tail`. */
static char *pem_wrap(const char *label, const uint8_t *der, size_t len, const char *tail)
{
    char *b64 = provhsm_base64_encode(der, len);
    FUZZ_CHECK(b64 != NULL);
    size_t b64_len = strlen(b64);
    size_t cap = b64_len + b64_len / 64 + 2 * strlen(label) + strlen(tail) + 64;
    char *pem = malloc(cap);
    FUZZ_CHECK(pem != NULL);
    size_t off = (size_t)snprintf(pem, cap, "-----BEGIN %s-----\n", label);
    for (size_t at = 0; at < b64_len; at += 64) {
        size_t n = b64_len - at < 64 ? b64_len - at : 64;
        memcpy(pem + off, b64 + at, n);
        off += n;
        pem[off++] = '\n';
    }
    snprintf(pem + off, cap - off, "-----END %s-----\n%s", label, tail);
    free(b64);
    return pem;
}

/* An imported key, and the PKCS#8 form the store keeps of it, against one certificate. */
static void key_against(EVP_PKEY *key, X509 *cert)
{
    provhsm_err matches = provhsm_x509_key_matches(key, cert);
    char *stored = NULL;
    if (provhsm_x509_key_to_pem(key, &stored) == PROVHSM_OK) {
        if (matches == PROVHSM_OK || matches == PROVHSM_E_MISMATCH)
            FUZZ_CHECK(provhsm_x509_stored_key_matches(stored, cert) == matches);
        provhsm_secure_free(stored);
    }
}

static void key_import(const char *pem, X509 *cert)
{
    EVP_PKEY *key = NULL;
    if (provhsm_x509_key_from_pem(pem, &key) == PROVHSM_OK) {
        key_against(key, cert);
        EVP_PKEY_free(key);
    }
}

/* The chain order check `x509 import` makes. */
static void chain_order(STACK_OF(X509) *chain)
{
    (void)provhsm_x509_check_chain_order(chain);
}

static int same_certificates(STACK_OF(X509) *a, STACK_OF(X509) *b)
{
    if (sk_X509_num(a) != sk_X509_num(b))
        return 0;
    for (int i = 0; i < sk_X509_num(a); i++)
        if (X509_cmp(sk_X509_value(a, i), sk_X509_value(b, i)) != 0)
            return 0;
    return 1;
}

static void chain_import(const char *pem)
{
    STACK_OF(X509) *chain = NULL, *again = NULL;
    char *cn = NULL, *written = NULL;
    provhsm_cert_info info;

    if (provhsm_x509_parse_chain(pem, &chain) != PROVHSM_OK) {
        key_import(pem, fixed_cert);
        return;
    }
    X509 *leaf = sk_X509_value(chain, 0);
    if (provhsm_x509_common_name(leaf, &cn) == PROVHSM_OK)
        FUZZ_CHECK(cn[0] != '\0');
    chain_order(chain);
    if (provhsm_x509_describe(leaf, &info) == PROVHSM_OK)
        FUZZ_CHECK(memchr(info.subject, '\0', sizeof(info.subject)) != NULL &&
                   memchr(info.issuer, '\0', sizeof(info.issuer)) != NULL);
    FUZZ_CHECK(provhsm_x509_chain_to_pem(chain, &written) == PROVHSM_OK);
    FUZZ_CHECK(provhsm_x509_parse_chain(written, &again) == PROVHSM_OK);
    FUZZ_CHECK(same_certificates(chain, again));
    key_import(pem, leaf);

    free(written);
    free(cn);
    sk_X509_pop_free(again, X509_free);
    sk_X509_pop_free(chain, X509_free);
}

static void stored_key(const char *pem)
{
    static const char *const types[] = {"EC", "RSA"};
    for (int i = 0; i < 2; i++) {
        EVP_PKEY *key = NULL;
        if (provhsm_x509_stored_key_from_pem(pem, types[i], &key) == PROVHSM_OK) {
            key_against(key, fixed_cert);
            EVP_PKEY_free(key);
        }
    }
    (void)provhsm_x509_stored_key_matches(pem, fixed_cert);
    key_import(pem, fixed_cert);
}

static void generate_for(const char *cn)
{
    size_t n = strlen(cn);
    if (n == 0 || n > 64) /* what `x509 generate` lets through */
        return;
    char *csr_pem = NULL, *cert_pem = NULL, *got = NULL;
    if (provhsm_x509_csr(fixed_key, cn, &csr_pem) == PROVHSM_OK) {
        BIO *bio = BIO_new_mem_buf(csr_pem, -1);
        X509_REQ *req = bio != NULL ? PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL) : NULL;
        FUZZ_CHECK(req != NULL && X509_REQ_verify(req, X509_REQ_get0_pubkey(req)) == 1);
        X509_REQ_free(req);
        BIO_free(bio);
        free(csr_pem);
    }
    if (provhsm_x509_self_signed(fixed_key, cn, 1, &cert_pem) == PROVHSM_OK) {
        STACK_OF(X509) *chain = NULL;
        FUZZ_CHECK(provhsm_x509_parse_chain(cert_pem, &chain) == PROVHSM_OK);
        FUZZ_CHECK(provhsm_x509_common_name(sk_X509_value(chain, 0), &got) == PROVHSM_OK);
        FUZZ_CHECK(strcmp(got, cn) == 0);
        free(got);
        sk_X509_pop_free(chain, X509_free);
        free(cert_pem);
    }
    ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    char *text = fuzz_text(data + 1, size - 1);
    char *pem = NULL;
    switch (data[0] % 4) {
    case 0:
        chain_import(text);
        break;
    case 1:
        pem = pem_wrap("CERTIFICATE", data + 1, size - 1, fixed_cert_pem);
        chain_import(pem);
        break;
    case 2:
        pem = pem_wrap("PRIVATE KEY", data + 1, size - 1, "");
        stored_key(pem);
        break;
    default:
        generate_for(text);
        break;
    }
    free(pem);
    free(text);
    ERR_clear_error();
    return 0;
}
