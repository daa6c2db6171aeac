/*
 * What the provider's files share: the provider context, the key object the key
 * management hands to the signature code, and the dispatch tables of each operation.
 * Internal to src/provider/.
 */
#ifndef PROVHSM_PROV_LOCAL_H
#define PROVHSM_PROV_LOCAL_H

#include <stdatomic.h>
#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/evp.h>

#include "hwkey.h"

#define PROV_MOD "provider"

/* Where our keys' public halves and digests come from: always OpenSSL's own code. */
#define PROV_DEFAULT_PROPQ "provider=default"

typedef struct provhsm_prov_ctx {
    const OSSL_CORE_HANDLE *handle;
    OSSL_FUNC_BIO_gets_fn *bio_gets; /* the core's line reader, for the decoder */
} provhsm_prov_ctx;

/*
 * A key of ours. `pub` (a default-provider EC key holding only the public half) serves
 * parameters, export and matching; `hw`, when set, signs. A key imported from public
 * parameters (a certificate's key being compared with ours) has no `hw`.
 */
typedef struct provhsm_prov_key {
    atomic_int refs;
    provhsm_hwkey *hw;
    EVP_PKEY *pub;
} provhsm_prov_key;

/*
 * A key around an open hardware key and its public half, both taken over: on error (NULL)
 * they are released here, so callers have nothing to undo.
 */
provhsm_prov_key *provhsm_prov_key_new(provhsm_hwkey *hw, EVP_PKEY *pub);
/* Another count on the key. */
provhsm_prov_key *provhsm_prov_key_up_ref(provhsm_prov_key *key);
/* Drops a count; the last releases the hardware key. NULL is fine. */
void provhsm_prov_key_free(provhsm_prov_key *key);

extern const OSSL_DISPATCH provhsm_prov_decoder_functions[];
extern const OSSL_DISPATCH provhsm_prov_keymgmt_functions[];
extern const OSSL_DISPATCH provhsm_prov_signature_functions[];

#endif
