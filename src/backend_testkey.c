/*
 * The "testkey" backend: the hardware-key slots of backend.h served by a software EC key,
 * so the OpenSSL provider and the admin API's hardware-key paths can be tested without a
 * TPM or a token. Test build only: everything below is compiled with PROVHSM_TEST_HOOKS,
 * so the installed archive holds none of it.
 *
 * The "device" is the store: key_generate returns the key's PKCS#8 PEM as the key's
 * secret, which the admin API keeps with the identity as it keeps a TPM key's
 * authorisation value, and key_open reads it back. The locator is "testkey:" and 16 hex
 * digits. Signing goes through the default provider with the digest given, and the
 * signatures made are counted for the tests.
 */
#ifdef PROVHSM_TEST_HOOKS

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "backend.h"
#include "backend_testkey.h"
#include "log.h"
#include "secmem.h"
#include "x509_stored.h"
#include "x509util.h"

#define MOD            "testkey"
#define PROPQ          "provider=default"
#define LOCATOR_PREFIX "testkey:"

typedef struct testkey_key {
    EVP_PKEY *pkey;
    size_t half; /* bytes of r and of s */
} testkey_key;

static atomic_ulong signs;
static atomic_int fail_signing;

unsigned long provhsm_testkey_test_signs(void)
{
    return atomic_load(&signs);
}

void provhsm_testkey_test_fail_signing(int fail)
{
    atomic_store(&fail_signing, fail);
}

static EVP_PKEY *generate(const char *group)
{
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", PROPQ);
    if (ctx == NULL || EVP_PKEY_keygen_init(ctx) != 1 ||
        EVP_PKEY_CTX_set_group_name(ctx, group) != 1 || EVP_PKEY_keygen(ctx, &key) != 1)
        provhsm_log_openssl(MOD, "EC key generation");
    EVP_PKEY_CTX_free(ctx);
    return key;
}

static provhsm_err make_reference(EVP_PKEY *key, provhsm_keyref *ref_out)
{
    unsigned char rnd[8];
    char locator[sizeof(LOCATOR_PREFIX) + 2 * sizeof(rnd)];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        return PROVHSM_E_CRYPTO;
    int n = snprintf(locator, sizeof(locator), "%s", LOCATOR_PREFIX);
    for (size_t i = 0; i < sizeof(rnd); i++)
        n += snprintf(locator + n, sizeof(locator) - (size_t)n, "%02x", rnd[i]);
    unsigned char *spki = NULL;
    int spki_len = i2d_PUBKEY(key, &spki);
    if (spki_len <= 0)
        return PROVHSM_E_CRYPTO;
    provhsm_err err = provhsm_keyref_make("testkey", locator, spki, (size_t)spki_len, ref_out);
    OPENSSL_free(spki);
    return err;
}

static provhsm_err testkey_generate(const provhsm_config *cfg, provhsm_key_type type, int replace,
                                    provhsm_keyref *ref_out, char **secret_out)
{
    (void)cfg;
    (void)replace; /* nothing lives outside the store: a replaced key just goes */
    if (ref_out == NULL || secret_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (type != PROVHSM_KEY_EC_P256 && type != PROVHSM_KEY_EC_P384) {
        PH_ERR(MOD, "hardware keys must be EC (the SDK's TLS layer cannot sign with an RSA key "
                    "held in hardware): use EC P-256");
        return PROVHSM_E_UNSUPPORTED;
    }
    EVP_PKEY *key = generate(type == PROVHSM_KEY_EC_P256 ? "P-256" : "P-384");
    if (key == NULL)
        return PROVHSM_E_CRYPTO;
    provhsm_keyref ref = {0};
    char *secret = NULL;
    provhsm_err err = make_reference(key, &ref);
    if (err == PROVHSM_OK)
        err = provhsm_x509_key_to_pem(key, &secret); /* secure memory */
    EVP_PKEY_free(key);
    if (err != PROVHSM_OK) {
        provhsm_keyref_clear(&ref);
        return err;
    }
    *ref_out = ref;
    *secret_out = secret;
    return PROVHSM_OK;
}

static provhsm_err testkey_adopt(const provhsm_config *cfg, const char *locator,
                                 provhsm_keyref *ref_out, char **secret_out)
{
    (void)cfg;
    (void)locator;
    (void)ref_out;
    (void)secret_out;
    PH_ERR(MOD, "the testkey backend cannot adopt keys");
    return PROVHSM_E_UNSUPPORTED;
}

static EVP_PKEY *key_from_secret(const char *secret)
{
    BIO *bio = BIO_new_mem_buf(secret, -1);
    EVP_PKEY *key =
        bio != NULL ? PEM_read_bio_PrivateKey_ex(bio, NULL, NULL, NULL, NULL, PROPQ) : NULL;
    BIO_free(bio);
    return key;
}

static int public_key_is(EVP_PKEY *key, const provhsm_keyref *ref)
{
    unsigned char *spki = NULL;
    int len = i2d_PUBKEY(key, &spki);
    int same =
        len > 0 && (size_t)len == ref->spki_len && memcmp(spki, ref->spki, ref->spki_len) == 0;
    OPENSSL_free(spki);
    return same;
}

static provhsm_err testkey_open(const provhsm_config *cfg, const provhsm_keyref *ref,
                                const char *secret, void **key_out)
{
    (void)cfg;
    if (ref == NULL || key_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (secret == NULL) {
        PH_ERR(MOD, "the testkey key %s has no secret: it cannot be opened", ref->locator);
        return PROVHSM_E_NOT_FOUND;
    }
    EVP_PKEY *key = key_from_secret(secret);
    if (key == NULL) {
        provhsm_log_openssl(MOD, "reading the testkey secret");
        return PROVHSM_E_CORRUPT;
    }
    if (!public_key_is(key, ref)) {
        PH_ERR(MOD, "the testkey secret is not the key of %s", ref->locator);
        EVP_PKEY_free(key);
        return PROVHSM_E_MISMATCH;
    }
    testkey_key *k = malloc(sizeof(*k));
    if (k == NULL) {
        EVP_PKEY_free(key);
        return PROVHSM_E_NOMEM;
    }
    k->pkey = key;
    k->half = (size_t)ref->curve_bits / 8;
    *key_out = k;
    return PROVHSM_OK;
}

/* The device's answer: r | s from a DER ECDSA-Sig-Value. */
static provhsm_err der_to_rs(const unsigned char *der, size_t der_len, size_t half, uint8_t *rs,
                             size_t *rs_len)
{
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    provhsm_err err = PROVHSM_E_CRYPTO;
    if (sig != NULL && *rs_len >= 2 * half &&
        BN_bn2binpad(ECDSA_SIG_get0_r(sig), rs, (int)half) == (int)half &&
        BN_bn2binpad(ECDSA_SIG_get0_s(sig), rs + half, (int)half) == (int)half) {
        *rs_len = 2 * half;
        err = PROVHSM_OK;
    }
    ECDSA_SIG_free(sig);
    return err;
}

static provhsm_err testkey_sign(void *key, const uint8_t *digest, size_t digest_len, uint8_t *rs,
                                size_t *rs_len)
{
    testkey_key *k = key;
    if (k == NULL || digest == NULL || rs == NULL || rs_len == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (atomic_load(&fail_signing)) {
        PH_ERR(MOD, "the testkey device is gone (test hook)");
        return PROVHSM_E_NO_DEVICE;
    }
    unsigned char der[160];
    size_t der_len = sizeof(der);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, k->pkey, PROPQ);
    provhsm_err err = PROVHSM_E_CRYPTO;
    if (ctx != NULL && EVP_PKEY_sign_init(ctx) == 1 &&
        EVP_PKEY_sign(ctx, der, &der_len, digest, digest_len) == 1)
        err = der_to_rs(der, der_len, k->half, rs, rs_len);
    else
        provhsm_log_openssl(MOD, "EVP_PKEY_sign");
    EVP_PKEY_CTX_free(ctx);
    if (err == PROVHSM_OK)
        atomic_fetch_add(&signs, 1);
    return err;
}

static void testkey_close(void *key)
{
    testkey_key *k = key;
    if (k == NULL)
        return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

static provhsm_err testkey_destroy(const provhsm_config *cfg, const provhsm_keyref *ref,
                                   const char *secret)
{
    (void)cfg;
    (void)ref;
    (void)secret;
    return PROVHSM_OK; /* the key exists only as its secret in the store */
}

static provhsm_err testkey_describe(const provhsm_config *cfg, const provhsm_keyref *ref,
                                    char **line_out)
{
    (void)cfg;
    if (ref == NULL || line_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    char line[160];
    snprintf(line, sizeof(line), "software test key %s (P-%d), kept in the store", ref->locator,
             ref->curve_bits);
    *line_out = strdup(line);
    return *line_out != NULL ? PROVHSM_OK : PROVHSM_E_NOMEM;
}

static provhsm_err testkey_open_state(const provhsm_config *cfg, provhsm_kind kind, void **state)
{
    if (kind != PROVHSM_KIND_X509)
        return PROVHSM_E_UNSUPPORTED;
    return provhsm_x509_stored_open(cfg, state);
}

const provhsm_backend provhsm_backend_testkey = {
    .name = "testkey",
    .caps = PROVHSM_CAP_X509,
    .open = testkey_open_state,
    .close = provhsm_x509_stored_close,
    .x509_certificate = provhsm_x509_stored_certificate,
    .x509_alias_key = provhsm_x509_stored_alias_key,
    .x509_common_name = provhsm_x509_stored_common_name,
    .key_generate = testkey_generate,
    .key_adopt = testkey_adopt,
    .key_open = testkey_open,
    .key_sign = testkey_sign,
    .key_close = testkey_close,
    .key_destroy = testkey_destroy,
    .key_describe = testkey_describe,
};

#else
/* ISO C wants at least one declaration in a translation unit. */
typedef int provhsm_backend_testkey_absent;
#endif
