/*
 * libFuzzer target for the activation-blob parser (src/tpm_blob.c): the blob arrives from
 * the network, so any byte string must either be refused cleanly or yield a parse that
 * is consistent with the input. On success the fields are marshaled again with
 * libtss2-mu and must reproduce the input's prefix byte for byte, and the remaining
 * length must account for the encrypted-data field and trailing_len exactly.
 * Built only with PROVHSM_FUZZ=ON (tests/fuzz/CMakeLists.txt).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tss2/tss2_mu.h>

#include "fuzz_common.h"
#include "log.h"
#include "tpm_blob.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    provhsm_activation_blob b;
    if (provhsm_tpm_blob_parse(data, size, &b) != PROVHSM_OK)
        return 0;

    FUZZ_CHECK(b.credential_blob.size > 0 &&
               b.credential_blob.size <= sizeof(b.credential_blob.credential));
    FUZZ_CHECK(b.secret.size > 0 && b.secret.size <= sizeof(b.secret.secret));
    FUZZ_CHECK(b.duplicate.size > 0 && b.duplicate.size <= sizeof(b.duplicate.buffer));
    FUZZ_CHECK(b.in_sym_seed.size > 0 && b.in_sym_seed.size <= sizeof(b.in_sym_seed.secret));
    FUZZ_CHECK(b.object_public.size > 0);
    FUZZ_CHECK(b.object_public.publicArea.type == TPM2_ALG_KEYEDHASH);
    FUZZ_CHECK(b.object_public.publicArea.nameAlg == TPM2_ALG_SHA256);
    FUZZ_CHECK(b.object_public.publicArea.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT);

    /* Marshal the fields again: they must be exactly the bytes they came from. */
    static uint8_t again[4 * 1024 + sizeof(provhsm_activation_blob)];
    size_t off = 0;
    FUZZ_CHECK(Tss2_MU_TPM2B_ID_OBJECT_Marshal(&b.credential_blob, again, sizeof(again), &off) ==
               0);
    FUZZ_CHECK(Tss2_MU_TPM2B_ENCRYPTED_SECRET_Marshal(&b.secret, again, sizeof(again), &off) == 0);
    FUZZ_CHECK(Tss2_MU_TPM2B_PRIVATE_Marshal(&b.duplicate, again, sizeof(again), &off) == 0);
    FUZZ_CHECK(Tss2_MU_TPM2B_ENCRYPTED_SECRET_Marshal(&b.in_sym_seed, again, sizeof(again), &off) ==
               0);
    size_t pub_at = off;
    FUZZ_CHECK(Tss2_MU_TPM2B_PUBLIC_Marshal(&b.object_public, again, sizeof(again), &off) == 0);
    FUZZ_CHECK(off - pub_at == 2u + b.object_public.size);
    FUZZ_CHECK(off + 2 <= size);
    FUZZ_CHECK(memcmp(again, data, off) == 0);

    size_t enc_len = be16(data + off);
    FUZZ_CHECK(off + 2 + enc_len + b.trailing_len == size);
    return 0;
}
