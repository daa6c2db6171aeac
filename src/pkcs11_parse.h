/*
 * What the PKCS#11 backend makes of the bytes a token gives it, without calling the
 * token: the token is a device another party provisioned, so its attributes are
 * untrusted input. Kept apart from the module calls so that tests/fuzz/fuzz_pkcs11.c
 * reaches exactly the code the backend runs. Implemented in backend_pkcs11.c.
 */
#ifndef PROVHSM_PKCS11_PARSE_H
#define PROVHSM_PKCS11_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "p11_wrap.h"

/*
 * SubjectPublicKeyInfo (DER, OPENSSL_malloc'd) of an EC public key object: CKA_EC_PARAMS
 * (the DER of a named curve's OID: P-256 or P-384) and CKA_EC_POINT (the DER of an OCTET
 * STRING holding the point, or the bare uncompressed point). Nothing is written on failure.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_spki_from_ec(const uint8_t *params, size_t params_len,
                                                        const uint8_t *point, size_t point_len,
                                                        uint8_t **spki_out, size_t *spki_len_out);

/*
 * SubjectPublicKeyInfo (DER, OPENSSL_malloc'd) of the key a certificate object's
 * CKA_VALUE (DER) carries, for a key whose token has no public key object.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_spki_from_cert(const uint8_t *der, size_t der_len,
                                                          uint8_t **spki_out, size_t *spki_len_out);

/*
 * The chain for the key with public key `spki` (DER) and CKA_ID key_id, from the token's
 * certificate objects: the leaf carries the key (the one with the key's id first, then
 * the newest), then each issuer among them up to a self-signed one. Objects that are not
 * DER certificates are left out. *chain_out (leaf first) is set only on success.
 * `locator` and `token` only name the key and the token in error messages.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_p11_chain_from_certs(const provhsm_p11_cert *objs,
                                                            size_t count, const uint8_t *key_id,
                                                            size_t key_id_len, const uint8_t *spki,
                                                            size_t spki_len, const char *locator,
                                                            const char *token,
                                                            STACK_OF(X509) **chain_out);

#endif
