/*
 * TLS client authentication with an X.509 key that stays in the TPM: the key made by the
 * tpm backend on a private swtpm, its key reference decoded by the library's OpenSSL
 * provider exactly as the SDK's TLS layer decodes the alias key, and TLS 1.2 and 1.3
 * handshakes against a server that requires and verifies the client certificate
 * (tls_harness.h). Counts TPM commands per handshake (one TPM2_Sign), checks that 1000
 * handshakes leave no TPM object or session behind, that four threads can handshake at
 * once on the one shared connection, and that a TPM that goes away makes the handshake
 * fail with a logged reason, quickly, and work again when it is back.
 * Skips (77) without swtpm.
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
#include <unistd.h>
#include <cmocka.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "backend.h"
#include "hwkey.h"
#include "identity_fixture.h"
#include "keyref.h"
#include "provider/provider.h"
#include "swtpm_fixture.h"
#include "tls_harness.h"
#include "tpm_esys.h"

#define LOOP_HANDSHAKES 1000
#define THREADS         4
#define PER_THREAD      50

static struct {
    provhsm_test_swtpm swtpm;
    provhsm_config cfg;
    char store_dir[64];
    identity_hw_key key; /* held open, as the admin API holds it after generate */
    tls_ca *ca;
    tls_server *srv;
} G;

static int prepare(void)
{
    if (provhsm_test_swtpm_start(&G.swtpm, NULL) != 0)
        return -1;
    provhsm_test_tpm_config(&G.cfg, G.swtpm.tcti);
    /* what the library reads when the provider opens the key: this TPM, no store needed */
    snprintf(G.store_dir, sizeof(G.store_dir), "/tmp/provhsm-x509tls-XXXXXX");
    if (mkdtemp(G.store_dir) == NULL)
        return -1;
    setenv("PROVHSM_STORE", G.store_dir, 1);
    setenv("PROVHSM_TCTI", G.swtpm.tcti, 1);
    unsetenv("PROVHSM_CONFIG");
    if (provhsm_provider_load() != PROVHSM_OK)
        return -1;
    G.ca = tls_ca_new("TPM test CA");
    if (G.ca == NULL || identity_hw_key_make(&G.key, &provhsm_backend_tpm, &G.cfg,
                                             PROVHSM_KEY_EC_P256, G.ca, "tpm-device") != 0)
        return -1;
    return (G.srv = tls_server_start(G.ca)) != NULL ? 0 : -1;
}

static int group_teardown(void **unused)
{
    (void)unused;
    tls_server_stop(G.srv);
    tls_ca_free(G.ca);
    identity_hw_key_clear(&G.key);
    provhsm_provider_unload();
    provhsm_test_swtpm_stop(&G.swtpm);
    if (G.store_dir[0] != '\0')
        rmdir(G.store_dir);
    return 0;
}

/* A setup that fails is not followed by the teardown: clean up here. */
static int group_setup(void **unused)
{
    provhsm_test_log_capture();
    if (prepare() == 0)
        return 0;
    fprintf(stderr, "setup failed\n");
    (void)group_teardown(unused);
    return -1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* TLS 1.3 and 1.2: a verified handshake; after the first, one TPM command each */
static void handshakes_cost_one_command(int version, const char *name)
{
    char err[512] = "";
    tls_client *cl =
        tls_client_new(G.srv, G.key.leaf_pem, G.key.alias_pem, version, err, sizeof(err));
    if (cl == NULL)
        fail_msg("%s client: %s", name, err);
    unsigned long verified = tls_server_verified_handshakes(G.srv);
    if (tls_client_handshake(cl, err, sizeof(err)) != 0)
        fail_msg("%s handshake: %s", name, err);
    uint64_t before = provhsm_tpm_commands_total();
    if (tls_client_handshakes(cl, 10, err, sizeof(err)) != 0)
        fail_msg("%s handshakes: %s", name, err);
    uint64_t cost = provhsm_tpm_commands_total() - before;
    printf("# %s: 10 handshakes, %llu TPM commands\n", name, (unsigned long long)cost);
    assert_int_equal(cost, 10);
    assert_int_equal(tls_server_verified_handshakes(G.srv) - verified, 11);
    char cn[64];
    tls_server_last_client_cn(G.srv, cn, sizeof(cn));
    assert_string_equal(cn, "tpm-device");
    tls_client_free(cl);
}

static void test_tls13_handshake(void **unused)
{
    (void)unused;
    handshakes_cost_one_command(TLS1_3_VERSION, "TLS 1.3");
}

static void test_tls12_handshake(void **unused)
{
    (void)unused;
    handshakes_cost_one_command(TLS1_2_VERSION, "TLS 1.2");
}

/* 1000 handshakes: one TPM command each, no TPM object or session left behind */
static void test_many_handshakes(void **unused)
{
    (void)unused;
    provhsm_test_tpm_counts counts;
    char err[512] = "";
    assert_int_equal(provhsm_test_tpm_counts_get(G.swtpm.tcti, &counts), 0);
    static const int versions[2] = {TLS1_3_VERSION, TLS1_2_VERSION};
    for (int v = 0; v < 2; v++) {
        tls_client *cl =
            tls_client_new(G.srv, G.key.leaf_pem, G.key.alias_pem, versions[v], err, sizeof(err));
        if (cl == NULL)
            fail_msg("client: %s", err);
        uint64_t before = provhsm_tpm_commands_total();
        double start = now_s();
        if (tls_client_handshakes(cl, LOOP_HANDSHAKES / 2, err, sizeof(err)) != 0)
            fail_msg("handshakes: %s", err);
        double took = now_s() - start;
        uint64_t cost = provhsm_tpm_commands_total() - before;
        printf("# %s: %d handshakes, %llu TPM commands, %.0f handshakes/s\n",
               v == 0 ? "TLS 1.3" : "TLS 1.2", LOOP_HANDSHAKES / 2, (unsigned long long)cost,
               LOOP_HANDSHAKES / 2 / took);
        assert_int_equal(cost, LOOP_HANDSHAKES / 2);
        tls_client_free(cl);
    }
    assert_int_equal(provhsm_test_tpm_counts_unchanged(G.swtpm.tcti, &counts), 0);
}

typedef struct {
    int version;
    int failed;
    char err[512];
} job;

static void *handshake_thread(void *p)
{
    job *j = p;
    tls_client *cl =
        tls_client_new(G.srv, G.key.leaf_pem, G.key.alias_pem, j->version, j->err, sizeof(j->err));
    j->failed = cl == NULL || tls_client_handshakes(cl, PER_THREAD, j->err, sizeof(j->err)) != 0;
    tls_client_free(cl);
    return NULL;
}

/* four threads handshake at once with the one TPM key */
static void test_threads_handshake_at_once(void **unused)
{
    (void)unused;
    pthread_t threads[THREADS];
    job jobs[THREADS];
    unsigned long verified = tls_server_verified_handshakes(G.srv);
    uint64_t before = provhsm_tpm_commands_total();
    for (int i = 0; i < THREADS; i++) {
        memset(&jobs[i], 0, sizeof(jobs[i]));
        jobs[i].version = i % 2 ? TLS1_2_VERSION : TLS1_3_VERSION;
        assert_int_equal(pthread_create(&threads[i], NULL, handshake_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(threads[i], NULL), 0);
        if (jobs[i].failed)
            fail_msg("thread %d: %s", i, jobs[i].err);
    }
    assert_int_equal(tls_server_verified_handshakes(G.srv) - verified, THREADS * PER_THREAD);
    assert_int_equal(provhsm_tpm_commands_total() - before, THREADS * PER_THREAD);
}

/* the TPM goes away: the handshake fails with a logged reason and no hang; then it is back */
static void test_tpm_gone(void **unused)
{
    (void)unused;
    char err[512] = "";
    assert_int_equal(
        tls_handshake(G.srv, G.key.leaf_pem, G.key.alias_pem, TLS1_3_VERSION, err, sizeof(err)), 0);
    provhsm_test_swtpm_kill(&G.swtpm);
    provhsm_test_log_clear();
    double start = now_s();
    assert_int_not_equal(
        tls_handshake(G.srv, G.key.leaf_pem, G.key.alias_pem, TLS1_3_VERSION, err, sizeof(err)), 0);
    assert_int_not_equal(
        tls_handshake(G.srv, G.key.leaf_pem, G.key.alias_pem, TLS1_2_VERSION, err, sizeof(err)), 0);
    double took = now_s() - start;
    printf("# two handshakes without a TPM failed in %.3f s: %s\n", took, err);
    assert_true(took < 10.0);
    assert_true(provhsm_test_log_seen("the TPM cannot be reached"));

    assert_int_equal(provhsm_test_swtpm_restart(&G.swtpm), 0);
    if (tls_handshake(G.srv, G.key.leaf_pem, G.key.alias_pem, TLS1_3_VERSION, err, sizeof(err)) !=
        0)
        fail_msg("handshake after the TPM came back: %s", err);
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls13_handshake), cmocka_unit_test(test_tls12_handshake),
        cmocka_unit_test(test_many_handshakes), cmocka_unit_test(test_threads_handshake_at_once),
        cmocka_unit_test(test_tpm_gone),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
