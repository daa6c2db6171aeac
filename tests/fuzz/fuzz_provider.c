/*
 * libFuzzer target for the OpenSSL provider's decoder (src/provider/decoder.c), reached the
 * way the SDK reaches it: PEM_read_bio_PrivateKey on a memory BIO in the default library
 * context, with the provider loaded. Each input is decoded twice: as it is (any PEM, so
 * the decoder must leave other labels to the other decoders), and as the body of a
 * "PROVHSM KEY REFERENCE" block (so arbitrary DER reaches the decoder's own path). Every
 * UNLOAD_EVERY inputs the provider is unloaded and loaded again, to exercise its count.
 * The environment names an empty configuration and a store that does not exist, so a
 * well-formed reference fails cleanly where hwkey.c looks its key up, with no device.
 * Properties: the provider loads again after each unload; a key our provider hands out is
 * an EC P-256 or P-384 key.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>

#include "fuzz_common.h"
#include "keyref.h"
#include "provider/provider.h"

#define UNLOAD_EVERY 64

static char env_root[64];

static void remove_env_root(void)
{
    char path[96];
    snprintf(path, sizeof(path), "%s/provhsm.conf", env_root);
    remove(path);
    remove(env_root);
}

/* An empty configuration file and a store directory that is never made. */
static void point_at_empty_dir(void)
{
    snprintf(env_root, sizeof(env_root), "/tmp/provhsm-fuzz-prov-XXXXXX");
    if (mkdtemp(env_root) == NULL)
        abort();
    atexit(remove_env_root);
    char path[96];
    snprintf(path, sizeof(path), "%s/provhsm.conf", env_root);
    fuzz_write_file(path, (const uint8_t *)"", 0);
    setenv("PROVHSM_CONFIG", path, 1);
    snprintf(path, sizeof(path), "%s/store", env_root);
    setenv("PROVHSM_STORE", path, 1);
    setenv("PROVHSM_TCTI", "device:/nonexistent/provhsm-fuzz", 1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    point_at_empty_dir();
    FUZZ_CHECK(provhsm_provider_load() == PROVHSM_OK);
    return 0;
}

static int is_ours(const EVP_PKEY *key)
{
    const OSSL_PROVIDER *prov = EVP_PKEY_get0_provider(key);
    return prov != NULL && strcmp(OSSL_PROVIDER_get0_name(prov), PROVHSM_PROVIDER_NAME) == 0;
}

static void decode(BIO *bio)
{
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    if (key != NULL && is_ours(key)) {
        FUZZ_CHECK(EVP_PKEY_is_a(key, "EC"));
        int bits = EVP_PKEY_get_bits(key);
        FUZZ_CHECK(bits == 256 || bits == 384);
    }
    EVP_PKEY_free(key);
    ERR_clear_error();
}

static void decode_as_is(const uint8_t *data, size_t size)
{
    BIO *bio = BIO_new_mem_buf(data, (int)size);
    FUZZ_CHECK(bio != NULL);
    decode(bio);
    BIO_free(bio);
}

static void decode_as_reference(const uint8_t *data, size_t size)
{
    BIO *bio = BIO_new(BIO_s_mem());
    FUZZ_CHECK(bio != NULL);
    FUZZ_CHECK(PEM_write_bio(bio, PROVHSM_KEYREF_PEM_LABEL, "", data, (long)size) > 0);
    decode(bio);
    BIO_free(bio);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned long inputs;
    if (size > 64 * 1024)
        return 0;
    decode_as_is(data, size);
    if (size > 0) /* PEM_write_bio writes no empty block */
        decode_as_reference(data, size);
    if (++inputs % UNLOAD_EVERY == 0) {
        provhsm_provider_unload();
        FUZZ_CHECK(provhsm_provider_load() == PROVHSM_OK);
    }
    return 0;
}
