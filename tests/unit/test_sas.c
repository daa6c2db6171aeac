/*
 * SAS token assembly (src/sas.c) with expiries beyond 2^32 seconds: the tool accepts
 * lifetimes of up to a thousand years, so "se" and the signed string must carry the whole
 * 64-bit value, never a truncated 32-bit one. The signature is checked against OpenSSL's
 * HMAC-SHA256 over the expected string.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/evp.h>

#include "encoding.h"
#include "sas.h"

/* base64 of the 32 bytes 0x00..0x1f */
#define KEY_B64 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define SCOPE   "0ne00ABCDEF%2fregistrations%2ffar-dev"

static const uint64_t far_expiries[] = {
    UINT64_C(4294967296),  /* 2^32 exactly */
    UINT64_C(4294967297),  /* 2^32 + 1 */
    UINT64_C(6764967296),  /* now + 5e9 s, about year 2184 */
    UINT64_C(33315093600), /* a thousand years from now, the tool's upper bound */
    UINT64_MAX,
};

static void string_to_sign_keeps_64_bits(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(far_expiries) / sizeof(far_expiries[0]); i++) {
        char want[128], *got = NULL;
        snprintf(want, sizeof(want), "%s\n%" PRIu64, SCOPE, far_expiries[i]);
        assert_int_equal(provhsm_sas_string_to_sign(SCOPE, far_expiries[i], &got), PROVHSM_OK);
        assert_string_equal(got, want);
        free(got);
    }
}

static void token_carries_the_whole_expiry_and_its_signature(void **state)
{
    (void)state;
    uint8_t key[32];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)i;
    for (size_t i = 0; i < sizeof(far_expiries) / sizeof(far_expiries[0]); i++) {
        uint64_t se = far_expiries[i];
        char *payload = NULL, *token = NULL;
        uint8_t mac[32], want_mac[32];
        size_t want_len = 0;
        assert_int_equal(provhsm_sas_string_to_sign(SCOPE, se, &payload), PROVHSM_OK);
        assert_int_equal(
            provhsm_sas_hmac_b64key(KEY_B64, (const uint8_t *)payload, strlen(payload), mac),
            PROVHSM_OK);
        /* the reference: HMAC-SHA256 of "<scope>\n<decimal expiry>" straight from OpenSSL */
        char reference[128];
        int n = snprintf(reference, sizeof(reference), "%s\n%" PRIu64, SCOPE, se);
        assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, sizeof(key),
                                  (const unsigned char *)reference, (size_t)n, want_mac,
                                  sizeof(want_mac), &want_len));
        assert_memory_equal(mac, want_mac, 32);

        assert_int_equal(provhsm_sas_format(SCOPE, mac, sizeof(mac), se, "registration", &token),
                         PROVHSM_OK);
        char *b64 = provhsm_base64_encode(mac, sizeof(mac));
        char *sig = provhsm_url_encode(b64);
        char want[256];
        snprintf(want, sizeof(want), "SharedAccessSignature sr=%s&sig=%s&se=%" PRIu64 "&skn=%s",
                 SCOPE, sig, se, "registration");
        assert_string_equal(token, want);
        free(b64);
        free(sig);
        free(token);
        free(payload);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(string_to_sign_keeps_64_bits),
        cmocka_unit_test(token_carries_the_whole_expiry_and_its_signature),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
