/*
 * bench_tpm: what the TPM backend costs the SDK per call, in time and in TPM commands.
 * Starts its own swtpm (tests/integration/swtpm_fixture.c) on a copy of the fixture state
 * in tests/fixtures/tpm-activation (EK and SRK provisioned), points the library at it
 * (PROVHSM_CONFIG = an empty file, PROVHSM_TCTI, PROVHSM_STORE under the temporary
 * directory), and times each call of the SDK's TPM table over many runs (median, CLOCK_
 * MONOTONIC), counting the TPM commands each one sends (the counting TCTI in tpm_esys.c).
 * The last rows are a whole provisioning as the SDK drives it (prov_device_ll_client and
 * prov_auth_client through the TPM table: create, EK, SRK, activate the 401's blob, sign
 * the SAS string once, activate the assignment's blob, destroy), from a fresh TPM (no EK,
 * SRK or identity key: every run evicts them first), from a provisioned one (EK and SRK,
 * no identity key) and from one that has an identity key already, each next to the
 * command count of the SDK's own TPM HSM for the same case where it is known.
 * Targets are printed next to the results; the exit status is 1 when a command budget is
 * exceeded or a call fails. swtpm is a software TPM: times on a real TPM are far longer
 * (tens of ms per RSA operation), the command counts are what carries over.
 * Usage: bench_tpm [RUNS]   (default 50). Exits 77 when swtpm is not installed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "bench_stats.h"
#include "hsm_client_data.h"
#include "provhsm/provhsm.h"
#include "swtpm_fixture.h"
#include "tpm_esys.h"

#define BIG 4096

/* The SDK's own TPM HSM for a whole provisioning (sdk-contract.md): fresh, provisioned. */
#define SDK_FRESH       32
#define SDK_PROVISIONED 26

typedef struct bench_ctx {
    const char *tcti;
    const HSM_CLIENT_TPM_INTERFACE *tpm;
    HSM_CLIENT_HANDLE handle;
    unsigned char *blob[2];
    size_t blob_len[2];
    unsigned char *payload;
    size_t payload_len;
    unsigned char small[100], big[BIG];
    int flip; /* which blob the next activation uses */
} bench_ctx;

typedef int (*bench_op)(bench_ctx *c);

typedef struct bench_row {
    const char *name;
    bench_op op;
    bench_op prepare;  /* untimed, before each run; may be NULL */
    long max_commands; /* the budget; -1 = none */
    long sdk_commands; /* the SDK's own HSM for the same case; -1 = not known */
} bench_row;

static int read_whole(const char *dir, const char *name, unsigned char **out, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/tpm-activation/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    unsigned char *buf = malloc(65536);
    size_t n = buf != NULL ? fread(buf, 1, 65536, f) : 0;
    fclose(f);
    if (buf == NULL || n == 0 || n == 65536) {
        free(buf);
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}

/* ---- the operations, each returning 0 on success -------------------------------------- */

static int sign(bench_ctx *c, HSM_CLIENT_HANDLE h, const unsigned char *data, size_t len)
{
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    int rc = c->tpm->hsm_client_sign_with_identity(h, data, len, &sig, &sig_len);
    free(sig);
    return rc != 0 || sig_len != 32;
}

static int op_create(bench_ctx *c)
{
    HSM_CLIENT_HANDLE h = c->tpm->hsm_client_tpm_create();
    if (h == NULL)
        return 1;
    c->tpm->hsm_client_tpm_destroy(h);
    return 0;
}

static int op_get_ek(bench_ctx *c)
{
    unsigned char *ek = NULL;
    size_t len = 0;
    int rc = c->tpm->hsm_client_get_ek(c->handle, &ek, &len);
    free(ek);
    return rc;
}

static int op_activate(bench_ctx *c)
{
    c->flip ^= 1;
    return c->tpm->hsm_client_activate_identity_key(c->handle, c->blob[c->flip],
                                                    c->blob_len[c->flip]);
}

static int op_sign_small(bench_ctx *c)
{
    return sign(c, c->handle, c->small, sizeof(c->small));
}

static int op_sign_big(bench_ctx *c)
{
    return sign(c, c->handle, c->big, sizeof(c->big));
}

/* A device that has never been provisioned: no identity key yet. */
static int prepare_unprovisioned(bench_ctx *c)
{
    (void)c;
    provhsm_err err = provhsm_tpm_clear_identity();
    return err != PROVHSM_OK && err != PROVHSM_E_NOT_FOUND;
}

/*
 * A factory-fresh TPM: no EK, SRK or identity key. The keys the next create makes are the
 * same (a primary key follows from its template and the hierarchy's seed), so the
 * fixture's blobs still fit.
 */
static int prepare_fresh(bench_ctx *c)
{
    const TPM2_HANDLE handles[] = {0x81010001, 0x81000001, 0x81000100};
    provhsm_tpm *tpm = NULL;
    int rc = 0;
    if (provhsm_tpm_connect(c->tcti, &tpm) != PROVHSM_OK)
        return 1;
    for (size_t i = 0; i < sizeof(handles) / sizeof(handles[0]) && rc == 0; i++) {
        ESYS_TR tr = ESYS_TR_NONE;
        provhsm_err err = provhsm_tpm_find_persistent(tpm, handles[i], &tr);
        if (err == PROVHSM_OK)
            err = provhsm_tpm_evict(tpm, &tr);
        rc = err != PROVHSM_OK && err != PROVHSM_E_NOT_FOUND;
    }
    provhsm_tpm_disconnect(tpm);
    return rc;
}

/* A device provisioned before: the identity key of an earlier provisioning is there. */
static int prepare_identity_present(bench_ctx *c)
{
    return c->tpm->hsm_client_activate_identity_key(c->handle, c->blob[1], c->blob_len[1]) != 0;
}

/* The SDK's flow: one signature (the SAS token for the provisioning service). */
static int op_provisioning(bench_ctx *c)
{
    unsigned char *ek = NULL, *srk = NULL;
    size_t ek_len = 0, srk_len = 0;
    int rc = 1;
    HSM_CLIENT_HANDLE h = c->tpm->hsm_client_tpm_create();
    if (h == NULL)
        return 1;
    if (c->tpm->hsm_client_get_ek(h, &ek, &ek_len) == 0 &&
        c->tpm->hsm_client_get_srk(h, &srk, &srk_len) == 0 &&
        c->tpm->hsm_client_activate_identity_key(h, c->blob[0], c->blob_len[0]) == 0 &&
        sign(c, h, c->payload, c->payload_len) == 0 &&
        c->tpm->hsm_client_activate_identity_key(h, c->blob[1], c->blob_len[1]) == 0)
        rc = 0;
    free(ek);
    free(srk);
    c->tpm->hsm_client_tpm_destroy(h);
    return rc;
}

/* Runs one row; prints it; 1 when a call failed or the command budget was exceeded. */
static int run_row(bench_ctx *c, const bench_row *row, int runs, double *samples)
{
    uint64_t min_cmds = UINT64_MAX, max_cmds = 0;
    for (int i = 0; i < runs; i++) {
        if (row->prepare != NULL && row->prepare(c) != 0) {
            printf("%-52s preparation failed\n", row->name);
            return 1;
        }
        uint64_t before = provhsm_tpm_commands_total();
        double t0 = bench_now_us();
        int rc = row->op(c);
        samples[i] = bench_now_us() - t0;
        uint64_t cmds = provhsm_tpm_commands_total() - before;
        if (rc != 0) {
            printf("%-52s FAILED (run %d)\n", row->name, i + 1);
            return 1;
        }
        if (cmds < min_cmds)
            min_cmds = cmds;
        if (cmds > max_cmds)
            max_cmds = cmds;
    }
    double median, p90;
    bench_stats(samples, runs, &median, &p90);
    char cmds[32], target[32], sdk[24];
    if (min_cmds == max_cmds)
        snprintf(cmds, sizeof(cmds), "%llu", (unsigned long long)max_cmds);
    else
        snprintf(cmds, sizeof(cmds), "%llu-%llu", (unsigned long long)min_cmds,
                 (unsigned long long)max_cmds);
    int over = row->max_commands >= 0 && max_cmds > (uint64_t)row->max_commands;
    if (row->max_commands >= 0)
        snprintf(target, sizeof(target), "<= %ld  %s", row->max_commands, over ? "FAIL" : "PASS");
    else
        snprintf(target, sizeof(target), "-");
    if (row->sdk_commands >= 0)
        snprintf(sdk, sizeof(sdk), "%ld", row->sdk_commands);
    else
        snprintf(sdk, sizeof(sdk), "-");
    printf("%-52s %10.0f %10.0f %9s %9s   %s\n", row->name, median, p90, cmds, sdk, target);
    return over;
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 50;
    int failed = 0;
    bench_ctx c;
    provhsm_test_swtpm swtpm;
    char path[512];

    memset(&c, 0, sizeof(c));
    if (runs < 1)
        runs = 1;
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "bench_tpm: swtpm is not installed\n");
        return 77;
    }
    /* the fixtures: $PROVHSM_FIXTURES, else next to this source file */
    if (getenv("PROVHSM_FIXTURES") == NULL) {
        snprintf(path, sizeof(path), "%s", __FILE__);
        char *slash = strrchr(path, '/');
        if (slash != NULL)
            snprintf(slash, sizeof(path) - (size_t)(slash - path), "/../tests/fixtures");
        else
            snprintf(path, sizeof(path), "../tests/fixtures");
        setenv("PROVHSM_FIXTURES", path, 1);
    }
    const char *fixtures = getenv("PROVHSM_FIXTURES");
    if (read_whole(fixtures, "blob1.bin", &c.blob[0], &c.blob_len[0]) != 0 ||
        read_whole(fixtures, "blob2.bin", &c.blob[1], &c.blob_len[1]) != 0 ||
        read_whole(fixtures, "payload.txt", &c.payload, &c.payload_len) != 0) {
        fprintf(stderr, "bench_tpm: cannot read the fixtures under %s (set PROVHSM_FIXTURES)\n",
                fixtures);
        return 1;
    }
    for (size_t i = 0; i < sizeof(c.small); i++)
        c.small[i] = (unsigned char)i;
    for (size_t i = 0; i < sizeof(c.big); i++)
        c.big[i] = (unsigned char)(i * 13);

    if (provhsm_test_swtpm_start(&swtpm, provhsm_test_fixture_swtpm_state()) != 0) {
        fprintf(stderr, "bench_tpm: cannot start swtpm\n");
        return 1;
    }
    snprintf(path, sizeof(path), "%s/provhsm.conf", swtpm.dir);
    FILE *f = fopen(path, "w");
    /* whatever the umask: a configuration others can write is refused */
    int config_ok = f != NULL && fclose(f) == 0 && chmod(path, 0644) == 0;
    setenv("PROVHSM_CONFIG", path, 1);
    setenv("PROVHSM_TCTI", swtpm.tcti, 1);
    setenv("PROVHSM_STORE", swtpm.dir, 1);

    c.tcti = swtpm.tcti;
    c.tpm = hsm_client_tpm_interface();
    if (!config_ok || hsm_client_tpm_init() != 0 || c.tpm == NULL ||
        (c.handle = c.tpm->hsm_client_tpm_create()) == NULL ||
        c.tpm->hsm_client_activate_identity_key(c.handle, c.blob[0], c.blob_len[0]) != 0 ||
        op_sign_big(&c) != 0) { /* warm-up: the input buffer size is read once */
        fprintf(stderr, "bench_tpm: cannot set up the TPM handle\n");
        provhsm_test_swtpm_stop(&swtpm);
        return 1;
    }

    const bench_row rows[] = {
        {"create (open, provisioned TPM)", op_create, NULL, 3, 6},
        {"get_endorsement_key", op_get_ek, NULL, 0, -1},
        {"activate_identity_key (replacing a key)", op_activate, NULL, 10, -1},
        {"sign_with_identity 100 B", op_sign_small, NULL, 1, 2},
        {"sign_with_identity 4 KB (HMAC sequence)", op_sign_big, NULL, -1, -1},
        {"whole provisioning, fresh TPM (no EK, SRK, key)", op_provisioning, prepare_fresh, 24,
         SDK_FRESH},
        {"whole provisioning, provisioned TPM (EK, SRK)", op_provisioning, prepare_unprovisioned,
         20, SDK_PROVISIONED},
        {"whole provisioning, identity key already there", op_provisioning,
         prepare_identity_present, -1, -1},
    };
    double *samples = malloc(sizeof(double) * (size_t)runs);
    if (samples == NULL)
        return 1;
    printf("TPM backend on swtpm (%s), %d runs per row\n", swtpm.tcti, runs);
    printf("whole provisioning = create, EK, SRK, activate, sign once, activate, destroy\n");
    printf("%-52s %10s %10s %9s %9s   %s\n", "operation", "median us", "p90 us", "commands",
           "SDK HSM", "command target");
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        failed |= run_row(&c, &rows[i], runs, samples);

    c.tpm->hsm_client_tpm_destroy(c.handle);
    hsm_client_tpm_deinit();
    provhsm_test_swtpm_stop(&swtpm);
    free(samples);
    free(c.blob[0]);
    free(c.blob[1]);
    free(c.payload);
    return failed;
}
