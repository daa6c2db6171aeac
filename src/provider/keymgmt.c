/*
 * Key management "EC" for keys held in hardware. The key object pairs the open
 * hardware key with a default-provider copy of its public half; everything public
 * (parameters, export, matching, encoders reached through a public export) is answered
 * from that copy, and the private half cannot be exported because it is not here.
 *
 * Two refusals carry weight: export with the private key selected fails (OpenSSL 3.0
 * first tries the default provider's ECDSA and exports the key to it with every part
 * selected; the refusal makes it fall back to our signature), and import accepts a
 * public key only (X509_check_private_key, reached when the SDK sets the certificate
 * after the key, exports the certificate's key into this key management to compare).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>

#include "log.h"
#include "prov_local.h"

provhsm_prov_key *provhsm_prov_key_new(provhsm_hwkey *hw, EVP_PKEY *pub)
{
    provhsm_prov_key *key = calloc(1, sizeof(*key));
    if (key == NULL) {
        provhsm_hwkey_release(hw);
        EVP_PKEY_free(pub);
        return NULL;
    }
    atomic_init(&key->refs, 1);
    key->hw = hw;
    key->pub = pub;
    return key;
}

provhsm_prov_key *provhsm_prov_key_up_ref(provhsm_prov_key *key)
{
    atomic_fetch_add(&key->refs, 1);
    return key;
}

void provhsm_prov_key_free(provhsm_prov_key *key)
{
    if (key == NULL || atomic_fetch_sub(&key->refs, 1) != 1)
        return;
    provhsm_hwkey_release(key->hw);
    EVP_PKEY_free(key->pub);
    free(key);
}

static void *km_new(void *provctx)
{
    (void)provctx;
    return provhsm_prov_key_new(NULL, NULL);
}

static void km_free(void *keydata)
{
    provhsm_prov_key_free(keydata);
}

/* The decoder hands us a pointer to its key object; we take it over. */
static void *km_load(const void *reference, size_t reference_sz)
{
    if (reference == NULL || reference_sz != sizeof(provhsm_prov_key *))
        return NULL;
    provhsm_prov_key **slot = (provhsm_prov_key **)reference;
    provhsm_prov_key *key = *slot;
    *slot = NULL;
    return key;
}

static void *km_dup(const void *keydata, int selection)
{
    const provhsm_prov_key *src = keydata;
    provhsm_hwkey *hw = NULL;
    if (src == NULL || src->pub == NULL)
        return NULL;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && src->hw != NULL &&
        provhsm_hwkey_acquire(provhsm_hwkey_ref(src->hw), &hw) != PROVHSM_OK)
        return NULL;
    if (!EVP_PKEY_up_ref(src->pub)) {
        provhsm_hwkey_release(hw);
        return NULL;
    }
    return provhsm_prov_key_new(hw, src->pub);
}

/* "Private" means the key can sign in hardware; it never means the bytes are here. */
static int km_has(const void *keydata, int selection)
{
    const provhsm_prov_key *key = keydata;
    if (key == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && key->hw == NULL)
        return 0;
    if ((selection & (OSSL_KEYMGMT_SELECT_PUBLIC_KEY | OSSL_KEYMGMT_SELECT_ALL_PARAMETERS)) != 0 &&
        key->pub == NULL)
        return 0;
    return 1;
}

static int km_match(const void *keydata1, const void *keydata2, int selection)
{
    const provhsm_prov_key *a = keydata1, *b = keydata2;
    if (a == NULL || b == NULL || a->pub == NULL || b->pub == NULL)
        return 0;
    if ((selection & (OSSL_KEYMGMT_SELECT_KEYPAIR | OSSL_KEYMGMT_SELECT_ALL_PARAMETERS)) == 0)
        return 1;
    /* the public halves decide: a private half is never at hand to compare */
    return EVP_PKEY_eq(a->pub, b->pub) == 1;
}

static int km_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    provhsm_prov_key *key = keydata;
    if (key == NULL || key->pub != NULL || key->hw != NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 ||
        (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) == 0)
        return 0; /* only public keys come in: a private half would not be in hardware */
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", PROV_DEFAULT_PROPQ);
    EVP_PKEY *pub = NULL;
    int ok = ctx != NULL && EVP_PKEY_fromdata_init(ctx) == 1 &&
             EVP_PKEY_fromdata(ctx, &pub, EVP_PKEY_PUBLIC_KEY, (OSSL_PARAM *)params) == 1;
    EVP_PKEY_CTX_free(ctx);
    if (!ok)
        return 0;
    key->pub = pub;
    return 1;
}

static const OSSL_PARAM public_types[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *km_import_types(int selection)
{
    return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 ? NULL : public_types;
}

static int km_export(void *keydata, int selection, OSSL_CALLBACK *param_cb, void *cbarg)
{
    const provhsm_prov_key *key = keydata;
    if (key == NULL || key->pub == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0)
        return 0; /* the private half stays in the device */
    return EVP_PKEY_export(key->pub, selection, param_cb, cbarg) == 1;
}

static const OSSL_PARAM *km_export_types(int selection)
{
    return km_import_types(selection);
}

/* Every public parameter (bits, security bits, max size, group, encoded point, ...). */
static int km_get_params(void *keydata, OSSL_PARAM params[])
{
    const provhsm_prov_key *key = keydata;
    if (key == NULL || key->pub == NULL)
        return 0;
    return EVP_PKEY_get_params(key->pub, params) == 1;
}

static const OSSL_PARAM *km_gettable_params(void *provctx)
{
    static const OSSL_PARAM gettable[] = {
        OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
        OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
        OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
        OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_X, NULL, 0),
        OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_Y, NULL, 0),
        OSSL_PARAM_END,
    };
    (void)provctx;
    return gettable;
}

static const char *km_query_operation_name(int operation_id)
{
    return operation_id == OSSL_OP_SIGNATURE ? "ECDSA" : NULL;
}

const OSSL_DISPATCH provhsm_prov_keymgmt_functions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))km_new},
    {OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))km_free},
    {OSSL_FUNC_KEYMGMT_LOAD, (void (*)(void))km_load},
    {OSSL_FUNC_KEYMGMT_DUP, (void (*)(void))km_dup},
    {OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))km_has},
    {OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))km_match},
    {OSSL_FUNC_KEYMGMT_IMPORT, (void (*)(void))km_import},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))km_import_types},
    {OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))km_export},
    {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))km_export_types},
    {OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))km_get_params},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))km_gettable_params},
    {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))km_query_operation_name},
    {0, NULL},
};
