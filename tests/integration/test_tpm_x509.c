/*
 * X.509 device keys in the TPM ([x509] backend = tpm), through the backend's key_* slots
 * on a private swtpm that starts empty: key_generate makes the SRK and an EC key with the
 * attributes that keep it in the TPM, signatures verify with OpenSSL's default provider,
 * the random authorisation value matters, a signature costs one TPM command and leaves
 * nothing behind, threads share the key, an occupied handle is kept, RSA is refused, keys
 * made by tpm2-tools are adopted (RSA ones refused), keys are evicted only when they are
 * the reference's, and a TPM that goes away makes signing fail with a logged reason.
 * Skips (77) without swtpm; the adoption case needs tpm2-tools too.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "backend.h"
#include "hwkey.h"
#include "secmem.h"
#include "swtpm_fixture.h"
#include "tpm_esys.h"

static const provhsm_backend *const be = &provhsm_backend_tpm;

#define X509_HANDLE   0x81000110u
#define P384_HANDLE   0x81000111u
#define TOOLS_EC      0x81000120u
#define TOOLS_RSA     0x81000121u
#define SIGNS_IN_LOOP 1000
#define THREADS       4
#define SIGNS_PER_THR 100

static struct {
    provhsm_test_swtpm swtpm;
    provhsm_config cfg;
    provhsm_keyref ref; /* the key test_generate made */
    char *secret;
    int tools; /* tpm2-tools installed */
} G;

static int group_setup(void **unused)
{
    (void)unused;
    if (provhsm_test_swtpm_start(&G.swtpm, NULL) != 0)
        return -1;
    provhsm_test_tpm_config(&G.cfg, G.swtpm.tcti);
    G.cfg.x509_key_handle = X509_HANDLE;
    G.tools = provhsm_test_programs_available("tpm2_create", "tpm2_createprimary", "tpm2_load",
                                              "tpm2_evictcontrol", "tpm2_flushcontext", NULL);
    provhsm_test_log_capture();
    return 0;
}

static int group_teardown(void **unused)
{
    (void)unused;
    provhsm_test_swtpm_stop(&G.swtpm);
    provhsm_keyref_clear(&G.ref);
    free(G.secret); /* test memory: the backend's copy was secure memory */
    return 0;
}

/* ---- helpers ---------------------------------------------------------------------------- */

static void digest_of(const char *md, const char *text, uint8_t *out, size_t *len)
{
    unsigned int n = 0;
    EVP_MD *fetched = EVP_MD_fetch(NULL, md, "provider=default");
    assert_non_null(fetched);
    assert_int_equal(EVP_Digest(text, strlen(text), out, &n, fetched, NULL), 1);
    EVP_MD_free(fetched);
    *len = n;
}

/* 1 when rs (r | s) is a valid ECDSA signature of digest under the reference's key,
 * checked by OpenSSL's default provider. */
static int verifies(const provhsm_keyref *ref, const uint8_t *digest, size_t digest_len,
                    const uint8_t *rs, size_t rs_len)
{
    const unsigned char *p = ref->spki;
    EVP_PKEY *pkey = d2i_PUBKEY_ex(NULL, &p, (long)ref->spki_len, NULL, "provider=default");
    ECDSA_SIG *sig = ECDSA_SIG_new();
    unsigned char *der = NULL;
    int ok = 0;
    if (pkey != NULL && sig != NULL && rs_len % 2 == 0) {
        BIGNUM *r = BN_bin2bn(rs, (int)(rs_len / 2), NULL);
        BIGNUM *s = BN_bin2bn(rs + rs_len / 2, (int)(rs_len / 2), NULL);
        if (r != NULL && s != NULL && ECDSA_SIG_set0(sig, r, s) == 1) {
            int der_len = i2d_ECDSA_SIG(sig, &der);
            EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, "provider=default");
            ok = der_len > 0 && ctx != NULL && EVP_PKEY_verify_init(ctx) == 1 &&
                 EVP_PKEY_verify(ctx, der, (size_t)der_len, digest, digest_len) == 1;
            EVP_PKEY_CTX_free(ctx);
        } else {
            BN_free(r);
            BN_free(s);
        }
    }
    OPENSSL_free(der);
    ECDSA_SIG_free(sig);
    EVP_PKEY_free(pkey);
    return ok;
}

/* Signs SHA-256("text") with the open key and checks the signature; returns the error. */
static provhsm_err sign_and_verify(void *key, const provhsm_keyref *ref, const char *text)
{
    uint8_t digest[64], rs[PROVHSM_HWKEY_SIG_MAX];
    size_t digest_len = 0, rs_len = sizeof(rs);
    digest_of("SHA256", text, digest, &digest_len);
    provhsm_err err = be->key_sign(key, digest, digest_len, rs, &rs_len);
    if (err == PROVHSM_OK) {
        assert_int_equal(rs_len, 2 * (size_t)(ref->curve_bits / 8));
        assert_true(verifies(ref, digest, digest_len, rs, rs_len));
    }
    return err;
}

/* The public area at `handle`, read on a connection of the test's own. */
static TPM2B_PUBLIC *read_public(TPM2_HANDLE handle)
{
    provhsm_tpm *tpm = NULL;
    ESYS_TR tr = ESYS_TR_NONE;
    TPM2B_PUBLIC *pub = NULL;
    assert_int_equal(provhsm_tpm_connect(G.swtpm.tcti, &tpm), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_read_public(tpm, handle, &tr, &pub), PROVHSM_OK);
    provhsm_tpm_forget(tpm, &tr);
    provhsm_tpm_disconnect(tpm);
    return pub;
}

static void keep_secret(char *secret)
{
    free(G.secret);
    G.secret = secret != NULL ? strdup(secret) : NULL;
    provhsm_secure_free(secret);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the tests ---------------------------------------------------------------------------- */

/* generate on an empty TPM: SRK made, key persistent with the attributes that keep it inside */
static void test_generate_makes_a_fixed_signing_key(void **unused)
{
    (void)unused;
    char *secret = NULL;
    assert_int_equal(be->key_generate(&G.cfg, PROVHSM_KEY_EC_P256, 0, &G.ref, &secret), PROVHSM_OK);
    assert_string_equal(G.ref.backend, "tpm");
    assert_string_equal(G.ref.locator, "0x81000110");
    assert_int_equal(G.ref.curve_bits, 256);
    /* 32 random bytes, as "hex:" and 64 hex digits */
    assert_non_null(secret);
    assert_int_equal(strlen(secret), 4 + 64);
    assert_memory_equal(secret, "hex:", 4);
    assert_int_equal(strspn(secret + 4, "0123456789abcdef"), 64);
    keep_secret(secret);

    TPM2B_PUBLIC *pub = read_public(X509_HANDLE);
    const TPMA_OBJECT a = pub->publicArea.objectAttributes;
    const TPMA_OBJECT wanted = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                               TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                               TPMA_OBJECT_SIGN_ENCRYPT;
    assert_int_equal(a & wanted, wanted);
    assert_int_equal(a & (TPMA_OBJECT_DECRYPT | TPMA_OBJECT_RESTRICTED), 0);
    assert_int_equal(pub->publicArea.type, TPM2_ALG_ECC);
    assert_int_equal(pub->publicArea.parameters.eccDetail.curveID, TPM2_ECC_NIST_P256);
    assert_int_equal(pub->publicArea.parameters.eccDetail.scheme.scheme, TPM2_ALG_NULL);
    assert_int_equal(pub->publicArea.authPolicy.size, 0);
    Esys_Free(pub);

    /* the SRK was made on the way, under it the key */
    pub = read_public(G.cfg.srk_handle);
    assert_int_not_equal(pub->publicArea.objectAttributes & TPMA_OBJECT_RESTRICTED, 0);
    Esys_Free(pub);

    char *line = NULL;
    assert_int_equal(be->key_describe(&G.cfg, &G.ref, &line), PROVHSM_OK);
    printf("# %s\n", line);
    assert_string_equal(
        line, "TPM persistent handle 0x81000110, EC P-256, fixedTPM: cannot leave this TPM");
    free(line);
}

/* SHA-256 and SHA-384 digests signed in the TPM verify with OpenSSL; one command each */
static void test_signatures_verify_one_command_each(void **unused)
{
    (void)unused;
    void *key = NULL;
    uint64_t before = provhsm_tpm_commands_total();
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &key), PROVHSM_OK);
    uint64_t open_cost = provhsm_tpm_commands_total() - before;
    printf("# key_open: %llu TPM command(s)\n", (unsigned long long)open_cost);
    assert_int_equal(open_cost, 1); /* ReadPublic: the key is still the reference's */

    static const char *const mds[] = {"SHA256", "SHA384"};
    for (size_t i = 0; i < 2; i++) {
        uint8_t digest[64], rs[PROVHSM_HWKEY_SIG_MAX];
        size_t digest_len = 0, rs_len = sizeof(rs);
        digest_of(mds[i], "provhsm x509 key test", digest, &digest_len);
        assert_int_equal(be->key_sign(key, digest, digest_len, rs, &rs_len), PROVHSM_OK);
        assert_int_equal(rs_len, 64);
        assert_true(verifies(&G.ref, digest, digest_len, rs, rs_len));
        /* the signature is over this digest, not any */
        digest[0] ^= 1;
        assert_false(verifies(&G.ref, digest, digest_len, rs, rs_len));
    }

    /* steady state: exactly one TPM command per signature */
    before = provhsm_tpm_commands_total();
    for (int i = 0; i < 20; i++)
        assert_int_equal(sign_and_verify(key, &G.ref, "steady"), PROVHSM_OK);
    uint64_t cost = provhsm_tpm_commands_total() - before;
    printf("# 20 signatures: %llu TPM commands\n", (unsigned long long)cost);
    assert_int_equal(cost, 20);

    /* a second open of the same key shares the connection: one ReadPublic, no connect */
    void *again = NULL;
    before = provhsm_tpm_commands_total();
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &again), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_commands_total() - before, 1);
    assert_int_equal(sign_and_verify(again, &G.ref, "second"), PROVHSM_OK);
    be->key_close(again);
    assert_int_equal(sign_and_verify(key, &G.ref, "first still works"), PROVHSM_OK);
    be->key_close(key);
}

/* the authorisation value is what lets a process sign: a wrong one is refused, and said so */
static void test_wrong_secret_cannot_sign(void **unused)
{
    (void)unused;
    void *key = NULL;
    char wrong[4 + 64 + 1];
    snprintf(wrong, sizeof(wrong), "%s", G.secret);
    wrong[4] = wrong[4] == '0' ? '1' : '0';
    /* opening reads only the public area; the TPM checks the value when signing */
    assert_int_equal(be->key_open(&G.cfg, &G.ref, wrong, &key), PROVHSM_OK);
    provhsm_test_log_clear();
    assert_int_equal(sign_and_verify(key, &G.ref, "wrong"), PROVHSM_E_TPM);
    assert_true(provhsm_test_log_seen("refused the key's authorisation value"));
    be->key_close(key);

    /* no secret at all (the empty value) is refused the same way */
    assert_int_equal(be->key_open(&G.cfg, &G.ref, NULL, &key), PROVHSM_OK);
    assert_int_equal(sign_and_verify(key, &G.ref, "none"), PROVHSM_E_TPM);
    be->key_close(key);
    key = NULL;

    /* a secret that is not one is refused before the TPM is asked */
    assert_int_equal(be->key_open(&G.cfg, &G.ref, "hex:zz", &key), PROVHSM_E_CORRUPT);
    assert_null(key);

    /* more wrong values than the TPM's dictionary-attack limit... */
    assert_int_equal(be->key_open(&G.cfg, &G.ref, wrong, &key), PROVHSM_OK);
    for (int i = 0; i < 10; i++)
        assert_int_equal(sign_and_verify(key, &G.ref, "guess"), PROVHSM_E_TPM);
    be->key_close(key);
    /* ...and the right one still signs: the key is noDA, nobody can lock it out */
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &key), PROVHSM_OK);
    assert_int_equal(sign_and_verify(key, &G.ref, "right"), PROVHSM_OK);
    be->key_close(key);
}

/* 1000 signatures leave no transient object or session behind */
static void test_many_signs_leave_nothing(void **unused)
{
    (void)unused;
    provhsm_test_tpm_counts counts;
    void *key = NULL;
    assert_int_equal(provhsm_test_tpm_counts_get(G.swtpm.tcti, &counts), 0);
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &key), PROVHSM_OK);
    uint8_t digest[32], rs[PROVHSM_HWKEY_SIG_MAX];
    size_t digest_len = 0;
    digest_of("SHA256", "loop", digest, &digest_len);
    uint64_t before = provhsm_tpm_commands_total();
    double start = now_s();
    for (int i = 0; i < SIGNS_IN_LOOP; i++) {
        size_t rs_len = sizeof(rs);
        assert_int_equal(be->key_sign(key, digest, digest_len, rs, &rs_len), PROVHSM_OK);
        if (i == SIGNS_IN_LOOP - 1)
            assert_true(verifies(&G.ref, digest, digest_len, rs, rs_len));
    }
    double took = now_s() - start;
    uint64_t cost = provhsm_tpm_commands_total() - before;
    printf("# %d signatures: %llu TPM commands, %.0f signatures/s\n", SIGNS_IN_LOOP,
           (unsigned long long)cost, SIGNS_IN_LOOP / took);
    assert_int_equal(cost, SIGNS_IN_LOOP);
    be->key_close(key);
    assert_int_equal(provhsm_test_tpm_counts_unchanged(G.swtpm.tcti, &counts), 0);
}

typedef struct {
    void *key;
    int failures;
} thread_job;

static void *sign_many(void *p)
{
    thread_job *job = p;
    uint8_t digest[32], rs[PROVHSM_HWKEY_SIG_MAX];
    unsigned int n = 0;
    char text[64];
    for (int i = 0; i < SIGNS_PER_THR; i++) {
        size_t rs_len = sizeof(rs);
        snprintf(text, sizeof(text), "thread %p sign %d", p, i);
        if (EVP_Digest(text, strlen(text), digest, &n, EVP_sha256(), NULL) != 1 ||
            be->key_sign(job->key, digest, n, rs, &rs_len) != PROVHSM_OK ||
            !verifies(&G.ref, digest, n, rs, rs_len))
            job->failures++;
    }
    return NULL;
}

/* four threads sign at once with one open key and with keys of their own */
static void test_threads_sign_at_once(void **unused)
{
    (void)unused;
    pthread_t threads[THREADS];
    thread_job jobs[THREADS];
    void *shared = NULL, *own[2] = {NULL, NULL};
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &shared), PROVHSM_OK);
    for (int i = 0; i < 2; i++)
        assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &own[i]), PROVHSM_OK);
    uint64_t before = provhsm_tpm_commands_total();
    for (int i = 0; i < THREADS; i++) {
        jobs[i].key = i < 2 ? shared : own[i - 2];
        jobs[i].failures = 0;
        assert_int_equal(pthread_create(&threads[i], NULL, sign_many, &jobs[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(threads[i], NULL), 0);
        assert_int_equal(jobs[i].failures, 0);
    }
    assert_int_equal(provhsm_tpm_commands_total() - before, THREADS * SIGNS_PER_THR);
    be->key_close(shared);
    for (int i = 0; i < 2; i++)
        be->key_close(own[i]);
}

/* an occupied handle: refused by name without replace, the old key intact; replaced with it */
static void test_occupied_handle_kept_unless_replaced(void **unused)
{
    (void)unused;
    provhsm_keyref fresh = {0};
    char *secret = NULL;
    provhsm_test_log_clear();
    assert_int_equal(be->key_generate(&G.cfg, PROVHSM_KEY_EC_P256, 0, &fresh, &secret),
                     PROVHSM_E_EXISTS);
    assert_null(secret);
    assert_true(provhsm_test_log_seen("0x81000110 already holds a key"));

    void *key = NULL;
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &key), PROVHSM_OK);
    assert_int_equal(sign_and_verify(key, &G.ref, "old key intact"), PROVHSM_OK);
    be->key_close(key);
    key = NULL;

    /* with replace: a new key at the handle; the old reference no longer opens */
    assert_int_equal(be->key_generate(&G.cfg, PROVHSM_KEY_EC_P256, 1, &fresh, &secret), PROVHSM_OK);
    assert_false(provhsm_keyref_equal(&fresh, &G.ref));
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &key), PROVHSM_E_MISMATCH);
    assert_null(key);
    /* nor does it destroy the key that is there now */
    assert_int_equal(be->key_destroy(&G.cfg, &G.ref, G.secret), PROVHSM_E_MISMATCH);
    provhsm_keyref_clear(&G.ref);
    G.ref = fresh;
    keep_secret(secret);
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &key), PROVHSM_OK);
    assert_int_equal(sign_and_verify(key, &G.ref, "new key"), PROVHSM_OK);
    be->key_close(key);
}

/* RSA is refused with the reason, before any TPM command */
static void test_rsa_refused(void **unused)
{
    (void)unused;
    provhsm_keyref ref = {0};
    char *secret = NULL;
    provhsm_config cfg = G.cfg;
    cfg.x509_key_handle = 0x81000130u; /* a free handle: only the type can be the reason */
    uint64_t before = provhsm_tpm_commands_total();
    provhsm_test_log_clear();
    assert_int_equal(be->key_generate(&cfg, PROVHSM_KEY_RSA_2048, 0, &ref, &secret),
                     PROVHSM_E_UNSUPPORTED);
    assert_true(provhsm_test_log_seen("legacy RSA object that holds only the public half"));
    assert_true(provhsm_test_log_seen("use an EC P-256 key"));
    assert_int_equal(provhsm_tpm_commands_total(), before);
    assert_null(secret);
    assert_null(ref.locator);
}

/* a handle shared with the TPM table's keys is refused */
static void test_handle_shared_with_identity_refused(void **unused)
{
    (void)unused;
    provhsm_keyref ref = {0};
    char *secret = NULL;
    provhsm_config cfg = G.cfg;
    cfg.x509_key_handle = cfg.identity_handle;
    provhsm_test_log_clear();
    assert_int_equal(be->key_generate(&cfg, PROVHSM_KEY_EC_P256, 1, &ref, &secret),
                     PROVHSM_E_CONFIG);
    assert_true(provhsm_test_log_seen("is also identity_handle"));
}

/* the configuration refuses an X.509 key handle that another key of the device uses */
static void test_config_refuses_shared_handle(void **unused)
{
    (void)unused;
    static const char *const texts[] = {
        "[tpm]\nx509_key_handle = 0x81000100\n", /* the identity key */
        "[tpm]\nsrk_handle = 0x81000110\n",      /* the SRK on the default */
        "[store]\nsealed_key_handle = 0x81000200\n[tpm]\nx509_key_handle = 0x81000200\n",
    };
    char errbuf[256];
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        provhsm_config cfg;
        provhsm_config_defaults(&cfg);
        assert_int_equal(provhsm_config_parse(&cfg, texts[i], "test.conf", errbuf, sizeof(errbuf)),
                         PROVHSM_E_CONFIG);
        assert_non_null(strstr(errbuf, "x509_key_handle"));
        assert_non_null(strstr(errbuf, "needs a handle of its own"));
    }
    provhsm_config cfg;
    provhsm_config_defaults(&cfg);
    assert_int_equal(provhsm_config_parse(&cfg, "[tpm]\nx509_key_handle = 0x81000111\n",
                                          "test.conf", errbuf, sizeof(errbuf)),
                     PROVHSM_OK);
    assert_int_equal(cfg.x509_key_handle, 0x81000111u);
}

/* P-384, which swtpm has: a 96-byte signature over a SHA-384 digest */
static void test_p384_key(void **unused)
{
    (void)unused;
    provhsm_keyref ref = {0};
    char *secret = NULL;
    void *key = NULL;
    provhsm_config cfg = G.cfg;
    cfg.x509_key_handle = P384_HANDLE;
    assert_int_equal(be->key_generate(&cfg, PROVHSM_KEY_EC_P384, 0, &ref, &secret), PROVHSM_OK);
    assert_int_equal(ref.curve_bits, 384);
    assert_int_equal(be->key_open(&cfg, &ref, secret, &key), PROVHSM_OK);
    uint8_t digest[64], rs[PROVHSM_HWKEY_SIG_MAX];
    size_t digest_len = 0, rs_len = sizeof(rs);
    digest_of("SHA384", "p384", digest, &digest_len);
    assert_int_equal(be->key_sign(key, digest, digest_len, rs, &rs_len), PROVHSM_OK);
    assert_int_equal(rs_len, 96);
    assert_true(verifies(&ref, digest, digest_len, rs, rs_len));

    /* destroy evicts it, also under an open key, whose next signature says so */
    assert_int_equal(be->key_destroy(&cfg, &ref, secret), PROVHSM_OK);
    provhsm_test_log_clear();
    rs_len = sizeof(rs);
    assert_int_equal(be->key_sign(key, digest, digest_len, rs, &rs_len), PROVHSM_E_NOT_FOUND);
    assert_true(provhsm_test_log_seen("no key at TPM persistent handle 0x81000111 any more"));
    be->key_close(key);
    /* a second time there is nothing to destroy */
    assert_int_equal(be->key_destroy(&cfg, &ref, secret), PROVHSM_E_NOT_FOUND);
    provhsm_secure_free(secret);
    provhsm_keyref_clear(&ref);
}

static int tools(const char *script)
{
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "set -e; cd '%s'; export TPM2TOOLS_TCTI='%s'; %s", G.swtpm.dir,
             G.swtpm.tcti, script);
    return system(cmd);
}

/* keys made by tpm2-tools under the SRK: an EC one adopted and signing, an RSA one refused */
static void test_adopt_tools_keys(void **unused)
{
    (void)unused;
    if (!G.tools) {
        printf("# tpm2-tools not installed: adoption not tested\n");
        skip();
    }
    /* the tools leave transient objects behind without a resource manager: flush them */
    assert_int_equal(tools("tpm2_create -Q -C 0x81000001 -G ecc256"
                           " -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign'"
                           " -u ec.pub -r ec.priv;"
                           "tpm2_load -Q -C 0x81000001 -u ec.pub -r ec.priv -c ec.ctx;"
                           "tpm2_evictcontrol -Q -C o -c ec.ctx 0x81000120;"
                           "tpm2_flushcontext -t;"
                           "tpm2_create -Q -C 0x81000001 -G rsa2048"
                           " -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign'"
                           " -u rsa.pub -r rsa.priv;"
                           "tpm2_load -Q -C 0x81000001 -u rsa.pub -r rsa.priv -c rsa.ctx;"
                           "tpm2_evictcontrol -Q -C o -c rsa.ctx 0x81000121;"
                           "tpm2_flushcontext -t;"
                           "tpm2_create -Q -C 0x81000001 -G ecc256:ecdsa-sha256:null"
                           " -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"
                           "|restricted' -u att.pub -r att.priv;"
                           "tpm2_load -Q -C 0x81000001 -u att.pub -r att.priv -c att.ctx;"
                           "tpm2_evictcontrol -Q -C o -c att.ctx 0x81000122;"
                           "tpm2_flushcontext -t"),
                     0);

    provhsm_keyref ref = {0};
    char *secret = (char *)"untouched";
    assert_int_equal(be->key_adopt(&G.cfg, "0x81000120", &ref, &secret), PROVHSM_OK);
    assert_null(secret); /* made with the empty authorisation value */
    assert_string_equal(ref.locator, "0x81000120");
    void *key = NULL;
    assert_int_equal(be->key_open(&G.cfg, &ref, NULL, &key), PROVHSM_OK);
    assert_int_equal(sign_and_verify(key, &ref, "adopted"), PROVHSM_OK);
    be->key_close(key);
    char *line = NULL;
    assert_int_equal(be->key_describe(&G.cfg, &ref, &line), PROVHSM_OK);
    assert_string_equal(
        line, "TPM persistent handle 0x81000120, EC P-256, fixedTPM: cannot leave this TPM");
    free(line);
    provhsm_keyref_clear(&ref);

    provhsm_test_log_clear();
    assert_int_equal(be->key_adopt(&G.cfg, "0x81000121", &ref, &secret), PROVHSM_E_UNSUPPORTED);
    assert_true(provhsm_test_log_seen("legacy RSA object that holds only the public half"));
    assert_null(ref.locator);
    /* a restricted (attestation) key signs only what the TPM made: refused */
    provhsm_test_log_clear();
    assert_int_equal(be->key_adopt(&G.cfg, "0x81000122", &ref, &secret), PROVHSM_E_UNSUPPORTED);
    assert_true(provhsm_test_log_seen("restricted signing key"));
    /* nothing at a handle, or not a handle at all */
    assert_int_equal(be->key_adopt(&G.cfg, "0x81000123", &ref, &secret), PROVHSM_E_NOT_FOUND);
    assert_int_equal(be->key_adopt(&G.cfg, "pkcs11:token=x", &ref, &secret), PROVHSM_E_INVALID_ARG);
    assert_int_equal(be->key_adopt(&G.cfg, "0x40000001", &ref, &secret), PROVHSM_E_INVALID_ARG);
}

/* the TPM table's states and the X.509 keys of the process use one connection to the TPM */
static void test_table_and_keys_share_one_connection(void **unused)
{
    (void)unused;
    void *table = NULL, *key = NULL, *key2 = NULL;
    uint8_t *ek = NULL;
    size_t ek_len = 0;
    assert_int_equal(provhsm_tpm_test_open_connections(), 0);
    assert_int_equal(be->open(&G.cfg, PROVHSM_KIND_TPM, &table), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_test_open_connections(), 1);
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &key), PROVHSM_OK);
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &key2), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_test_open_connections(), 1);
    assert_int_equal(sign_and_verify(key, &G.ref, "shared"), PROVHSM_OK);
    assert_int_equal(be->tpm_endorsement_key(table, &ek, &ek_len), PROVHSM_OK);
    free(ek);
    /* the table's HMAC key is not there (never activated): the table asks the TPM */
    uint8_t *mac = NULL;
    size_t mac_len = 0;
    assert_int_equal(be->tpm_sign(table, (const uint8_t *)"x", 1, &mac, &mac_len),
                     PROVHSM_E_NOT_FOUND);
    assert_int_equal(sign_and_verify(key2, &G.ref, "shared too"), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_test_open_connections(), 1);
    be->key_close(key);
    be->close(table);
    assert_int_equal(provhsm_tpm_test_open_connections(), 1); /* key2 is still open */
    be->key_close(key2);
    assert_int_equal(provhsm_tpm_test_open_connections(), 0);
}

/* the TPM goes away: signing fails at once with a logged reason; it comes back, signing works */
static void test_tpm_gone_mid_run(void **unused)
{
    (void)unused;
    void *key = NULL, *table = NULL;
    uint8_t *mac = NULL;
    size_t mac_len = 0;
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &key), PROVHSM_OK);
    assert_int_equal(be->open(&G.cfg, PROVHSM_KIND_TPM, &table), PROVHSM_OK);
    assert_int_equal(sign_and_verify(key, &G.ref, "before"), PROVHSM_OK);

    provhsm_test_swtpm_kill(&G.swtpm);
    provhsm_test_log_clear();
    double start = now_s();
    assert_int_equal(sign_and_verify(key, &G.ref, "gone"), PROVHSM_E_NO_DEVICE);
    assert_int_equal(sign_and_verify(key, &G.ref, "still gone"), PROVHSM_E_NO_DEVICE);
    void *other = NULL;
    assert_int_equal(be->key_open(&G.cfg, &G.ref, G.secret, &other), PROVHSM_E_NO_DEVICE);
    assert_null(other);
    double took = now_s() - start;
    printf("# three calls without a TPM failed in %.3f s\n", took);
    assert_true(took < 10.0);
    assert_true(provhsm_test_log_seen("the TPM cannot be reached"));

    /* the table's state on the same connection fails the same way */
    assert_int_equal(be->tpm_sign(table, (const uint8_t *)"x", 1, &mac, &mac_len),
                     PROVHSM_E_NO_DEVICE);

    assert_int_equal(provhsm_test_swtpm_restart(&G.swtpm), 0);
    assert_int_equal(sign_and_verify(key, &G.ref, "back"), PROVHSM_OK);
    /* the key's reconnect serves the table too: it reaches the TPM (no identity key there) */
    assert_int_equal(be->tpm_sign(table, (const uint8_t *)"x", 1, &mac, &mac_len),
                     PROVHSM_E_NOT_FOUND);
    assert_int_equal(provhsm_tpm_test_open_connections(), 1);
    be->close(table);
    be->key_close(key);
    assert_int_equal(provhsm_tpm_test_open_connections(), 0);
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_makes_a_fixed_signing_key),
        cmocka_unit_test(test_signatures_verify_one_command_each),
        cmocka_unit_test(test_wrong_secret_cannot_sign),
        cmocka_unit_test(test_many_signs_leave_nothing),
        cmocka_unit_test(test_threads_sign_at_once),
        cmocka_unit_test(test_occupied_handle_kept_unless_replaced),
        cmocka_unit_test(test_rsa_refused),
        cmocka_unit_test(test_handle_shared_with_identity_refused),
        cmocka_unit_test(test_config_refuses_shared_handle),
        cmocka_unit_test(test_p384_key),
        cmocka_unit_test(test_adopt_tools_keys),
        cmocka_unit_test(test_table_and_keys_share_one_connection),
        cmocka_unit_test(test_tpm_gone_mid_run),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
