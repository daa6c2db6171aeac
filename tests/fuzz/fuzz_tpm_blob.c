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

#include "log.h"
#include "tpm_blob.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_tpm_blob: inconsistent parse: %s (line %d)\n", #cond, __LINE__); \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Swallows the parser's log lines but still has them formatted by the log module. */
static void quiet_log(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)level;
    (void)module;
    (void)message;
    (void)ctx;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("TSS2_LOG", "all+none", 1); /* tpm2-tss's own warnings on every bad input */
    provhsm_set_log_callback(quiet_log, NULL);
    provhsm_set_log_level(PROVHSM_LOG_DEBUG);
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

    CHECK(b.credential_blob.size > 0 &&
          b.credential_blob.size <= sizeof(b.credential_blob.credential));
    CHECK(b.secret.size > 0 && b.secret.size <= sizeof(b.secret.secret));
    CHECK(b.duplicate.size > 0 && b.duplicate.size <= sizeof(b.duplicate.buffer));
    CHECK(b.in_sym_seed.size > 0 && b.in_sym_seed.size <= sizeof(b.in_sym_seed.secret));
    CHECK(b.object_public.size > 0);
    CHECK(b.object_public.publicArea.type == TPM2_ALG_KEYEDHASH);
    CHECK(b.object_public.publicArea.nameAlg == TPM2_ALG_SHA256);
    CHECK(b.object_public.publicArea.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT);

    /* Marshal the fields again: they must be exactly the bytes they came from. */
    static uint8_t again[4 * 1024 + sizeof(provhsm_activation_blob)];
    size_t off = 0;
    CHECK(Tss2_MU_TPM2B_ID_OBJECT_Marshal(&b.credential_blob, again, sizeof(again), &off) == 0);
    CHECK(Tss2_MU_TPM2B_ENCRYPTED_SECRET_Marshal(&b.secret, again, sizeof(again), &off) == 0);
    CHECK(Tss2_MU_TPM2B_PRIVATE_Marshal(&b.duplicate, again, sizeof(again), &off) == 0);
    CHECK(Tss2_MU_TPM2B_ENCRYPTED_SECRET_Marshal(&b.in_sym_seed, again, sizeof(again), &off) == 0);
    size_t pub_at = off;
    CHECK(Tss2_MU_TPM2B_PUBLIC_Marshal(&b.object_public, again, sizeof(again), &off) == 0);
    CHECK(off - pub_at == 2u + b.object_public.size);
    CHECK(off + 2 <= size);
    CHECK(memcmp(again, data, off) == 0);

    size_t enc_len = be16(data + off);
    CHECK(off + 2 + enc_len + b.trailing_len == size);
    return 0;
}
