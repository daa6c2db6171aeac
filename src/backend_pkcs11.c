/*
 * The PKCS#11 backend ([x509] backend = pkcs11): X.509 device keys on a token (a secure
 * element, a smart card, SoftHSM2). The key pair is made on the token, private key
 * sensitive and not extractable, and named by its RFC 7512 URI in the key reference
 * (keyref.h); the chain and the reference are kept in the store like a software identity
 * (x509_stored.h). The token is reached only through p11_wrap.c; this file decides what
 * the token's answers mean and builds the public key with OpenSSL.
 *
 * No secret goes with the reference: the PIN comes from the configuration each time the
 * process logs in (secret_out is always NULL).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11-kit/pkcs11.h>

#include "backend.h"
#include "keyref.h"
#include "log.h"
#include "p11_wrap.h"
#include "pkcs11_parse.h"
#include "x509_stored.h"
#include "x509util.h"

#define MOD "pkcs11"

#define KEY_ID_BYTES 16

static provhsm_err refuse_rsa(const char *where)
{
    PH_ERR(MOD,
           "%s: RSA keys are not supported on a token: the SDK's OpenSSL TLS layer copies an "
           "RSA private key into a legacy RSA object that holds only the public half, so the "
           "token could never sign; use an EC P-256 key (provhsm x509 generate makes one)",
           where);
    return PROVHSM_E_UNSUPPORTED;
}

/* ---- the public key ----------------------------------------------------------------- */

/* The curve (NID) named by CKA_EC_PARAMS: the DER of a named curve's OID. */
static int curve_from_params(const uint8_t *der, size_t len)
{
    if (der == NULL)
        return NID_undef;
    const unsigned char *p = der;
    ASN1_OBJECT *oid = d2i_ASN1_OBJECT(NULL, &p, (long)len);
    int nid = NID_undef;
    if (oid != NULL && p == der + len)
        nid = OBJ_obj2nid(oid);
    ASN1_OBJECT_free(oid);
    return nid;
}

/*
 * The EC point as an uncompressed octet string: CKA_EC_POINT is the DER of an OCTET
 * STRING holding it (PKCS#11 2.40); a few tokens give the bare point.
 */
static unsigned char *point_from_attr(const uint8_t *attr, size_t len, int *len_out)
{
    if (attr == NULL)
        return NULL;
    const unsigned char *p = attr;
    ASN1_OCTET_STRING *os = d2i_ASN1_OCTET_STRING(NULL, &p, (long)len);
    unsigned char *point = NULL;
    if (os != NULL && p == attr + len) {
        *len_out = ASN1_STRING_length(os);
        point = OPENSSL_memdup(ASN1_STRING_get0_data(os), (size_t)*len_out);
    } else if (len > 0 && attr[0] == 0x04 && len % 2 == 1) {
        *len_out = (int)len;
        point = OPENSSL_memdup(attr, len);
    }
    ASN1_OCTET_STRING_free(os);
    return point;
}

/*
 * Whether an SPKI is what a key reference can hold: EC P-256 or P-384, an uncompressed
 * point, on the curve. The token's bytes are checked here so that a bad point is named
 * as the token's fault rather than found later by keyref.c.
 */
static int spki_is_supported_ec(const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    X509_PUBKEY *pub = d2i_X509_PUBKEY(NULL, &p, (long)len);
    const unsigned char *point = NULL;
    int point_len = 0;
    EVP_PKEY *key = NULL;
    char group[32] = "";
    int ok = pub != NULL && p == der + len &&
             X509_PUBKEY_get0_param(NULL, &point, &point_len, NULL, pub) == 1 && point_len > 0 &&
             point[0] == 0x04 && (key = X509_PUBKEY_get0(pub)) != NULL &&
             EVP_PKEY_is_a(key, "EC") &&
             EVP_PKEY_get_group_name(key, group, sizeof(group), NULL) == 1 &&
             (strcmp(group, "prime256v1") == 0 || strcmp(group, "secp384r1") == 0);
    X509_PUBKEY_free(pub);
    return ok;
}

/*
 * The DER SubjectPublicKeyInfo of `pk`, kept only when it is an uncompressed point on P-256
 * or P-384; otherwise `refusal` is logged and `refused` returned.
 */
static provhsm_err supported_spki_der(const X509_PUBKEY *pk, const char *refusal,
                                      provhsm_err refused, uint8_t **spki_out, size_t *spki_len_out)
{
    unsigned char *der = NULL;
    int der_len = i2d_X509_PUBKEY(pk, &der);
    if (der_len <= 0) {
        provhsm_log_openssl(MOD, "i2d_X509_PUBKEY");
        return PROVHSM_E_CRYPTO;
    }
    if (!spki_is_supported_ec(der, (size_t)der_len)) {
        OPENSSL_free(der);
        PH_ERR(MOD, "%s", refusal);
        return refused;
    }
    *spki_out = der;
    *spki_len_out = (size_t)der_len;
    return PROVHSM_OK;
}

provhsm_err provhsm_p11_spki_from_ec(const uint8_t *params, size_t params_len,
                                     const uint8_t *point_attr, size_t point_attr_len,
                                     uint8_t **spki_out, size_t *spki_len_out)
{
    int nid = curve_from_params(params, params_len);
    if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1) {
        PH_ERR(MOD, "the key's curve is not supported (EC P-256 or P-384 only)");
        return PROVHSM_E_UNSUPPORTED;
    }
    int point_len = 0;
    unsigned char *point = point_from_attr(point_attr, point_attr_len, &point_len);
    if (point == NULL) {
        PH_ERR(MOD, "the token's CKA_EC_POINT is not an EC point");
        return PROVHSM_E_CORRUPT;
    }
    X509_PUBKEY *pk = X509_PUBKEY_new();
    if (pk == NULL || !X509_PUBKEY_set0_param(pk, OBJ_nid2obj(NID_X9_62_id_ecPublicKey),
                                              V_ASN1_OBJECT, OBJ_nid2obj(nid), point, point_len)) {
        OPENSSL_free(point);
        X509_PUBKEY_free(pk);
        provhsm_log_openssl(MOD, "X509_PUBKEY_set0_param");
        return PROVHSM_E_CRYPTO;
    }
    provhsm_err err = supported_spki_der(
        pk, "the token's CKA_EC_POINT is not an uncompressed point on the key's curve",
        PROVHSM_E_CORRUPT, spki_out, spki_len_out);
    X509_PUBKEY_free(pk);
    return err;
}

provhsm_err provhsm_p11_spki_from_cert(const uint8_t *cert_der, size_t cert_der_len,
                                       uint8_t **spki_out, size_t *spki_len_out)
{
    const unsigned char *p = cert_der;
    X509 *cert = cert_der != NULL ? d2i_X509(NULL, &p, (long)cert_der_len) : NULL;
    if (cert == NULL) {
        provhsm_log_openssl(MOD, "d2i_X509 (the token's certificate)");
        return PROVHSM_E_CORRUPT;
    }
    provhsm_err err = supported_spki_der(X509_get_X509_PUBKEY(cert),
                                         "the token's certificate for the key carries no EC "
                                         "P-256 or P-384 key (uncompressed point)",
                                         PROVHSM_E_UNSUPPORTED, spki_out, spki_len_out);
    X509_free(cert);
    return err;
}

/* The key's public half as the token gives it, OPENSSL_malloc'd. */
static provhsm_err public_key_der(const provhsm_p11_key_facts *f, uint8_t **out, size_t *len)
{
    if (f->key_type == CKK_RSA)
        return refuse_rsa("the key on the token");
    if (f->key_type != CKK_EC) {
        PH_ERR(MOD,
               "the key on the token is of type 0x%lx: only EC P-256 and P-384 keys are "
               "supported",
               f->key_type);
        return PROVHSM_E_UNSUPPORTED;
    }
    if (f->ec_point != NULL)
        return provhsm_p11_spki_from_ec(f->ec_params, f->ec_params_len, f->ec_point,
                                        f->ec_point_len, out, len);
    return provhsm_p11_spki_from_cert(f->cert_der, f->cert_der_len, out, len);
}

/* ---- references --------------------------------------------------------------------- */

/* The reference for the key `name` on the token, with the token's public key. */
static provhsm_err make_ref(provhsm_p11_token *tok, const provhsm_p11_keyname *name,
                            const provhsm_p11_key_facts *f, provhsm_keyref *ref_out)
{
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    char *uri = NULL;
    provhsm_err err = public_key_der(f, &spki, &spki_len);
    if (err == PROVHSM_OK)
        err = provhsm_p11_key_uri(tok, name, &uri);
    if (err == PROVHSM_OK && strlen(uri) >= PROVHSM_KEYREF_LOCATOR_MAX) {
        PH_ERR(MOD, "the key's URI is %zu characters long, longer than a reference holds",
               strlen(uri));
        err = PROVHSM_E_UNSUPPORTED;
    }
    if (err == PROVHSM_OK)
        err = provhsm_keyref_make("pkcs11", uri, spki, spki_len, ref_out);
    free(uri);
    OPENSSL_free(spki);
    return err;
}

/* The token a reference's URI names, within the configured token, and the key's name. */
static provhsm_err resolve(const provhsm_config *cfg, const char *locator, provhsm_p11_token **tok,
                           provhsm_p11_keyname *name)
{
    if (cfg == NULL || locator == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = provhsm_p11_parse_key_uri(locator, name);
    if (err == PROVHSM_OK)
        err = provhsm_p11_token_get(cfg, locator, tok);
    return err;
}

static provhsm_err p11_key_generate(const provhsm_config *cfg, provhsm_key_type type, int replace,
                                    provhsm_keyref *ref_out, char **secret_out)
{
    (void)replace; /* every key gets a new random CKA_ID: nothing is in its way */
    if (cfg == NULL || ref_out == NULL || secret_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (type != PROVHSM_KEY_EC_P256 && type != PROVHSM_KEY_EC_P384)
        return refuse_rsa("x509 generate");
    int bits = type == PROVHSM_KEY_EC_P384 ? 384 : 256;
    provhsm_p11_token *tok = NULL;
    provhsm_err err = provhsm_p11_token_get(cfg, NULL, &tok);
    if (err != PROVHSM_OK)
        return err;
    provhsm_p11_keyname name = {.id_len = KEY_ID_BYTES, .has_label = 1};
    if (RAND_bytes(name.id, KEY_ID_BYTES) != 1) {
        provhsm_log_openssl(MOD, "RAND_bytes");
        return PROVHSM_E_CRYPTO;
    }
    snprintf(name.label, sizeof(name.label), "provhsm-x509-%02x%02x%02x%02x", name.id[0],
             name.id[1], name.id[2], name.id[3]);
    err = provhsm_p11_generate_ec(tok, bits, &name);
    if (err != PROVHSM_OK)
        return err;
    provhsm_p11_key_facts f = {0};
    err = provhsm_p11_key_facts_get(tok, &name, &f);
    if (err == PROVHSM_OK)
        err = make_ref(tok, &name, &f, ref_out);
    provhsm_p11_key_facts_clear(&f);
    if (err != PROVHSM_OK) { /* leave nothing half-made on the token */
        if (provhsm_p11_destroy_key(tok, &name) != PROVHSM_OK)
            PH_WARN(MOD, "the new key %s could not be removed from the token", name.label);
        return err;
    }
    *secret_out = NULL;
    PH_INFO(MOD, "made EC P-%d key %s on the token: %s", bits, name.label, ref_out->locator);
    return PROVHSM_OK;
}

/*
 * A key that can be read out of the token is refused: what the feature promises is a key
 * that never leaves it. One that was imported (not always sensitive, or once extractable)
 * is adopted with a warning: the token cannot say where else a copy went.
 */
static provhsm_err check_adoptable(const provhsm_p11_key_facts *f, const char *locator)
{
    if (f->key_type == CKK_RSA)
        return refuse_rsa(locator);
    if (!f->sensitive || f->extractable) {
        PH_ERR(MOD,
               "%s: the private key is %s: it could leave the token, so it is not adopted; "
               "make the key with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false, or let "
               "provhsm x509 generate make one",
               locator, !f->sensitive ? "not sensitive" : "extractable");
        return PROVHSM_E_UNSUPPORTED;
    }
    if (!f->can_sign) {
        PH_ERR(MOD, "%s: the private key may not sign (CKA_SIGN is false)", locator);
        return PROVHSM_E_UNSUPPORTED;
    }
    if (!f->always_sensitive || !f->never_extractable)
        PH_WARN(MOD,
                "%s: the private key was not made on the token (not always sensitive, or once "
                "extractable): copies of it may exist elsewhere",
                locator);
    return PROVHSM_OK;
}

static provhsm_err p11_key_adopt(const provhsm_config *cfg, const char *locator,
                                 provhsm_keyref *ref_out, char **secret_out)
{
    if (ref_out == NULL || secret_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_p11_token *tok = NULL;
    provhsm_p11_keyname name;
    provhsm_err err = resolve(cfg, locator, &tok, &name);
    if (err != PROVHSM_OK)
        return err;
    provhsm_p11_key_facts f = {0};
    err = provhsm_p11_key_facts_get(tok, &name, &f);
    if (err == PROVHSM_OK)
        err = check_adoptable(&f, locator);
    if (err == PROVHSM_OK) {
        /* the reference names the key by its own id and label, whatever selected it */
        provhsm_p11_keyname exact = name;
        if (f.id_len > 0) {
            memcpy(exact.id, f.id, f.id_len);
            exact.id_len = f.id_len;
            exact.has_label = f.label[0] != '\0';
            snprintf(exact.label, sizeof(exact.label), "%s", f.label);
        }
        err = make_ref(tok, &exact, &f, ref_out);
    }
    provhsm_p11_key_facts_clear(&f);
    if (err == PROVHSM_OK)
        *secret_out = NULL;
    return err;
}

static provhsm_err p11_key_open(const provhsm_config *cfg, const provhsm_keyref *ref,
                                const char *secret, void **key_out)
{
    (void)secret; /* the PIN comes from the configuration */
    if (ref == NULL || key_out == NULL || strcmp(ref->backend, "pkcs11") != 0)
        return PROVHSM_E_INVALID_ARG;
    provhsm_p11_token *tok = NULL;
    provhsm_p11_keyname name;
    provhsm_err err = resolve(cfg, ref->locator, &tok, &name);
    if (err != PROVHSM_OK)
        return err;
    provhsm_p11_key *key = calloc(1, sizeof(*key));
    if (key == NULL)
        return PROVHSM_E_NOMEM;
    provhsm_p11_key_facts f = {0};
    err = provhsm_p11_key_open(tok, &name, ref->curve_bits, key, &f);
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    if (err == PROVHSM_OK)
        err = public_key_der(&f, &spki, &spki_len);
    provhsm_p11_key_facts_clear(&f);
    if (err == PROVHSM_OK &&
        (spki_len != ref->spki_len || memcmp(spki, ref->spki, spki_len) != 0)) {
        PH_ERR(MOD,
               "the key %s on the token is not the one the reference names (another "
               "public key)",
               ref->locator);
        err = PROVHSM_E_MISMATCH;
    }
    OPENSSL_free(spki);
    if (err != PROVHSM_OK) {
        free(key);
        return err;
    }
    *key_out = key;
    return PROVHSM_OK;
}

static provhsm_err p11_key_sign(void *key, const uint8_t *digest, size_t digest_len, uint8_t *rs,
                                size_t *rs_len)
{
    return provhsm_p11_sign(key, digest, digest_len, rs, rs_len);
}

static void p11_key_close(void *key)
{
    free(key); /* the session stays: it is the process's, shared by every key */
}

static provhsm_err p11_key_destroy(const provhsm_config *cfg, const provhsm_keyref *ref,
                                   const char *secret)
{
    (void)secret;
    if (ref == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_p11_token *tok = NULL;
    provhsm_p11_keyname name;
    provhsm_err err = resolve(cfg, ref->locator, &tok, &name);
    if (err == PROVHSM_OK)
        err = provhsm_p11_destroy_key(tok, &name);
    return err;
}

static provhsm_err p11_key_describe(const provhsm_config *cfg, const provhsm_keyref *ref,
                                    char **line_out)
{
    if (ref == NULL || line_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_p11_token *tok = NULL;
    provhsm_p11_keyname name;
    provhsm_err err = resolve(cfg, ref->locator, &tok, &name);
    provhsm_p11_key_facts f = {0};
    if (err == PROVHSM_OK)
        err = provhsm_p11_key_facts_get(tok, &name, &f);
    if (err != PROVHSM_OK)
        return err;
    char token[128], id[2 * PROVHSM_P11_ID_MAX + 1] = "";
    provhsm_p11_token_describe(tok, token, sizeof(token));
    for (size_t i = 0; i < f.id_len; i++)
        snprintf(id + 2 * i, 3, "%02x", f.id[i]);
    char line[512];
    snprintf(line, sizeof(line), "PKCS#11 token %s, object %s, id %s: %s, %s", token,
             f.label[0] != '\0' ? f.label : "(no label)", id[0] != '\0' ? id : "(none)",
             f.sensitive ? "sensitive" : "NOT sensitive",
             f.extractable ? "EXTRACTABLE" : "not extractable");
    provhsm_p11_key_facts_clear(&f);
    *line_out = strdup(line);
    return *line_out != NULL ? PROVHSM_OK : PROVHSM_E_NOMEM;
}

/* ---- the chain the token holds -------------------------------------------------------- */

/* One certificate object of the token, parsed. */
typedef struct token_cert {
    X509 *x509;
    int same_id; /* its CKA_ID is the key's */
    int used;    /* already in the chain */
} token_cert;

typedef struct token_certs {
    token_cert *certs;
    size_t count;
} token_certs;

static void token_certs_free(token_certs *tc)
{
    for (size_t i = 0; i < tc->count; i++)
        X509_free(tc->certs[i].x509);
    free(tc->certs);
    tc->certs = NULL;
    tc->count = 0;
}

/* The token's certificates, parsed; one that is not DER of a certificate is left out. */
static provhsm_err parse_token_certs(const provhsm_p11_cert *objs, size_t n, const uint8_t *key_id,
                                     size_t key_id_len, token_certs *out)
{
    if (n == 0)
        return PROVHSM_OK;
    out->certs = calloc(n, sizeof(*out->certs));
    if (out->certs == NULL)
        return PROVHSM_E_NOMEM;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = objs[i].der;
        X509 *x = p != NULL ? d2i_X509(NULL, &p, (long)objs[i].der_len) : NULL;
        if (x == NULL || p != objs[i].der + objs[i].der_len) {
            PH_WARN(MOD, "a certificate object on the token is not a DER certificate: ignored");
            X509_free(x);
            continue;
        }
        token_cert *c = &out->certs[out->count++];
        c->x509 = x;
        c->same_id = key_id_len > 0 && objs[i].id_len == key_id_len &&
                     memcmp(objs[i].id, key_id, key_id_len) == 0;
    }
    return PROVHSM_OK;
}

/*
 * Which of two leaf candidates to take: the one with the key's CKA_ID (how a token ties
 * a certificate to its key), then the newer one (a renewed certificate left next to the
 * old one).
 */
static int better_leaf(const token_cert *a, const token_cert *b)
{
    if (a->same_id != b->same_id)
        return a->same_id;
    return ASN1_TIME_compare(X509_get0_notBefore(a->x509), X509_get0_notBefore(b->x509)) > 0;
}

/* The certificate that carries the key's public key, or NULL (logged why). */
static token_cert *find_leaf(token_certs *tc, EVP_PKEY *key, const char *locator, const char *token,
                             provhsm_err *err)
{
    token_cert *leaf = NULL;
    int id_matches = 0;
    for (size_t i = 0; i < tc->count; i++) {
        token_cert *c = &tc->certs[i];
        id_matches += c->same_id;
        if (EVP_PKEY_eq(X509_get0_pubkey(c->x509), key) == 1 &&
            (leaf == NULL || better_leaf(c, leaf)))
            leaf = c;
    }
    if (leaf != NULL)
        return leaf;
    if (id_matches > 0) {
        PH_ERR(MOD,
               "token %s: the certificate with the id of the key %s carries another public "
               "key: give the key's certificate chain (x509 adopt --cert)",
               token, locator);
        *err = PROVHSM_E_MISMATCH;
    } else {
        PH_ERR(MOD,
               "token %s holds no certificate for the key %s (none with its id or its public "
               "key): give the certificate chain (x509 adopt --cert)",
               token, locator);
        *err = PROVHSM_E_NOT_FOUND;
    }
    return NULL;
}

/* The token's certificate that issued `cert` (names and key identifiers, signature), or NULL. */
static token_cert *find_issuer(token_certs *tc, X509 *cert)
{
    for (size_t i = 0; i < tc->count; i++) {
        token_cert *c = &tc->certs[i];
        if (!c->used && X509_check_issued(c->x509, cert) == X509_V_OK &&
            X509_verify(cert, X509_get0_pubkey(c->x509)) == 1)
            return c;
    }
    return NULL;
}

/* Leaf first, then each issuer the token holds, up to a self-signed certificate. */
static provhsm_err build_chain(token_certs *tc, token_cert *leaf, STACK_OF(X509) *chain)
{
    token_cert *cur = leaf;
    while (cur != NULL) {
        if (!X509_up_ref(cur->x509))
            return PROVHSM_E_CRYPTO;
        if (!sk_X509_push(chain, cur->x509)) {
            X509_free(cur->x509);
            return PROVHSM_E_NOMEM;
        }
        cur->used = 1;
        cur = X509_self_signed(cur->x509, 1) == 1 ? NULL : find_issuer(tc, cur->x509);
    }
    return PROVHSM_OK;
}

provhsm_err provhsm_p11_chain_from_certs(const provhsm_p11_cert *objs, size_t count,
                                         const uint8_t *key_id, size_t key_id_len,
                                         const uint8_t *spki, size_t spki_len, const char *locator,
                                         const char *token, STACK_OF(X509) **chain_out)
{
    const unsigned char *p = spki;
    EVP_PKEY *key = spki != NULL ? d2i_PUBKEY(NULL, &p, (long)spki_len) : NULL;
    if (key == NULL) {
        provhsm_log_openssl(MOD, "d2i_PUBKEY (the reference's public key)");
        return PROVHSM_E_CORRUPT;
    }
    token_certs tc = {NULL, 0};
    STACK_OF(X509) *chain = sk_X509_new_null();
    provhsm_err err =
        chain != NULL ? parse_token_certs(objs, count, key_id, key_id_len, &tc) : PROVHSM_E_NOMEM;
    token_cert *leaf = NULL;
    if (err == PROVHSM_OK)
        leaf = find_leaf(&tc, key, locator, token, &err);
    if (leaf != NULL)
        err = build_chain(&tc, leaf, chain);
    token_certs_free(&tc);
    EVP_PKEY_free(key);
    if (err != PROVHSM_OK) {
        sk_X509_pop_free(chain, X509_free);
        return err;
    }
    *chain_out = chain;
    return PROVHSM_OK;
}

static provhsm_err p11_key_certificates(const provhsm_config *cfg, const provhsm_keyref *ref,
                                        char **chain_pem_out)
{
    if (ref == NULL || chain_pem_out == NULL || strcmp(ref->backend, "pkcs11") != 0)
        return PROVHSM_E_INVALID_ARG;
    provhsm_p11_token *tok = NULL;
    provhsm_p11_keyname name;
    provhsm_err err = resolve(cfg, ref->locator, &tok, &name);
    if (err != PROVHSM_OK)
        return err;
    char token[128];
    provhsm_p11_token_describe(tok, token, sizeof(token));
    provhsm_p11_cert *objs = NULL;
    size_t n = 0;
    err = provhsm_p11_certificates(tok, &objs, &n);
    STACK_OF(X509) *chain = NULL;
    if (err == PROVHSM_OK)
        err = provhsm_p11_chain_from_certs(objs, n, name.id, name.id_len, ref->spki, ref->spki_len,
                                           ref->locator, token, &chain);
    provhsm_p11_certs_free(objs, n);
    if (err == PROVHSM_OK)
        err = provhsm_x509_chain_to_pem(chain, chain_pem_out);
    if (err == PROVHSM_OK)
        PH_INFO(MOD, "read %d certificate(s) for the key %s from token %s", sk_X509_num(chain),
                ref->locator, token);
    sk_X509_pop_free(chain, X509_free);
    return err;
}

/* ---- the X.509 group: the chain and the reference are in the store ------------------ */

static provhsm_err p11_open(const provhsm_config *cfg, provhsm_kind kind, void **state)
{
    if (kind != PROVHSM_KIND_X509) {
        PH_ERR(MOD, "the pkcs11 backend serves X.509 identities only");
        return PROVHSM_E_UNSUPPORTED;
    }
    return provhsm_x509_stored_open(cfg, state);
}

const provhsm_backend provhsm_backend_pkcs11 = {
    .name = "pkcs11",
    .caps = PROVHSM_CAP_X509,
    .open = p11_open,
    .close = provhsm_x509_stored_close,
    .x509_certificate = provhsm_x509_stored_certificate,
    .x509_alias_key = provhsm_x509_stored_alias_key,
    .x509_common_name = provhsm_x509_stored_common_name,
    .key_generate = p11_key_generate,
    .key_adopt = p11_key_adopt,
    .key_open = p11_key_open,
    .key_sign = p11_key_sign,
    .key_close = p11_key_close,
    .key_destroy = p11_key_destroy,
    .key_describe = p11_key_describe,
    .key_certificates = p11_key_certificates,
};
