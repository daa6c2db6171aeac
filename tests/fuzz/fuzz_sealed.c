/*
 * libFuzzer target for the parser of store.sealed, the store key sealed to the TPM
 * (provhsm_store_parse_sealed, src/store.c, which calls tpm_esys.c's tss2-mu
 * unmarshalers provhsm_tpm_unmarshal_pcrs and provhsm_tpm_unmarshal_sealed_object): the file comes
 * from disk, so any byte string must be refused cleanly or parsed whole. Property: a file that
 * parses has no slack, so it parses neither with its last byte cut off nor with a byte added. Built
 * only with PROVHSM_FUZZ=ON (tests/fuzz/CMakeLists.txt); seeds in corpus/sealed (files written by
 * provhsm init --seal-to-tpm on swtpm, with and without a PCR binding, and the persistent-handle
 * form; and by provhsm store reseal --pcr-values: format version 2 with its PolicyOR branches, as
 * a blob and at a handle).
 * The same input is also read from its first byte as the PolicyOR branches of a version 2 file
 * (provhsm_tpm_unmarshal_digests, which parse_branches calls): a list that unmarshals has at
 * most 8 digests, none larger than its buffer, and marshals again into exactly the bytes it
 * was read from.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "log.h"
#include "store.h"
#include "tpm_esys.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

/* The digest list at the start of the input: bounded, and exactly the bytes it came from. */
static void check_digest_list(const uint8_t *data, size_t size)
{
    TPML_DIGEST digests;
    size_t used = 0;
    if (provhsm_tpm_unmarshal_digests(data, size, &used, "fuzz/store.sealed", &digests) !=
        PROVHSM_OK) {
        FUZZ_CHECK(used == 0);
        return;
    }
    FUZZ_CHECK(used <= size);
    FUZZ_CHECK(digests.count <= 8);
    for (UINT32 i = 0; i < digests.count; i++)
        FUZZ_CHECK(digests.digests[i].size <= sizeof(digests.digests[i].buffer));

    static uint8_t again[sizeof(TPML_DIGEST)];
    size_t written = 0;
    FUZZ_CHECK(provhsm_tpm_marshal_digests(&digests, again, sizeof(again), &written) == PROVHSM_OK);
    FUZZ_CHECK(written == used);
    FUZZ_CHECK(memcmp(again, data, used) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_digest_list(data, size);

    /* a copy of exactly `size` bytes, so that a read past the end is caught */
    uint8_t *copy = malloc(size + 1);
    if (copy == NULL)
        return 0;
    if (size > 0)
        memcpy(copy, data, size);
    provhsm_err rc = provhsm_store_parse_sealed(copy, size, "fuzz/store.sealed");
    FUZZ_CHECK(rc == PROVHSM_OK || rc == PROVHSM_E_CORRUPT);
    if (rc == PROVHSM_OK) {
        FUZZ_CHECK(size > 0);
        FUZZ_CHECK(provhsm_store_parse_sealed(copy, size - 1, "fuzz/store.sealed") ==
                   PROVHSM_E_CORRUPT);
        copy[size] = 0;
        FUZZ_CHECK(provhsm_store_parse_sealed(copy, size + 1, "fuzz/store.sealed") ==
                   PROVHSM_E_CORRUPT);
    }
    free(copy);
    return 0;
}
