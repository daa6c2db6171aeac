/*
 * libFuzzer target for what the PKCS#11 backend makes of a token's bytes
 * (src/pkcs11_parse.h): the token is a device another party provisioned. The first input
 * byte picks the parser; the rest is a list of fields, each a big-endian 16-bit length and
 * that many bytes (a length past the end takes what is left):
 *   0  CKA_EC_PARAMS, CKA_EC_POINT -> provhsm_p11_spki_from_ec
 *   1  a certificate object's CKA_VALUE -> provhsm_p11_spki_from_cert
 *   2  the key's CKA_ID, a key selector, then certificate objects (each field: one byte,
 *      odd when the object carries the key's CKA_ID, then its CKA_VALUE) ->
 *      provhsm_p11_chain_from_certs. The selector's first byte below 0x80 takes the public
 *      key of object (byte % count), so that leaves are found; otherwise the field is the
 *      SPKI itself.
 *   3  the rest, as text: a key URI from the command line or the configuration ->
 *      provhsm_p11_parse_key_uri (not cut into fields)
 * Properties: a public key produced is an EC P-256 or P-384 key that d2i_PUBKEY reads
 * back to the same bytes (and, from a certificate, the certificate's key); a chain
 * produced is made of the given certificates, each once, starts with one carrying the
 * given public key, and each next certificate issued the one before it (names and
 * signature); on failure nothing is returned. A key URI parsed names an id of at most
 * PROVHSM_P11_ID_MAX bytes and/or a NUL-terminated label that fits, the same ones p11-kit
 * reads from it, and p11-kit's own formatting of those fields parses back to them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11-kit/uri.h>

#include "fuzz_common.h"
#include "p11_wrap.h"
#include "pkcs11_parse.h"

#define MAX_FIELDS (PROVHSM_P11_CERTS_MAX + 2)

typedef struct field {
    const uint8_t *data;
    size_t len;
} field;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

/* The input after the selector byte, cut into length-prefixed fields. */
static size_t split_fields(const uint8_t *data, size_t size, field *out, size_t max)
{
    size_t n = 0, off = 0;
    while (n < max && off + 2 <= size) {
        size_t len = (size_t)data[off] << 8 | data[off + 1];
        off += 2;
        if (len > size - off)
            len = size - off;
        out[n].data = data + off;
        out[n].len = len;
        off += len;
        n++;
    }
    return n;
}

/* The SPKI is an EC P-256/P-384 key that d2i_PUBKEY reads, and writes back unchanged. */
static EVP_PKEY *check_ec_spki(const uint8_t *spki, size_t len)
{
    FUZZ_CHECK(spki != NULL && len > 0);
    const unsigned char *p = spki;
    EVP_PKEY *key = d2i_PUBKEY(NULL, &p, (long)len);
    FUZZ_CHECK(key != NULL);
    FUZZ_CHECK(p == spki + len);
    FUZZ_CHECK(EVP_PKEY_is_a(key, "EC"));
    char group[32] = "";
    FUZZ_CHECK(EVP_PKEY_get_group_name(key, group, sizeof(group), NULL) == 1);
    FUZZ_CHECK(strcmp(group, "prime256v1") == 0 || strcmp(group, "secp384r1") == 0);
    unsigned char *again = NULL;
    int again_len = i2d_PUBKEY(key, &again);
    FUZZ_CHECK(again_len > 0 && (size_t)again_len == len && memcmp(again, spki, len) == 0);
    OPENSSL_free(again);
    return key;
}

static void fuzz_ec(const field *f, size_t n)
{
    if (n < 2)
        return;
    uint8_t *spki = (uint8_t *)"untouched";
    size_t spki_len = 9;
    if (provhsm_p11_spki_from_ec(f[0].data, f[0].len, f[1].data, f[1].len, &spki, &spki_len) !=
        PROVHSM_OK) {
        FUZZ_CHECK(spki_len == 9 && memcmp(spki, "untouched", 9) == 0);
        return;
    }
    EVP_PKEY *key = check_ec_spki(spki, spki_len);
    /* the curve is the one CKA_EC_PARAMS names */
    const unsigned char *p = f[0].data;
    ASN1_OBJECT *oid = d2i_ASN1_OBJECT(NULL, &p, (long)f[0].len);
    FUZZ_CHECK(oid != NULL);
    char group[32] = "";
    FUZZ_CHECK(EVP_PKEY_get_group_name(key, group, sizeof(group), NULL) == 1);
    FUZZ_CHECK(OBJ_obj2nid(oid) == OBJ_sn2nid(group));
    ASN1_OBJECT_free(oid);
    EVP_PKEY_free(key);
    OPENSSL_free(spki);
}

static void fuzz_cert_key(const field *f, size_t n)
{
    if (n < 1)
        return;
    uint8_t *spki = (uint8_t *)"untouched";
    size_t spki_len = 9;
    if (provhsm_p11_spki_from_cert(f[0].data, f[0].len, &spki, &spki_len) != PROVHSM_OK) {
        FUZZ_CHECK(spki_len == 9 && memcmp(spki, "untouched", 9) == 0);
        return;
    }
    EVP_PKEY *key = check_ec_spki(spki, spki_len);
    const unsigned char *p = f[0].data;
    X509 *cert = d2i_X509(NULL, &p, (long)f[0].len);
    FUZZ_CHECK(cert != NULL);
    FUZZ_CHECK(EVP_PKEY_eq(X509_get0_pubkey(cert), key) == 1);
    X509_free(cert);
    EVP_PKEY_free(key);
    OPENSSL_free(spki);
}

/* The public key of certificate object `which` as DER, or NULL when it is not one. */
static unsigned char *object_key(const provhsm_p11_cert *objs, size_t which, int *len_out)
{
    const unsigned char *p = objs[which].der;
    X509 *cert = d2i_X509(NULL, &p, (long)objs[which].der_len);
    unsigned char *der = NULL;
    *len_out = cert != NULL ? i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der) : 0;
    X509_free(cert);
    return *len_out > 0 ? der : NULL;
}

/* Whether `cert` is what one of the objects holds (as OpenSSL reads it). */
static int is_an_object(const X509 *cert, const provhsm_p11_cert *objs, size_t count)
{
    int found = 0;
    for (size_t j = 0; j < count && !found; j++) {
        const unsigned char *p = objs[j].der;
        X509 *x = d2i_X509(NULL, &p, (long)objs[j].der_len);
        found = x != NULL && X509_cmp(x, cert) == 0;
        X509_free(x);
    }
    return found;
}

/* Each certificate of the chain is one of the objects, and none comes twice. */
static void check_from_objects(STACK_OF(X509) *chain, const provhsm_p11_cert *objs, size_t count)
{
    int n = sk_X509_num(chain);
    FUZZ_CHECK(n >= 1 && (size_t)n <= count);
    for (int i = 0; i < n; i++) {
        FUZZ_CHECK(is_an_object(sk_X509_value(chain, i), objs, count));
        for (int k = 0; k < i; k++)
            FUZZ_CHECK(sk_X509_value(chain, k) != sk_X509_value(chain, i));
    }
}

static void check_chain(STACK_OF(X509) *chain, const provhsm_p11_cert *objs, size_t count,
                        const uint8_t *spki, size_t spki_len)
{
    check_from_objects(chain, objs, count);
    const unsigned char *p = spki;
    EVP_PKEY *key = d2i_PUBKEY(NULL, &p, (long)spki_len);
    FUZZ_CHECK(key != NULL);
    FUZZ_CHECK(EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(chain, 0)), key) == 1);
    EVP_PKEY_free(key);
    for (int i = 1; i < sk_X509_num(chain); i++) {
        X509 *issuer = sk_X509_value(chain, i), *subject = sk_X509_value(chain, i - 1);
        FUZZ_CHECK(X509_check_issued(issuer, subject) == X509_V_OK);
        FUZZ_CHECK(X509_verify(subject, X509_get0_pubkey(issuer)) == 1);
    }
}

static void fuzz_chain(const field *f, size_t n)
{
    if (n < 3)
        return;
    const field *key_id = &f[0], *selector = &f[1];
    if (key_id->len > PROVHSM_P11_ID_MAX)
        return;
    provhsm_p11_cert objs[PROVHSM_P11_CERTS_MAX];
    size_t count = 0;
    for (size_t i = 2; i < n && count < PROVHSM_P11_CERTS_MAX; i++) {
        if (f[i].len == 0)
            continue;
        provhsm_p11_cert *o = &objs[count++];
        o->id_len = f[i].data[0] % 2 == 1 ? key_id->len : 0;
        if (o->id_len > 0)
            memcpy(o->id, key_id->data, key_id->len);
        o->der = (uint8_t *)f[i].data + 1;
        o->der_len = f[i].len - 1;
    }
    if (count == 0)
        return;
    unsigned char *chosen = NULL;
    const uint8_t *spki = selector->data;
    size_t spki_len = selector->len;
    if (selector->len > 0 && selector->data[0] < 0x80) {
        int len = 0;
        chosen = object_key(objs, selector->data[0] % count, &len);
        if (chosen == NULL)
            return;
        spki = chosen;
        spki_len = (size_t)len;
    }
    STACK_OF(X509) *chain = (STACK_OF(X509) *)&count; /* any non-NULL value to watch */
    provhsm_err err = provhsm_p11_chain_from_certs(objs, count, key_id->data, key_id->len, spki,
                                                   spki_len, "pkcs11:object=fuzz", "fuzz", &chain);
    if (err != PROVHSM_OK) {
        FUZZ_CHECK(chain == (STACK_OF(X509) *)&count);
    } else {
        check_chain(chain, objs, count, spki, spki_len);
        sk_X509_pop_free(chain, X509_free);
    }
    OPENSSL_free(chosen);
}

/* The fields are within the struct's bounds, and at least one names the key. */
static void check_keyname(const provhsm_p11_keyname *name)
{
    FUZZ_CHECK(name->id_len <= PROVHSM_P11_ID_MAX);
    FUZZ_CHECK(name->has_label == 0 || name->has_label == 1);
    FUZZ_CHECK(memchr(name->label, '\0', sizeof(name->label)) != NULL);
    if (!name->has_label)
        FUZZ_CHECK(name->label[0] == '\0');
    FUZZ_CHECK(name->id_len > 0 || name->has_label);
}

/* The name holds exactly the CKA_ID and CKA_LABEL p11-kit reads from the same text. */
static void check_as_p11_kit_reads(const char *text, const provhsm_p11_keyname *name)
{
    P11KitUri *uri = p11_kit_uri_new();
    FUZZ_CHECK(uri != NULL);
    FUZZ_CHECK(p11_kit_uri_parse(text, P11_KIT_URI_FOR_ANY, uri) == P11_KIT_URI_OK);
    CK_ATTRIBUTE *id = p11_kit_uri_get_attribute(uri, CKA_ID);
    CK_ATTRIBUTE *label = p11_kit_uri_get_attribute(uri, CKA_LABEL);
    size_t id_len = id != NULL ? id->ulValueLen : 0;
    FUZZ_CHECK(name->id_len == id_len);
    FUZZ_CHECK(id_len == 0 || memcmp(name->id, id->pValue, id_len) == 0);
    FUZZ_CHECK(name->has_label == (label != NULL));
    if (label != NULL)
        FUZZ_CHECK(strlen(name->label) == label->ulValueLen &&
                   memcmp(name->label, label->pValue, label->ulValueLen) == 0);
    p11_kit_uri_free(uri);
}

/* p11-kit's formatting of the parsed fields (type=private) parses back to them. */
static void check_round_trip(const provhsm_p11_keyname *name)
{
    P11KitUri *uri = p11_kit_uri_new();
    FUZZ_CHECK(uri != NULL);
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE attrs[3] = {{CKA_CLASS, &cls, sizeof(cls)}};
    CK_ULONG n = 1;
    if (name->id_len > 0)
        attrs[n++] = (CK_ATTRIBUTE){CKA_ID, (void *)name->id, name->id_len};
    if (name->has_label)
        attrs[n++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)name->label, strlen(name->label)};
    FUZZ_CHECK(p11_kit_uri_set_attributes(uri, attrs, n) == P11_KIT_URI_OK);
    char *text = NULL;
    FUZZ_CHECK(p11_kit_uri_format(uri, P11_KIT_URI_FOR_OBJECT, &text) == P11_KIT_URI_OK);
    provhsm_p11_keyname back;
    FUZZ_CHECK(provhsm_p11_parse_key_uri(text, &back) == PROVHSM_OK);
    FUZZ_CHECK(back.id_len == name->id_len && memcmp(back.id, name->id, name->id_len) == 0);
    FUZZ_CHECK(back.has_label == name->has_label && strcmp(back.label, name->label) == 0);
    free(text);
    p11_kit_uri_free(uri);
}

static void fuzz_key_uri(const uint8_t *data, size_t size)
{
    char *text = fuzz_text(data, size);
    provhsm_p11_keyname name, untouched;
    memset(&name, 0xa5, sizeof(name));
    untouched = name;
    if (provhsm_p11_parse_key_uri(text, &name) != PROVHSM_OK) {
        FUZZ_CHECK(memcmp(&name, &untouched, sizeof(name)) == 0);
    } else {
        check_keyname(&name);
        check_as_p11_kit_reads(text, &name);
        check_round_trip(&name);
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] % 4 == 3) {
        fuzz_key_uri(data + 1, size - 1);
        return 0;
    }
    field fields[MAX_FIELDS];
    size_t n = split_fields(data + 1, size - 1, fields, MAX_FIELDS);
    switch (data[0] % 4) {
    case 0:
        fuzz_ec(fields, n);
        break;
    case 1:
        fuzz_cert_key(fields, n);
        break;
    default:
        fuzz_chain(fields, n);
        break;
    }
    return 0;
}
