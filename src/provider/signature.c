/*
 * ECDSA with the private key in hardware: the digest is computed here in software (a
 * default-provider digest), the device signs the digest and returns r | s, and the DER
 * signature OpenSSL expects is built with ECDSA_SIG. Verification uses the public half.
 * SHA-1, SHA-256, SHA-384 and SHA-512.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/params.h>
#include <openssl/x509.h>

#include "log.h"
#include "prov_local.h"

typedef struct sig_ctx {
    char *propq;
    provhsm_prov_key *key;
    EVP_MD *md;         /* NULL until a digest is chosen */
    EVP_MD_CTX *mdctx;  /* digest_sign / digest_verify in progress */
    int digest_started; /* the digest can no longer change */
} sig_ctx;

static void *sig_newctx(void *provctx, const char *propq)
{
    (void)provctx;
    sig_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx != NULL && propq != NULL && (ctx->propq = strdup(propq)) == NULL) {
        free(ctx);
        return NULL;
    }
    return ctx;
}

static void sig_freectx(void *vctx)
{
    sig_ctx *ctx = vctx;
    if (ctx == NULL)
        return;
    provhsm_prov_key_free(ctx->key);
    EVP_MD_free(ctx->md);
    EVP_MD_CTX_free(ctx->mdctx);
    free(ctx->propq);
    free(ctx);
}

static void *sig_dupctx(void *vctx)
{
    const sig_ctx *src = vctx;
    sig_ctx *dst = calloc(1, sizeof(*dst));
    if (dst == NULL)
        return NULL;
    dst->digest_started = src->digest_started;
    if ((src->propq != NULL && (dst->propq = strdup(src->propq)) == NULL) ||
        (src->md != NULL && !EVP_MD_up_ref(src->md)) ||
        (src->mdctx != NULL && ((dst->mdctx = EVP_MD_CTX_new()) == NULL ||
                                !EVP_MD_CTX_copy_ex(dst->mdctx, src->mdctx)))) {
        sig_freectx(dst);
        return NULL;
    }
    dst->md = src->md;
    if (src->key != NULL)
        dst->key = provhsm_prov_key_up_ref(src->key);
    return dst;
}

/* The digests ECDSA is used with here; anything else is refused. */
static int digest_allowed(const EVP_MD *md)
{
    return EVP_MD_is_a(md, "SHA1") || EVP_MD_is_a(md, "SHA2-256") || EVP_MD_is_a(md, "SHA2-384") ||
           EVP_MD_is_a(md, "SHA2-512");
}

static int set_digest(sig_ctx *ctx, const char *mdname)
{
    if (ctx->md != NULL && EVP_MD_is_a(ctx->md, mdname))
        return 1; /* chosen already: no second fetch */
    EVP_MD *md = EVP_MD_fetch(NULL, mdname, ctx->propq);
    if (md == NULL || !digest_allowed(md)) {
        EVP_MD_free(md);
        ERR_raise_data(ERR_LIB_PROV, ERR_R_UNSUPPORTED, "provhsm: digest %s", mdname);
        return 0;
    }
    EVP_MD_free(ctx->md);
    ctx->md = md;
    return 1;
}

static int sig_set_ctx_params(void *vctx, const OSSL_PARAM params[]);

static int set_key(sig_ctx *ctx, void *provkey, const OSSL_PARAM params[])
{
    provhsm_prov_key *key = provkey;
    if (key == NULL || key->pub == NULL)
        return 0;
    provhsm_prov_key_free(ctx->key);
    ctx->key = provhsm_prov_key_up_ref(key);
    ctx->digest_started = 0;
    return sig_set_ctx_params(ctx, params);
}

static int sig_sign_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    sig_ctx *ctx = vctx;
    if (!set_key(ctx, provkey, params))
        return 0;
    if (ctx->key->hw == NULL) {
        ERR_raise_data(ERR_LIB_PROV, ERR_R_PASSED_INVALID_ARGUMENT,
                       "provhsm: a public key cannot sign");
        return 0;
    }
    return 1;
}

static int sig_verify_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    return set_key(vctx, provkey, params);
}

static size_t max_signature_size(const sig_ctx *ctx)
{
    int size = EVP_PKEY_get_size(ctx->key->pub);
    return size > 0 ? (size_t)size : 0;
}

/* DER ECDSA-Sig-Value from the device's r | s. */
static int rs_to_der(const uint8_t *rs, size_t rs_len, unsigned char *sig, size_t *siglen,
                     size_t sigsize)
{
    ECDSA_SIG *ecsig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(rs, (int)(rs_len / 2), NULL);
    BIGNUM *s = BN_bin2bn(rs + rs_len / 2, (int)(rs_len / 2), NULL);
    if (ecsig == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(ecsig, r, s)) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(ecsig);
        return 0;
    }
    int len = i2d_ECDSA_SIG(ecsig, NULL);
    int ok = len > 0 && (size_t)len <= sigsize;
    if (ok) {
        unsigned char *p = sig;
        ok = i2d_ECDSA_SIG(ecsig, &p) == len;
        *siglen = (size_t)len;
    }
    ECDSA_SIG_free(ecsig);
    return ok;
}

static int sig_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                    const unsigned char *tbs, size_t tbslen)
{
    sig_ctx *ctx = vctx;
    if (ctx->key == NULL || ctx->key->hw == NULL)
        return 0;
    if (sig == NULL) {
        *siglen = max_signature_size(ctx);
        return *siglen > 0;
    }
    if (ctx->md != NULL && tbslen != (size_t)EVP_MD_get_size(ctx->md)) {
        ERR_raise_data(ERR_LIB_PROV, ERR_R_PASSED_INVALID_ARGUMENT,
                       "provhsm: a %zu-byte digest for %s", tbslen, EVP_MD_get0_name(ctx->md));
        return 0;
    }
    uint8_t rs[PROVHSM_HWKEY_SIG_MAX];
    size_t rs_len = sizeof(rs);
    provhsm_err err = provhsm_hwkey_sign(ctx->key->hw, tbs, tbslen, rs, &rs_len);
    if (err != PROVHSM_OK) {
        /* the cause is in provhsm's log; this reaches the TLS stack's error queue */
        ERR_raise_data(ERR_LIB_PROV, ERR_R_OPERATION_FAIL, "provhsm: hardware signing failed: %s",
                       provhsm_strerror(err));
        return 0;
    }
    if (rs_len == 0 || rs_len % 2 != 0 || !rs_to_der(rs, rs_len, sig, siglen, sigsize)) {
        ERR_raise_data(ERR_LIB_PROV, ERR_R_OPERATION_FAIL,
                       "provhsm: the device's signature does not fit");
        return 0;
    }
    return 1;
}

static int verify_with_public(sig_ctx *ctx, const unsigned char *sig, size_t siglen,
                              const unsigned char *tbs, size_t tbslen)
{
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(NULL, ctx->key->pub, PROV_DEFAULT_PROPQ);
    int ok = pctx != NULL && EVP_PKEY_verify_init(pctx) == 1 &&
             EVP_PKEY_verify(pctx, sig, siglen, tbs, tbslen) == 1;
    EVP_PKEY_CTX_free(pctx);
    return ok;
}

static int sig_verify(void *vctx, const unsigned char *sig, size_t siglen, const unsigned char *tbs,
                      size_t tbslen)
{
    sig_ctx *ctx = vctx;
    return ctx->key != NULL && verify_with_public(ctx, sig, siglen, tbs, tbslen);
}

static int digest_init(sig_ctx *ctx, const char *mdname)
{
    if (mdname == NULL || mdname[0] == '\0')
        mdname = ctx->md != NULL ? EVP_MD_get0_name(ctx->md) : "SHA2-256";
    if (!set_digest(ctx, mdname))
        return 0;
    if (ctx->mdctx == NULL && (ctx->mdctx = EVP_MD_CTX_new()) == NULL)
        return 0;
    if (EVP_DigestInit_ex2(ctx->mdctx, ctx->md, NULL) != 1)
        return 0;
    ctx->digest_started = 1;
    return 1;
}

static int sig_digest_sign_init(void *vctx, const char *mdname, void *provkey,
                                const OSSL_PARAM params[])
{
    return sig_sign_init(vctx, provkey, params) && digest_init(vctx, mdname);
}

static int sig_digest_verify_init(void *vctx, const char *mdname, void *provkey,
                                  const OSSL_PARAM params[])
{
    return sig_verify_init(vctx, provkey, params) && digest_init(vctx, mdname);
}

static int sig_digest_update(void *vctx, const unsigned char *data, size_t datalen)
{
    sig_ctx *ctx = vctx;
    return ctx->mdctx != NULL && EVP_DigestUpdate(ctx->mdctx, data, datalen) == 1;
}

static int sig_digest_sign_final(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize)
{
    sig_ctx *ctx = vctx;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    if (ctx->mdctx == NULL || ctx->key == NULL)
        return 0;
    if (sig == NULL) { /* size query: the digest goes on */
        *siglen = max_signature_size(ctx);
        return *siglen > 0;
    }
    if (EVP_DigestFinal_ex(ctx->mdctx, digest, &digest_len) != 1)
        return 0;
    ctx->digest_started = 0;
    return sig_sign(ctx, sig, siglen, sigsize, digest, digest_len);
}

static int sig_digest_verify_final(void *vctx, const unsigned char *sig, size_t siglen)
{
    sig_ctx *ctx = vctx;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    if (ctx->mdctx == NULL || ctx->key == NULL ||
        EVP_DigestFinal_ex(ctx->mdctx, digest, &digest_len) != 1)
        return 0;
    ctx->digest_started = 0;
    return verify_with_public(ctx, sig, siglen, digest, digest_len);
}

static int signature_nid(const EVP_MD *md)
{
    switch (EVP_MD_get_type(md)) {
    case NID_sha1:
        return NID_ecdsa_with_SHA1;
    case NID_sha256:
        return NID_ecdsa_with_SHA256;
    case NID_sha384:
        return NID_ecdsa_with_SHA384;
    case NID_sha512:
        return NID_ecdsa_with_SHA512;
    default:
        return NID_undef;
    }
}

/* The signature's AlgorithmIdentifier (ecdsa-with-SHAx, no parameters), DER. */
static int set_algorithm_id(const sig_ctx *ctx, OSSL_PARAM *p)
{
    int nid = ctx->md != NULL ? signature_nid(ctx->md) : NID_undef;
    if (nid == NID_undef)
        return 0;
    X509_ALGOR *alg = X509_ALGOR_new();
    unsigned char *der = NULL;
    int len = -1;
    if (alg != NULL && X509_ALGOR_set0(alg, OBJ_nid2obj(nid), V_ASN1_UNDEF, NULL))
        len = i2d_X509_ALGOR(alg, &der);
    int ok = len > 0 && OSSL_PARAM_set_octet_string(p, der, (size_t)len);
    OPENSSL_free(der);
    X509_ALGOR_free(alg);
    return ok;
}

static int sig_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    sig_ctx *ctx = vctx;
    OSSL_PARAM *p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID);
    if (p != NULL && !set_algorithm_id(ctx, p))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p != NULL && (ctx->md == NULL || !OSSL_PARAM_set_utf8_string(p, EVP_MD_get0_name(ctx->md))))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST_SIZE);
    if (p != NULL &&
        (ctx->md == NULL || !OSSL_PARAM_set_size_t(p, (size_t)EVP_MD_get_size(ctx->md))))
        return 0;
    return 1;
}

static const OSSL_PARAM *sig_gettable_ctx_params(void *vctx, void *provctx)
{
    static const OSSL_PARAM gettable[] = {
        OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
        OSSL_PARAM_size_t(OSSL_SIGNATURE_PARAM_DIGEST_SIZE, NULL),
        OSSL_PARAM_END,
    };
    (void)vctx;
    (void)provctx;
    return gettable;
}

static int sig_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    sig_ctx *ctx = vctx;
    const OSSL_PARAM *p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p == NULL)
        return 1;
    char mdname[64];
    char *name = mdname;
    if (ctx->digest_started || !OSSL_PARAM_get_utf8_string(p, &name, sizeof(mdname)))
        return 0;
    return set_digest(ctx, mdname);
}

static const OSSL_PARAM *sig_settable_ctx_params(void *vctx, void *provctx)
{
    static const OSSL_PARAM settable[] = {
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
        OSSL_PARAM_END,
    };
    (void)vctx;
    (void)provctx;
    return settable;
}

const OSSL_DISPATCH provhsm_prov_signature_functions[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))sig_newctx},
    {OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))sig_freectx},
    {OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))sig_dupctx},
    {OSSL_FUNC_SIGNATURE_SIGN_INIT, (void (*)(void))sig_sign_init},
    {OSSL_FUNC_SIGNATURE_SIGN, (void (*)(void))sig_sign},
    {OSSL_FUNC_SIGNATURE_VERIFY_INIT, (void (*)(void))sig_verify_init},
    {OSSL_FUNC_SIGNATURE_VERIFY, (void (*)(void))sig_verify},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))sig_digest_sign_init},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, (void (*)(void))sig_digest_update},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, (void (*)(void))sig_digest_sign_final},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_INIT, (void (*)(void))sig_digest_verify_init},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_UPDATE, (void (*)(void))sig_digest_update},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_FINAL, (void (*)(void))sig_digest_verify_final},
    {OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (void (*)(void))sig_get_ctx_params},
    {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))sig_gettable_ctx_params},
    {OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (void (*)(void))sig_set_ctx_params},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))sig_settable_ctx_params},
    {0, NULL},
};
