/*
 * TPM backend without a TPM: open() through a TCTI that cannot reach anything (a
 * simulator port nobody listens on, a device node that does not exist, a TCTI that does
 * not exist, an unparsable string) fails with PROVHSM_E_NO_DEVICE and a log line naming
 * the TCTI, within a few seconds, without crashing and without leaving a state behind.
 * Needs no simulator.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend.h"
#include "swtpm_fixture.h"

static const provhsm_backend *const be = &provhsm_backend_tpm;

/* A loopback port that was free a moment ago and has no listener. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);
    assert_true(fd >= 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void expect_no_device(const char *tcti)
{
    provhsm_config cfg;
    void *st = (void *)&cfg; /* must stay untouched */
    provhsm_test_tpm_config(&cfg, tcti);
    provhsm_test_log_clear();
    double start = now_s();
    assert_int_equal(be->open(&cfg, PROVHSM_KIND_TPM, &st), PROVHSM_E_NO_DEVICE);
    double took = now_s() - start;
    printf("# open(\"%s\") failed in %.3f s\n", tcti, took);
    assert_true(took < 5.0);
    assert_ptr_equal(st, (void *)&cfg);
    assert_true(provhsm_test_log_seen(tcti));
}

/* (f) nothing listens on the simulator port */
static void test_swtpm_port_closed(void **unused)
{
    (void)unused;
    char tcti[128];
    snprintf(tcti, sizeof(tcti), "swtpm:host=127.0.0.1,port=%d", closed_port());
    expect_no_device(tcti);
}

static void test_mssim_port_closed(void **unused)
{
    (void)unused;
    char tcti[128];
    snprintf(tcti, sizeof(tcti), "mssim:host=127.0.0.1,port=%d", closed_port());
    expect_no_device(tcti);
}

static void test_device_missing(void **unused)
{
    (void)unused;
    expect_no_device("device:/nonexistent/provhsm-test-tpm0");
}

/* (f) TCTI names and strings that do not exist */
static void test_bogus_tcti(void **unused)
{
    (void)unused;
    expect_no_device("bogus-tcti");
    expect_no_device("nonsense:");
    expect_no_device("swtpm:this is not a configuration");
}

static void test_wrong_kind(void **unused)
{
    (void)unused;
    provhsm_config cfg;
    void *st = NULL;
    provhsm_test_tpm_config(&cfg, "swtpm:host=127.0.0.1,port=1");
    /* symmetric keys: the tpm backend serves the TPM and X.509 tables only */
    assert_int_equal(be->open(&cfg, PROVHSM_KIND_SYMMETRIC, &st), PROVHSM_E_UNSUPPORTED);
    assert_null(st);
}

int main(void)
{
    provhsm_test_log_capture();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swtpm_port_closed), cmocka_unit_test(test_mssim_port_closed),
        cmocka_unit_test(test_device_missing),    cmocka_unit_test(test_bogus_tcti),
        cmocka_unit_test(test_wrong_kind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
