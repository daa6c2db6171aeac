/*
 * Key references (keyref.h): DER through OpenSSL's ASN.1 templates, PEM armour through
 * OpenSSL's PEM code. The public key is checked with EC_GROUP/EC_POINT directly rather
 * than decoded into an EVP_PKEY: the decoder framework may reach our own provider, which
 * itself calls into this file, and the check needs nothing beyond the curve and the point.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "keyref.h"
#include "log.h"

#define MOD "keyref"

typedef struct provhsm_keyref_asn1 {
    ASN1_INTEGER *version;
    ASN1_UTF8STRING *backend;
    ASN1_UTF8STRING *locator;
    X509_PUBKEY *public_key;
} provhsm_keyref_asn1;

/* The template macros are not C statements: kept out of clang-format's hands. */
// clang-format off
ASN1_SEQUENCE(provhsm_keyref_asn1) = {
    ASN1_SIMPLE(provhsm_keyref_asn1, version, ASN1_INTEGER),
    ASN1_SIMPLE(provhsm_keyref_asn1, backend, ASN1_UTF8STRING),
    ASN1_SIMPLE(provhsm_keyref_asn1, locator, ASN1_UTF8STRING),
    ASN1_SIMPLE(provhsm_keyref_asn1, public_key, X509_PUBKEY),
} static_ASN1_SEQUENCE_END(provhsm_keyref_asn1)

#define KEYREF_ITEM ASN1_ITEM_rptr(provhsm_keyref_asn1)

static int backend_name_valid(const unsigned char *s, size_t len);
// clang-format on

static int backend_name_valid(const unsigned char *s, size_t len)
{
    if (len == 0 || len >= PROVHSM_KEYREF_BACKEND_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

static int locator_valid(const unsigned char *s, size_t len)
{
    if (len == 0 || len >= PROVHSM_KEYREF_LOCATOR_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return 0;
    return 1;
}

/* Curve size in bits (256, 384) of an EC P-256/P-384 key with an uncompressed point, or 0. */
static int spki_curve_bits(const X509_PUBKEY *pub)
{
    ASN1_OBJECT *alg = NULL;
    const unsigned char *point = NULL;
    int point_len = 0;
    X509_ALGOR *algor = NULL;
    const void *param = NULL;
    int param_type = 0;
    const ASN1_OBJECT *curve = NULL;

    if (!X509_PUBKEY_get0_param(&alg, &point, &point_len, &algor, pub) ||
        OBJ_obj2nid(alg) != NID_X9_62_id_ecPublicKey || algor == NULL)
        return 0;
    X509_ALGOR_get0(NULL, &param_type, &param, algor);
    if (param_type != V_ASN1_OBJECT)
        return 0; /* explicit curve parameters or none: not ours */
    curve = param;
    int nid = OBJ_obj2nid(curve);
    int bits = nid == NID_X9_62_prime256v1 ? 256 : nid == NID_secp384r1 ? 384 : 0;
    if (bits == 0 || point_len != 1 + 2 * (bits / 8) || point[0] != 0x04)
        return 0;

    EC_GROUP *group = EC_GROUP_new_by_curve_name(nid);
    EC_POINT *ecpoint = group != NULL ? EC_POINT_new(group) : NULL;
    int ok = ecpoint != NULL &&
             EC_POINT_oct2point(group, ecpoint, point, (size_t)point_len, NULL) == 1 &&
             EC_POINT_is_on_curve(group, ecpoint, NULL) == 1 &&
             !EC_POINT_is_at_infinity(group, ecpoint);
    EC_POINT_free(ecpoint);
    EC_GROUP_free(group);
    return ok ? bits : 0;
}

static int spki_bits_from_der(const uint8_t *spki, size_t len)
{
    const unsigned char *p = spki;
    if (spki == NULL || len == 0 || len > 4096)
        return 0;
    X509_PUBKEY *pub = d2i_X509_PUBKEY(NULL, &p, (long)len);
    int bits = 0;
    if (pub != NULL && p == spki + len)
        bits = spki_curve_bits(pub);
    X509_PUBKEY_free(pub);
    return bits;
}

provhsm_err provhsm_keyref_make(const char *backend, const char *locator, const uint8_t *spki,
                                size_t spki_len, provhsm_keyref *out)
{
    if (backend == NULL || locator == NULL || spki == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (!backend_name_valid((const unsigned char *)backend, strlen(backend)) ||
        !locator_valid((const unsigned char *)locator, strlen(locator))) {
        PH_ERR(MOD,
               "a key reference needs a backend name of [a-z0-9] (under %d bytes) and a "
               "printable locator (under %d bytes)",
               PROVHSM_KEYREF_BACKEND_MAX, PROVHSM_KEYREF_LOCATOR_MAX);
        return PROVHSM_E_INVALID_ARG;
    }
    int bits = spki_bits_from_der(spki, spki_len);
    if (bits == 0) {
        PH_ERR(MOD, "a key reference's public key must be EC P-256 or P-384 (uncompressed "
                    "point); other keys cannot be used from hardware");
        return PROVHSM_E_UNSUPPORTED;
    }
    provhsm_keyref ref = {.curve_bits = bits};
    ref.locator = strdup(locator);
    ref.spki = malloc(spki_len);
    if (ref.locator == NULL || ref.spki == NULL) {
        provhsm_keyref_clear(&ref);
        return PROVHSM_E_NOMEM;
    }
    memcpy(ref.backend, backend, strlen(backend) + 1);
    memcpy(ref.spki, spki, spki_len);
    ref.spki_len = spki_len;
    *out = ref;
    return PROVHSM_OK;
}

static provhsm_err keyref_to_der(const provhsm_keyref *ref, unsigned char **der_out, int *len_out)
{
    provhsm_err err = PROVHSM_E_CRYPTO;
    provhsm_keyref_asn1 *asn = (provhsm_keyref_asn1 *)ASN1_item_new(KEYREF_ITEM);
    const unsigned char *p = ref->spki;

    if (asn == NULL)
        return PROVHSM_E_NOMEM;
    X509_PUBKEY_free(asn->public_key);
    asn->public_key = d2i_X509_PUBKEY(NULL, &p, (long)ref->spki_len);
    if (asn->public_key == NULL || !ASN1_INTEGER_set(asn->version, PROVHSM_KEYREF_VERSION) ||
        !ASN1_STRING_set(asn->backend, ref->backend, -1) ||
        !ASN1_STRING_set(asn->locator, ref->locator, -1))
        goto out;
    unsigned char *der = NULL;
    int len = ASN1_item_i2d((ASN1_VALUE *)asn, &der, KEYREF_ITEM);
    if (len <= 0)
        goto out;
    *der_out = der;
    *len_out = len;
    err = PROVHSM_OK;
out:
    ASN1_item_free((ASN1_VALUE *)asn, KEYREF_ITEM);
    if (err != PROVHSM_OK)
        provhsm_log_openssl(MOD, "encoding a key reference");
    return err;
}

provhsm_err provhsm_keyref_to_pem(const provhsm_keyref *ref, char **pem_out)
{
    if (ref == NULL || pem_out == NULL || ref->locator == NULL || ref->spki == NULL)
        return PROVHSM_E_INVALID_ARG;
    unsigned char *der = NULL;
    int der_len = 0;
    provhsm_err err = keyref_to_der(ref, &der, &der_len);
    if (err != PROVHSM_OK)
        return err;

    err = PROVHSM_E_CRYPTO;
    BIO *bio = BIO_new(BIO_s_mem());
    char *data = NULL;
    if (bio != NULL && PEM_write_bio(bio, PROVHSM_KEYREF_PEM_LABEL, "", der, der_len) > 0) {
        long n = BIO_get_mem_data(bio, &data);
        char *pem = n > 0 ? malloc((size_t)n + 1) : NULL;
        if (pem != NULL) {
            memcpy(pem, data, (size_t)n);
            pem[n] = '\0';
            *pem_out = pem;
            err = PROVHSM_OK;
        } else {
            err = PROVHSM_E_NOMEM;
        }
    }
    BIO_free(bio);
    OPENSSL_free(der);
    return err;
}

/* Copies an ASN.1 string into a NUL-terminated buffer after checking its characters. */
static int copy_checked(const ASN1_UTF8STRING *s, int (*valid)(const unsigned char *, size_t),
                        char *dst)
{
    const unsigned char *bytes = ASN1_STRING_get0_data(s);
    int len = ASN1_STRING_length(s);
    if (bytes == NULL || len <= 0 || !valid(bytes, (size_t)len))
        return 0;
    memcpy(dst, bytes, (size_t)len);
    dst[len] = '\0';
    return 1;
}

static provhsm_err keyref_from_asn1(const provhsm_keyref_asn1 *asn, provhsm_keyref *out)
{
    provhsm_keyref ref = {0};
    int64_t version = 0;
    if (!ASN1_INTEGER_get_int64(&version, asn->version) || version != PROVHSM_KEYREF_VERSION)
        return PROVHSM_E_CORRUPT;
    if (!copy_checked(asn->backend, backend_name_valid, ref.backend))
        return PROVHSM_E_CORRUPT;
    ref.curve_bits = spki_curve_bits(asn->public_key);
    if (ref.curve_bits == 0)
        return PROVHSM_E_CORRUPT;
    ref.locator = malloc((size_t)ASN1_STRING_length(asn->locator) + 1);
    if (ref.locator == NULL)
        return PROVHSM_E_NOMEM;
    if (!copy_checked(asn->locator, locator_valid, ref.locator)) {
        free(ref.locator);
        return PROVHSM_E_CORRUPT;
    }
    unsigned char *spki = NULL;
    int spki_len = i2d_X509_PUBKEY(asn->public_key, &spki);
    if (spki_len <= 0) {
        free(ref.locator);
        return PROVHSM_E_CORRUPT;
    }
    ref.spki = malloc((size_t)spki_len);
    if (ref.spki == NULL) {
        OPENSSL_free(spki);
        free(ref.locator);
        return PROVHSM_E_NOMEM;
    }
    memcpy(ref.spki, spki, (size_t)spki_len);
    ref.spki_len = (size_t)spki_len;
    OPENSSL_free(spki);
    *out = ref;
    return PROVHSM_OK;
}

provhsm_err provhsm_keyref_from_der(const uint8_t *der, size_t len, provhsm_keyref *out)
{
    if (der == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (len == 0 || len > 8192)
        return PROVHSM_E_CORRUPT;
    const unsigned char *p = der;
    provhsm_keyref_asn1 *asn =
        (provhsm_keyref_asn1 *)ASN1_item_d2i(NULL, &p, (long)len, KEYREF_ITEM);
    provhsm_err err = PROVHSM_E_CORRUPT;
    if (asn != NULL && p == der + len)
        err = keyref_from_asn1(asn, out);
    ASN1_item_free((ASN1_VALUE *)asn, KEYREF_ITEM);
    /* a malformed reference is reported by the caller, which knows where it came from */
    ERR_clear_error();
    return err;
}

/* 1 when `text` (not NUL-terminated) holds our PEM begin line. */
static int has_our_begin_line(const char *text, size_t len)
{
    static const char marker[] = "-----BEGIN " PROVHSM_KEYREF_PEM_LABEL "-----";
    size_t mlen = sizeof(marker) - 1;
    for (size_t i = 0; i + mlen <= len; i++)
        if (text[i] == '-' && memcmp(text + i, marker, mlen) == 0)
            return 1;
    return 0;
}

provhsm_err provhsm_keyref_from_pem(const char *pem, size_t len, provhsm_keyref *out)
{
    if (pem == NULL || out == NULL || len > INT32_MAX)
        return PROVHSM_E_INVALID_ARG;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL)
        return PROVHSM_E_NOMEM;
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL;
    long data_len = 0;
    provhsm_err err;

    if (PEM_read_bio(bio, &name, &header, &data, &data_len) != 1)
        err = has_our_begin_line(pem, len) ? PROVHSM_E_CORRUPT : PROVHSM_E_MISMATCH;
    else if (strcmp(name, PROVHSM_KEYREF_PEM_LABEL) != 0)
        err = PROVHSM_E_MISMATCH;
    else if (header[0] != '\0')
        err = PROVHSM_E_CORRUPT; /* no encryption or other headers in a reference */
    else
        err = provhsm_keyref_from_der(data, (size_t)data_len, out);
    ERR_clear_error();
    if (err == PROVHSM_E_CORRUPT)
        PH_ERR(MOD, "malformed " PROVHSM_KEYREF_PEM_LABEL " (see docs/key-reference.md)");
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    BIO_free(bio);
    return err;
}

int provhsm_keyref_equal(const provhsm_keyref *a, const provhsm_keyref *b)
{
    if (a == NULL || b == NULL || a->locator == NULL || b->locator == NULL)
        return 0;
    return strcmp(a->backend, b->backend) == 0 && strcmp(a->locator, b->locator) == 0 &&
           a->spki_len == b->spki_len && memcmp(a->spki, b->spki, a->spki_len) == 0;
}

void provhsm_keyref_clear(provhsm_keyref *ref)
{
    if (ref == NULL)
        return;
    free(ref->locator);
    free(ref->spki);
    memset(ref, 0, sizeof(*ref));
}
