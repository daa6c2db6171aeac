/*
 * The provisioning service's half of TPM attestation, as test code (see dps_service.h).
 * From the device's EK and SRK it builds what the service sends back: the identity key
 * (a KEYEDHASH HMAC-SHA256 object) duplicated to the SRK with an inner wrapper (TPM 2.0
 * Part 1, "Protected Storage": innerIntegrity = H(sensitive || name), AES-CFB with a
 * random key) and an outer wrapper (seed RSA-OAEP encrypted to the SRK with label
 * "DUPLICATE", KDFa "STORAGE"/"INTEGRITY" keys), and the inner wrapper key delivered by
 * MakeCredential to the EK over the SRK's Name (Part 1, "Credential Protection": label
 * "IDENTITY"). Crypto is OpenSSL 3; every TPM structure is marshaled with libtss2-mu.
 * Callers: unit and integration tests. Keeps no state.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <tss2/tss2_mu.h>

#include "dps_service.h"
#include "secmem.h"

#define SHA256_LEN 32
/* A TPM refuses an HMAC key longer than its hash's block size (TPM_RC_KEY_SIZE). */
#define MAX_HMAC_KEY 64

/* An RSA storage or endorsement key the service encrypts seeds to. */
typedef struct protector {
    EVP_PKEY *rsa;
    size_t sym_key_len; /* bytes of its AES key: the KDFa "STORAGE" output size */
    uint8_t name[PROVHSM_TEST_NAME_LEN];
} protector;

typedef struct segment {
    const uint8_t *p;
    size_t n;
} segment;

static void report(const char *what)
{
    fprintf(stderr, "dps_service: %s failed\n", what);
    ERR_print_errors_fp(stderr);
}

/* A marshaled TPM2B_PUBLIC whose declared size is exactly what its area consumes. */
static int parse_tpm2b_public(const uint8_t *buf, size_t len, TPMT_PUBLIC *out)
{
    if (buf == NULL || len < 2)
        return -1;
    size_t size = (size_t)buf[0] << 8 | buf[1];
    size_t off = 0;
    if (size == 0 || size != len - 2)
        return -1;
    memset(out, 0, sizeof(*out));
    if (Tss2_MU_TPMT_PUBLIC_Unmarshal(buf + 2, size, &off, out) != TSS2_RC_SUCCESS || off != size)
        return -1;
    return 0;
}

static int sha256(const segment *segs, size_t nsegs, uint8_t out[SHA256_LEN])
{
    int ret = -1;
    unsigned int len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL) != 1)
        goto cleanup;
    for (size_t i = 0; i < nsegs; i++)
        if (segs[i].n > 0 && EVP_DigestUpdate(ctx, segs[i].p, segs[i].n) != 1)
            goto cleanup;
    if (EVP_DigestFinal_ex(ctx, out, &len) != 1 || len != SHA256_LEN)
        goto cleanup;
    ret = 0;
cleanup:
    if (ret != 0)
        report("SHA-256");
    EVP_MD_CTX_free(ctx);
    return ret;
}

static int hmac_sha256(const uint8_t *key, size_t key_len, const segment *segs, size_t nsegs,
                       uint8_t out[SHA256_LEN])
{
    int ret = -1;
    size_t len = 0;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (ctx == NULL || EVP_MAC_init(ctx, key, key_len, params) != 1)
        goto cleanup;
    for (size_t i = 0; i < nsegs; i++)
        if (segs[i].n > 0 && EVP_MAC_update(ctx, segs[i].p, segs[i].n) != 1)
            goto cleanup;
    if (EVP_MAC_final(ctx, out, &len, SHA256_LEN) != 1 || len != SHA256_LEN)
        goto cleanup;
    ret = 0;
cleanup:
    if (ret != 0)
        report("HMAC-SHA256");
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return ret;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

int provhsm_test_kdfa_sha256(const uint8_t *key, size_t key_len, const char *label,
                             const uint8_t *context_u, size_t u_len, const uint8_t *context_v,
                             size_t v_len, uint32_t bits, uint8_t *out)
{
    uint8_t counter[4];
    uint8_t length[4];
    uint8_t block[SHA256_LEN];
    int ret = -1;

    if (key == NULL || label == NULL || out == NULL || bits == 0 || bits % 8 != 0 ||
        (context_u == NULL && u_len != 0) || (context_v == NULL && v_len != 0))
        return -1;
    put_be32(length, bits);
    size_t want = bits / 8;
    const segment segs[] = {
        {counter, sizeof(counter)},
        {(const uint8_t *)label, strlen(label) + 1}, /* the label's NUL is the 0x00 separator */
        {context_u, u_len},
        {context_v, v_len},
        {length, sizeof(length)},
    };
    for (uint32_t i = 1, done = 0; done < want; i++) {
        put_be32(counter, i);
        if (hmac_sha256(key, key_len, segs, sizeof(segs) / sizeof(segs[0]), block) != 0)
            goto cleanup;
        size_t take = want - done < SHA256_LEN ? want - done : SHA256_LEN;
        memcpy(out + done, block, take);
        done += (uint32_t)take;
    }
    ret = 0;
cleanup:
    provhsm_wipe(block, sizeof(block));
    return ret;
}

int provhsm_test_aes_cfb(int encrypt, const uint8_t *key, size_t key_len, const uint8_t *in,
                         size_t len, uint8_t *out)
{
    static const uint8_t zero_iv[16];
    const EVP_CIPHER *cipher = key_len == 16   ? EVP_aes_128_cfb128()
                               : key_len == 24 ? EVP_aes_192_cfb128()
                               : key_len == 32 ? EVP_aes_256_cfb128()
                                               : NULL;
    int ret = -1;
    int n1 = 0;
    int n2 = 0;
    EVP_CIPHER_CTX *ctx = NULL;

    if (cipher == NULL || key == NULL || in == NULL || out == NULL || len > 0x7fffffff)
        return -1;
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL || EVP_CipherInit_ex2(ctx, cipher, key, zero_iv, encrypt ? 1 : 0, NULL) != 1 ||
        EVP_CipherUpdate(ctx, out, &n1, in, (int)len) != 1 ||
        EVP_CipherFinal_ex(ctx, out + n1, &n2) != 1 || (size_t)n1 + (size_t)n2 != len) {
        report("AES-CFB");
        goto cleanup;
    }
    ret = 0;
cleanup:
    EVP_CIPHER_CTX_free(ctx);
    return ret;
}

int provhsm_test_tpm_name(const uint8_t *tpm2b_public, size_t len,
                          uint8_t name_out[PROVHSM_TEST_NAME_LEN])
{
    TPMT_PUBLIC pub;
    if (name_out == NULL || parse_tpm2b_public(tpm2b_public, len, &pub) != 0) {
        fprintf(stderr, "dps_service: not a marshaled TPM2B_PUBLIC\n");
        return -1;
    }
    if (pub.nameAlg != TPM2_ALG_SHA256) {
        fprintf(stderr, "dps_service: nameAlg 0x%04x is not SHA-256\n", (unsigned)pub.nameAlg);
        return -1;
    }
    /* the Name hashes the TPMT_PUBLIC exactly as marshaled, i.e. the bytes after the size */
    const segment seg = {tpm2b_public + 2, len - 2};
    name_out[0] = (uint8_t)(TPM2_ALG_SHA256 >> 8);
    name_out[1] = (uint8_t)TPM2_ALG_SHA256;
    return sha256(&seg, 1, name_out + 2);
}

static EVP_PKEY *rsa_public_key(const TPM2B_PUBLIC_KEY_RSA *modulus, UINT32 exponent)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    BIGNUM *n = BN_bin2bn(modulus->buffer, modulus->size, NULL);
    BIGNUM *e = BN_new();
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();

    if (n == NULL || e == NULL || bld == NULL ||
        BN_set_word(e, exponent == 0 ? 65537 : exponent) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) != 1 ||
        (params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
        (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) == NULL ||
        EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        report("RSA public key from TPM2B_PUBLIC");
        pkey = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return pkey;
}

/* An RSA restricted decryption key with nameAlg SHA-256 and an AES-CFB symmetric part. */
static int load_protector(const char *what, const uint8_t *buf, size_t len, protector *out)
{
    TPMT_PUBLIC pub;
    memset(out, 0, sizeof(*out));
    if (parse_tpm2b_public(buf, len, &pub) != 0) {
        fprintf(stderr, "dps_service: %s is not a marshaled TPM2B_PUBLIC\n", what);
        return -1;
    }
    const TPMS_RSA_PARMS *rsa = &pub.parameters.rsaDetail;
    const TPMA_OBJECT need = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
    if (pub.type != TPM2_ALG_RSA || pub.nameAlg != TPM2_ALG_SHA256 ||
        (pub.objectAttributes & need) != need || rsa->symmetric.algorithm != TPM2_ALG_AES ||
        rsa->symmetric.mode.aes != TPM2_ALG_CFB ||
        (rsa->symmetric.keyBits.aes != 128 && rsa->symmetric.keyBits.aes != 192 &&
         rsa->symmetric.keyBits.aes != 256)) {
        fprintf(stderr,
                "dps_service: %s is not an RSA restricted decryption key with nameAlg "
                "SHA-256 and AES-CFB\n",
                what);
        return -1;
    }
    if (provhsm_test_tpm_name(buf, len, out->name) != 0)
        return -1;
    out->sym_key_len = rsa->symmetric.keyBits.aes / 8u;
    out->rsa = rsa_public_key(&pub.unique.rsa, rsa->exponent);
    return out->rsa != NULL ? 0 : -1;
}

/* RSA-OAEP (SHA-256, MGF1-SHA-256) of a seed, labelled as TPM 2.0 secret sharing wants. */
static int encrypt_seed(const protector *to, const char *label, const uint8_t *seed,
                        size_t seed_len, TPM2B_ENCRYPTED_SECRET *out)
{
    int ret = -1;
    size_t out_len = sizeof(out->secret);
    size_t label_len = strlen(label) + 1; /* the NUL is part of the label */
    unsigned char *label_copy = OPENSSL_memdup(label, label_len);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, to->rsa, NULL);

    if (label_copy == NULL || ctx == NULL || EVP_PKEY_encrypt_init(ctx) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) != 1 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) != 1 ||
        EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, label_copy, (int)label_len) != 1)
        goto cleanup;
    label_copy = NULL; /* owned by ctx now */
    if (EVP_PKEY_encrypt(ctx, out->secret, &out_len, seed, seed_len) != 1)
        goto cleanup;
    out->size = (UINT16)out_len;
    ret = 0;
cleanup:
    if (ret != 0)
        report("RSA-OAEP seed encryption");
    OPENSSL_free(label_copy);
    EVP_PKEY_CTX_free(ctx);
    return ret;
}

/* Marshals a TPM2B_DIGEST holding `len` bytes at `buf + *off`. */
static int put_digest(const uint8_t *data, size_t len, uint8_t *buf, size_t cap, size_t *off)
{
    TPM2B_DIGEST d = {.size = (UINT16)len};
    if (len > sizeof(d.buffer))
        return -1;
    memcpy(d.buffer, data, len);
    TSS2_RC rc = Tss2_MU_TPM2B_DIGEST_Marshal(&d, buf, cap, off);
    provhsm_wipe(&d, sizeof(d));
    return rc == TSS2_RC_SUCCESS ? 0 : -1;
}

/*
 * Wraps `plain` for a protector the way both Duplicate's outer wrapper and MakeCredential
 * do: AES-CFB under KDFa(seed, "STORAGE", name) and an HMAC under KDFa(seed, "INTEGRITY")
 * over (ciphertext || name). Writes TPM2B_DIGEST(hmac) || ciphertext.
 */
static int outer_wrap(const uint8_t *seed, size_t seed_len, size_t sym_key_len,
                      const uint8_t name[PROVHSM_TEST_NAME_LEN], const uint8_t *plain,
                      size_t plain_len, uint8_t *out, size_t cap, size_t *out_len)
{
    int ret = -1;
    uint8_t sym_key[32];
    uint8_t hmac_key[SHA256_LEN];
    uint8_t hmac[SHA256_LEN];
    size_t off = 0;
    uint8_t *cipher = malloc(plain_len);

    if (cipher == NULL || sym_key_len > sizeof(sym_key) ||
        provhsm_test_kdfa_sha256(seed, seed_len, "STORAGE", name, PROVHSM_TEST_NAME_LEN, NULL, 0,
                                 (uint32_t)sym_key_len * 8, sym_key) != 0 ||
        provhsm_test_aes_cfb(1, sym_key, sym_key_len, plain, plain_len, cipher) != 0 ||
        provhsm_test_kdfa_sha256(seed, seed_len, "INTEGRITY", NULL, 0, NULL, 0, SHA256_LEN * 8,
                                 hmac_key) != 0)
        goto cleanup;
    const segment segs[] = {{cipher, plain_len}, {name, PROVHSM_TEST_NAME_LEN}};
    if (hmac_sha256(hmac_key, sizeof(hmac_key), segs, 2, hmac) != 0 ||
        put_digest(hmac, sizeof(hmac), out, cap, &off) != 0 || cap - off < plain_len)
        goto cleanup;
    memcpy(out + off, cipher, plain_len);
    *out_len = off + plain_len;
    ret = 0;
cleanup:
    provhsm_wipe(sym_key, sizeof(sym_key));
    provhsm_wipe(hmac_key, sizeof(hmac_key));
    free(cipher);
    return ret;
}

/* The identity key as the service makes it: userWithAuth, noDA, sign, empty auth. */
#define SERVICE_ATTRIBUTES (TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA | TPMA_OBJECT_SIGN_ENCRYPT)

static int make_blob(const uint8_t *ek_tpm2b, size_t ek_len, const uint8_t *srk_tpm2b,
                     size_t srk_len, const uint8_t *hmac_key, size_t hmac_key_len,
                     const provhsm_test_dps_random *rnd, const provhsm_test_dps_key_options *opts,
                     uint8_t **blob_out, size_t *blob_len_out)
{
    int ret = -1;
    protector ek = {0};
    protector srk = {0};
    TPM2B_PUBLIC object = {0};
    TPM2B_SENSITIVE sensitive = {0};
    TPM2B_ID_OBJECT credential = {0};
    TPM2B_ENCRYPTED_SECRET secret = {0};
    TPM2B_PRIVATE duplicate = {0};
    TPM2B_ENCRYPTED_SECRET in_sym_seed = {0};
    uint8_t public_m[sizeof(TPMT_PUBLIC)];
    uint8_t object_name[PROVHSM_TEST_NAME_LEN];
    uint8_t sensitive_m[sizeof(TPM2B_SENSITIVE)];
    uint8_t inner_plain[2 + SHA256_LEN + sizeof(TPM2B_SENSITIVE)];
    uint8_t inner_cipher[sizeof(inner_plain)];
    uint8_t integrity[SHA256_LEN];
    uint8_t cred_plain[2 + sizeof(rnd->inner_key)];
    uint8_t *blob = NULL;
    size_t public_len = 0;
    size_t sensitive_len = 0;
    size_t inner_len = 0;
    size_t cred_len = 0;
    size_t n = 0;

    if (ek_tpm2b == NULL || srk_tpm2b == NULL || hmac_key == NULL || rnd == NULL ||
        blob_out == NULL || blob_len_out == NULL || hmac_key_len == 0 ||
        hmac_key_len > MAX_HMAC_KEY ||
        opts->auth_len > SHA256_LEN || /* a TPM takes no longer authValue than nameAlg's */
        (opts->auth == NULL && opts->auth_len > 0)) {
        fprintf(stderr, "dps_service: invalid argument\n");
        return -1;
    }
    if (load_protector("EK", ek_tpm2b, ek_len, &ek) != 0 ||
        load_protector("SRK", srk_tpm2b, srk_len, &srk) != 0)
        goto cleanup;

    /* The identity key: sensitive = the HMAC key, unique = H(seedValue || key). */
    TPMT_SENSITIVE *s = &sensitive.sensitiveArea;
    s->sensitiveType = TPM2_ALG_KEYEDHASH;
    s->seedValue.size = sizeof(rnd->obfuscation);
    memcpy(s->seedValue.buffer, rnd->obfuscation, sizeof(rnd->obfuscation));
    s->sensitive.bits.size = (UINT16)hmac_key_len;
    memcpy(s->sensitive.bits.buffer, hmac_key, hmac_key_len);
    s->authValue.size = (UINT16)opts->auth_len;
    if (opts->auth_len > 0)
        memcpy(s->authValue.buffer, opts->auth, opts->auth_len);

    TPMT_PUBLIC *p = &object.publicArea;
    p->type = TPM2_ALG_KEYEDHASH;
    p->nameAlg = TPM2_ALG_SHA256;
    /* a duplicate: fixedTPM and fixedParent clear */
    p->objectAttributes = opts->attributes != 0 ? opts->attributes : SERVICE_ATTRIBUTES;
    p->parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_HMAC;
    p->parameters.keyedHashDetail.scheme.details.hmac.hashAlg = TPM2_ALG_SHA256;
    p->unique.keyedHash.size = SHA256_LEN;
    const segment unique_in[] = {{rnd->obfuscation, sizeof(rnd->obfuscation)},
                                 {hmac_key, hmac_key_len}};
    if (sha256(unique_in, 2, p->unique.keyedHash.buffer) != 0)
        goto cleanup;
    if (Tss2_MU_TPMT_PUBLIC_Marshal(p, public_m, sizeof(public_m), &public_len) != 0) {
        report("marshaling the identity key's TPMT_PUBLIC");
        goto cleanup;
    }
    object_name[0] = (uint8_t)(TPM2_ALG_SHA256 >> 8);
    object_name[1] = (uint8_t)TPM2_ALG_SHA256;
    const segment public_seg = {public_m, public_len};
    if (sha256(&public_seg, 1, object_name + 2) != 0)
        goto cleanup;

    /* Inner wrapper: TPM2B_DIGEST(H(TPM2B_SENSITIVE || name)) || TPM2B_SENSITIVE, AES-CFB. */
    if (Tss2_MU_TPM2B_SENSITIVE_Marshal(&sensitive, sensitive_m, sizeof(sensitive_m),
                                        &sensitive_len) != 0) {
        report("marshaling TPM2B_SENSITIVE");
        goto cleanup;
    }
    const segment integrity_in[] = {{sensitive_m, sensitive_len},
                                    {object_name, sizeof(object_name)}};
    if (sha256(integrity_in, 2, integrity) != 0 ||
        put_digest(integrity, sizeof(integrity), inner_plain, sizeof(inner_plain), &inner_len) !=
            0 ||
        sizeof(inner_plain) - inner_len < sensitive_len)
        goto cleanup;
    memcpy(inner_plain + inner_len, sensitive_m, sensitive_len);
    inner_len += sensitive_len;
    if (provhsm_test_aes_cfb(1, rnd->inner_key, sizeof(rnd->inner_key), inner_plain, inner_len,
                             inner_cipher) != 0)
        goto cleanup;

    /* Outer wrapper to the SRK, keyed by the object's Name. */
    if (outer_wrap(rnd->dup_seed, sizeof(rnd->dup_seed), srk.sym_key_len, object_name, inner_cipher,
                   inner_len, duplicate.buffer, sizeof(duplicate.buffer), &n) != 0)
        goto cleanup;
    duplicate.size = (UINT16)n;
    if (encrypt_seed(&srk, "DUPLICATE", rnd->dup_seed, sizeof(rnd->dup_seed), &in_sym_seed) != 0)
        goto cleanup;

    /* MakeCredential: the inner wrapper key, to the EK, bound to the SRK's Name. */
    if (put_digest(rnd->inner_key, sizeof(rnd->inner_key), cred_plain, sizeof(cred_plain),
                   &cred_len) != 0 ||
        outer_wrap(rnd->cred_seed, sizeof(rnd->cred_seed), ek.sym_key_len, srk.name, cred_plain,
                   cred_len, credential.credential, sizeof(credential.credential), &n) != 0)
        goto cleanup;
    credential.size = (UINT16)n;
    if (encrypt_seed(&ek, "IDENTITY", rnd->cred_seed, sizeof(rnd->cred_seed), &secret) != 0)
        goto cleanup;

    /* The contract's layout, ending in an empty encrypted-data field. */
    size_t cap = sizeof(credential) + sizeof(secret) + sizeof(duplicate) + sizeof(in_sym_seed) +
                 sizeof(object) + 2;
    size_t off = 0;
    blob = malloc(cap);
    if (blob == NULL ||
        Tss2_MU_TPM2B_ID_OBJECT_Marshal(&credential, blob, cap, &off) != TSS2_RC_SUCCESS ||
        Tss2_MU_TPM2B_ENCRYPTED_SECRET_Marshal(&secret, blob, cap, &off) != TSS2_RC_SUCCESS ||
        Tss2_MU_TPM2B_PRIVATE_Marshal(&duplicate, blob, cap, &off) != TSS2_RC_SUCCESS ||
        Tss2_MU_TPM2B_ENCRYPTED_SECRET_Marshal(&in_sym_seed, blob, cap, &off) != TSS2_RC_SUCCESS ||
        Tss2_MU_TPM2B_PUBLIC_Marshal(&object, blob, cap, &off) != TSS2_RC_SUCCESS ||
        Tss2_MU_UINT16_Marshal(0, blob, cap, &off) != TSS2_RC_SUCCESS) {
        report("marshaling the activation blob");
        goto cleanup;
    }
    *blob_out = blob;
    *blob_len_out = off;
    blob = NULL;
    ret = 0;

cleanup:
    EVP_PKEY_free(ek.rsa);
    EVP_PKEY_free(srk.rsa);
    provhsm_wipe(&sensitive, sizeof(sensitive));
    provhsm_wipe(sensitive_m, sizeof(sensitive_m));
    provhsm_wipe(inner_plain, sizeof(inner_plain));
    provhsm_wipe(cred_plain, sizeof(cred_plain));
    free(blob);
    return ret;
}

int provhsm_test_dps_make_blob_with(const uint8_t *ek_tpm2b, size_t ek_len,
                                    const uint8_t *srk_tpm2b, size_t srk_len,
                                    const uint8_t *hmac_key, size_t hmac_key_len,
                                    const provhsm_test_dps_random *rnd, uint8_t **blob_out,
                                    size_t *blob_len_out)
{
    static const provhsm_test_dps_key_options service = {0};
    return make_blob(ek_tpm2b, ek_len, srk_tpm2b, srk_len, hmac_key, hmac_key_len, rnd, &service,
                     blob_out, blob_len_out);
}

int provhsm_test_dps_make_blob_opts(const uint8_t *ek_tpm2b, size_t ek_len,
                                    const uint8_t *srk_tpm2b, size_t srk_len,
                                    const uint8_t *hmac_key, size_t hmac_key_len,
                                    const provhsm_test_dps_key_options *opts, uint8_t **blob_out,
                                    size_t *blob_len_out)
{
    static const provhsm_test_dps_key_options service = {0};
    provhsm_test_dps_random rnd;
    int ret = -1;
    if (RAND_bytes(rnd.obfuscation, sizeof(rnd.obfuscation)) != 1 ||
        RAND_bytes(rnd.inner_key, sizeof(rnd.inner_key)) != 1 ||
        RAND_bytes(rnd.dup_seed, sizeof(rnd.dup_seed)) != 1 ||
        RAND_bytes(rnd.cred_seed, sizeof(rnd.cred_seed)) != 1)
        report("RAND_bytes");
    else
        ret = make_blob(ek_tpm2b, ek_len, srk_tpm2b, srk_len, hmac_key, hmac_key_len, &rnd,
                        opts != NULL ? opts : &service, blob_out, blob_len_out);
    provhsm_wipe(&rnd, sizeof(rnd));
    return ret;
}

int provhsm_test_dps_make_blob(const uint8_t *ek_tpm2b, size_t ek_len, const uint8_t *srk_tpm2b,
                               size_t srk_len, const uint8_t *hmac_key, size_t hmac_key_len,
                               uint8_t **blob_out, size_t *blob_len_out)
{
    provhsm_test_dps_random rnd;
    int ret = -1;
    if (RAND_bytes(rnd.obfuscation, sizeof(rnd.obfuscation)) != 1 ||
        RAND_bytes(rnd.inner_key, sizeof(rnd.inner_key)) != 1 ||
        RAND_bytes(rnd.dup_seed, sizeof(rnd.dup_seed)) != 1 ||
        RAND_bytes(rnd.cred_seed, sizeof(rnd.cred_seed)) != 1)
        report("RAND_bytes");
    else
        ret = provhsm_test_dps_make_blob_with(ek_tpm2b, ek_len, srk_tpm2b, srk_len, hmac_key,
                                              hmac_key_len, &rnd, blob_out, blob_len_out);
    provhsm_wipe(&rnd, sizeof(rnd));
    return ret;
}
