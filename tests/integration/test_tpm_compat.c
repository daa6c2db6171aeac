/*
 * Compatibility with a device provisioned before provhsm: tpm2-tools (not our code)
 * creates the EK the way the SDK's own TPM HSM does (TCG EK attributes and policy, but
 * an EMPTY unique, so not the TCG template's key), the SDK's SRK, and an HMAC identity
 * key imported from known bytes, and persists them at the well-known handles. provhsm
 * must use those keys as they are: the same EK bytes (so the same registration id),
 * nothing created, and signatures that match HMAC-SHA256 under the known key.
 * Skips (77) without swtpm or tpm2-tools.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <tss2/tss2_mu.h>

#include "backend.h"
#include "swtpm_fixture.h"
#include "testutil.h"
#include "tpm_esys.h"

static const provhsm_backend *const be = &provhsm_backend_tpm;

static const uint8_t tcg_ek_policy[32] = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};

static struct {
    provhsm_test_swtpm swtpm;
    uint8_t key[32];
} C;

static int write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return -1;
    int ok = fwrite(data, 1, len, f) == len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static int prepare(void)
{
    char path[512], cmd[4096];
    if (provhsm_test_swtpm_start(&C.swtpm, NULL) != 0)
        return -1;
    if (RAND_bytes(C.key, sizeof(C.key)) != 1)
        return -1;
    snprintf(path, sizeof(path), "%s/ekpolicy.bin", C.swtpm.dir);
    if (write_file(path, tcg_ek_policy, sizeof(tcg_ek_policy)) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/hmac.key", C.swtpm.dir);
    if (write_file(path, C.key, sizeof(C.key)) != 0)
        return -1;

    /* the tools leave transient objects behind without a resource manager: flush them */
    snprintf(cmd, sizeof(cmd),
             "set -e; cd '%s'; export TPM2TOOLS_TCTI='%s';"
             "tpm2_createprimary -Q -C e -g sha256 -G rsa2048:aes128cfb"
             " -a 'fixedtpm|fixedparent|sensitivedataorigin|adminwithpolicy|restricted|decrypt'"
             " -L ekpolicy.bin -c ek.ctx;"
             "tpm2_evictcontrol -Q -C o -c ek.ctx 0x81010001; tpm2_flushcontext -t;"
             "tpm2_createprimary -Q -C o -g sha256 -G rsa2048:aes128cfb"
             " -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt'"
             " -c srk.ctx;"
             "tpm2_evictcontrol -Q -C o -c srk.ctx 0x81000001; tpm2_flushcontext -t;"
             "tpm2_import -Q -C 0x81000001 -G hmac -g sha256 -i hmac.key -u key.pub -r key.priv;"
             "tpm2_load -Q -C 0x81000001 -u key.pub -r key.priv -c key.ctx;"
             "tpm2_evictcontrol -Q -C o -c key.ctx 0x81000100; tpm2_flushcontext -t;"
             "tpm2_readpublic -Q -c 0x81010001 -o ek.tpm2b;"
             "tpm2_readpublic -Q -c 0x81000001 -o srk.tpm2b",
             C.swtpm.dir, C.swtpm.tcti);
    int rc = system(cmd);
    if (rc != 0) {
        fprintf(stderr, "tpm2-tools provisioning failed (%d)\n", rc);
        return -1;
    }
    return 0;
}

static int teardown(void **unused)
{
    (void)unused;
    provhsm_test_swtpm_stop(&C.swtpm);
    return 0;
}

/* A setup that fails is not followed by the teardown: clean up here. */
static int setup(void **unused)
{
    if (prepare() == 0)
        return 0;
    (void)teardown(unused);
    return -1;
}

static void read_tool_output(const char *name, uint8_t **buf, size_t *len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", C.swtpm.dir, name);
    assert_int_equal(provhsm_test_read_file(path, buf, len), 0);
}

/* (e) provhsm uses the tools' keys unchanged and signs with the imported key. */
static void test_uses_existing_keys(void **unused)
{
    (void)unused;
    provhsm_config cfg;
    provhsm_test_tpm_config(&cfg, C.swtpm.tcti);
    provhsm_test_tpm_counts before;
    assert_int_equal(provhsm_test_tpm_counts_get(C.swtpm.tcti, &before), 0);
    assert_int_equal(before.persistent, 3);

    uint64_t commands = provhsm_tpm_commands_total();
    void *st = NULL;
    assert_int_equal(be->open(&cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    assert_true(provhsm_tpm_commands_total() - commands <= 3); /* nothing created */

    uint8_t *ek = NULL, *srk = NULL, *tool_ek = NULL, *tool_srk = NULL;
    size_t ek_len, srk_len, tool_ek_len, tool_srk_len;
    assert_int_equal(be->tpm_endorsement_key(st, &ek, &ek_len), PROVHSM_OK);
    assert_int_equal(be->tpm_storage_root_key(st, &srk, &srk_len), PROVHSM_OK);
    read_tool_output("ek.tpm2b", &tool_ek, &tool_ek_len);
    read_tool_output("srk.tpm2b", &tool_srk, &tool_srk_len);
    assert_int_equal(ek_len, tool_ek_len);
    assert_memory_equal(ek, tool_ek, ek_len);
    assert_int_equal(srk_len, tool_srk_len);
    assert_memory_equal(srk, tool_srk, srk_len);

    /* the registration id the device had before: base32(SHA-256(that EK)) */
    char *regid = provhsm_test_registration_id(ek, ek_len);
    char *tool_regid = provhsm_test_registration_id(tool_ek, tool_ek_len);
    assert_non_null(regid);
    assert_non_null(tool_regid);
    assert_string_equal(regid, tool_regid);
    printf("# registration id of the tools' EK: %s\n", regid);

    /* the tools' EK, with the TCG policy and its own (random-looking) modulus */
    TPM2B_PUBLIC *pub = calloc(1, sizeof(*pub));
    size_t off = 0;
    assert_non_null(pub);
    assert_int_equal(Tss2_MU_TPM2B_PUBLIC_Unmarshal(ek, ek_len, &off, pub), TSS2_RC_SUCCESS);
    assert_int_equal(pub->publicArea.authPolicy.size, 32);
    assert_memory_equal(pub->publicArea.authPolicy.buffer, tcg_ek_policy, 32);
    free(pub);

    const uint8_t payload[] = "0ne00000001%2Fregistrations%2Fcompat\n1900000000";
    uint8_t expected[32];
    size_t expected_len = 0;
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, C.key, sizeof(C.key), payload,
                              sizeof(payload) - 1, expected, sizeof(expected), &expected_len));
    /*
     * Twice: on this TPM, which has never computed an HMAC, swtpm answered the first
     * TPM2_HMAC with TPM_RC_RETRY in our runs and ESAPI resubmitted it (2 commands);
     * the steady state is one command.
     */
    for (int round = 0; round < 2; round++) {
        commands = provhsm_tpm_commands_total();
        assert_int_equal(be->tpm_sign(st, payload, sizeof(payload) - 1, &sig, &sig_len),
                         PROVHSM_OK);
        uint64_t cost = provhsm_tpm_commands_total() - commands;
        printf("# sign #%d: %llu TPM commands\n", round + 1, (unsigned long long)cost);
        if (round == 1)
            assert_int_equal(cost, 1);
        assert_int_equal(sig_len, 32);
        assert_memory_equal(sig, expected, 32);
        free(sig);
        sig = NULL;
    }
    be->close(st);

    provhsm_test_tpm_counts after;
    assert_int_equal(provhsm_test_tpm_counts_get(C.swtpm.tcti, &after), 0);
    assert_int_equal(after.persistent, before.persistent);
    assert_int_equal(after.transient, before.transient);
    free(sig);
    free(ek);
    free(srk);
    free(tool_ek);
    free(tool_srk);
    free(regid);
    free(tool_regid);
}

int main(void)
{
    if (!provhsm_test_swtpm_available() ||
        !provhsm_test_programs_available("tpm2_createprimary", "tpm2_evictcontrol", "tpm2_import",
                                         "tpm2_load", "tpm2_readpublic", "tpm2_flushcontext",
                                         NULL)) {
        fprintf(stderr, "skip: swtpm or tpm2-tools is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    provhsm_test_log_capture();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_uses_existing_keys, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
