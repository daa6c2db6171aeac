/*
 * SAS token assembly and the symmetric-key HMAC, shared by the admin API and tests.
 * The HMAC key is decoded into secure memory and wiped right after use.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>

#include "encoding.h"
#include "log.h"
#include "sas.h"
#include "secmem.h"

#define MOD "sas"

provhsm_err provhsm_sas_string_to_sign(const char *encoded_scope, uint64_t expiry, char **out)
{
    if (encoded_scope == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    size_t n = strlen(encoded_scope) + 1 + 20 + 1;
    char *s = malloc(n);
    if (s == NULL)
        return PROVHSM_E_NOMEM;
    snprintf(s, n, "%s\n%" PRIu64, encoded_scope, expiry);
    *out = s;
    return PROVHSM_OK;
}

provhsm_err provhsm_sas_format(const char *encoded_scope, const uint8_t *sig, size_t sig_len,
                               uint64_t expiry, const char *key_name, char **token_out)
{
    provhsm_err err = PROVHSM_E_NOMEM;
    char *b64 = NULL, *enc = NULL, *token = NULL;
    if (encoded_scope == NULL || sig == NULL || sig_len == 0 || key_name == NULL ||
        token_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    b64 = provhsm_base64_encode(sig, sig_len);
    if (b64 == NULL)
        goto out;
    enc = provhsm_url_encode(b64);
    if (enc == NULL)
        goto out;
    static const char fmt[] = "SharedAccessSignature sr=%s&sig=%s&se=%" PRIu64 "&skn=%s";
    size_t n = sizeof(fmt) + strlen(encoded_scope) + strlen(enc) + 20 + strlen(key_name);
    token = malloc(n);
    if (token == NULL)
        goto out;
    snprintf(token, n, fmt, encoded_scope, enc, expiry, key_name);
    *token_out = token;
    err = PROVHSM_OK;
out:
    free(b64);
    free(enc);
    return err;
}

provhsm_err provhsm_sas_hmac_b64key(const char *key_b64, const uint8_t *data, size_t len,
                                    uint8_t mac[32])
{
    /*
     * Keys of up to 96 bytes (every key the services issue) are decoded on the stack and
     * wiped: this runs for every SAS token, and secure heap memory costs two system calls.
     */
    uint8_t small[96];
    uint8_t *key = small;
    size_t key_len = 0, mac_len = 0;
    provhsm_err err = PROVHSM_OK;

    if (key_b64 == NULL || data == NULL || mac == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (provhsm_base64_decode_into(key_b64, small, sizeof(small), &key_len) != 0) {
        key = provhsm_base64_decode(key_b64, &key_len);
        if (key == NULL) {
            PH_ERR(MOD, "symmetric key is not valid base64");
            return PROVHSM_E_INVALID_ARG;
        }
    }
    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len, data, len, mac, 32, &mac_len) ==
            NULL ||
        mac_len != 32) {
        provhsm_log_openssl(MOD, "HMAC-SHA256");
        err = PROVHSM_E_CRYPTO;
    }
    if (key == small)
        provhsm_wipe(small, sizeof(small));
    else
        provhsm_secure_free(key);
    return err;
}
