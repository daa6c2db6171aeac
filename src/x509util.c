/*
 * X.509 glue over OpenSSL 3: certificate chains in and out of PEM, the subject CN (the
 * device's registration id), key/certificate matching, device key generation, PKCS#8
 * key PEM, self-signed certificates, CSRs and the summary `provhsm info` prints. All
 * ASN.1, PEM and signing is OpenSSL's; this file wires the calls together, logs
 * OpenSSL's error queue where a call fails and maps failures to provhsm_err.
 * Callers: the software backend and the admin API. Nothing is kept static.
 *
 * Error mapping: malformed certificates and keys -> PROVHSM_E_CORRUPT; an encrypted
 * private key -> PROVHSM_E_INVALID_ARG (we never prompt for a passphrase); failed
 * generation, signing or encoding -> PROVHSM_E_CRYPTO.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/decoder.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "encoding.h"
#include "log.h"
#include "secmem.h"
#include "keyref.h"
#include "x509util.h"

#define MOD "x509"

/* Copies what a memory BIO holds into a new malloc'd string. */
static provhsm_err bio_to_string(BIO *bio, char **out)
{
    char *data = NULL;
    long len = BIO_get_mem_data(bio, &data);
    if (len < 0 || data == NULL)
        return PROVHSM_E_CRYPTO;
    char *copy = malloc((size_t)len + 1);
    if (copy == NULL)
        return PROVHSM_E_NOMEM;
    memcpy(copy, data, (size_t)len);
    copy[len] = '\0';
    *out = copy;
    return PROVHSM_OK;
}

/* ---- parsing -------------------------------------------------------------- */

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/* The PEM labels PEM_read_bio_X509 accepts as a certificate. */
static int starts_with_cert_block(const char *p)
{
    static const char *const begins[] = {"-----BEGIN CERTIFICATE-----",
                                         "-----BEGIN X509 CERTIFICATE-----"};
    for (size_t i = 0; i < sizeof(begins) / sizeof(begins[0]); i++)
        if (strncmp(p, begins[i], strlen(begins[i])) == 0)
            return 1;
    return 0;
}

/* clang-format would space STACK_OF(X509) ** as a multiplication. */
/* clang-format off */
provhsm_err provhsm_x509_parse_chain(const char *pem, STACK_OF(X509) **out)
/* clang-format on */
{
    provhsm_err err = PROVHSM_E_CORRUPT;
    STACK_OF(X509) *chain = NULL;
    BIO *bio = NULL;
    X509 *cert = NULL;
    size_t total;

    if (pem == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    total = strlen(pem);
    if (total > INT_MAX) {
        PH_ERR(MOD, "certificate chain of %zu bytes is too large", total);
        return PROVHSM_E_INVALID_ARG;
    }
    chain = sk_X509_new_null();
    bio = BIO_new_mem_buf(pem, (int)total);
    if (chain == NULL || bio == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    /*
     * PEM_read_bio_X509 silently skips text and PEM blocks of other types in front of a
     * certificate, so before each read we look at what is left: only whitespace (done)
     * or a certificate header. This also means we never read past the last block, so
     * no end-of-input "no start line" error lands in the queue.
     */
    for (;;) {
        size_t pos = total - (size_t)BIO_pending(bio);
        while (pos < total && is_space(pem[pos]))
            pos++;
        if (pos == total)
            break;
        if (!starts_with_cert_block(pem + pos)) {
            int n = sk_X509_num(chain);
            if (strncmp(pem + pos, "-----BEGIN ", 11) == 0)
                PH_ERR(MOD, "certificate chain: PEM block %d is not a certificate", n + 1);
            else if (n == 0)
                PH_ERR(MOD, "certificate chain: no PEM certificate at the start");
            else
                PH_ERR(MOD, "certificate chain: unexpected text after certificate %d", n);
            goto cleanup;
        }
        cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (cert == NULL) {
            provhsm_log_openssl(MOD, "PEM_read_bio_X509");
            goto cleanup;
        }
        if (!sk_X509_push(chain, cert)) {
            err = PROVHSM_E_NOMEM;
            goto cleanup;
        }
        cert = NULL;
    }
    if (sk_X509_num(chain) == 0) {
        PH_ERR(MOD, "certificate chain is empty");
        goto cleanup;
    }
    *out = chain;
    chain = NULL;
    err = PROVHSM_OK;

cleanup:
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
    BIO_free(bio);
    return err;
}

provhsm_err provhsm_x509_common_name(X509 *cert, char **cn_out)
{
    provhsm_err err = PROVHSM_E_NO_CN;
    unsigned char *utf8 = NULL;
    char *cn = NULL;
    int idx = -1, next, len;

    if (cert == NULL || cn_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    const X509_NAME *subject = X509_get_subject_name(cert);
    if (subject == NULL) {
        PH_ERR(MOD, "certificate has no subject");
        goto cleanup;
    }
    /* The last CN is the most specific one. */
    while ((next = X509_NAME_get_index_by_NID(subject, NID_commonName, idx)) >= 0)
        idx = next;
    if (idx < 0) {
        PH_ERR(MOD, "certificate subject has no common name (CN)");
        goto cleanup;
    }
    const ASN1_STRING *data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
    len = ASN1_STRING_to_UTF8(&utf8, data);
    if (len < 0) {
        provhsm_log_openssl(MOD, "ASN1_STRING_to_UTF8");
        PH_ERR(MOD, "certificate common name cannot be converted to UTF-8");
        goto cleanup;
    }
    if (len == 0) {
        PH_ERR(MOD, "certificate common name is empty");
        goto cleanup;
    }
    if (memchr(utf8, '\0', (size_t)len) != NULL) {
        PH_ERR(MOD, "certificate common name contains a NUL character");
        goto cleanup;
    }
    cn = malloc((size_t)len + 1);
    if (cn == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    memcpy(cn, utf8, (size_t)len);
    cn[len] = '\0';
    *cn_out = cn;
    err = PROVHSM_OK;

cleanup:
    OPENSSL_free(utf8);
    return err;
}

provhsm_err provhsm_x509_key_matches(EVP_PKEY *key, X509 *cert)
{
    if (key == NULL || cert == NULL)
        return PROVHSM_E_INVALID_ARG;
    EVP_PKEY *cert_key = X509_get0_pubkey(cert);
    if (cert_key == NULL) {
        provhsm_log_openssl(MOD, "X509_get0_pubkey");
        return PROVHSM_E_CORRUPT;
    }
    /* Different key types make EVP_PKEY_eq queue an error; that is just "no match". */
    ERR_set_mark();
    int eq = EVP_PKEY_eq(key, cert_key);
    ERR_pop_to_mark();
    if (eq != 1) {
        PH_ERR(MOD, "the private key does not belong to the certificate's public key");
        return PROVHSM_E_MISMATCH;
    }
    return PROVHSM_OK;
}

/* ---- keys ------------------------------------------------------------------- */

provhsm_err provhsm_x509_generate_key(provhsm_key_type type, EVP_PKEY **out)
{
    EVP_PKEY *key = NULL;
    size_t bits = 0;

    if (out == NULL)
        return PROVHSM_E_INVALID_ARG;
    switch (type) {
    case PROVHSM_KEY_EC_P256:
        key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        break;
    case PROVHSM_KEY_EC_P384:
        key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
        break;
    case PROVHSM_KEY_RSA_2048:
        bits = 2048;
        break;
    case PROVHSM_KEY_RSA_3072:
        bits = 3072;
        break;
    case PROVHSM_KEY_RSA_4096:
        bits = 4096;
        break;
    default:
        PH_ERR(MOD, "unknown key type %d", (int)type);
        return PROVHSM_E_INVALID_ARG;
    }
    if (bits != 0)
        key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", bits);
    if (key == NULL) {
        provhsm_log_openssl(MOD, "EVP_PKEY_Q_keygen");
        return PROVHSM_E_CRYPTO;
    }
    *out = key;
    return PROVHSM_OK;
}

provhsm_err provhsm_x509_key_to_pem(EVP_PKEY *key, char **pem_out)
{
    provhsm_err err = PROVHSM_E_CRYPTO;
    char *data = NULL;
    char *pem = NULL;
    long len;

    if (key == NULL || pem_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    /* A secure-memory BIO: its buffer is cleansed when it grows and when it is freed. */
    BIO *bio = BIO_new(BIO_s_secmem());
    if (bio == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    /* No cipher: OpenSSL 3 writes an unencrypted PKCS#8 "PRIVATE KEY" block. */
    if (!PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)) {
        provhsm_log_openssl(MOD, "PEM_write_bio_PrivateKey");
        goto cleanup;
    }
    len = BIO_get_mem_data(bio, &data);
    if (len <= 0 || data == NULL) {
        PH_ERR(MOD, "PEM_write_bio_PrivateKey produced no output");
        goto cleanup;
    }
    pem = provhsm_secure_alloc((size_t)len + 1);
    if (pem == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    memcpy(pem, data, (size_t)len);
    pem[len] = '\0';
    *pem_out = pem;
    err = PROVHSM_OK;

cleanup:
    BIO_free(bio);
    return err;
}

/* Refuses to give a passphrase and notes that one was asked for. */
static int no_passphrase_cb(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    *(int *)u = 1;
    return -1;
}

provhsm_err provhsm_x509_key_from_pem(const char *pem, EVP_PKEY **out)
{
    provhsm_err err = PROVHSM_E_CORRUPT;
    int asked = 0;
    EVP_PKEY *key = NULL;

    if (pem == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    BIO *bio = BIO_new_mem_buf(pem, -1);
    if (bio == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    /* Our callback, never OpenSSL's default one, which would prompt on a terminal. */
    key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase_cb, &asked);
    if (key == NULL) {
        if (asked) {
            ERR_clear_error();
            PH_ERR(MOD, "the private key is encrypted; encrypted keys are not supported, "
                        "import it unencrypted (it is stored encrypted)");
            err = PROVHSM_E_INVALID_ARG;
        } else {
            provhsm_log_openssl(MOD, "PEM_read_bio_PrivateKey");
            PH_ERR(MOD, "no readable PEM private key");
        }
        goto cleanup;
    }
    *out = key;
    err = PROVHSM_OK;

cleanup:
    BIO_free(bio);
    return err;
}

provhsm_err provhsm_x509_stored_key_from_pem(const char *pem, const char *key_type, EVP_PKEY **out)
{
    EVP_PKEY *key = NULL;
    if (pem == NULL || key_type == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    /*
     * Naming the input exactly (PEM, PKCS#8, one key type) lets OpenSSL try one decoder
     * instead of all of them: a third of the time of PEM_read_bio_PrivateKey, which is
     * most of what an X.509 create costs.
     */
    OSSL_DECODER_CTX *dctx = OSSL_DECODER_CTX_new_for_pkey(&key, "PEM", "PrivateKeyInfo", key_type,
                                                           OSSL_KEYMGMT_SELECT_KEYPAIR, NULL, NULL);
    const unsigned char *data = (const unsigned char *)pem;
    size_t len = strlen(pem);
    int ok = dctx != NULL && OSSL_DECODER_from_data(dctx, &data, &len) == 1 && key != NULL;
    OSSL_DECODER_CTX_free(dctx);
    if (!ok) {
        EVP_PKEY_free(key);
        ERR_clear_error();
        PH_DEBUG(MOD, "the stored private key is not an unencrypted PKCS#8 %s key", key_type);
        return PROVHSM_E_MISMATCH;
    }
    *out = key;
    return PROVHSM_OK;
}

provhsm_err provhsm_x509_keyref_matches(const provhsm_keyref *ref, X509 *cert)
{
    if (ref == NULL || ref->spki == NULL || cert == NULL)
        return PROVHSM_E_MISMATCH;
    const unsigned char *p = ref->spki;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, (long)ref->spki_len);
    provhsm_err err = pub != NULL && EVP_PKEY_eq(pub, X509_get0_pubkey(cert)) == 1
                          ? PROVHSM_OK
                          : PROVHSM_E_MISMATCH;
    EVP_PKEY_free(pub);
    ERR_clear_error();
    return err;
}

provhsm_err provhsm_x509_stored_key_matches(const char *key_pem, X509 *cert)
{
    EVP_PKEY *key = NULL;
    provhsm_keyref ref = {0};
    if (key_pem == NULL || cert == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err ref_err = provhsm_keyref_from_pem(key_pem, strlen(key_pem), &ref);
    if (ref_err != PROVHSM_E_MISMATCH) {
        if (ref_err == PROVHSM_OK)
            ref_err = provhsm_x509_keyref_matches(&ref, cert);
        provhsm_keyref_clear(&ref);
        return ref_err == PROVHSM_OK ? PROVHSM_OK : PROVHSM_E_MISMATCH;
    }
    const char *key_type = EVP_PKEY_get0_type_name(X509_get0_pubkey(cert));
    provhsm_err err = key_type != NULL ? provhsm_x509_stored_key_from_pem(key_pem, key_type, &key)
                                       : PROVHSM_E_MISMATCH;
    if (err == PROVHSM_OK)
        err = EVP_PKEY_eq(key, X509_get0_pubkey(cert)) == 1 ? PROVHSM_OK : PROVHSM_E_MISMATCH;
    EVP_PKEY_free(key);
    ERR_clear_error();
    return err;
}

/* ---- certificates and requests ------------------------------------------------ */

static X509_NAME *name_with_cn(const char *cn)
{
    X509_NAME *name = X509_NAME_new();
    if (name == NULL)
        return NULL;
    /* OpenSSL enforces the CN length bounds (1..64) here. */
    if (!X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn,
                                    -1, -1, 0)) {
        provhsm_log_openssl(MOD, "X509_NAME_add_entry_by_NID(CN)");
        X509_NAME_free(name);
        return NULL;
    }
    return name;
}

static int add_ext(X509 *cert, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
    if (ext == NULL) {
        provhsm_log_openssl(MOD, "X509V3_EXT_nconf_nid");
        return 0;
    }
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    if (!ok)
        provhsm_log_openssl(MOD, "X509_add_ext");
    return ok;
}

/* Random positive serial of exactly 16 octets: 127 bits with the top one set. */
static int set_random_serial(X509 *cert)
{
    BIGNUM *bn = BN_new();
    int ok = bn != NULL && BN_rand(bn, 127, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) &&
             BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
    if (!ok)
        provhsm_log_openssl(MOD, "random serial number");
    BN_free(bn);
    return ok;
}

provhsm_err provhsm_x509_self_signed(EVP_PKEY *key, const char *cn, int days, char **pem_out)
{
    provhsm_err err = PROVHSM_E_CRYPTO;
    X509 *cert = NULL;
    X509_NAME *name = NULL;
    BIO *bio = NULL;
    X509V3_CTX ctx;

    if (key == NULL || cn == NULL || *cn == '\0' || days <= 0 || pem_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    int is_rsa = EVP_PKEY_is_a(key, "RSA");
    cert = X509_new();
    name = name_with_cn(cn);
    if (cert == NULL || name == NULL)
        goto cleanup;
    if (!X509_set_version(cert, X509_VERSION_3) || !set_random_serial(cert) ||
        !X509_set_subject_name(cert, name) || !X509_set_issuer_name(cert, name) ||
        X509_gmtime_adj(X509_getm_notBefore(cert), 0) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(cert), days, 0, NULL) == NULL ||
        !X509_set_pubkey(cert, key)) {
        provhsm_log_openssl(MOD, "building the certificate");
        goto cleanup;
    }
    /* The subject key identifier is a hash of the public key set just above. */
    X509V3_set_ctx(&ctx, cert, cert, NULL, NULL, 0);
    if (!add_ext(cert, &ctx, NID_basic_constraints, "critical,CA:FALSE") ||
        !add_ext(cert, &ctx, NID_key_usage,
                 is_rsa ? "critical,digitalSignature,keyEncipherment"
                        : "critical,digitalSignature") ||
        !add_ext(cert, &ctx, NID_ext_key_usage, "clientAuth") ||
        !add_ext(cert, &ctx, NID_subject_key_identifier, "hash"))
        goto cleanup;
    if (X509_sign(cert, key, EVP_sha256()) <= 0) {
        provhsm_log_openssl(MOD, "X509_sign");
        goto cleanup;
    }
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL || !PEM_write_bio_X509(bio, cert)) {
        provhsm_log_openssl(MOD, "PEM_write_bio_X509");
        goto cleanup;
    }
    err = bio_to_string(bio, pem_out);

cleanup:
    BIO_free(bio);
    X509_NAME_free(name);
    X509_free(cert);
    return err;
}

provhsm_err provhsm_x509_csr(EVP_PKEY *key, const char *cn, char **pem_out)
{
    provhsm_err err = PROVHSM_E_CRYPTO;
    X509_REQ *req = NULL;
    X509_NAME *name = NULL;
    BIO *bio = NULL;

    if (key == NULL || cn == NULL || *cn == '\0' || pem_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    req = X509_REQ_new();
    name = name_with_cn(cn);
    if (req == NULL || name == NULL)
        goto cleanup;
    if (!X509_REQ_set_version(req, X509_REQ_VERSION_1) || !X509_REQ_set_subject_name(req, name) ||
        !X509_REQ_set_pubkey(req, key)) {
        provhsm_log_openssl(MOD, "building the certificate request");
        goto cleanup;
    }
    if (X509_REQ_sign(req, key, EVP_sha256()) <= 0) {
        provhsm_log_openssl(MOD, "X509_REQ_sign");
        goto cleanup;
    }
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL || !PEM_write_bio_X509_REQ(bio, req)) {
        provhsm_log_openssl(MOD, "PEM_write_bio_X509_REQ");
        goto cleanup;
    }
    err = bio_to_string(bio, pem_out);

cleanup:
    BIO_free(bio);
    X509_NAME_free(name);
    X509_REQ_free(req);
    return err;
}

/* clang-format off */
provhsm_err provhsm_x509_chain_to_pem(STACK_OF(X509) *chain, char **pem_out)
/* clang-format on */
{
    provhsm_err err = PROVHSM_E_CRYPTO;
    BIO *bio = NULL;

    if (chain == NULL || sk_X509_num(chain) <= 0 || pem_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    for (int i = 0; i < sk_X509_num(chain); i++) {
        if (!PEM_write_bio_X509(bio, sk_X509_value(chain, i))) {
            provhsm_log_openssl(MOD, "PEM_write_bio_X509");
            goto cleanup;
        }
    }
    err = bio_to_string(bio, pem_out);

cleanup:
    BIO_free(bio);
    return err;
}

/* ---- describe ------------------------------------------------------------------ */

/*
 * X509_NAME_print_ex into buf. RFC 2253 escaping, but bytes >= 0x80 are left alone so
 * the result is UTF-8. A name too long for buf is cut at a character boundary.
 */
static int name_to_field(const X509_NAME *name, char *buf, size_t size)
{
    char *data = NULL;
    BIO *bio = BIO_new(BIO_s_mem());
    int ok = bio != NULL &&
             X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0;
    if (ok) {
        long len = BIO_get_mem_data(bio, &data);
        size_t n = len > 0 ? (size_t)len : 0;
        if (n >= size) {
            n = size - 1;
            while (n > 0 && ((unsigned char)data[n] & 0xc0) == 0x80)
                n--; /* data[n] would be a continuation byte of a cut character */
        }
        if (n > 0)
            memcpy(buf, data, n);
        buf[n] = '\0';
    } else {
        provhsm_log_openssl(MOD, "X509_NAME_print_ex");
    }
    BIO_free(bio);
    return ok;
}

static int time_to_field(const ASN1_TIME *t, char *buf, size_t size)
{
    struct tm tm;
    if (t == NULL || !ASN1_TIME_to_tm(t, &tm)) {
        provhsm_log_openssl(MOD, "ASN1_TIME_to_tm");
        return 0;
    }
    return strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) > 0;
}

provhsm_err provhsm_x509_describe(X509 *cert, provhsm_cert_info *info)
{
    provhsm_err err = PROVHSM_E_CORRUPT;
    provhsm_cert_info tmp;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    char *hex = NULL;

    if (cert == NULL || info == NULL)
        return PROVHSM_E_INVALID_ARG;
    memset(&tmp, 0, sizeof(tmp));
    if (!name_to_field(X509_get_subject_name(cert), tmp.subject, sizeof(tmp.subject)) ||
        !name_to_field(X509_get_issuer_name(cert), tmp.issuer, sizeof(tmp.issuer)) ||
        !time_to_field(X509_get0_notBefore(cert), tmp.not_before, sizeof(tmp.not_before)) ||
        !time_to_field(X509_get0_notAfter(cert), tmp.not_after, sizeof(tmp.not_after)))
        goto cleanup;
    if (!X509_digest(cert, EVP_sha256(), md, &md_len)) {
        provhsm_log_openssl(MOD, "X509_digest");
        err = PROVHSM_E_CRYPTO;
        goto cleanup;
    }
    hex = provhsm_hex_encode(md, md_len, 1);
    if (hex == NULL || strlen(hex) >= sizeof(tmp.fingerprint)) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    memcpy(tmp.fingerprint, hex, strlen(hex) + 1);
    /* X509_cmp_current_time: -1 earlier than or equal to now, 1 later, 0 on error. */
    int after = X509_cmp_current_time(X509_get0_notAfter(cert));
    int before = X509_cmp_current_time(X509_get0_notBefore(cert));
    if (after == 0 || before == 0) {
        PH_ERR(MOD, "certificate validity times cannot be compared with the current time");
        goto cleanup;
    }
    tmp.expired = after < 0;
    tmp.not_yet_valid = before > 0;
    *info = tmp;
    err = PROVHSM_OK;

cleanup:
    free(hex);
    return err;
}

provhsm_err provhsm_x509_check_chain_order(STACK_OF(X509) *chain)
{
    if (chain == NULL)
        return PROVHSM_E_INVALID_ARG;
    for (int i = 0; i + 1 < sk_X509_num(chain); i++) {
        if (X509_check_issued(sk_X509_value(chain, i + 1), sk_X509_value(chain, i)) != X509_V_OK) {
            PH_ERR(MOD,
                   "certificate %d of the chain is not issued by certificate %d: the "
                   "chain must be leaf first, then its issuers in order",
                   i + 1, i + 2);
            return PROVHSM_E_INVALID_ARG;
        }
    }
    return PROVHSM_OK;
}
