/*
 * TPM backend used from several threads at once: after one activation (fixture blob1),
 * four threads each open their own state and sign 100 different messages concurrently
 * (every tenth one 4 KB, an HMAC sequence); every signature must equal OpenSSL's
 * HMAC-SHA256 under the fixture's identity key, and the TPM must hold no transient
 * objects or sessions afterwards. Then four threads sign only 4 KB messages (each an HMAC
 * sequence: a transient object across five commands) at once on the TPM without a
 * resource manager: the per-TPM lock is what keeps the sequences from exhausting the
 * TPM's object slots, so every one of them must succeed and be correct.
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
#include "tpm_esys.h"

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

#define LONG_SIGNS 50 /* per thread, in the long-signature test */

typedef struct worker {
    pthread_t thread;
    int id;
    int ok, wrong, failed; /* cmocka's asserts are not for other threads: count instead */
    int long_only;         /* 4 KB every time, after all threads are ready */
} worker;

static pthread_barrier_t all_ready;

static void *work(void *arg)
{
    worker *w = arg;
    void *st = NULL;
    uint8_t *data = malloc(BIG);
    int signs = w->long_only ? LONG_SIGNS : SIGNS;
    int opened = data != NULL && be->open(&T.cfg, PROVHSM_KIND_TPM, &st) == PROVHSM_OK;
    if (w->long_only)
        pthread_barrier_wait(&all_ready); /* start together: sequences overlap from the first */
    if (!opened) {
        w->failed = signs;
        free(data);
        return NULL;
    }
    for (int i = 0; i < signs; i++) {
        size_t len = w->long_only || i % 10 == 5 ? BIG : 64;
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
    memset(&T, 0, sizeof(T)); /* a second call frees nothing */
    return 0;
}

/* cmocka runs the group teardown after a failed group setup too: the setup leaves what
 * it made to the teardown (freeing it here as well was a double free). */
static int group_setup(void **unused)
{
    (void)unused;
    return prepare() == 0 ? 0 : -1;
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

/*
 * Holds n transient objects in the TPM (small HMAC primary keys: no RSA key generation),
 * as other software on a TPM without a resource manager may. swtpm has three object
 * slots, and HMAC_Start needs two (the persistent key is loaded for the command, and the
 * sequence stays); holding one leaves two, so any two HMAC sequences that overlap collide
 * (the second HMAC_Start gets TPM_RC_OBJECT_MEMORY), not only four at once.
 */
static void hold_objects(provhsm_tpm **tpm, ESYS_TR *held, size_t n)
{
    TPM2B_PUBLIC tmpl;
    memset(&tmpl, 0, sizeof(tmpl));
    tmpl.publicArea.type = TPM2_ALG_KEYEDHASH;
    tmpl.publicArea.nameAlg = TPM2_ALG_SHA256;
    tmpl.publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                       TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                       TPMA_OBJECT_SIGN_ENCRYPT;
    tmpl.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_HMAC;
    tmpl.publicArea.parameters.keyedHashDetail.scheme.details.hmac.hashAlg = TPM2_ALG_SHA256;
    assert_int_equal(provhsm_tpm_connect(T.swtpm.tcti, tpm), PROVHSM_OK);
    for (size_t i = 0; i < n; i++) {
        tmpl.publicArea.unique.keyedHash.size = 1;
        tmpl.publicArea.unique.keyedHash.buffer[0] = (BYTE)i;
        assert_int_equal(provhsm_tpm_create_primary(*tpm, ESYS_TR_RH_OWNER, &tmpl, &held[i], NULL),
                         PROVHSM_OK);
    }
}

/*
 * (issue 6, item 11) four threads, four handles, 4 KB signatures only (HMAC sequences)
 * on one TPM without a resource manager and with two free object slots: the per-TPM lock
 * keeps the sequences apart, so all succeed and match OpenSSL.
 */
static void test_concurrent_long_signatures(void **unused)
{
    (void)unused;
    worker w[THREADS];
    provhsm_tpm *holder = NULL;
    ESYS_TR held[1] = {ESYS_TR_NONE};
    memset(w, 0, sizeof(w));
    hold_objects(&holder, held, 1);
    assert_int_equal(pthread_barrier_init(&all_ready, NULL, THREADS), 0);
    for (int i = 0; i < THREADS; i++) {
        w[i].id = i;
        w[i].long_only = 1;
        assert_int_equal(pthread_create(&w[i].thread, NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(w[i].thread, NULL), 0);
    pthread_barrier_destroy(&all_ready);
    provhsm_tpm_flush(holder, &held[0]);
    provhsm_tpm_disconnect(holder);
    for (int i = 0; i < THREADS; i++) {
        printf("# thread %d, 4 KB each: %d correct, %d wrong, %d failed\n", i, w[i].ok, w[i].wrong,
               w[i].failed);
        assert_int_equal(w[i].ok, LONG_SIGNS);
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
        cmocka_unit_test(test_concurrent_long_signatures),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
