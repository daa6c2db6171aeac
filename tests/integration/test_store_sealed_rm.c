/*
 * The store key sealed to the TPM (issue 8) behind a resource manager: tpm2-abrmd on a
 * private swtpm, standing in for the default TCTI, the kernel's /dev/tpmrm0, which this
 * machine may not have. Closing a connection through either releases the objects loaded
 * on it, so a create that closes the connection sends no FlushContext:
 *  - a create on a blob costs Load and Unseal, 2 TPM commands, create after create, and
 *    leaves no connection open;
 *  - bound to PCRs: StartAuthSession and PolicyPCR more, still no FlushContext; with an
 *    update pending (reseal --pcr-values), PolicyOR more, before and after the update;
 *  - a TPM table handle keeping the connection open: the object is flushed (3 commands),
 *    since it would stay on the connection, which holds only so many (tpm2-abrmd's
 *    limit per connection, 27 by default; 3 for the kernel's), and more creates than that
 *    all succeed.
 * Skipped (77) without tpm2-abrmd, dbus-daemon or the tabrmd TCTI.
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

#include "abrmd_fixture.h"
#include <openssl/evp.h>

#include "backend.h"
#include "encoding.h"
#include "hsm_client_data.h"
#include "provhsm/provhsm.h"
#include "provhsm/provhsm_store_key.h"
#include "swtpm_fixture.h"
#include "testutil.h"
#include "tpm_esys.h"

/* initialize_hsm_system and deinitialize_hsm_system: tests/common/sdk_hsm_system.c */

#define SYM_KEY_B64 "cmVzb3VyY2UtbWFuYWdlci1zeW1tZXRyaWMta2V5LTM="

/* More creates than tpm2-abrmd keeps objects for one connection (27 by default). */
#define CREATES 40

static struct {
    provhsm_test_swtpm tpm;
    provhsm_test_abrmd abrmd;
    char dir[256];
    char config[300];
} env;

static void use_config(const char *store, const char *store_lines)
{
    assert_int_equal(provhsm_test_config_use(env.config,
                                             "[store]\npath = %s/%s\n%s[tpm]\ntcti = %s\n", env.dir,
                                             store, store_lines, env.abrmd.tcti),
                     0);
}

static int group_setup(void **state)
{
    (void)state;
    memset(&env, 0, sizeof(env));
    if (provhsm_test_workdir_make(env.dir, sizeof(env.dir), "sealed-rm") != 0)
        return -1;
    snprintf(env.config, sizeof(env.config), "%s/provhsm.conf", env.dir);
    char why[512] = "";
    if (provhsm_test_swtpm_start(&env.tpm, NULL) != 0)
        return -1;
    if (provhsm_test_abrmd_start(&env.abrmd, env.dir, env.tpm.tcti, why, sizeof(why)) != 0) {
        fprintf(stderr, "tpm2-abrmd: %s\n", why);
        return -1;
    }
    if (!provhsm_tcti_releases_on_close(env.abrmd.tcti)) {
        fprintf(stderr, "\"%s\" is not known as a resource manager\n", env.abrmd.tcti);
        return -1;
    }
    return initialize_hsm_system();
}

static int group_teardown(void **state)
{
    (void)state;
    deinitialize_hsm_system();
    provhsm_test_abrmd_stop(&env.abrmd);
    provhsm_test_swtpm_stop(&env.tpm);
    provhsm_test_remove_tree(env.dir);
    return 0;
}

/* Create + get + destroy through the SDK's symmetric key table: the TPM commands it cost. */
static uint64_t symmetric_create_cost(void)
{
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    uint64_t before = provhsm_tpm_commands_total();
    HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
    assert_non_null(h);
    char *key = k->hsm_client_get_symm_key(h);
    assert_non_null(key);
    assert_string_equal(key, SYM_KEY_B64);
    free(key);
    k->hsm_client_key_destroy(h);
    return provhsm_tpm_commands_total() - before;
}

/* CREATES creates, each costing `expected` commands (all of them must work). */
static void creates_cost(uint64_t expected, unsigned connections_after, const char *what)
{
    for (int i = 0; i < CREATES; i++) {
        uint64_t commands = symmetric_create_cost();
        if (commands != expected)
            fail_msg("create %d of %d %s: %llu TPM commands, not %llu", i + 1, CREATES, what,
                     (unsigned long long)commands, (unsigned long long)expected);
        assert_int_equal(provhsm_tpm_test_open_connections(), connections_after);
    }
    printf("# %d creates %s: %llu TPM commands each\n", CREATES, what,
           (unsigned long long)expected);
}

/* The TPM backend's open makes the EK and SRK: a provisioned TPM, through tpm2-abrmd. */
static void test_provision_and_init_sealed(void **state)
{
    (void)state;
    provhsm_config cfg;
    void *table = NULL;
    provhsm_test_tpm_config(&cfg, env.abrmd.tcti);
    assert_int_equal(provhsm_backend_tpm.open(&cfg, PROVHSM_KIND_TPM, &table), PROVHSM_OK);
    provhsm_backend_tpm.close(table);

    use_config("store", "");
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    assert_int_equal(provhsm_symmetric_set("rm-device", SYM_KEY_B64), PROVHSM_OK);
    use_config("store-pcrs", "seal_pcrs = sha256:16\n");
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    assert_int_equal(provhsm_symmetric_set("rm-device", SYM_KEY_B64), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_test_open_connections(), 0);
}

/* Alone, a create closes its connection: Load, Unseal; the manager drops the object. */
static void test_create_costs_load_and_unseal(void **state)
{
    (void)state;
    use_config("store", "");
    creates_cost(2, 0, "on a blob, through tpm2-abrmd");
}

/* Bound to PCRs: Load, StartAuthSession, PolicyPCR, Unseal (the session is single use). */
static void test_pcr_bound_create(void **state)
{
    (void)state;
    use_config("store-pcrs", "seal_pcrs = sha256:16\n");
    creates_cost(4, 0, "on a blob bound to PCR 16, through tpm2-abrmd");
}

/* "sha256:16=<hex>": the value PCR 16 (read through tpm) will hold after extending `digest`. */
static void pcr16_after_extend(provhsm_tpm *tpm, const uint8_t digest[32], char *out, size_t len)
{
    TPM2B_DIGEST values[24];
    uint8_t after[32];
    unsigned int after_len = 0;
    assert_int_equal(provhsm_tpm_pcr_read(tpm, TPM2_ALG_SHA256, 1u << 16, values), PROVHSM_OK);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_non_null(md);
    assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
    assert_int_equal(EVP_DigestUpdate(md, values[16].buffer, values[16].size), 1);
    assert_int_equal(EVP_DigestUpdate(md, digest, 32), 1);
    assert_int_equal(EVP_DigestFinal_ex(md, after, &after_len), 1);
    EVP_MD_CTX_free(md);
    char *hex = provhsm_hex_encode(after, after_len, 0);
    assert_non_null(hex);
    snprintf(out, len, "sha256:16=%s", hex);
    free(hex);
}

/* A pending update (reseal --pcr-values: either set of values): PolicyOR more, 5 commands. */
static void test_pending_update_create(void **state)
{
    (void)state;
    static const uint8_t update[32] = {0x0d, 0xa7, 0xe5};
    provhsm_tpm *tpm = NULL;
    char values[120];
    use_config("store-pcrs", "seal_pcrs = sha256:16\n");
    /* a connection of the test's own (counted as open below), not the library's */
    assert_int_equal(provhsm_tpm_connect(env.abrmd.tcti, &tpm), PROVHSM_OK);
    pcr16_after_extend(tpm, update, values, sizeof(values));
    assert_int_equal(provhsm_store_reseal_to(values), PROVHSM_OK);
    creates_cost(5, 1, "with an update pending (PolicyOR), through tpm2-abrmd");
    assert_int_equal(provhsm_tpm_pcr_extend_sha256(tpm, 16, update), PROVHSM_OK);
    creates_cost(5, 1, "after that update (the other branch), through tpm2-abrmd");
    provhsm_tpm_disconnect(tpm);
}

/* A TPM table handle keeps the connection open: the object is flushed after each create. */
static void test_open_connection_is_left_empty(void **state)
{
    (void)state;
    provhsm_config cfg;
    void *table = NULL;
    provhsm_test_tpm_config(&cfg, env.abrmd.tcti);
    assert_int_equal(provhsm_backend_tpm.open(&cfg, PROVHSM_KIND_TPM, &table), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_test_open_connections(), 1);
    use_config("store", "");
    creates_cost(3, 1, "beside an open TPM table handle, through tpm2-abrmd");
    provhsm_backend_tpm.close(table);
    assert_int_equal(provhsm_tpm_test_open_connections(), 0);
    /* and alone again: no flush */
    assert_int_equal(symmetric_create_cost(), 2);
}

int main(void)
{
    const char *missing = provhsm_test_abrmd_missing();
    if (!provhsm_test_swtpm_available())
        missing = "swtpm is not installed";
    if (missing != NULL) {
        printf("# skipped: %s\n", missing);
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_provision_and_init_sealed),
        cmocka_unit_test(test_create_costs_load_and_unseal),
        cmocka_unit_test(test_pcr_bound_create),
        cmocka_unit_test(test_pending_update_create),
        cmocka_unit_test(test_open_connection_is_left_empty),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
