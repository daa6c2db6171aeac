/*
 * The provider's entry point and its loading into the default library context
 * (provider.h). The algorithm tables below are the whole of what it offers.
 *
 * Why the key management is named "EC": libssl accepts a key for a certificate only when
 * EVP_PKEY_is_a(key, "EC"), and names are shared process-wide. An unqualified fetch of
 * "EC" (a key generation, an ECDHE key in TLS) takes the first implementation OpenSSL
 * registered, so the loader makes sure the default provider's come first
 * (default_first() below; tests/integration/test_provider.c checks both load orders).
 * Our key management has no key generation, no key exchange goes with it, and it refuses
 * to export a private half, so even a fetch that reached it could not take a software
 * key over.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/provider.h>

#include "log.h"
#include "prov_local.h"
#include "provider/provider.h"

static const OSSL_ALGORITHM decoders[] = {
    {"EC", "provider=provhsm,input=pem", provhsm_prov_decoder_functions,
     "PEM " PROVHSM_KEYREF_PEM_LABEL " to a hardware EC key"},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM keymgmt[] = {
    {"EC", "provider=provhsm", provhsm_prov_keymgmt_functions, "EC keys held in hardware"},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM signatures[] = {
    {"ECDSA", "provider=provhsm", provhsm_prov_signature_functions,
     "ECDSA with the private key in hardware"},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM *prov_query(void *provctx, int operation_id, int *no_cache)
{
    (void)provctx;
    *no_cache = 0;
    switch (operation_id) {
    case OSSL_OP_DECODER:
        return decoders;
    case OSSL_OP_KEYMGMT:
        return keymgmt;
    case OSSL_OP_SIGNATURE:
        return signatures;
    default:
        return NULL; /* no digests, ciphers, rand, keyexch, encoders, ... */
    }
}

static const OSSL_PARAM *prov_gettable_params(void *provctx)
{
    static const OSSL_PARAM gettable[] = {
        OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_NAME, NULL, 0),
        OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_VERSION, NULL, 0),
        OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_BUILDINFO, NULL, 0),
        OSSL_PARAM_int(OSSL_PROV_PARAM_STATUS, NULL),
        OSSL_PARAM_END,
    };
    (void)provctx;
    return gettable;
}

static int prov_get_params(void *provctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p;
    (void)provctx;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, "provhsm hardware keys"))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, provhsm_version()))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_BUILDINFO);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, provhsm_version()))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS);
    if (p != NULL && !OSSL_PARAM_set_int(p, 1))
        return 0;
    return 1;
}

static void prov_teardown(void *provctx)
{
    free(provctx);
}

static const OSSL_DISPATCH prov_functions[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))prov_teardown},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))prov_query},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))prov_gettable_params},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))prov_get_params},
    {0, NULL},
};

static int prov_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                     const OSSL_DISPATCH **out, void **provctx)
{
    provhsm_prov_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return 0;
    ctx->handle = handle;
    for (; in != NULL && in->function_id != 0; in++)
        if (in->function_id == OSSL_FUNC_BIO_GETS)
            ctx->bio_gets = OSSL_FUNC_BIO_gets(in);
    if (ctx->bio_gets == NULL) {
        free(ctx);
        return 0;
    }
    *out = prov_functions;
    *provctx = ctx;
    return 1;
}

/* ---- loading ------------------------------------------------------------------ */

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static OSSL_PROVIDER *loaded;
static unsigned long load_count;
static int registered;
static int pinned_for_keys; /* provhsm_provider_key_from_pem keeps one count for good */

/*
 * Makes the default provider the first holder of "EC" and "ECDSA" before ours exists.
 * OpenSSL 3.0 answers an unqualified fetch with the first implementation it registered,
 * registers them provider by provider in the order of its provider list, and activates
 * the fallback (default) provider on first use by appending it to that list: loaded into
 * a process that has not used OpenSSL yet, our provider would come first, and every EC
 * key generation in the process would reach our key management (and fail). One fetch of
 * each name we also offer, before we are loaded, activates the default provider and
 * registers its implementations ahead of ours (measured in both orders by
 * tests/integration/test_provider.c). A process that configured other providers
 * instead keeps its choice: these fetches then simply find those.
 */
static void default_first(void)
{
    EVP_KEYMGMT_free(EVP_KEYMGMT_fetch(NULL, "EC", NULL));
    EVP_SIGNATURE_free(EVP_SIGNATURE_fetch(NULL, "ECDSA", NULL));
    OSSL_DECODER_free(OSSL_DECODER_fetch(NULL, "EC", NULL));
    ERR_clear_error(); /* a process without EC in its providers is not our concern here */
}

provhsm_err provhsm_provider_load(void)
{
    provhsm_err err = PROVHSM_OK;
    pthread_mutex_lock(&load_lock);
    if (!registered) {
        if (OSSL_PROVIDER_add_builtin(NULL, PROVHSM_PROVIDER_NAME, prov_init) != 1) {
            provhsm_log_openssl(PROV_MOD, "registering the provhsm OpenSSL provider");
            err = PROVHSM_E_CRYPTO;
            goto out;
        }
        registered = 1;
    }
    if (load_count == 0) {
        default_first();
        /* retain_fallbacks = 1: OpenSSL still loads its default provider on first use */
        loaded = OSSL_PROVIDER_try_load(NULL, PROVHSM_PROVIDER_NAME, 1);
        if (loaded == NULL) {
            provhsm_log_openssl(PROV_MOD, "loading the provhsm OpenSSL provider");
            err = PROVHSM_E_CRYPTO;
            goto out;
        }
    }
    load_count++;
out:
    pthread_mutex_unlock(&load_lock);
    return err;
}

void provhsm_provider_unload(void)
{
    pthread_mutex_lock(&load_lock);
    if (load_count > 0 && --load_count == 0) {
        (void)OSSL_PROVIDER_unload(loaded);
        loaded = NULL;
    }
    pthread_mutex_unlock(&load_lock);
}

static provhsm_err pin_for_keys(void)
{
    pthread_mutex_lock(&load_lock);
    int pinned = pinned_for_keys;
    pthread_mutex_unlock(&load_lock);
    if (pinned)
        return PROVHSM_OK;
    provhsm_err err = provhsm_provider_load();
    if (err != PROVHSM_OK)
        return err;
    pthread_mutex_lock(&load_lock);
    if (pinned_for_keys)
        load_count--; /* another thread pinned meanwhile: keep one count only */
    pinned_for_keys = 1;
    pthread_mutex_unlock(&load_lock);
    return PROVHSM_OK;
}

provhsm_err provhsm_provider_key_from_pem(const char *pem, EVP_PKEY **out)
{
    if (pem == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = pin_for_keys();
    if (err != PROVHSM_OK)
        return err;
    BIO *bio = BIO_new_mem_buf(pem, -1);
    if (bio == NULL)
        return PROVHSM_E_NOMEM;
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (key == NULL) {
        provhsm_log_openssl(PROV_MOD, "decoding the key (PEM_read_bio_PrivateKey)");
        return PROVHSM_E_CRYPTO;
    }
    *out = key;
    return PROVHSM_OK;
}
