/*
 * The provisioning service's side of TPM attestation, for tests: builds the activation
 * blob (sdk-contract.md, "The activation blob") that the service sends a device, from
 * the device's EK and SRK and a chosen HMAC identity key, with OpenSSL and libtss2-mu.
 * Unit tests check its layout and structure; integration tests activate its blobs in a
 * swtpm. Built only with TPM support. Test code: never linked into the library.
 *
 * All functions return 0 on success and -1 on failure (with a line on stderr).
 */
#ifndef PROVHSM_DPS_SERVICE_H
#define PROVHSM_DPS_SERVICE_H

#include <stddef.h>
#include <stdint.h>

/* Size of a SHA-256 TPM Name: the 2-byte algorithm id and the digest. */
#define PROVHSM_TEST_NAME_LEN 34

/*
 * The random values the service chooses for one blob. provhsm_test_dps_make_blob()
 * draws them from OpenSSL's RNG; tests that unwrap a blob pass their own.
 */
typedef struct provhsm_test_dps_random {
    uint8_t obfuscation[32]; /* seedValue of the identity key's sensitive area */
    uint8_t inner_key[16];   /* inner wrapper key: the credential ActivateCredential returns */
    uint8_t dup_seed[32];    /* outer wrapper seed, RSA-OAEP encrypted to the SRK */
    uint8_t cred_seed[32];   /* credential seed, RSA-OAEP encrypted to the EK */
} provhsm_test_dps_random;

/*
 * Builds an activation blob: MakeCredential to the EK over the SRK's Name carrying the
 * inner wrapper key, then the KEYEDHASH HMAC-SHA256 identity key (sensitive = hmac_key,
 * 1..64 bytes: a TPM refuses HMAC keys longer than the hash's block size) duplicated to
 * the SRK with an inner and an outer wrapper, then its public area and an empty
 * encrypted-data field. ek/srk are marshaled TPM2B_PUBLIC (RSA, nameAlg SHA-256, AES-CFB
 * symmetric). *blob_out is malloc'd.
 */
int provhsm_test_dps_make_blob(const uint8_t *ek_tpm2b, size_t ek_len, const uint8_t *srk_tpm2b,
                               size_t srk_len, const uint8_t *hmac_key, size_t hmac_key_len,
                               uint8_t **blob_out, size_t *blob_len_out);

/* The same with caller-chosen random values (RSA-OAEP padding stays random). */
int provhsm_test_dps_make_blob_with(const uint8_t *ek_tpm2b, size_t ek_len,
                                    const uint8_t *srk_tpm2b, size_t srk_len,
                                    const uint8_t *hmac_key, size_t hmac_key_len,
                                    const provhsm_test_dps_random *rnd, uint8_t **blob_out,
                                    size_t *blob_len_out);

/*
 * What a test may change about the identity key the service makes, to see what a device
 * does with a key the service should not have sent. Zero values keep the service's own
 * choice: attributes userWithAuth | noDA | sign, an empty authorisation value.
 */
typedef struct provhsm_test_dps_key_options {
    uint32_t attributes; /* objectAttributes of the identity key; 0 = the service's */
    const uint8_t *auth; /* authValue in its sensitive area (<= 32 bytes) */
    size_t auth_len;
} provhsm_test_dps_key_options;

/* provhsm_test_dps_make_blob() with the key changed as `opts` says (NULL: unchanged). */
int provhsm_test_dps_make_blob_opts(const uint8_t *ek_tpm2b, size_t ek_len,
                                    const uint8_t *srk_tpm2b, size_t srk_len,
                                    const uint8_t *hmac_key, size_t hmac_key_len,
                                    const provhsm_test_dps_key_options *opts, uint8_t **blob_out,
                                    size_t *blob_len_out);

/*
 * TPM KDFa with HMAC-SHA256 (TPM 2.0 Part 1, "Key Derivation Function"): for i = 1, 2, ...
 * HMAC(key, [i]32 || label || 0x00 || context_u || context_v || [bits]32), concatenated
 * and cut to bits/8 bytes. label is a C string (its NUL is the 0x00); contexts may be
 * NULL with length 0; bits is a positive multiple of 8.
 */
int provhsm_test_kdfa_sha256(const uint8_t *key, size_t key_len, const char *label,
                             const uint8_t *context_u, size_t u_len, const uint8_t *context_v,
                             size_t v_len, uint32_t bits, uint8_t *out);

/* AES-CFB (128-bit feedback) with a zero IV, as TPM wrappers use it; key_len 16/24/32. */
int provhsm_test_aes_cfb(int encrypt, const uint8_t *key, size_t key_len, const uint8_t *in,
                         size_t len, uint8_t *out);

/* Name of a marshaled TPM2B_PUBLIC with nameAlg SHA-256: 0x000B || SHA-256(TPMT_PUBLIC). */
int provhsm_test_tpm_name(const uint8_t *tpm2b_public, size_t len,
                          uint8_t name_out[PROVHSM_TEST_NAME_LEN]);

#endif
