/*
 * SharedAccessSignature tokens, built the way the SDK's provisioning client builds them
 * (prov_auth_construct_sas_token): the string signed is "<scope>\n<expiry>" where scope
 * is already URL-encoded, and the token is
 *   SharedAccessSignature sr=<scope>&sig=<urlencode(base64(sig))>&se=<expiry>&skn=<name>
 * Callers: the admin API (provhsm_sas_token), the tests.
 */
#ifndef PROVHSM_SAS_H
#define PROVHSM_SAS_H

#include <stddef.h>
#include <stdint.h>
#include "provhsm/provhsm.h"

/* "<encoded_scope>\n<expiry>", malloc'd. */
PROVHSM_MUST_CHECK provhsm_err provhsm_sas_string_to_sign(const char *encoded_scope,
                                                          uint64_t expiry, char **out);

/* Assembles the token from the raw signature bytes. */
PROVHSM_MUST_CHECK provhsm_err provhsm_sas_format(const char *encoded_scope, const uint8_t *sig,
                                                  size_t sig_len, uint64_t expiry,
                                                  const char *key_name, char **token_out);

/* HMAC-SHA256 with a base64 key, as the SDK computes it for symmetric-key attestation. */
PROVHSM_MUST_CHECK provhsm_err provhsm_sas_hmac_b64key(const char *key_b64, const uint8_t *data,
                                                       size_t len, uint8_t mac[32]);

#endif
