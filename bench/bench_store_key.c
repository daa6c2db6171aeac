/*
 * bench_store_key: what each store key mode costs a create through the SDK's tables.
 * For each mode (key file, passphrase with the default scrypt cost, key sealed to the TPM
 * as a blob in the store directory, the same through tpm2-abrmd (the resource manager that
 * stands in for the kernel's /dev/tpmrm0, the default TCTI), key sealed at a persistent
 * handle; the sealed modes also bound to PCR 16) it makes a store on a private swtpm with a
 * self-signed EC P-256 X.509 identity and a symmetric identity, then times, over RUNS runs, an
 * X.509 create + get_certificate + destroy and a symmetric create + get_symmetric_key + destroy
 * (opening the store is part of each: the SDK opens a handle per registration). Prints the median
 * and 90th percentile in microseconds and the TPM commands per create, counted at the TCTI
 * (tpm_esys.h). Usage: bench_store_key [RUNS]   (default 100). Needs swtpm on PATH; the tpm2-abrmd
 * row also tpm2-abrmd, dbus-daemon and the tabrmd TCTI (else it says why it did not run). Not a
 * ctest test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "abrmd_fixture.h"
#include "bench_stats.h"
#include "hsm_client_data.h"
#include "provhsm/provhsm.h"
#include "provhsm/provhsm_store_key.h"
#include "swtpm_fixture.h"
#include "testutil.h"
#include "tpm_esys.h"

#define PASS_ENV "PROVHSM_BENCH_PASSPHRASE"

/* What the SDK's hsm_client_data.c defines. */
int initialize_hsm_system(void)
{
    int r = hsm_client_x509_init();
    if (r == 0)
        r = hsm_client_tpm_init();
    return r;
}

void deinitialize_hsm_system(void)
{
    hsm_client_x509_deinit();
    hsm_client_tpm_deinit();
}

typedef struct mode {
    const char *name;
    const char *store_lines; /* added to [store] */
    int sealed;              /* provhsm_store_init_sealed() rather than provhsm_store_init() */
    int passphrase;
    int via_abrmd; /* the TPM through tpm2-abrmd rather than directly */
} mode;

static const mode modes[] = {
    {"key file", "", 0, 0, 0},
    {"passphrase (scrypt 2^15, r 8)", "passphrase_env = " PASS_ENV "\n", 0, 1, 0},
    {"TPM, sealed blob", "", 1, 0, 0},
    {"TPM, sealed blob, tpm2-abrmd", "", 1, 0, 1},
    {"TPM, persistent handle", "sealed_key_handle = 0x81000280\n", 1, 0, 0},
    {"TPM, sealed blob, PCR 16", "seal_pcrs = sha256:16\n", 1, 0, 0},
    {"TPM, sealed blob, PCR 16, tpm2-abrmd", "seal_pcrs = sha256:16\n", 1, 0, 1},
    {"TPM, persistent handle, PCR 16", "seal_pcrs = sha256:16\nsealed_key_handle = 0x81000281\n", 1,
     0, 0},
};

static int op_x509(void)
{
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = x->hsm_client_x509_create();
    if (h == NULL)
        return 1;
    char *cert = x->hsm_client_get_cert(h);
    x->hsm_client_x509_destroy(h);
    free(cert);
    return cert == NULL;
}

static int op_symmetric(void)
{
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
    if (h == NULL)
        return 1;
    char *key = k->hsm_client_get_symm_key(h);
    k->hsm_client_key_destroy(h);
    provhsm_free_secret(key);
    return key == NULL;
}

/* Times `op` RUNS times; prints median, p90 and TPM commands per run. 0, or 1 on failure. */
static int row(const char *mode_name, const char *what, int (*op)(void), int runs, double *samples)
{
    if (op() != 0) /* warm-up, and the store's first open */
        return 1;
    uint64_t before = provhsm_tpm_commands_total();
    for (int i = 0; i < runs; i++) {
        double t0 = bench_now_us();
        if (op() != 0)
            return 1;
        samples[i] = bench_now_us() - t0;
    }
    double per = (double)(provhsm_tpm_commands_total() - before) / runs, median, p90;
    bench_stats(samples, runs, &median, &p90);
    printf("  %-38s %-10s %10.1f %10.1f %8.1f\n", mode_name, what, median, p90, per);
    return 0;
}

static int setup_mode(const mode *m, const char *dir, const char *tcti, int index)
{
    char config[600];
    snprintf(config, sizeof(config), "%s/provhsm-%d.conf", dir, index);
    if (provhsm_test_config_use(config, "[store]\npath = %s/store-%d\n%s[tpm]\ntcti = %s\n", dir,
                                index, m->store_lines, tcti) != 0)
        return 1;
    if (m->passphrase)
        setenv(PASS_ENV, "a benchmark passphrase", 1);
    else
        unsetenv(PASS_ENV);
    provhsm_err err = m->sealed ? provhsm_store_init_sealed() : provhsm_store_init();
    char *pem = NULL;
    if (err == PROVHSM_OK)
        err = provhsm_x509_generate("bench-device", PROVHSM_KEY_EC_P256, 30, 0, &pem);
    free(pem);
    if (err == PROVHSM_OK)
        err = provhsm_symmetric_set("bench-device-sym",
                                    "YmVuY2gtc3ltbWV0cmljLWtleS0zMi1ieXRlcy0hIQ==");
    return err != PROVHSM_OK;
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 100, rc = 1;
    char dir[] = "/tmp/provhsm-bench-store-key-XXXXXX";
    provhsm_test_swtpm swtpm;
    provhsm_test_abrmd abrmd;
    char abrmd_why[512] = "";
    double *samples = NULL;

    if (runs < 1 || runs > 100000) {
        fprintf(stderr, "usage: bench_store_key [RUNS]   (1..100000)\n");
        return 2;
    }
    memset(&swtpm, 0, sizeof(swtpm));
    memset(&abrmd, 0, sizeof(abrmd));
    setenv("TSS2_LOG", "all+none", 1);
    if (!provhsm_test_swtpm_available() || mkdtemp(dir) == NULL ||
        provhsm_test_swtpm_start(&swtpm, NULL) != 0) {
        fprintf(stderr, "bench_store_key: needs swtpm and a writable /tmp\n");
        return 1;
    }
    /* before this process loads the tabrmd TCTI itself (see abrmd_fixture.h) */
    const char *missing = provhsm_test_abrmd_missing();
    if (missing != NULL)
        snprintf(abrmd_why, sizeof(abrmd_why), "%s", missing);
    else if (provhsm_test_abrmd_start(&abrmd, dir, swtpm.tcti, abrmd_why, sizeof(abrmd_why)) == 0)
        abrmd_why[0] = '\0';
    else if (abrmd_why[0] == '\0')
        snprintf(abrmd_why, sizeof(abrmd_why), "tpm2-abrmd did not start");
    samples = malloc(sizeof(double) * (size_t)runs);
    if (samples == NULL || initialize_hsm_system() != 0)
        goto out;
    /* the SRK the sealed modes seal under: made by the TPM backend's first open */
    HSM_CLIENT_HANDLE t = NULL;
    {
        provhsm_config cfg;
        provhsm_test_tpm_config(&cfg, swtpm.tcti);
        char config[600];
        snprintf(config, sizeof(config), "%s/tpm.conf", dir);
        if (provhsm_test_config_use(config, "[tpm]\ntcti = %s\n", swtpm.tcti) != 0)
            goto out;
        t = hsm_client_tpm_interface()->hsm_client_tpm_create();
        if (t == NULL)
            goto out;
        hsm_client_tpm_interface()->hsm_client_tpm_destroy(t);
    }
    printf("create through the SDK tables, per store key mode (%d runs, swtpm %s)\n", runs,
           swtpm.tcti);
    printf("  %-38s %-10s %10s %10s %8s\n", "store key", "identity", "median us", "p90 us",
           "TPM cmds");
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (modes[i].via_abrmd && abrmd_why[0] != '\0') {
            printf("  %-38s not run: %s\n", modes[i].name, abrmd_why);
            continue;
        }
        const char *tcti = modes[i].via_abrmd ? abrmd.tcti : swtpm.tcti;
        if (setup_mode(&modes[i], dir, tcti, (int)i) != 0 ||
            row(modes[i].name, "x509", op_x509, runs, samples) != 0 ||
            row(modes[i].name, "symmetric", op_symmetric, runs, samples) != 0) {
            fprintf(stderr, "bench_store_key: mode \"%s\" failed\n", modes[i].name);
            goto out;
        }
    }
    rc = 0;
out:
    deinitialize_hsm_system();
    free(samples);
    provhsm_test_abrmd_stop(&abrmd);
    provhsm_test_swtpm_stop(&swtpm);
    provhsm_test_remove_tree(dir);
    return rc;
}
