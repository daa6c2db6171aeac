/*
 * The TPM going away between calls: after a good signature, swtpm is killed; sign,
 * activate and a new open must then fail with PROVHSM_E_NO_DEVICE within seconds (no
 * crash, no hang), while the cached EK is still served. When swtpm comes back on the
 * same state and port, the same state reconnects on its next call and signs again.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "backend.h"
#include "swtpm_fixture.h"
#include "testutil.h"

static const provhsm_backend *const be = &provhsm_backend_tpm;

static struct {
    provhsm_test_swtpm swtpm;
    provhsm_config cfg;
    uint8_t *blob, *payload, *hmac_hex, *hmac;
    size_t blob_len, payload_len, hmac_hex_len, hmac_len;
} G;

static int group_setup(void **unused)
{
    (void)unused;
    if (provhsm_test_read_fixture("tpm-activation/blob1.bin", &G.blob, &G.blob_len) != 0 ||
        provhsm_test_read_fixture("tpm-activation/payload.txt", &G.payload, &G.payload_len) != 0 ||
        provhsm_test_read_fixture("tpm-activation/hmac-1.hex", &G.hmac_hex, &G.hmac_hex_len) != 0 ||
        provhsm_test_hex_decode((char *)G.hmac_hex, &G.hmac, &G.hmac_len) != 0)
        return -1;
    if (provhsm_test_swtpm_start(&G.swtpm, provhsm_test_fixture_swtpm_state()) != 0)
        return -1;
    provhsm_test_tpm_config(&G.cfg, G.swtpm.tcti);
    provhsm_test_log_capture();
    return 0;
}

static int group_teardown(void **unused)
{
    (void)unused;
    provhsm_test_swtpm_stop(&G.swtpm);
    free(G.blob);
    free(G.payload);
    free(G.hmac_hex);
    free(G.hmac);
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static provhsm_err sign(void *st, int check)
{
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    provhsm_err err = be->tpm_sign(st, G.payload, G.payload_len, &sig, &sig_len);
    if (err == PROVHSM_OK && check) {
        assert_int_equal(sig_len, 32);
        assert_memory_equal(sig, G.hmac, 32);
    }
    if (err != PROVHSM_OK)
        assert_null(sig);
    free(sig);
    return err;
}

/* (h) kill swtpm between calls; everything fails cleanly; it recovers when swtpm returns. */
static void test_tpm_goes_away_and_comes_back(void **unused)
{
    (void)unused;
    void *st = NULL, *st2 = NULL;
    assert_int_equal(be->open(&G.cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    assert_int_equal(be->tpm_activate(st, G.blob, G.blob_len), PROVHSM_OK);
    assert_int_equal(sign(st, 1), PROVHSM_OK);

    provhsm_test_swtpm_kill(&G.swtpm);
    double start = now_s();
    assert_int_equal(sign(st, 0), PROVHSM_E_NO_DEVICE);
    assert_int_equal(sign(st, 0), PROVHSM_E_NO_DEVICE); /* the reconnect fails too */
    assert_int_equal(be->tpm_activate(st, G.blob, G.blob_len), PROVHSM_E_NO_DEVICE);
    assert_int_equal(be->open(&G.cfg, PROVHSM_KIND_TPM, &st2), PROVHSM_E_NO_DEVICE);
    assert_null(st2);
    double took = now_s() - start;
    printf("# four calls without a TPM failed in %.3f s\n", took);
    assert_true(took < 10.0);

    uint8_t *ek = NULL;
    size_t ek_len = 0;
    assert_int_equal(be->tpm_endorsement_key(st, &ek, &ek_len), PROVHSM_OK);
    free(ek);

    assert_int_equal(provhsm_test_swtpm_restart(&G.swtpm), 0);
    assert_int_equal(sign(st, 1), PROVHSM_OK);
    assert_int_equal(be->tpm_activate(st, G.blob, G.blob_len), PROVHSM_OK);
    assert_int_equal(sign(st, 1), PROVHSM_OK);
    be->close(st);
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tpm_goes_away_and_comes_back),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
