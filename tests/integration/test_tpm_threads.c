/*
 * TPM backend used from several threads at once: after one activation (fixture blob1),
 * four threads each open their own state and sign 100 different messages concurrently
 * (every tenth one 4 KB, an HMAC sequence); every signature must equal OpenSSL's
 * HMAC-SHA256 under the fixture's identity key, and the TPM must hold no transient
 * objects or sessions afterwards.
 */
#include <pthread.h>
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

#define THREADS 4
#define SIGNS   100
#define BIG     4096

static const provhsm_backend *const be = &provhsm_backend_tpm;

static struct {
    provhsm_test_swtpm swtpm;
    provhsm_config cfg;
    uint8_t *key;
    size_t key_len;
} T;

typedef struct worker {
    pthread_t thread;
    int id;
    int ok, wrong, failed; /* cmocka's asserts are not for other threads: count instead */
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    void *st = NULL;
    uint8_t *data = malloc(BIG);
    if (data == NULL || be->open(&T.cfg, PROVHSM_KIND_TPM, &st) != PROVHSM_OK) {
        w->failed = SIGNS;
        free(data);
        return NULL;
    }
    for (int i = 0; i < SIGNS; i++) {
        size_t len = i % 10 == 5 ? BIG : 64;
        for (size_t j = 0; j < len; j++)
            data[j] = (uint8_t)(w->id * 31 + i * 7 + (int)j);
        uint8_t *sig = NULL, expected[32];
        size_t sig_len = 0, expected_len = 0;
        if (be->tpm_sign(st, data, len, &sig, &sig_len) != PROVHSM_OK) {
            w->failed++;
            continue;
        }
        if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, T.key, T.key_len, data, len, expected,
                      sizeof(expected), &expected_len) != NULL &&
            sig_len == 32 && memcmp(sig, expected, 32) == 0)
            w->ok++;
        else
            w->wrong++;
        free(sig);
    }
    be->close(st);
    free(data);
    return NULL;
}

static int prepare(void)
{
    uint8_t *hex = NULL, *blob = NULL;
    size_t hex_len = 0, blob_len = 0;
    void *st = NULL;
    int ret = -1;
    if (provhsm_test_read_fixture("tpm-activation/identity-key-1.hex", &hex, &hex_len) != 0 ||
        provhsm_test_hex_decode((char *)hex, &T.key, &T.key_len) != 0 ||
        provhsm_test_read_fixture("tpm-activation/blob1.bin", &blob, &blob_len) != 0)
        goto out;
    if (provhsm_test_swtpm_start(&T.swtpm, provhsm_test_fixture_swtpm_state()) != 0)
        goto out;
    provhsm_test_tpm_config(&T.cfg, T.swtpm.tcti);
    if (be->open(&T.cfg, PROVHSM_KIND_TPM, &st) != PROVHSM_OK)
        goto out;
    if (be->tpm_activate(st, blob, blob_len) == PROVHSM_OK)
        ret = 0;
    be->close(st);
out:
    free(hex);
    free(blob);
    return ret;
}

static int group_teardown(void **unused)
{
    (void)unused;
    provhsm_test_swtpm_stop(&T.swtpm);
    free(T.key);
    return 0;
}

/* A setup that fails is not followed by the teardown: clean up here. */
static int group_setup(void **unused)
{
    if (prepare() == 0)
        return 0;
    (void)group_teardown(unused);
    return -1;
}

/* (g) four states on four threads, signing at the same time. */
static void test_concurrent_signing(void **unused)
{
    (void)unused;
    worker w[THREADS];
    memset(w, 0, sizeof(w));
    for (int i = 0; i < THREADS; i++) {
        w[i].id = i;
        assert_int_equal(pthread_create(&w[i].thread, NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(w[i].thread, NULL), 0);
    for (int i = 0; i < THREADS; i++) {
        printf("# thread %d: %d correct, %d wrong, %d failed\n", i, w[i].ok, w[i].wrong,
               w[i].failed);
        assert_int_equal(w[i].ok, SIGNS);
    }
    provhsm_test_tpm_counts counts;
    assert_int_equal(provhsm_test_tpm_counts_get(T.swtpm.tcti, &counts), 0);
    assert_int_equal(counts.transient, 0);
    assert_int_equal(counts.sessions, 0);
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    provhsm_test_log_capture();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_signing),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
