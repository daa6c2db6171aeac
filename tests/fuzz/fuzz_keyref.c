/*
 * libFuzzer target for key references (src/keyref.c): the PEM the provider's decoder and
 * hwkey.c read back from the SDK's alias key and from the store. The first input byte
 * picks the parser: even, provhsm_keyref_from_der on the rest; odd, provhsm_keyref_from_pem
 * on the rest as text.
 * Properties: on failure the output is untouched; an accepted reference has a backend
 * name of [a-z0-9], a printable locator and a P-256/P-384 key, is rebuilt by
 * provhsm_keyref_make from its own fields, and survives PEM and back unchanged.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "keyref.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

static void check_fields(const provhsm_keyref *ref)
{
    size_t blen = strlen(ref->backend);
    FUZZ_CHECK(blen > 0 && blen < PROVHSM_KEYREF_BACKEND_MAX);
    for (size_t i = 0; i < blen; i++)
        FUZZ_CHECK((ref->backend[i] >= 'a' && ref->backend[i] <= 'z') ||
                   (ref->backend[i] >= '0' && ref->backend[i] <= '9'));
    size_t llen = strlen(ref->locator);
    FUZZ_CHECK(llen > 0 && llen < PROVHSM_KEYREF_LOCATOR_MAX);
    for (size_t i = 0; i < llen; i++)
        FUZZ_CHECK(ref->locator[i] >= 0x20 && ref->locator[i] <= 0x7e);
    FUZZ_CHECK(ref->curve_bits == 256 || ref->curve_bits == 384);
    FUZZ_CHECK(ref->spki != NULL && ref->spki_len > 0);
}

static void check_round_trip(const provhsm_keyref *ref)
{
    provhsm_keyref made = {0}, back = {0};
    char *pem = NULL;
    FUZZ_CHECK(provhsm_keyref_make(ref->backend, ref->locator, ref->spki, ref->spki_len, &made) ==
               PROVHSM_OK);
    FUZZ_CHECK(provhsm_keyref_equal(&made, ref));
    FUZZ_CHECK(made.curve_bits == ref->curve_bits);
    FUZZ_CHECK(provhsm_keyref_to_pem(ref, &pem) == PROVHSM_OK);
    FUZZ_CHECK(provhsm_keyref_from_pem(pem, strlen(pem), &back) == PROVHSM_OK);
    FUZZ_CHECK(provhsm_keyref_equal(&back, ref));
    free(pem);
    provhsm_keyref_clear(&made);
    provhsm_keyref_clear(&back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    provhsm_keyref ref;
    memset(&ref, 0xa5, sizeof(ref));
    provhsm_keyref untouched = ref;
    provhsm_err err;
    if (data[0] % 2 == 0) {
        err = provhsm_keyref_from_der(data + 1, size - 1, &ref);
    } else {
        char *text = fuzz_text(data + 1, size - 1);
        err = provhsm_keyref_from_pem(text, size - 1, &ref);
        free(text);
    }
    if (err != PROVHSM_OK) {
        FUZZ_CHECK(memcmp(&ref, &untouched, sizeof(ref)) == 0);
        return 0;
    }
    check_fields(&ref);
    check_round_trip(&ref);
    provhsm_keyref_clear(&ref);
    return 0;
}
