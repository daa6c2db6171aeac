/*
 * TPM backend with blobs from our test-side provisioning service (tests/common/
 * dps_service.c) on a fresh swtpm: activate a random HMAC key, then compare signatures
 * of data of many sizes (one TPM2_HMAC up to the input buffer, an HMAC sequence above
 * it) with OpenSSL's HMAC under the same key; a second activation switches keys. With
 * an endorsement authorisation set on the TPM, activation (PolicySecret on the
 * endorsement hierarchy) fails without it, keeping the old key, and works with it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "backend.h"
#include "dps_service.h"
#include "swtpm_fixture.h"
#include "testutil.h"
#include "tpm_esys.h"

static const provhsm_backend *const be = &provhsm_backend_tpm;

static struct {
    provhsm_test_swtpm swtpm;
    provhsm_config cfg;
    void *st;
    uint8_t *ek, *srk;
    size_t ek_len, srk_len;
} S;

static int prepare(void)
{
    if (provhsm_test_swtpm_start(&S.swtpm, NULL) != 0)
        return -1;
    provhsm_test_tpm_config(&S.cfg, S.swtpm.tcti);
    if (be->open(&S.cfg, PROVHSM_KIND_TPM, &S.st) != PROVHSM_OK ||
        be->tpm_endorsement_key(S.st, &S.ek, &S.ek_len) != PROVHSM_OK ||
        be->tpm_storage_root_key(S.st, &S.srk, &S.srk_len) != PROVHSM_OK)
        return -1;
    return 0;
}

static int group_teardown(void **unused)
{
    (void)unused;
    if (S.st != NULL)
        be->close(S.st);
    provhsm_test_swtpm_stop(&S.swtpm);
    free(S.ek);
    free(S.srk);
    memset(&S, 0, sizeof(S)); /* a second call frees nothing */
    return 0;
}

/* cmocka runs the group teardown after a failed group setup too: the setup leaves what
 * it made to the teardown (freeing it here as well was a double free). */
static int group_setup(void **unused)
{
    (void)unused;
    return prepare() == 0 ? 0 : -1;
}

static void activate_key(void *st, const uint8_t *key, size_t key_len, provhsm_err expected)
{
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    assert_int_equal(provhsm_test_dps_make_blob(S.ek, S.ek_len, S.srk, S.srk_len, key, key_len,
                                                &blob, &blob_len),
                     0);
    assert_int_equal(be->tpm_activate(st, blob, blob_len), expected);
    free(blob);
}

static void expect_hmac(void *st, const uint8_t *key, size_t key_len, const uint8_t *data,
                        size_t len)
{
    uint8_t expected[32];
    size_t expected_len = 0;
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len, data, len, expected,
                              sizeof(expected), &expected_len));
    assert_int_equal(expected_len, 32);
    assert_int_equal(be->tpm_sign(st, data, len, &sig, &sig_len), PROVHSM_OK);
    assert_int_equal(sig_len, 32);
    assert_memory_equal(sig, expected, 32);
    free(sig);
}

/* (c) a service-made blob activates; signatures of all sizes match OpenSSL's HMAC. */
static void test_random_key_signs_like_openssl(void **unused)
{
    (void)unused;
    static const size_t sizes[] = {1, 47, 100, 1023, 1024, 1025, 2048, 3000, 4096, 10000, 65537};
    uint8_t key[32];
    uint8_t *data = malloc(65537);
    assert_non_null(data);
    assert_int_equal(RAND_bytes(key, sizeof(key)), 1);
    assert_int_equal(RAND_bytes(data, 65537), 1);

    uint64_t before = provhsm_tpm_commands_total();
    activate_key(S.st, key, sizeof(key), PROVHSM_OK);
    printf("# activate a service-made blob: %llu TPM commands\n",
           (unsigned long long)(provhsm_tpm_commands_total() - before));
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        before = provhsm_tpm_commands_total();
        expect_hmac(S.st, key, sizeof(key), data, sizes[i]);
        uint64_t cost = provhsm_tpm_commands_total() - before;
        printf("# sign %zu bytes: %llu TPM commands\n", sizes[i], (unsigned long long)cost);
        if (sizes[i] <= 1024)
            assert_int_equal(cost, 1);
    }
    free(data);
}

/* (c) a second activation switches to the new key, also for a new state. */
static void test_second_activation_switches_key(void **unused)
{
    (void)unused;
    uint8_t key[20];
    const uint8_t msg[] = "0ne00000001%2Fregistrations%2Fdevice\n1900000000";
    assert_int_equal(RAND_bytes(key, sizeof(key)), 1);
    activate_key(S.st, key, sizeof(key), PROVHSM_OK);
    expect_hmac(S.st, key, sizeof(key), msg, sizeof(msg) - 1);

    void *st2 = NULL;
    assert_int_equal(be->open(&S.cfg, PROVHSM_KIND_TPM, &st2), PROVHSM_OK);
    expect_hmac(st2, key, sizeof(key), msg, sizeof(msg) - 1);
    be->close(st2);
}

/* The signature of msg under key, made by the TPM, equals OpenSSL's. */
static void expect_old_key_signs(const uint8_t *key, size_t key_len)
{
    const uint8_t msg[] = "0ne00000001%2Fregistrations%2Fdevice\n1900000000";
    expect_hmac(S.st, key, key_len, msg, sizeof(msg) - 1);
}

static void make_blob_opts(const uint8_t *key, size_t key_len,
                           const provhsm_test_dps_key_options *opts, uint8_t **blob,
                           size_t *blob_len)
{
    assert_int_equal(provhsm_test_dps_make_blob_opts(S.ek, S.ek_len, S.srk, S.srk_len, key, key_len,
                                                     opts, blob, blob_len),
                     0);
}

/*
 * (issue 6, item 5) service-made blobs whose identity key lacks an attribute signing
 * needs, or carries one it must not, are refused before any TPM command; the working
 * key stays and signs as before.
 */
static void test_bad_key_attributes_keep_old_key(void **unused)
{
    (void)unused;
    const uint32_t service = TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA | TPMA_OBJECT_SIGN_ENCRYPT;
    static const struct {
        uint32_t set, clear;
        const char *log;
    } bad[] = {
        {0, TPMA_OBJECT_USERWITHAUTH, "userWithAuth missing"},
        {0, TPMA_OBJECT_SIGN_ENCRYPT, "sign attribute missing"},
        {TPMA_OBJECT_RESTRICTED, 0, "restricted"},
        {TPMA_OBJECT_DECRYPT, 0, "decrypt set"},
        {TPMA_OBJECT_FIXEDTPM, 0, "fixedTPM set"},
        {TPMA_OBJECT_FIXEDPARENT, 0, "fixedParent set"},
        {TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT, 0, "fixedTPM set"},
        {TPMA_OBJECT_STCLEAR, 0, "stClear set"},
        {TPMA_OBJECT_X509SIGN, 0, "reserved or unknown attributes"},
    };
    uint8_t old_key[32], new_key[32];
    assert_int_equal(RAND_bytes(old_key, sizeof(old_key)), 1);
    assert_int_equal(RAND_bytes(new_key, sizeof(new_key)), 1);
    activate_key(S.st, old_key, sizeof(old_key), PROVHSM_OK);
    expect_old_key_signs(old_key, sizeof(old_key));

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        provhsm_test_dps_key_options opts = {.attributes = (service | bad[i].set) & ~bad[i].clear};
        uint8_t *blob = NULL;
        size_t blob_len = 0;
        make_blob_opts(new_key, sizeof(new_key), &opts, &blob, &blob_len);
        provhsm_test_log_clear();
        uint64_t before = provhsm_tpm_commands_total();
        assert_int_equal(be->tpm_activate(S.st, blob, blob_len), PROVHSM_E_CORRUPT);
        if (provhsm_tpm_commands_total() != before)
            fail_msg("attributes 0x%08x: %llu TPM commands sent", (unsigned)opts.attributes,
                     (unsigned long long)(provhsm_tpm_commands_total() - before));
        if (!provhsm_test_log_seen(bad[i].log))
            fail_msg("attributes 0x%08x: no log line saying \"%s\"", (unsigned)opts.attributes,
                     bad[i].log);
        expect_old_key_signs(old_key, sizeof(old_key));
        free(blob);
    }
}

/*
 * (issue 6, item 5) a key the parser cannot fault (an authorisation value we do not
 * know) imports and loads but cannot sign: the trial HMAC refuses it before the working
 * key is evicted, and nothing is left loaded.
 */
static void test_key_that_cannot_sign_keeps_old_key(void **unused)
{
    (void)unused;
    static const uint8_t auth[] = "not-the-empty-auth";
    const provhsm_test_dps_key_options opts = {.auth = auth, .auth_len = sizeof(auth) - 1};
    uint8_t old_key[32], new_key[32];
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    assert_int_equal(RAND_bytes(old_key, sizeof(old_key)), 1);
    assert_int_equal(RAND_bytes(new_key, sizeof(new_key)), 1);
    activate_key(S.st, old_key, sizeof(old_key), PROVHSM_OK);

    provhsm_test_tpm_counts counts;
    assert_int_equal(provhsm_test_tpm_counts_get(S.swtpm.tcti, &counts), 0);
    make_blob_opts(new_key, sizeof(new_key), &opts, &blob, &blob_len);
    provhsm_test_log_clear();
    assert_int_not_equal(be->tpm_activate(S.st, blob, blob_len), PROVHSM_OK);
    assert_true(provhsm_test_log_seen("the new identity key cannot sign"));
    expect_old_key_signs(old_key, sizeof(old_key));
    assert_int_equal(provhsm_test_tpm_counts_unchanged(S.swtpm.tcti, &counts), 0);

    /* a new state (a new process) finds the old key too */
    void *st2 = NULL;
    const uint8_t msg[] = "after a refused activation";
    assert_int_equal(be->open(&S.cfg, PROVHSM_KIND_TPM, &st2), PROVHSM_OK);
    expect_hmac(st2, old_key, sizeof(old_key), msg, sizeof(msg) - 1);
    be->close(st2);
    free(blob);
}

/*
 * (issue 6, item 5) the final EvictControl is tried once more after a TPM warning: one
 * NV_RATE on it still activates; two fail, cleanly (nothing left loaded).
 */
static void test_persist_retried_once(void **unused)
{
    (void)unused;
    uint8_t old_key[32], new_key[32];
    assert_int_equal(RAND_bytes(old_key, sizeof(old_key)), 1);
    assert_int_equal(RAND_bytes(new_key, sizeof(new_key)), 1);
    activate_key(S.st, old_key, sizeof(old_key), PROVHSM_OK);

    /* EvictControl 1 evicts the old key, 2 persists the new one */
    provhsm_test_log_clear();
    provhsm_tpm_test_fail_commands(2, 1, TPM2_CC_EvictControl, TPM2_RC_NV_RATE);
    activate_key(S.st, new_key, sizeof(new_key), PROVHSM_OK);
    provhsm_tpm_test_fail_commands(0, 0, 0, 0);
    assert_true(provhsm_test_log_seen("trying once more"));
    expect_old_key_signs(new_key, sizeof(new_key));

    provhsm_test_tpm_counts counts;
    assert_int_equal(provhsm_test_tpm_counts_get(S.swtpm.tcti, &counts), 0);
    provhsm_tpm_test_fail_commands(2, 2, TPM2_CC_EvictControl, TPM2_RC_NV_RATE);
    activate_key(S.st, old_key, sizeof(old_key), PROVHSM_E_TPM);
    provhsm_tpm_test_fail_commands(0, 0, 0, 0);
    assert_int_equal(counts.persistent, 3); /* EK, SRK, identity before ... */
    counts.persistent = 2;                  /* ... and the identity gone after */
    assert_int_equal(provhsm_test_tpm_counts_unchanged(S.swtpm.tcti, &counts), 0);
    activate_key(S.st, old_key, sizeof(old_key), PROVHSM_OK); /* as the SDK would, again */
    expect_old_key_signs(old_key, sizeof(old_key));
}

/*
 * (issue 6, item 10) a blob made for another TPM's EK: the log says what that means
 * rather than tpm2-tss's "TPM failure", with the TPM's code; the old key stays.
 */
static void test_blob_for_another_ek_explained(void **unused)
{
    (void)unused;
    uint8_t old_key[32], new_key[32];
    uint8_t *other_ek = NULL, *blob = NULL;
    size_t other_ek_len = 0, blob_len = 0;
    assert_int_equal(RAND_bytes(old_key, sizeof(old_key)), 1);
    assert_int_equal(RAND_bytes(new_key, sizeof(new_key)), 1);
    activate_key(S.st, old_key, sizeof(old_key), PROVHSM_OK);

    /* the fixture's EK belongs to another (simulated) TPM */
    assert_int_equal(provhsm_test_read_fixture("tpm-activation/ek.tpm2b", &other_ek, &other_ek_len),
                     0);
    assert_true(other_ek_len != S.ek_len || memcmp(other_ek, S.ek, S.ek_len) != 0);
    assert_int_equal(provhsm_test_dps_make_blob(other_ek, other_ek_len, S.srk, S.srk_len, new_key,
                                                sizeof(new_key), &blob, &blob_len),
                     0);
    provhsm_test_log_clear();
    assert_int_equal(be->tpm_activate(S.st, blob, blob_len), PROVHSM_E_TPM);
    assert_true(provhsm_test_log_seen("the activation blob was not made for this TPM's endorsement "
                                      "key, or is corrupt (TPM code 0x"));
    assert_false(provhsm_test_log_seen("ActivateCredential failed"));
    expect_old_key_signs(old_key, sizeof(old_key));
    free(other_ek);
    free(blob);
}

/* (c) with an endorsement authorisation set, activation needs it. */
static void test_activation_needs_endorsement_auth(void **unused)
{
    (void)unused;
    char cmd[512];
    uint8_t old_key[32], new_key[32];
    const uint8_t msg[] = "payload";
    if (!provhsm_test_programs_available("tpm2_changeauth", NULL))
        skip();
    assert_int_equal(RAND_bytes(old_key, sizeof(old_key)), 1);
    assert_int_equal(RAND_bytes(new_key, sizeof(new_key)), 1);
    activate_key(S.st, old_key, sizeof(old_key), PROVHSM_OK);

    snprintf(cmd, sizeof(cmd), "TPM2TOOLS_TCTI='%s' tpm2_changeauth -c e endorsepass >/dev/null",
             S.swtpm.tcti);
    assert_int_equal(system(cmd), 0);

    provhsm_test_tpm_counts counts, after;
    assert_int_equal(provhsm_test_tpm_counts_get(S.swtpm.tcti, &counts), 0);
    activate_key(S.st, new_key, sizeof(new_key), PROVHSM_E_TPM);
    expect_hmac(S.st, old_key, sizeof(old_key), msg, sizeof(msg) - 1);
    assert_int_equal(provhsm_test_tpm_counts_get(S.swtpm.tcti, &after), 0);
    assert_int_equal(after.transient, counts.transient);
    assert_int_equal(after.sessions, counts.sessions);

    provhsm_config cfg = S.cfg;
    snprintf(cfg.endorsement_auth_env, sizeof(cfg.endorsement_auth_env), "PROVHSM_TEST_EH");
    setenv("PROVHSM_TEST_EH", "endorsepass", 1);
    void *st = NULL;
    assert_int_equal(be->open(&cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    activate_key(st, new_key, sizeof(new_key), PROVHSM_OK);
    expect_hmac(st, new_key, sizeof(new_key), msg, sizeof(msg) - 1);
    be->close(st);
    unsetenv("PROVHSM_TEST_EH");
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    provhsm_test_log_capture();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_key_signs_like_openssl),
        cmocka_unit_test(test_second_activation_switches_key),
        cmocka_unit_test(test_bad_key_attributes_keep_old_key),
        cmocka_unit_test(test_key_that_cannot_sign_keeps_old_key),
        cmocka_unit_test(test_persist_retried_once),
        cmocka_unit_test(test_blob_for_another_ek_explained),
        /* last: it sets an endorsement authorisation */
        cmocka_unit_test(test_activation_needs_endorsement_auth),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
