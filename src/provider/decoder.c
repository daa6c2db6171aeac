/*
 * The decoder: PEM text in, a hardware EC key out, for the label "PROVHSM KEY REFERENCE"
 * only. PEM_read_bio_PrivateKey offers every PEM to every PEM decoder; a block of another
 * label (or no PEM at all) gets "not mine" (success without an object), so the next
 * decoder sees it: the framework rewinds the input between decoders.
 *
 * The key object goes to the key management by reference (a pointer in an octet string,
 * taken over by its load function), as OpenSSL does for keys that stay in a provider.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/x509.h>

#include "keyref.h"
#include "log.h"
#include "prov_local.h"

/* A key reference is under 2 KB; more than this is not ours. */
#define DECODER_INPUT_MAX (16 * 1024)

static void *dec_newctx(void *provctx)
{
    return provctx; /* nothing per call beyond the provider's context */
}

static void dec_freectx(void *ctx)
{
    (void)ctx;
}

static int dec_does_selection(void *provctx, int selection)
{
    (void)provctx;
    return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0;
}

#define BEGIN_LINE "-----BEGIN " PROVHSM_KEYREF_PEM_LABEL "-----"
#define END_LINE   "-----END " PROVHSM_KEYREF_PEM_LABEL "-----"

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/*
 * Reads one PEM block of our label, line by line, and not a byte further: the input may
 * hold more PEM blocks for later reads (PEM_read_bio_PrivateKey twice on one BIO). Text
 * before the block is skipped as PEM_read_bio does. NULL when the first block has
 * another label (the framework rewinds the input for the next decoder), when the input
 * ends first, or when the block is implausibly large.
 */
static char *read_our_block(provhsm_prov_ctx *ctx, OSSL_CORE_BIO *cin, size_t *len_out)
{
    size_t len = 0;
    int in_block = 0;
    char line[256];
    char *buf = malloc(DECODER_INPUT_MAX + 1);
    while (buf != NULL) {
        int n = ctx->bio_gets(cin, line, sizeof(line));
        if (n <= 0 || len + (size_t)n > DECODER_INPUT_MAX)
            break;
        if (!in_block) {
            if (!starts_with(line, "-----BEGIN "))
                continue;
            if (!starts_with(line, BEGIN_LINE))
                break; /* another label: not ours */
            in_block = 1;
        }
        memcpy(buf + len, line, (size_t)n);
        len += (size_t)n;
        buf[len] = '\0';
        if (starts_with(line, END_LINE)) {
            *len_out = len;
            return buf;
        }
    }
    free(buf);
    return NULL;
}

static provhsm_prov_key *key_for_reference(const provhsm_keyref *ref)
{
    const unsigned char *p = ref->spki;
    EVP_PKEY *pub = d2i_PUBKEY_ex(NULL, &p, (long)ref->spki_len, NULL, PROV_DEFAULT_PROPQ);
    if (pub == NULL) {
        provhsm_log_openssl(PROV_MOD, "reading the public key of a key reference");
        return NULL;
    }
    provhsm_hwkey *hw = NULL;
    provhsm_err err = provhsm_hwkey_acquire(ref, &hw);
    if (err != PROVHSM_OK) {
        /* hwkey.c logged the cause; OpenSSL's callers see this line in their error queue */
        ERR_raise_data(ERR_LIB_PROV, ERR_R_OPERATION_FAIL,
                       "provhsm: the %s key at %s cannot be used: %s", ref->backend, ref->locator,
                       provhsm_strerror(err));
        EVP_PKEY_free(pub);
        return NULL;
    }
    return provhsm_prov_key_new(hw, pub);
}

static int dec_decode(void *vctx, OSSL_CORE_BIO *cin, int selection, OSSL_CALLBACK *data_cb,
                      void *data_cbarg, OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    provhsm_prov_ctx *ctx = vctx;
    (void)pw_cb;
    (void)pw_cbarg;
    if (!dec_does_selection(ctx, selection))
        return 1;

    size_t len = 0;
    char *text = read_our_block(ctx, cin, &len);
    provhsm_keyref ref = {0};
    provhsm_err err = text != NULL ? provhsm_keyref_from_pem(text, len, &ref) : PROVHSM_E_MISMATCH;
    free(text);
    if (err != PROVHSM_OK)
        return 1; /* not ours (or malformed, logged): let the other decoders try */

    provhsm_prov_key *key = key_for_reference(&ref);
    provhsm_keyref_clear(&ref);
    if (key == NULL)
        return 0; /* ours, but unusable: stop here with the reason in the error queue */

    int object_type = OSSL_OBJECT_PKEY;
    char data_type[] = "EC";
    OSSL_PARAM params[] = {
        OSSL_PARAM_int(OSSL_OBJECT_PARAM_TYPE, &object_type),
        OSSL_PARAM_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE, data_type, sizeof(data_type) - 1),
        OSSL_PARAM_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &key, sizeof(key)),
        OSSL_PARAM_END,
    };
    int ok = data_cb(params, data_cbarg);
    provhsm_prov_key_free(key); /* NULL when the key management took it */
    return ok;
}

/*
 * Used only when the framework picks another provider's key management for our object:
 * that one gets the public half, never a private one.
 */
static int dec_export_object(void *vctx, const void *reference, size_t reference_sz,
                             OSSL_CALLBACK *export_cb, void *export_cbarg)
{
    (void)vctx;
    if (reference == NULL || reference_sz != sizeof(provhsm_prov_key *))
        return 0;
    const provhsm_prov_key *key = *(provhsm_prov_key *const *)reference;
    if (key == NULL || key->pub == NULL)
        return 0;
    return EVP_PKEY_export(key->pub, OSSL_KEYMGMT_SELECT_PUBLIC_KEY, export_cb, export_cbarg);
}

const OSSL_DISPATCH provhsm_prov_decoder_functions[] = {
    {OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))dec_newctx},
    {OSSL_FUNC_DECODER_FREECTX, (void (*)(void))dec_freectx},
    {OSSL_FUNC_DECODER_DOES_SELECTION, (void (*)(void))dec_does_selection},
    {OSSL_FUNC_DECODER_DECODE, (void (*)(void))dec_decode},
    {OSSL_FUNC_DECODER_EXPORT_OBJECT, (void (*)(void))dec_export_object},
    {0, NULL},
};
