/*
 * Leak check for the TPM backend: 1,000 signatures (single TPM2_HMAC and HMAC
 * sequences, some failing because a TPM command is answered with an error) and 100
 * activations (valid, malformed, forged, and valid ones whose n-th TPM command fails),
 * then the TPM's transient objects, loaded sessions and persistent objects must be what
 * they were before. After every call the identity key must be the expected one. Also
 * checks provhsm's own retry of a TPM asking for one (TPM_RC_RETRY, YIELDED, TESTING)
 * beyond what ESAPI resubmits by itself, and that retry's bound.
 * Faults come from provhsm_tpm_test_fail_commands() in the counting TCTI.
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

#include "backend.h"
#include "swtpm_fixture.h"
#include "testutil.h"
#include "tpm_esys.h"

#define SIGNS       1000
#define ACTIVATIONS 100
#define BIG         4096

static const provhsm_backend *const be = &provhsm_backend_tpm;

static struct {
    provhsm_test_swtpm swtpm;
    provhsm_config cfg;
    uint8_t *blob[2], *key[2];
    size_t blob_len[2], key_len[2];
    int current; /* index of the key that should be at the identity handle, -1: none */
} L;

static int group_setup(void **unused)
{
    (void)unused;
    uint8_t *hex = NULL;
    size_t hex_len = 0;
    const char *names[2][2] = {{"tpm-activation/blob1.bin", "tpm-activation/identity-key-1.hex"},
                               {"tpm-activation/blob2.bin", "tpm-activation/identity-key-2.hex"}};
    for (int i = 0; i < 2; i++) {
        if (provhsm_test_read_fixture(names[i][0], &L.blob[i], &L.blob_len[i]) != 0 ||
            provhsm_test_read_fixture(names[i][1], &hex, &hex_len) != 0 ||
            provhsm_test_hex_decode((char *)hex, &L.key[i], &L.key_len[i]) != 0)
            return -1;
        free(hex);
        hex = NULL;
    }
    if (provhsm_test_swtpm_start(&L.swtpm, provhsm_test_fixture_swtpm_state()) != 0)
        return -1;
    provhsm_test_tpm_config(&L.cfg, L.swtpm.tcti);
    L.current = -1;
    provhsm_test_log_capture();
    return 0;
}

static int group_teardown(void **unused)
{
    (void)unused;
    provhsm_test_swtpm_stop(&L.swtpm);
    for (int i = 0; i < 2; i++) {
        free(L.blob[i]);
        free(L.key[i]);
    }
    return 0;
}

/* Signs and checks against OpenSSL with the key that should be there. */
static void sign_and_check(void *st, const uint8_t *data, size_t len)
{
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    provhsm_err err = be->tpm_sign(st, data, len, &sig, &sig_len);
    if (L.current < 0) {
        assert_int_equal(err, PROVHSM_E_NOT_FOUND);
        assert_null(sig);
        return;
    }
    uint8_t expected[32];
    size_t expected_len = 0;
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, L.key[L.current],
                              L.key_len[L.current], data, len, expected, sizeof(expected),
                              &expected_len));
    assert_int_equal(err, PROVHSM_OK);
    assert_int_equal(sig_len, 32);
    assert_memory_equal(sig, expected, 32);
    free(sig);
}

static void expect_counts(const provhsm_test_tpm_counts *before)
{
    assert_int_equal(provhsm_test_tpm_counts_unchanged(L.swtpm.tcti, before), 0);
}

/*
 * ESAPI resubmits a command the TPM answers with RETRY, YIELDED or TESTING by itself, up
 * to ESAPI_SUBMISSIONS times in all; provhsm runs each command PROVHSM_RUNS times while
 * that goes on (src/tpm_esys.c, TPM_ATTEMPTS). So a signature survives up to
 * ESAPI_SUBMISSIONS * PROVHSM_RUNS - 1 such answers in a row, and gives up after that
 * many commands.
 */
#define ESAPI_SUBMISSIONS 5
#define PROVHSM_RUNS      5
#define RETRY_BOUND       (ESAPI_SUBMISSIONS * PROVHSM_RUNS)

/* (issue 6, items 6a and 11) provhsm's own retry loop, beyond ESAPI's, and its bound. */
static void test_retry(void **unused)
{
    (void)unused;
    uint8_t data[100] = {1, 2, 3};
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    void *st = NULL;
    assert_int_equal(be->open(&L.cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    assert_int_equal(be->tpm_activate(st, L.blob[0], L.blob_len[0]), PROVHSM_OK);
    L.current = 0;

    const uint32_t retryable[] = {TPM2_RC_RETRY, TPM2_RC_YIELDED, TPM2_RC_TESTING};
    /* more than ESAPI absorbs (so provhsm's loop runs), fewer than the bound */
    const uint64_t faults[] = {ESAPI_SUBMISSIONS, ESAPI_SUBMISSIONS + 2, RETRY_BOUND - 1};
    for (size_t i = 0; i < 3; i++) {
        uint64_t before = provhsm_tpm_commands_total();
        provhsm_tpm_test_fail_commands(1, faults[i], 0, retryable[i]);
        sign_and_check(st, data, sizeof(data));
        assert_int_equal(provhsm_tpm_commands_total() - before, faults[i] + 1);
    }

    /* the TPM keeps asking: provhsm gives up after exactly RETRY_BOUND commands */
    uint64_t before = provhsm_tpm_commands_total();
    provhsm_tpm_test_fail_commands(1, 1000, 0, TPM2_RC_RETRY);
    assert_int_equal(be->tpm_sign(st, data, sizeof(data), &sig, &sig_len), PROVHSM_E_TPM);
    provhsm_tpm_test_fail_commands(0, 0, 0, 0);
    assert_null(sig);
    assert_int_equal(provhsm_tpm_commands_total() - before, RETRY_BOUND);
    sign_and_check(st, data, sizeof(data));

    /* other errors are not retried */
    before = provhsm_tpm_commands_total();
    provhsm_tpm_test_fail_command(1, TPM2_RC_FAILURE);
    assert_int_equal(be->tpm_sign(st, data, sizeof(data), &sig, &sig_len), PROVHSM_E_TPM);
    assert_null(sig);
    assert_int_equal(provhsm_tpm_commands_total() - before, 1);
    sign_and_check(st, data, sizeof(data));
    be->close(st);
}

/* (d) 1,000 signatures, some failing; then nothing is left loaded in the TPM. */
static void test_signs_leave_nothing_behind(void **unused)
{
    (void)unused;
    void *st = NULL;
    uint8_t *data = malloc(BIG);
    assert_non_null(data);
    for (size_t i = 0; i < BIG; i++)
        data[i] = (uint8_t)(i * 7 + 3);
    provhsm_test_tpm_counts before;
    assert_int_equal(provhsm_test_tpm_counts_get(L.swtpm.tcti, &before), 0);
    assert_int_equal(before.transient, 0);
    assert_int_equal(before.sessions, 0);

    assert_int_equal(be->open(&L.cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    sign_and_check(st, data, BIG); /* reads the input buffer size once */
    int failed = 0;
    for (int i = 0; i < SIGNS; i++) {
        data[0] = (uint8_t)i;
        data[BIG - 1] = (uint8_t)(i >> 8);
        uint8_t *sig = NULL;
        size_t sig_len = 0;
        if (i % 50 == 7) {
            /* the single TPM2_HMAC fails */
            provhsm_tpm_test_fail_command(1, TPM2_RC_OBJECT_MEMORY);
            assert_int_equal(be->tpm_sign(st, data, 100, &sig, &sig_len), PROVHSM_E_TPM);
            failed++;
        } else if (i % 50 == 19 || i % 50 == 29 || i % 50 == 39) {
            /* HMAC_Start, the second SequenceUpdate or SequenceComplete fails (4 KB:
               start, 3 updates, complete) */
            uint64_t nth = i % 50 == 19 ? 1 : i % 50 == 29 ? 3 : 5;
            provhsm_tpm_test_fail_command(nth, TPM2_RC_MEMORY);
            assert_int_equal(be->tpm_sign(st, data, BIG, &sig, &sig_len), PROVHSM_E_TPM);
            failed++;
        } else if (i % 10 == 9) {
            sign_and_check(st, data, BIG);
        } else {
            sign_and_check(st, data, 100);
        }
        assert_null(sig);
    }
    provhsm_tpm_test_fail_command(0, 0);
    be->close(st);
    printf("# %d signatures, %d of them failing\n", SIGNS + 1, failed);
    expect_counts(&before);
    free(data);
}

/* (d) 100 activations of every kind; afterwards the TPM holds what it held before. */
static void test_activations_leave_nothing_behind(void **unused)
{
    (void)unused;
    void *st = NULL;
    uint8_t msg[64] = "leak check";
    uint8_t *copy = malloc(L.blob_len[0] > L.blob_len[1] ? L.blob_len[0] : L.blob_len[1]);
    assert_non_null(copy);
    assert_int_equal(be->open(&L.cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    assert_int_equal(be->tpm_activate(st, L.blob[0], L.blob_len[0]), PROVHSM_OK);
    L.current = 0;
    provhsm_test_tpm_counts before;
    assert_int_equal(provhsm_test_tpm_counts_get(L.swtpm.tcti, &before), 0);

    int valid = 0, malformed = 0, forged = 0, faulted = 0;
    for (int i = 0; i < ACTIVATIONS; i++) {
        int which = (i / 5) % 2;
        const uint8_t *blob = L.blob[which];
        size_t len = L.blob_len[which];
        switch (i % 5) {
        case 0:
        case 4:
            assert_int_equal(be->tpm_activate(st, blob, len), PROVHSM_OK);
            L.current = which;
            valid++;
            break;
        case 1: /* cut short */
            memcpy(copy, blob, len);
            assert_int_equal(be->tpm_activate(st, copy, (size_t)(i * 37) % len), PROVHSM_E_CORRUPT);
            malformed++;
            break;
        case 2: /* one byte changed somewhere in the encrypted fields */
            memcpy(copy, blob, len);
            copy[40 + (size_t)(i * 53) % (len - 120)] ^= 0x01;
            assert_int_not_equal(be->tpm_activate(st, copy, len), PROVHSM_OK);
            forged++;
            break;
        case 3: {
            /* command k of the activation fails: StartAuthSession, PolicySecret,
               ActivateCredential, Import, Load, HMAC (the new key's trial), EvictControl
               (old), EvictControl (new: tried once more after a TPM warning, so it lands) */
            int k = 1 + (i / 5) % 8;
            provhsm_tpm_test_fail_command((uint64_t)k, TPM2_RC_OBJECT_MEMORY);
            if (k == 8) {
                assert_int_equal(be->tpm_activate(st, blob, len), PROVHSM_OK);
                L.current = which;
            } else {
                assert_int_not_equal(be->tpm_activate(st, blob, len), PROVHSM_OK);
            }
            faulted++;
            break;
        }
        }
        provhsm_tpm_test_fail_command(0, 0);
        msg[20] = (uint8_t)i;
        sign_and_check(st, msg, sizeof(msg));
        if (L.current < 0) {
            /* re-provision, as the SDK would */
            assert_int_equal(be->tpm_activate(st, blob, len), PROVHSM_OK);
            L.current = which;
        }
    }
    be->close(st);
    printf("# activations: %d valid, %d malformed, %d forged, %d with a failing TPM command\n",
           valid, malformed, forged, faulted);
    expect_counts(&before);

    /* a new state (a new process) signs with the last key */
    assert_int_equal(be->open(&L.cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    sign_and_check(st, msg, sizeof(msg));
    be->close(st);
    free(copy);
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry),
        cmocka_unit_test(test_signs_leave_nothing_behind),
        cmocka_unit_test(test_activations_leave_nothing_behind),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
