/*
 * libFuzzer target for the stored identity records (src/identity.c). The input is the
 * decrypted content of an entry, so it is written through provhsm_store_put into a real
 * store and read back with provhsm_identity_x509_load / provhsm_identity_symmetric_load,
 * as the software backend and the admin API read them. A bad record must be refused with
 * an error (never an abort); an accepted one must carry its required fields and survive
 * save and load unchanged.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "identity.h"

static provhsm_config cfg;
static provhsm_store *st;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    st = fuzz_store_setup(&cfg);
    return 0;
}

static int same_string(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void x509_record(const char *entry, const uint8_t *data, size_t size)
{
    provhsm_x509_identity id = {0}, again = {0};
    FUZZ_CHECK(provhsm_store_put(st, entry, data, size) == PROVHSM_OK);
    provhsm_err err = provhsm_identity_x509_load(st, entry, &id);
    if (err != PROVHSM_OK) {
        FUZZ_CHECK(err == PROVHSM_E_CORRUPT);
        FUZZ_CHECK(id.key_pem == NULL && id.chain_pem == NULL);
        return;
    }
    FUZZ_CHECK(id.key_pem != NULL);
    FUZZ_CHECK(provhsm_identity_x509_save(st, entry, &id) == PROVHSM_OK);
    FUZZ_CHECK(provhsm_identity_x509_load(st, entry, &again) == PROVHSM_OK);
    FUZZ_CHECK(same_string(id.key_pem, again.key_pem));
    FUZZ_CHECK(same_string(id.chain_pem, again.chain_pem));
    provhsm_identity_x509_clear(&again);
    provhsm_identity_x509_clear(&id);
}

static void symmetric_record(const uint8_t *data, size_t size)
{
    provhsm_symmetric_identity id = {0}, again = {0};
    FUZZ_CHECK(provhsm_store_put(st, PROVHSM_ENTRY_SYMMETRIC, data, size) == PROVHSM_OK);
    provhsm_err err = provhsm_identity_symmetric_load(st, &id);
    if (err != PROVHSM_OK) {
        FUZZ_CHECK(err == PROVHSM_E_CORRUPT);
        FUZZ_CHECK(id.registration_id == NULL && id.key_b64 == NULL);
        return;
    }
    FUZZ_CHECK(id.registration_id != NULL && id.key_b64 != NULL);
    FUZZ_CHECK(provhsm_identity_symmetric_save(st, &id) == PROVHSM_OK);
    FUZZ_CHECK(provhsm_identity_symmetric_load(st, &again) == PROVHSM_OK);
    FUZZ_CHECK(same_string(id.registration_id, again.registration_id));
    FUZZ_CHECK(same_string(id.key_b64, again.key_b64));
    provhsm_identity_symmetric_clear(&again);
    provhsm_identity_symmetric_clear(&id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the same bytes as each kind of entry: a record of one kind is foreign to the other */
    x509_record(PROVHSM_ENTRY_X509, data, size);
    symmetric_record(data, size);
    return 0;
}
