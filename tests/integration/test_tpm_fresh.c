/*
 * TPM backend on a factory-fresh swtpm (empty state: no EK, no SRK). The first open
 * creates both from their templates and persists them at the well-known handles; the
 * keys are checked against keys this test derives itself from the TCG EK template and
 * the SDK's SRK template (a primary key is a function of the template and the hierarchy
 * seed); a second open creates nothing and costs at most three TPM commands. A whole
 * provisioning as the SDK drives it (open, EK, SRK, activate, sign, activate) costs at
 * most 24 TPM commands on a fresh TPM and 20 on one with EK and SRK, and tpm2-tss prints
 * nothing to stderr on the way (no command is sent that is expected to fail). With owner
 * and endorsement authorisations set on the TPM, open fails cleanly without them and
 * succeeds with them read from a file and from an environment variable.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "backend.h"
#include "dps_service.h"
#include "swtpm_fixture.h"
#include "tpm_esys.h"

static const provhsm_backend *const be = &provhsm_backend_tpm;

static const uint8_t tcg_ek_policy[32] = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};

typedef struct fresh {
    provhsm_test_swtpm swtpm;
    provhsm_config cfg;
} fresh;

static int setup(void **state)
{
    static fresh f;
    memset(&f, 0, sizeof(f));
    if (provhsm_test_swtpm_start(&f.swtpm, NULL) != 0)
        return -1;
    provhsm_test_tpm_config(&f.cfg, f.swtpm.tcti);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fresh *f = *state;
    provhsm_test_swtpm_stop(&f->swtpm);
    return 0;
}

/* The key a CreatePrimary with this template gives, marshaled; the object is flushed. */
static void derive_primary(const char *tcti, ESYS_TR hierarchy, const TPM2B_PUBLIC *tmpl,
                           uint8_t **out, size_t *len)
{
    provhsm_tpm *tpm = NULL;
    ESYS_TR tr = ESYS_TR_NONE;
    TPM2B_PUBLIC *pub = NULL;
    assert_int_equal(provhsm_tpm_connect(tcti, &tpm), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_create_primary(tpm, hierarchy, tmpl, &tr, &pub), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_marshal_public(pub, out, len), PROVHSM_OK);
    provhsm_tpm_flush(tpm, &tr);
    Esys_Free(pub);
    provhsm_tpm_disconnect(tpm);
}

static void storage_template(TPM2B_PUBLIC *t, TPMA_OBJECT attrs)
{
    memset(t, 0, sizeof(*t));
    t->publicArea.type = TPM2_ALG_RSA;
    t->publicArea.nameAlg = TPM2_ALG_SHA256;
    t->publicArea.objectAttributes = attrs;
    t->publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
    t->publicArea.parameters.rsaDetail.symmetric.keyBits.aes = 128;
    t->publicArea.parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
    t->publicArea.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
    t->publicArea.parameters.rsaDetail.keyBits = 2048;
}

static void get_keys(void *st, uint8_t **ek, size_t *ek_len, uint8_t **srk, size_t *srk_len)
{
    assert_int_equal(be->tpm_endorsement_key(st, ek, ek_len), PROVHSM_OK);
    assert_int_equal(be->tpm_storage_root_key(st, srk, srk_len), PROVHSM_OK);
}

/* (b) EK and SRK get created and persisted; a second open creates nothing. */
static void test_creates_ek_and_srk_once(void **state)
{
    fresh *f = *state;
    provhsm_test_tpm_counts counts;
    assert_int_equal(provhsm_test_tpm_counts_get(f->swtpm.tcti, &counts), 0);
    assert_int_equal(counts.persistent, 0);

    uint64_t before = provhsm_tpm_commands_total();
    void *st = NULL;
    assert_int_equal(be->open(&f->cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    printf("# open on an empty TPM (creates EK and SRK): %llu TPM commands\n",
           (unsigned long long)(provhsm_tpm_commands_total() - before));
    uint8_t *ek = NULL, *srk = NULL, *ek2 = NULL, *srk2 = NULL;
    size_t ek_len, srk_len, ek2_len, srk2_len;
    get_keys(st, &ek, &ek_len, &srk, &srk_len);
    be->close(st);

    assert_int_equal(provhsm_test_tpm_counts_get(f->swtpm.tcti, &counts), 0);
    assert_int_equal(counts.persistent, 2);
    assert_int_equal(counts.transient, 0);
    assert_int_equal(counts.sessions, 0);

    /* the EK is the TCG template's key: RSA 2048, 256 zero bytes of unique */
    TPM2B_PUBLIC tmpl;
    storage_template(&tmpl, TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_ADMINWITHPOLICY |
                                TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT);
    tmpl.publicArea.authPolicy.size = 32;
    memcpy(tmpl.publicArea.authPolicy.buffer, tcg_ek_policy, 32);
    tmpl.publicArea.unique.rsa.size = 256;
    uint8_t *expect = NULL;
    size_t expect_len = 0;
    derive_primary(f->swtpm.tcti, ESYS_TR_RH_ENDORSEMENT, &tmpl, &expect, &expect_len);
    assert_int_equal(ek_len, expect_len);
    assert_memory_equal(ek, expect, ek_len);
    free(expect);

    /* the SRK is the SDK's template's key (empty unique) */
    storage_template(&tmpl, TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT);
    derive_primary(f->swtpm.tcti, ESYS_TR_RH_OWNER, &tmpl, &expect, &expect_len);
    assert_int_equal(srk_len, expect_len);
    assert_memory_equal(srk, expect, srk_len);
    free(expect);

    /* second open: the same keys, found rather than made */
    before = provhsm_tpm_commands_total();
    assert_int_equal(be->open(&f->cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    uint64_t cost = provhsm_tpm_commands_total() - before;
    printf("# second open: %llu TPM commands\n", (unsigned long long)cost);
    assert_true(cost <= 3);
    get_keys(st, &ek2, &ek2_len, &srk2, &srk2_len);
    assert_int_equal(ek2_len, ek_len);
    assert_memory_equal(ek2, ek, ek_len);
    assert_int_equal(srk2_len, srk_len);
    assert_memory_equal(srk2, srk, srk_len);
    be->close(st);
    assert_int_equal(provhsm_test_tpm_counts_get(f->swtpm.tcti, &counts), 0);
    assert_int_equal(counts.persistent, 2);
    free(ek);
    free(srk);
    free(ek2);
    free(srk2);
}

/* Everything written to fd 2 between stderr_capture_start() and _stop(). */
typedef struct stderr_capture {
    int saved;
    FILE *file;
} stderr_capture;

static void stderr_capture_start(stderr_capture *c)
{
    fflush(stderr);
    c->file = tmpfile();
    assert_non_null(c->file);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_true(dup2(fileno(c->file), STDERR_FILENO) >= 0);
}

/* Restores fd 2; returns what was written (malloc'd, NUL-terminated). */
static char *stderr_capture_stop(stderr_capture *c)
{
    fflush(stderr);
    assert_true(dup2(c->saved, STDERR_FILENO) >= 0);
    close(c->saved);
    long len = ftell(c->file);
    assert_true(len >= 0);
    char *text = calloc(1, (size_t)len + 1);
    assert_non_null(text);
    rewind(c->file);
    assert_int_equal(fread(text, 1, (size_t)len, c->file), (size_t)len);
    fclose(c->file);
    return text;
}

/* activate_identity_key with a service-made blob for a new random key (kept in key). */
static uint64_t activate_new_key(void *st, uint8_t key[32])
{
    uint8_t *ek = NULL, *srk = NULL, *blob = NULL;
    size_t ek_len, srk_len, blob_len = 0;
    get_keys(st, &ek, &ek_len, &srk, &srk_len); /* served from the state: no command */
    assert_int_equal(RAND_bytes(key, 32), 1);
    assert_int_equal(
        provhsm_test_dps_make_blob(ek, ek_len, srk, srk_len, key, 32, &blob, &blob_len), 0);
    uint64_t before = provhsm_tpm_commands_total();
    assert_int_equal(be->tpm_activate(st, blob, blob_len), PROVHSM_OK);
    uint64_t cost = provhsm_tpm_commands_total() - before;
    free(ek);
    free(srk);
    free(blob);
    return cost;
}

/*
 * The SDK's provisioning through the TPM table: create, EK, SRK, activate (the 401's
 * key), sign the SAS string once, activate (the assignment's key), destroy. Returns its
 * TPM commands; the signature is checked against OpenSSL.
 */
static uint64_t sdk_provisioning(const provhsm_config *cfg)
{
    static const uint8_t sas[] = "0ne00ABC123%2fregistrations%2fdevice\n1767225600";
    uint8_t key[32], want[32];
    uint8_t *sig = NULL;
    size_t sig_len = 0, want_len = 0;
    void *st = NULL;
    uint64_t before = provhsm_tpm_commands_total();
    assert_int_equal(be->open(cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    uint64_t open_cost = provhsm_tpm_commands_total() - before;
    uint64_t first = activate_new_key(st, key);
    uint64_t sign_before = provhsm_tpm_commands_total();
    assert_int_equal(be->tpm_sign(st, sas, sizeof(sas) - 1, &sig, &sig_len), PROVHSM_OK);
    uint64_t sign_cost = provhsm_tpm_commands_total() - sign_before;
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, 32, sas, sizeof(sas) - 1,
                              want, sizeof(want), &want_len));
    assert_int_equal(sig_len, 32);
    assert_memory_equal(sig, want, 32);
    free(sig);
    uint64_t second = activate_new_key(st, key);
    be->close(st);
    uint64_t total = provhsm_tpm_commands_total() - before;
    printf("# provisioning: open %llu + activate %llu + sign %llu + activate %llu = %llu TPM "
           "commands\n",
           (unsigned long long)open_cost, (unsigned long long)first, (unsigned long long)sign_cost,
           (unsigned long long)second, (unsigned long long)total);
    return total;
}

/* Evicts the identity key, as on a device whose EK and SRK exist but was never provisioned. */
static void remove_identity(const char *tcti)
{
    provhsm_tpm *tpm = NULL;
    ESYS_TR identity = ESYS_TR_NONE;
    assert_int_equal(provhsm_tpm_connect(tcti, &tpm), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_find_persistent(tpm, 0x81000100, &identity), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_evict(tpm, &identity), PROVHSM_OK);
    provhsm_tpm_disconnect(tpm);
}

/*
 * (issue 6, item 10) a whole provisioning on a fresh TPM: at most 24 TPM commands (the
 * SDK's own HSM: 32) and not one line from tpm2-tss on stderr; on a TPM that has EK and
 * SRK but no identity key: at most 20 (the SDK: 26), quiet too.
 */
static void test_provisioning_quiet_and_within_budget(void **state)
{
    fresh *f = *state;
    stderr_capture cap;

    stderr_capture_start(&cap);
    uint64_t fresh_cost = sdk_provisioning(&f->cfg);
    char *printed = stderr_capture_stop(&cap);
    if (strstr(printed, "WARNING") != NULL || strstr(printed, "ERROR") != NULL)
        fail_msg("tpm2-tss printed on a fresh provisioning:\n%s", printed);
    free(printed);
    assert_true(fresh_cost <= 24);

    remove_identity(f->swtpm.tcti);
    stderr_capture_start(&cap);
    uint64_t provisioned_cost = sdk_provisioning(&f->cfg);
    printed = stderr_capture_stop(&cap);
    if (strstr(printed, "WARNING") != NULL || strstr(printed, "ERROR") != NULL)
        fail_msg("tpm2-tss printed on a provisioning with EK and SRK present:\n%s", printed);
    free(printed);
    assert_true(provisioned_cost <= 20);

    provhsm_test_tpm_counts counts;
    assert_int_equal(provhsm_test_tpm_counts_get(f->swtpm.tcti, &counts), 0);
    assert_int_equal(counts.persistent, 3);
    assert_int_equal(counts.transient, 0);
    assert_int_equal(counts.sessions, 0);
}

static int run(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return rc;
}

/* Owner and endorsement authorisations: required to create, read from file and env. */
static void test_hierarchy_authorisations(void **state)
{
    fresh *f = *state;
    char cmd[1024], auth_file[512];
    if (!provhsm_test_programs_available("tpm2_changeauth", NULL))
        skip();
    setenv("TPM2TOOLS_TCTI", f->swtpm.tcti, 1);
    snprintf(cmd, sizeof(cmd),
             "tpm2_changeauth -c owner ownerpass >/dev/null && "
             "tpm2_changeauth -c endorsement hex:0102fe >/dev/null");
    assert_int_equal(run(cmd), 0);

    /* without the values, creation fails cleanly and leaves nothing behind */
    void *st = NULL;
    assert_int_equal(be->open(&f->cfg, PROVHSM_KIND_TPM, &st), PROVHSM_E_TPM);
    assert_null(st);
    provhsm_test_tpm_counts counts;
    assert_int_equal(provhsm_test_tpm_counts_get(f->swtpm.tcti, &counts), 0);
    assert_int_equal(counts.persistent, 0);
    assert_int_equal(counts.transient, 0);
    assert_int_equal(counts.sessions, 0);

    /* a wrong endorsement value (text "hex:0102ff") is refused too */
    provhsm_config cfg = f->cfg;
    snprintf(auth_file, sizeof(auth_file), "%s/owner.auth", f->swtpm.dir);
    FILE *fp = fopen(auth_file, "w");
    assert_non_null(fp);
    fputs("ownerpass\n", fp);
    fclose(fp);
    snprintf(cfg.owner_auth_file, sizeof(cfg.owner_auth_file), "%s", auth_file);
    /* an authorisation file others can read is refused before any TPM command */
    assert_int_equal(chmod(auth_file, 0644), 0);
    assert_int_equal(be->open(&cfg, PROVHSM_KIND_TPM, &st), PROVHSM_E_PERMISSION);
    assert_int_equal(chmod(auth_file, 0600), 0);
    snprintf(cfg.endorsement_auth_env, sizeof(cfg.endorsement_auth_env), "PROVHSM_TEST_EH_AUTH");
    setenv("PROVHSM_TEST_EH_AUTH", "hex:0102ff", 1);
    assert_int_equal(be->open(&cfg, PROVHSM_KIND_TPM, &st), PROVHSM_E_TPM);

    /* an unset variable is a configuration error */
    unsetenv("PROVHSM_TEST_EH_AUTH");
    assert_int_equal(be->open(&cfg, PROVHSM_KIND_TPM, &st), PROVHSM_E_CONFIG);

    setenv("PROVHSM_TEST_EH_AUTH", "hex:0102FE", 1);
    assert_int_equal(be->open(&cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    be->close(st);
    assert_int_equal(provhsm_test_tpm_counts_get(f->swtpm.tcti, &counts), 0);
    assert_int_equal(counts.persistent, 2);
    assert_int_equal(counts.transient, 0);

    /* once they exist, no authorisation is needed to use them */
    assert_int_equal(be->open(&f->cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    be->close(st);
    unsetenv("PROVHSM_TEST_EH_AUTH");
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    /* tpm2-tss's default level, whatever the environment says: the quiet test must see
       every WARNING it would print for an application (read once, at its first line) */
    setenv("TSS2_LOG", "all+warning", 1);
    provhsm_test_log_capture();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_creates_ek_and_srk_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_provisioning_quiet_and_within_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hierarchy_authorisations, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
