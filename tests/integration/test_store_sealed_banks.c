/*
 * The store key sealed to PCRs of a bank the TPM does not keep (issue 8). PolicyPCR leaves
 * out the PCRs a TPM has not allocated, so a key sealed to them never unseals: on a swtpm
 * whose SHA-384 bank was deallocated (tpm2_pcrallocate, then a TPM reset),
 *  - init --seal-to-tpm with seal_pcrs on that bank is refused, naming the PCRs, and
 *    makes no store;
 *  - reseal (current values, and --pcr-values) of a working store to that bank is refused,
 *    every file of the store unchanged, and the store still opens;
 *  - the TPM layer: provhsm_tpm_pcrs_unallocated names them, and PCR_Read of that bank is
 *    PROVHSM_E_NOT_FOUND (not "other PCRs than asked"); a read of more PCRs than one answer
 *    carries, with a PCR extended between its commands, gives the values as they are after.
 * Skipped (77) without swtpm or tpm2_pcrallocate.
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

#include "backend.h"
#include "hsm_client_data.h"
#include "provhsm/provhsm.h"
#include "provhsm/provhsm_store_key.h"
#include "swtpm_fixture.h"
#include "testutil.h"
#include "tpm_esys.h"

/* initialize_hsm_system and deinitialize_hsm_system: tests/common/sdk_hsm_system.c */

#define SYM_KEY_B64 "YmFuay1ub3QtYWxsb2NhdGVkLXN5bW1ldHJpYy1rZXk="
#define PCR16       (1u << 16)

static struct {
    provhsm_test_swtpm tpm;
    char dir[256];
    char config[300];
} env;

static void use_config(const char *store, const char *seal_pcrs)
{
    assert_int_equal(provhsm_test_config_use(
                         env.config, "[store]\npath = %s/%s\nseal_pcrs = %s\n[tpm]\ntcti = %s\n",
                         env.dir, store, seal_pcrs, env.tpm.tcti),
                     0);
}

static int group_setup(void **state)
{
    (void)state;
    memset(&env, 0, sizeof(env));
    if (provhsm_test_workdir_make(env.dir, sizeof(env.dir), "sealed-banks") != 0)
        return -1;
    snprintf(env.config, sizeof(env.config), "%s/provhsm.conf", env.dir);
    if (provhsm_test_swtpm_start(&env.tpm, NULL) != 0)
        return -1;
    /* SHA-256 kept, SHA-384 dropped; the allocation takes effect at the next TPM reset */
    char cmd[400];
    snprintf(cmd, sizeof(cmd),
             "TPM2TOOLS_TCTI='%s' tpm2_pcrallocate sha1:all+sha256:all+sha384:none >/dev/null",
             env.tpm.tcti);
    if (system(cmd) != 0) {
        fprintf(stderr, "tpm2_pcrallocate failed\n");
        return -1;
    }
    provhsm_test_swtpm_kill(&env.tpm);
    if (provhsm_test_swtpm_restart(&env.tpm) != 0)
        return -1;
    provhsm_test_log_capture();
    return initialize_hsm_system();
}

static int group_teardown(void **state)
{
    (void)state;
    deinitialize_hsm_system();
    provhsm_test_swtpm_stop(&env.tpm);
    provhsm_test_remove_tree(env.dir);
    return 0;
}

static char *read_symmetric(void)
{
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
    if (h == NULL)
        return NULL;
    char *key = k->hsm_client_get_symm_key(h);
    k->hsm_client_key_destroy(h);
    return key;
}

/* The bytes of a file of the store, as hex text, for before/after comparisons. */
static char *file_hex(const char *store, const char *name)
{
    char path[600];
    uint8_t *buf = NULL;
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/%s/%s", env.dir, store, name);
    assert_int_equal(provhsm_test_read_file(path, &buf, &len), 0);
    char *hex = calloc(1, 2 * len + 1);
    assert_non_null(hex);
    for (size_t i = 0; i < len; i++)
        snprintf(hex + 2 * i, 3, "%02x", buf[i]);
    free(buf);
    return hex;
}

static void test_tpm_layer_names_the_missing_bank(void **state)
{
    (void)state;
    provhsm_tpm *tpm = NULL;
    uint32_t missing = 0xffffffffu;
    TPM2B_DIGEST values[24];
    assert_int_equal(provhsm_tpm_connect(env.tpm.tcti, &tpm), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_pcrs_unallocated(tpm, TPM2_ALG_SHA256, PCR16 | 1u, &missing),
                     PROVHSM_OK);
    assert_int_equal(missing, 0);
    assert_int_equal(provhsm_tpm_pcrs_unallocated(tpm, TPM2_ALG_SHA384, PCR16 | 1u, &missing),
                     PROVHSM_OK);
    assert_int_equal(missing, PCR16 | 1u);
    provhsm_test_log_clear();
    assert_int_equal(provhsm_tpm_pcr_read(tpm, TPM2_ALG_SHA384, PCR16, values),
                     PROVHSM_E_NOT_FOUND);
    assert_true(provhsm_test_log_seen("not allocated"));
    assert_int_equal(provhsm_tpm_pcr_read(tpm, TPM2_ALG_SHA256, PCR16, values), PROVHSM_OK);
    assert_int_equal(values[16].size, 32);
    provhsm_tpm_disconnect(tpm);
}

/* Extends PCR 3 from a connection of its own before the second PCR_Read, once. */
typedef struct extend_between {
    const char *tcti;
    int pcr_reads, extended;
} extend_between;

static void extend_before_second_read(uint32_t command_code, void *ctx)
{
    static const uint8_t digest[32] = {0xe7, 0x3e, 0x4d};
    extend_between *e = ctx;
    if (command_code != TPM2_CC_PCR_Read || e->extended || ++e->pcr_reads != 2)
        return;
    e->extended = 1; /* before the extend: its own commands come through here too */
    provhsm_tpm *other = NULL;
    if (provhsm_tpm_connect(e->tcti, &other) == PROVHSM_OK &&
        provhsm_tpm_pcr_extend_sha256(other, 3, digest) == PROVHSM_OK)
        e->extended = 2;
    provhsm_tpm_disconnect(other);
}

/*
 * 17 PCRs take three PCR_Read commands; PCR 3 (read by the first) extended before the
 * second: the values are read again, so PCR 3's is the one the TPM holds afterwards.
 */
static void test_pcr_read_values_belong_together(void **state)
{
    (void)state;
    provhsm_tpm *tpm = NULL;
    TPM2B_DIGEST values[24], after[24];
    extend_between e = {.tcti = env.tpm.tcti};
    assert_int_equal(provhsm_tpm_connect(env.tpm.tcti, &tpm), PROVHSM_OK);
    memset(values, 0, sizeof(values));
    provhsm_tpm_test_before_command(extend_before_second_read, &e);
    provhsm_err err = provhsm_tpm_pcr_read(tpm, TPM2_ALG_SHA256, 0x1ffffu, values);
    provhsm_tpm_test_before_command(NULL, NULL);
    assert_int_equal(err, PROVHSM_OK);
    assert_int_equal(e.extended, 2);
    assert_int_equal(provhsm_tpm_pcr_read(tpm, TPM2_ALG_SHA256, 0x1ffffu, after), PROVHSM_OK);
    for (unsigned pcr = 0; pcr < 17; pcr++) {
        assert_int_equal(values[pcr].size, 32);
        if (memcmp(values[pcr].buffer, after[pcr].buffer, 32) != 0)
            fail_msg("PCR %u: the value read is not the one the TPM holds", pcr);
    }
    provhsm_tpm_disconnect(tpm);
}

static void test_init_on_a_missing_bank_is_refused(void **state)
{
    (void)state;
    char path[400];
    struct stat sb;
    use_config("store-384", "sha384:16");
    provhsm_test_log_clear();
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_E_CONFIG);
    assert_true(provhsm_test_log_seen("does not keep PCRs 16"));
    snprintf(path, sizeof(path), "%s/store-384/store.meta", env.dir);
    assert_int_not_equal(stat(path, &sb), 0);
    snprintf(path, sizeof(path), "%s/store-384/store.sealed", env.dir);
    assert_int_not_equal(stat(path, &sb), 0);
}

static void test_reseal_to_a_missing_bank_is_refused(void **state)
{
    (void)state;
    static const char values_384[] = "sha384:16=000000000000000000000000000000000000000000000000"
                                     "000000000000000000000000000000000000000000000000";
    use_config("store-256", "sha256:16");
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    assert_int_equal(provhsm_symmetric_set("bank-device", SYM_KEY_B64), PROVHSM_OK);
    char *before = file_hex("store-256", "store.sealed");

    use_config("store-256", "sha384:16");
    provhsm_test_log_clear();
    assert_int_equal(provhsm_store_reseal(0), PROVHSM_E_CONFIG);
    assert_true(provhsm_test_log_seen("does not keep PCRs 16"));
    provhsm_test_log_clear();
    assert_int_equal(provhsm_store_reseal_to(values_384), PROVHSM_E_CONFIG);
    assert_true(provhsm_test_log_seen("does not keep PCRs 16"));
    assert_int_equal(provhsm_store_rekey("tpm"), PROVHSM_E_CONFIG);

    char *after = file_hex("store-256", "store.sealed");
    assert_string_equal(before, after);
    free(before);
    free(after);
    char *key = read_symmetric();
    assert_non_null(key);
    assert_string_equal(key, SYM_KEY_B64);
    free(key);
}

int main(void)
{
    if (!provhsm_test_swtpm_available() ||
        !provhsm_test_programs_available("tpm2_pcrallocate", (const char *)NULL)) {
        printf("# skipped: swtpm or tpm2_pcrallocate is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tpm_layer_names_the_missing_bank),
        cmocka_unit_test(test_pcr_read_values_belong_together),
        cmocka_unit_test(test_init_on_a_missing_bank_is_refused),
        cmocka_unit_test(test_reseal_to_a_missing_bank_is_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
