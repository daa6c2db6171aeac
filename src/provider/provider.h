/*
 * The OpenSSL 3 provider for X.509 keys that stay in hardware, built into libprovhsm
 * (no module file to install). It is registered with OSSL_PROVIDER_add_builtin and
 * loaded into OpenSSL's default library context, the one the SDK's TLS layer decodes the
 * alias key in, with the fallback providers retained, so OpenSSL's default provider stays
 * available to the rest of the process.
 *
 * It offers only what a hardware key needs (docs/key-reference.md):
 *   - a decoder for PEM blocks labelled "PROVHSM KEY REFERENCE" (keyref.h); every other
 *     PEM is left to the other decoders;
 *   - key management named "EC" for those keys (EC P-256/P-384): load from the decoder,
 *     public import and export (a private export is refused), matching, parameters;
 *   - ECDSA signatures: the digest in software, the signature in the device
 *     (provhsm_hwkey_sign).
 * No digests, ciphers, random numbers, key generation or key exchange: unqualified
 * fetches for those, and for EC keys that are not ours, are served by the default
 * provider (tests/integration/test_provider.c asks OpenSSL which provider served each).
 */
#ifndef PROVHSM_PROVIDER_H
#define PROVHSM_PROVIDER_H

#include <openssl/evp.h>
#include "provhsm/provhsm.h"

/* The provider's name in OpenSSL (OSSL_PROVIDER_get0_name). */
#define PROVHSM_PROVIDER_NAME "provhsm"

/*
 * Loads the provider into the default library context. Reference-counted, idempotent
 * and thread-safe: each successful call takes one count (hsm_client_x509_init calls it).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_provider_load(void);

/* Drops one count; the provider is unloaded with the last. */
void provhsm_provider_unload(void);

/*
 * Decodes a key-reference PEM (or any PEM private key) in the default library context
 * exactly as the SDK does (PEM_read_bio_PrivateKey on a memory BIO), loading the
 * provider first when needed (the count it takes is kept until the process ends, as
 * the key needs the provider). *out: an EVP_PKEY whose private half is in hardware.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_provider_key_from_pem(const char *pem, EVP_PKEY **out);

#endif
