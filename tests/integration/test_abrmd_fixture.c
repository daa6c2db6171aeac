/*
 * The tpm2-abrmd fixture (abrmd_fixture.h) on a private swtpm: tpm2-abrmd starts on it,
 * starts again on the same bus after swtpm restarted, a client in this process reaches
 * the TPM through it (one TPM2_GetRandom), and once it is stopped no client connects.
 * Skipped (77) when swtpm, tpm2-abrmd, dbus-daemon or the tabrmd TCTI is not installed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include "abrmd_fixture.h"
#include "swtpm_fixture.h"

static struct {
    provhsm_test_swtpm swtpm;
    provhsm_test_abrmd abrmd;
} G;

/* swtpm, and tpm2-abrmd on it; the bus's files go into swtpm's temporary directory. */
static int group_setup(void **unused)
{
    char why[768];
    (void)unused;
    if (provhsm_test_swtpm_start(&G.swtpm, NULL) != 0)
        return -1;
    if (provhsm_test_abrmd_start(&G.abrmd, G.swtpm.dir, G.swtpm.tcti, why, sizeof(why)) != 0) {
        fprintf(stderr, "%s\n", why);
        return -1;
    }
    return 0;
}

static int group_teardown(void **unused)
{
    (void)unused;
    provhsm_test_abrmd_stop(&G.abrmd);
    provhsm_test_abrmd_stop(&G.abrmd); /* a second stop does nothing */
    provhsm_test_swtpm_stop(&G.swtpm);
    return 0;
}

/* Runs first: starting tpm2-abrmd forks, which must happen before a client loads GLib here. */
static void test_restart_on_restarted_swtpm(void **unused)
{
    char why[768];
    (void)unused;
    pid_t bus = G.abrmd.dbus_pid, daemon = G.abrmd.abrmd_pid;
    assert_true(bus > 0);
    assert_true(daemon > 0);
    provhsm_test_abrmd_stop_daemon(&G.abrmd);
    assert_int_equal(G.abrmd.abrmd_pid, 0);
    assert_int_equal(G.abrmd.dbus_pid, bus); /* the bus stays */
    provhsm_test_swtpm_kill(&G.swtpm);
    assert_int_equal(provhsm_test_swtpm_restart(&G.swtpm), 0);
    int rc = provhsm_test_abrmd_start(&G.abrmd, G.swtpm.dir, G.swtpm.tcti, why, sizeof(why));
    if (rc != 0)
        fprintf(stderr, "%s\n", why);
    assert_int_equal(rc, 0);
    assert_int_equal(G.abrmd.dbus_pid, bus); /* started once */
    assert_true(G.abrmd.abrmd_pid > 0);
}

static void test_get_random_through_abrmd(void **unused)
{
    (void)unused;
    TSS2_TCTI_CONTEXT *tcti = NULL;
    ESYS_CONTEXT *esys = NULL;
    TPM2B_DIGEST *random = NULL;
    assert_string_equal(G.abrmd.tcti, "tabrmd:bus_type=session");
    assert_int_equal(Tss2_TctiLdr_Initialize(G.abrmd.tcti, &tcti), TSS2_RC_SUCCESS);
    assert_int_equal(Esys_Initialize(&esys, tcti, NULL), TSS2_RC_SUCCESS);
    assert_int_equal(Esys_GetRandom(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, 16, &random),
                     TSS2_RC_SUCCESS);
    assert_non_null(random);
    assert_int_equal(random->size, 16);
    Esys_Free(random);
    Esys_Finalize(&esys);
    Tss2_TctiLdr_Finalize(&tcti);
}

/* The client above really went through tpm2-abrmd: without it, no connection. */
static void test_no_connection_once_stopped(void **unused)
{
    (void)unused;
    TSS2_TCTI_CONTEXT *tcti = NULL;
    provhsm_test_abrmd_stop_daemon(&G.abrmd);
    assert_int_equal(G.abrmd.abrmd_pid, 0);
    assert_int_not_equal(Tss2_TctiLdr_Initialize(G.abrmd.tcti, &tcti), TSS2_RC_SUCCESS);
    assert_null(tcti);
}

int main(void)
{
    const char *missing = provhsm_test_abrmd_missing();
    if (!provhsm_test_swtpm_available() || missing != NULL) {
        fprintf(stderr, "skip: %s\n", missing != NULL ? missing : "swtpm is not installed");
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_restart_on_restarted_swtpm),
        cmocka_unit_test(test_get_random_through_abrmd),
        cmocka_unit_test(test_no_connection_once_stopped),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
