/*
 * The X.509 group of the backend table served from the store: the chain and the key
 * (a PKCS#8 PEM, or a key reference for a key that stays in hardware) kept as the store's
 * "x509" identity. The software backend is built on it, and the hardware backends (tpm,
 * pkcs11) use it for their X.509 slots: only where the private key lives differs.
 *
 * open checks the stored pair again (a hand-edited store must not hand the SDK a wrong
 * key): a PKCS#8 key must be the private half of the leaf's public key, a key
 * reference must carry the leaf's public key. Defined in backend_software.c.
 */
#ifndef PROVHSM_X509_STORED_H
#define PROVHSM_X509_STORED_H

#include "config.h"

PROVHSM_MUST_CHECK provhsm_err provhsm_x509_stored_open(const provhsm_config *cfg, void **state);
void provhsm_x509_stored_close(void *state);
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_stored_certificate(void *state, char **pem_out);
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_stored_alias_key(void *state, char **pem_out);
PROVHSM_MUST_CHECK provhsm_err provhsm_x509_stored_common_name(void *state, char **cn_out);

#endif
