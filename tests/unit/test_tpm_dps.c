/*
 * Unit tests for the test-side provisioning service (tests/common/dps_service.c), the
 * blob builder the swtpm integration tests rely on. Without a TPM they check: that its
 * KDFa agrees with OpenSSL's SP 800-108 KBKDF; that a blob for the fixture EK/SRK parses
 * with provhsm_tpm_blob_parse and has the layout, field sizes and identity-key public
 * area of the independently made fixture blob1.bin; and, for RSA keys generated here,
 * that each wrapper opens again with the private keys (RSA-OAEP labels, HMACs, AES-CFB,
 * inner integrity) and yields the HMAC key and the chosen random values. That last check
 * reuses the builder's KDFa and AES-CFB, so it proves structure, not the reading of the
 * TPM specification: the swtpm activation does that.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rsa.h>
#include <tss2/tss2_mu.h>

#include "dps_service.h"
#include "log.h"
#include "testutil.h"
#include "tpm_blob.h"

typedef struct fixture {
    uint8_t *ek;
    size_t ek_len;
    uint8_t *srk;
    size_t srk_len;
    uint8_t *blob1;
    size_t blob1_len;
    uint8_t *key1;
    size_t key1_len;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    uint8_t *hex = NULL;
    size_t hex_len = 0;
    int ok = f != NULL &&
             provhsm_test_read_fixture("tpm-activation/ek.tpm2b", &f->ek, &f->ek_len) == 0 &&
             provhsm_test_read_fixture("tpm-activation/srk.tpm2b", &f->srk, &f->srk_len) == 0 &&
             provhsm_test_read_fixture("tpm-activation/blob1.bin", &f->blob1, &f->blob1_len) == 0 &&
             provhsm_test_read_fixture("tpm-activation/identity-key-1.hex", &hex, &hex_len) == 0 &&
             provhsm_test_hex_decode((const char *)hex, &f->key1, &f->key1_len) == 0;
    free(hex);
    if (!ok) {
        fprintf(stderr, "cannot read tpm-activation fixtures (is PROVHSM_FIXTURES set?)\n");
        if (f != NULL) {
            free(f->ek);
            free(f->srk);
            free(f->blob1);
            free(f->key1);
        }
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    free(f->ek);
    free(f->srk);
    free(f->blob1);
    free(f->key1);
    free(f);
    return 0;
}

static unsigned be16(const uint8_t *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

/* Sizes of the five TPM2B fields and the encrypted-data field, walking the blob. */
static void field_sizes(const uint8_t *blob, size_t len, unsigned sizes[6])
{
    size_t off = 0;
    for (int i = 0; i < 6; i++) {
        assert_true(off + 2 <= len);
        sizes[i] = be16(blob + off);
        off += 2 + sizes[i];
    }
    assert_int_equal(off, len);
}

/* ---- KDFa ------------------------------------------------------------------ */

static void kbkdf(const uint8_t *key, size_t key_len, const char *label, const uint8_t *context,
                  size_t context_len, uint8_t *out, size_t out_len)
{
    static const uint8_t empty[1];
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "KBKDF", NULL);
    assert_non_null(kdf);
    EVP_KDF_CTX *ctx = EVP_KDF_CTX_new(kdf);
    assert_non_null(ctx);
    /* counter mode, 32-bit counter, a 0x00 separator and [L]32 are KBKDF's defaults */
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MODE, (char *)"counter", 0),
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MAC, (char *)"HMAC", 0),
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, key_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)label, strlen(label)),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO,
                                          (void *)(context_len ? context : empty), context_len),
        OSSL_PARAM_construct_end(),
    };
    assert_int_equal(EVP_KDF_derive(ctx, out, out_len, params), 1);
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
}

static void test_kdfa_matches_kbkdf(void **state)
{
    (void)state;
    uint8_t seed[32];
    uint8_t u[34];
    uint8_t v[20];
    uint8_t both[sizeof(u) + sizeof(v)];
    for (size_t i = 0; i < sizeof(seed); i++)
        seed[i] = (uint8_t)(0x11 * i + 3);
    for (size_t i = 0; i < sizeof(u); i++)
        u[i] = (uint8_t)(0xA0 ^ i);
    for (size_t i = 0; i < sizeof(v); i++)
        v[i] = (uint8_t)(7 * i);
    memcpy(both, u, sizeof(u));
    memcpy(both + sizeof(u), v, sizeof(v));

    const uint32_t bit_counts[] = {128, 256, 264, 512, 1000};
    for (size_t b = 0; b < sizeof(bit_counts) / sizeof(bit_counts[0]); b++) {
        uint8_t mine[125];
        uint8_t ref[125];
        size_t n = bit_counts[b] / 8;
        /* label + Name context, as for symKey */
        assert_int_equal(provhsm_test_kdfa_sha256(seed, sizeof(seed), "STORAGE", u, sizeof(u), NULL,
                                                  0, bit_counts[b], mine),
                         0);
        kbkdf(seed, sizeof(seed), "STORAGE", u, sizeof(u), ref, n);
        assert_memory_equal(mine, ref, n);
        /* no context, as for the HMAC key */
        assert_int_equal(provhsm_test_kdfa_sha256(seed, sizeof(seed), "INTEGRITY", NULL, 0, NULL, 0,
                                                  bit_counts[b], mine),
                         0);
        kbkdf(seed, sizeof(seed), "INTEGRITY", NULL, 0, ref, n);
        assert_memory_equal(mine, ref, n);
        /* both contexts */
        assert_int_equal(provhsm_test_kdfa_sha256(seed, sizeof(seed), "DUPLICATE", u, sizeof(u), v,
                                                  sizeof(v), bit_counts[b], mine),
                         0);
        kbkdf(seed, sizeof(seed), "DUPLICATE", both, sizeof(both), ref, n);
        assert_memory_equal(mine, ref, n);
    }
    /* the output length is part of the input: a 128-bit key is not a prefix of 256 bits */
    uint8_t k128[16];
    uint8_t k256[32];
    assert_int_equal(
        provhsm_test_kdfa_sha256(seed, sizeof(seed), "STORAGE", u, sizeof(u), NULL, 0, 128, k128),
        0);
    assert_int_equal(
        provhsm_test_kdfa_sha256(seed, sizeof(seed), "STORAGE", u, sizeof(u), NULL, 0, 256, k256),
        0);
    assert_memory_not_equal(k128, k256, 16);
    assert_int_equal(
        provhsm_test_kdfa_sha256(seed, sizeof(seed), "STORAGE", NULL, 0, NULL, 0, 12, k128), -1);
    assert_int_equal(
        provhsm_test_kdfa_sha256(seed, sizeof(seed), "STORAGE", NULL, 0, NULL, 0, 0, k128), -1);
}

/* ---- the blob for the fixture TPM --------------------------------------------- */

static void test_blob_parses_like_fixture(void **state)
{
    fixture *f = *state;
    uint8_t *blob = NULL;
    size_t len = 0;
    assert_int_equal(provhsm_test_dps_make_blob(f->ek, f->ek_len, f->srk, f->srk_len, f->key1,
                                                f->key1_len, &blob, &len),
                     0);

    provhsm_activation_blob mine;
    provhsm_activation_blob ref;
    assert_int_equal(provhsm_tpm_blob_parse(blob, len, &mine), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_blob_parse(f->blob1, f->blob1_len, &ref), PROVHSM_OK);

    /* same layout and field sizes as the independently made blob */
    unsigned ms[6];
    unsigned rs[6];
    field_sizes(blob, len, ms);
    field_sizes(f->blob1, f->blob1_len, rs);
    for (int i = 0; i < 6; i++)
        assert_int_equal(ms[i], rs[i]);
    assert_int_equal(len, f->blob1_len);
    assert_int_equal(mine.secret.size, 256);
    assert_int_equal(mine.in_sym_seed.size, 256);
    assert_int_equal(mine.credential_blob.size, ref.credential_blob.size);
    assert_int_equal(mine.duplicate.size, ref.duplicate.size);
    assert_int_equal(mine.trailing_len, 0);
    /* both wrappers start with a SHA-256 TPM2B_DIGEST (the HMAC) */
    assert_int_equal(be16(mine.credential_blob.credential), 32);
    assert_int_equal(be16(mine.duplicate.buffer), 32);

    /* the identity key's public area matches except for its random unique */
    const TPMT_PUBLIC *m = &mine.object_public.publicArea;
    const TPMT_PUBLIC *r = &ref.object_public.publicArea;
    assert_int_equal(m->type, r->type);
    assert_int_equal(m->nameAlg, r->nameAlg);
    assert_int_equal(m->objectAttributes, r->objectAttributes);
    assert_int_equal(m->objectAttributes & (TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT), 0);
    assert_int_equal(m->authPolicy.size, r->authPolicy.size);
    assert_int_equal(m->parameters.keyedHashDetail.scheme.scheme,
                     r->parameters.keyedHashDetail.scheme.scheme);
    assert_int_equal(m->parameters.keyedHashDetail.scheme.details.hmac.hashAlg,
                     r->parameters.keyedHashDetail.scheme.details.hmac.hashAlg);
    assert_int_equal(m->unique.keyedHash.size, r->unique.keyedHash.size);

    /* fresh randomness each time: a second blob differs in every wrapped field */
    uint8_t *blob2 = NULL;
    size_t len2 = 0;
    assert_int_equal(provhsm_test_dps_make_blob(f->ek, f->ek_len, f->srk, f->srk_len, f->key1,
                                                f->key1_len, &blob2, &len2),
                     0);
    provhsm_activation_blob again;
    assert_int_equal(provhsm_tpm_blob_parse(blob2, len2, &again), PROVHSM_OK);
    assert_memory_not_equal(again.credential_blob.credential, mine.credential_blob.credential,
                            mine.credential_blob.size);
    assert_memory_not_equal(again.duplicate.buffer, mine.duplicate.buffer, mine.duplicate.size);
    assert_memory_not_equal(again.in_sym_seed.secret, mine.in_sym_seed.secret, 256);
    free(blob2);
    free(blob);
}

static void test_bad_arguments(void **state)
{
    fixture *f = *state;
    uint8_t *blob = (uint8_t *)"untouched";
    size_t len = 12345;
    uint8_t big[65] = {0};
    provhsm_activation_blob parsed;
    assert_int_equal(provhsm_tpm_blob_parse(f->blob1, f->blob1_len, &parsed), PROVHSM_OK);
    /* the identity key's public area is no RSA decryption key */
    uint8_t *pub = f->blob1 + f->blob1_len - 2 - 2 - parsed.object_public.size;

    assert_int_equal(
        provhsm_test_dps_make_blob(NULL, 0, f->srk, f->srk_len, f->key1, f->key1_len, &blob, &len),
        -1);
    assert_int_equal(
        provhsm_test_dps_make_blob(f->ek, f->ek_len, f->srk, f->srk_len, f->key1, 0, &blob, &len),
        -1);
    assert_int_equal(provhsm_test_dps_make_blob(f->ek, f->ek_len, f->srk, f->srk_len, big,
                                                sizeof(big), &blob, &len),
                     -1);
    assert_int_equal(provhsm_test_dps_make_blob(f->ek, f->ek_len - 1, f->srk, f->srk_len, f->key1,
                                                f->key1_len, &blob, &len),
                     -1);
    assert_int_equal(provhsm_test_dps_make_blob(f->ek, f->ek_len, pub,
                                                2u + parsed.object_public.size, f->key1,
                                                f->key1_len, &blob, &len),
                     -1);
    assert_string_equal((const char *)blob, "untouched");
    assert_int_equal(len, 12345);
    /* the longest key a TPM takes for HMAC-SHA256: its block size */
    assert_int_equal(
        provhsm_test_dps_make_blob(f->ek, f->ek_len, f->srk, f->srk_len, big, 64, &blob, &len), 0);
    assert_int_equal(provhsm_tpm_blob_parse(blob, len, &parsed), PROVHSM_OK);
    free(blob);
}

/* The options change the identity key's attributes (and nothing else of its public area). */
static void test_key_options(void **state)
{
    fixture *f = *state;
    uint8_t *blob = NULL;
    size_t len = 0;
    const uint8_t auth[33] = {1};
    const provhsm_test_dps_key_options restricted = {
        .attributes = TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_RESTRICTED};
    assert_int_equal(provhsm_test_dps_make_blob_opts(f->ek, f->ek_len, f->srk, f->srk_len, f->key1,
                                                     f->key1_len, &restricted, &blob, &len),
                     0);
    unsigned sizes[6];
    field_sizes(blob, len, sizes);
    size_t off = 0;
    for (int i = 0; i < 4; i++)
        off += 2u + sizes[i];
    TPM2B_PUBLIC pub;
    memset(&pub, 0, sizeof(pub));
    assert_int_equal(Tss2_MU_TPM2B_PUBLIC_Unmarshal(blob, len, &off, &pub), TSS2_RC_SUCCESS);
    assert_int_equal(pub.publicArea.objectAttributes, restricted.attributes);
    assert_int_equal(pub.publicArea.type, TPM2_ALG_KEYEDHASH);
    /* and the parser refuses such a key */
    provhsm_activation_blob parsed;
    assert_int_equal(provhsm_tpm_blob_parse(blob, len, &parsed), PROVHSM_E_CORRUPT);
    free(blob);

    /* an authorisation value is invisible in the public area: the blob parses */
    const provhsm_test_dps_key_options with_auth = {.auth = auth, .auth_len = 32};
    assert_int_equal(provhsm_test_dps_make_blob_opts(f->ek, f->ek_len, f->srk, f->srk_len, f->key1,
                                                     f->key1_len, &with_auth, &blob, &len),
                     0);
    assert_int_equal(provhsm_tpm_blob_parse(blob, len, &parsed), PROVHSM_OK);
    free(blob);
    const provhsm_test_dps_key_options too_long = {.auth = auth, .auth_len = 33};
    assert_int_equal(provhsm_test_dps_make_blob_opts(f->ek, f->ek_len, f->srk, f->srk_len, f->key1,
                                                     f->key1_len, &too_long, &blob, &len),
                     -1);
}

/* ---- unwrapping with keys made here ------------------------------------------- */

/* A TPM2B_PUBLIC like `template_tpm2b` but for a fresh RSA-2048 key. */
static EVP_PKEY *make_rsa_public(const uint8_t *template_tpm2b, size_t template_len, uint8_t *out,
                                 size_t cap, size_t *out_len)
{
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    assert_non_null(pkey);
    BIGNUM *n = NULL;
    assert_int_equal(EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n), 1);

    TPM2B_PUBLIC pub;
    memset(&pub, 0, sizeof(pub));
    size_t off = 0;
    assert_int_equal(
        Tss2_MU_TPMT_PUBLIC_Unmarshal(template_tpm2b + 2, template_len - 2, &off, &pub.publicArea),
        TSS2_RC_SUCCESS);
    assert_int_equal(pub.publicArea.parameters.rsaDetail.exponent, 0); /* i.e. 65537 */
    assert_int_equal(BN_bn2binpad(n, pub.publicArea.unique.rsa.buffer, 256), 256);
    pub.publicArea.unique.rsa.size = 256;
    BN_free(n);
    *out_len = 0;
    assert_int_equal(Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, out, cap, out_len), TSS2_RC_SUCCESS);
    return pkey;
}

/* RSA-OAEP-SHA256 decryption with a label (its NUL included); returns the length or -1. */
static int oaep_decrypt(EVP_PKEY *key, const char *label, const uint8_t *in, size_t in_len,
                        uint8_t *out, size_t cap)
{
    size_t out_len = cap;
    size_t label_len = strlen(label) + 1;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    assert_non_null(ctx);
    assert_int_equal(EVP_PKEY_decrypt_init(ctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()), 1);
    assert_int_equal(
        EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, OPENSSL_memdup(label, label_len), (int)label_len), 1);
    int ret = EVP_PKEY_decrypt(ctx, out, &out_len, in, in_len) == 1 ? (int)out_len : -1;
    EVP_PKEY_CTX_free(ctx);
    return ret;
}

static void hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *a, size_t a_len,
                        const uint8_t *b, size_t b_len, uint8_t out[32])
{
    uint8_t *msg = malloc(a_len + b_len);
    assert_non_null(msg);
    memcpy(msg, a, a_len);
    memcpy(msg + a_len, b, b_len);
    size_t out_len = 0;
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len, msg, a_len + b_len,
                              out, 32, &out_len));
    assert_int_equal(out_len, 32);
    free(msg);
}

/*
 * Opens the wrapper outer_wrap() builds (TPM2B_DIGEST hmac || AES-CFB ciphertext) with
 * the decrypted seed; returns the plaintext length.
 */
static size_t open_wrapper(const uint8_t *seed, size_t sym_len, const uint8_t *name,
                           const uint8_t *in, size_t in_len, uint8_t *out)
{
    uint8_t sym[16];
    uint8_t hkey[32];
    uint8_t hmac[32];
    assert_true(in_len > 34);
    assert_int_equal(be16(in), 32);
    const uint8_t *cipher = in + 34;
    size_t cipher_len = in_len - 34;
    assert_int_equal(provhsm_test_kdfa_sha256(seed, 32, "INTEGRITY", NULL, 0, NULL, 0, 256, hkey),
                     0);
    hmac_sha256(hkey, sizeof(hkey), cipher, cipher_len, name, PROVHSM_TEST_NAME_LEN, hmac);
    assert_memory_equal(hmac, in + 2, 32);
    assert_int_equal(sym_len, sizeof(sym));
    assert_int_equal(provhsm_test_kdfa_sha256(seed, 32, "STORAGE", name, PROVHSM_TEST_NAME_LEN,
                                              NULL, 0, 128, sym),
                     0);
    assert_int_equal(provhsm_test_aes_cfb(0, sym, sizeof(sym), cipher, cipher_len, out), 0);
    return cipher_len;
}

static void test_unwrap_with_private_keys(void **state)
{
    fixture *f = *state;
    uint8_t ek[512];
    uint8_t srk[512];
    size_t ek_len = 0;
    size_t srk_len = 0;
    EVP_PKEY *ek_key = make_rsa_public(f->ek, f->ek_len, ek, sizeof(ek), &ek_len);
    EVP_PKEY *srk_key = make_rsa_public(f->srk, f->srk_len, srk, sizeof(srk), &srk_len);

    provhsm_test_dps_random rnd;
    for (size_t i = 0; i < sizeof(rnd); i++)
        ((uint8_t *)&rnd)[i] = (uint8_t)(i * 37 + 1);
    uint8_t key[48];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)(0xC0 + i);

    uint8_t *blob = NULL;
    size_t len = 0;
    assert_int_equal(provhsm_test_dps_make_blob_with(ek, ek_len, srk, srk_len, key, sizeof(key),
                                                     &rnd, &blob, &len),
                     0);
    provhsm_activation_blob b;
    assert_int_equal(provhsm_tpm_blob_parse(blob, len, &b), PROVHSM_OK);

    uint8_t srk_name[PROVHSM_TEST_NAME_LEN];
    uint8_t obj_name[PROVHSM_TEST_NAME_LEN];
    assert_int_equal(provhsm_test_tpm_name(srk, srk_len, srk_name), 0);
    size_t pub_off = len - 2 - 2 - b.object_public.size;
    assert_int_equal(provhsm_test_tpm_name(blob + pub_off, 2u + b.object_public.size, obj_name), 0);

    /* ActivateCredential's half: the EK opens the seed, the SRK's Name the credential */
    uint8_t seed[256];
    assert_int_equal(
        oaep_decrypt(ek_key, "IDENTITY", b.secret.secret, b.secret.size, seed, sizeof(seed)), 32);
    assert_memory_equal(seed, rnd.cred_seed, 32);
    assert_int_equal(
        oaep_decrypt(ek_key, "DUPLICATE", b.secret.secret, b.secret.size, seed, sizeof(seed)), -1);
    uint8_t cred[sizeof(b.credential_blob.credential)];
    size_t cred_len = open_wrapper(rnd.cred_seed, 16, srk_name, b.credential_blob.credential,
                                   b.credential_blob.size, cred);
    assert_int_equal(cred_len, 18);
    assert_int_equal(be16(cred), 16);
    assert_memory_equal(cred + 2, rnd.inner_key, 16);

    /* Import's half: the SRK opens the seed, the object's Name the outer wrapper */
    assert_int_equal(oaep_decrypt(srk_key, "DUPLICATE", b.in_sym_seed.secret, b.in_sym_seed.size,
                                  seed, sizeof(seed)),
                     32);
    assert_memory_equal(seed, rnd.dup_seed, 32);
    uint8_t outer[sizeof(b.duplicate.buffer)];
    size_t outer_len =
        open_wrapper(rnd.dup_seed, 16, obj_name, b.duplicate.buffer, b.duplicate.size, outer);
    uint8_t inner[sizeof(b.duplicate.buffer)];
    assert_int_equal(provhsm_test_aes_cfb(0, cred + 2, 16, outer, outer_len, inner), 0);

    /* innerIntegrity = SHA-256(TPM2B_SENSITIVE || Name) */
    assert_int_equal(be16(inner), 32);
    uint8_t digest[32];
    unsigned dlen = 0;
    uint8_t *hashed = malloc(outer_len - 34 + PROVHSM_TEST_NAME_LEN);
    assert_non_null(hashed);
    memcpy(hashed, inner + 34, outer_len - 34);
    memcpy(hashed + outer_len - 34, obj_name, PROVHSM_TEST_NAME_LEN);
    assert_int_equal(EVP_Digest(hashed, outer_len - 34 + PROVHSM_TEST_NAME_LEN, digest, &dlen,
                                EVP_sha256(), NULL),
                     1);
    free(hashed);
    assert_memory_equal(digest, inner + 2, 32);

    TPM2B_SENSITIVE sens;
    memset(&sens, 0, sizeof(sens));
    size_t off = 0;
    assert_int_equal(
        Tss2_MU_TPMT_SENSITIVE_Unmarshal(inner + 36, be16(inner + 34), &off, &sens.sensitiveArea),
        TSS2_RC_SUCCESS);
    assert_int_equal(36 + off, outer_len);
    assert_int_equal(sens.sensitiveArea.sensitiveType, TPM2_ALG_KEYEDHASH);
    assert_int_equal(sens.sensitiveArea.authValue.size, 0);
    assert_int_equal(sens.sensitiveArea.seedValue.size, 32);
    assert_memory_equal(sens.sensitiveArea.seedValue.buffer, rnd.obfuscation, 32);
    assert_int_equal(sens.sensitiveArea.sensitive.bits.size, sizeof(key));
    assert_memory_equal(sens.sensitiveArea.sensitive.bits.buffer, key, sizeof(key));

    /* unique = SHA-256(seedValue || key) */
    uint8_t both[32 + sizeof(key)];
    memcpy(both, rnd.obfuscation, 32);
    memcpy(both + 32, key, sizeof(key));
    assert_int_equal(EVP_Digest(both, sizeof(both), digest, &dlen, EVP_sha256(), NULL), 1);
    assert_int_equal(b.object_public.publicArea.unique.keyedHash.size, 32);
    assert_memory_equal(b.object_public.publicArea.unique.keyedHash.buffer, digest, 32);

    free(blob);
    EVP_PKEY_free(ek_key);
    EVP_PKEY_free(srk_key);
}

static void test_name_of_fixture_srk(void **state)
{
    fixture *f = *state;
    uint8_t name[PROVHSM_TEST_NAME_LEN];
    uint8_t digest[32];
    unsigned dlen = 0;
    assert_int_equal(provhsm_test_tpm_name(f->srk, f->srk_len, name), 0);
    assert_int_equal(be16(name), TPM2_ALG_SHA256);
    assert_int_equal(EVP_Digest(f->srk + 2, f->srk_len - 2, digest, &dlen, EVP_sha256(), NULL), 1);
    assert_memory_equal(name + 2, digest, 32);
    assert_int_equal(provhsm_test_tpm_name(f->srk, f->srk_len + 1, name), -1);
}

int main(void)
{
    provhsm_set_log_level(PROVHSM_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kdfa_matches_kbkdf),
        cmocka_unit_test_setup_teardown(test_blob_parses_like_fixture, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwrap_with_private_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_name_of_fixture_srk, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
