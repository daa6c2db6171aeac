/*
 * provhsm store rekey (issue 8): every entry re-encrypted under a new store key, with a
 * crash (a test hook stopping the rekey as a crash would) injected at each step in turn:
 * after each entry staged, after the new check entry, after the switch of the header,
 * after each entry moved into place, after the key holders were swapped. After every
 * crash the store opens (through the SDK's tables), every identity reads back as it was,
 * with the old key before the switch (its key file unchanged) and the new one after it,
 * and nothing staged is left behind. Then the modes one into another: key file -> TPM
 * -> key file -> passphrase -> TPM.
 */
#include <dirent.h>
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
#include "store.h"
#include "swtpm_fixture.h"
#include "testutil.h"

/* initialize_hsm_system and deinitialize_hsm_system: tests/common/sdk_hsm_system.c */

#define SYM_KEY_B64 "cmVrZXllZC1zdG9yZS1zeW1tZXRyaWMta2V5LTAx"
#define PASS_ENV    "PROVHSM_REKEY_TEST_PASSPHRASE"

static struct {
    provhsm_test_swtpm tpm;
    char dir[256];
    char config[300];
    char store[400];
} env;

typedef struct identities {
    char *symmetric, *cert, *alias;
} identities;

static void use_store(const char *name)
{
    snprintf(env.store, sizeof(env.store), "%s/%s", env.dir, name);
    assert_int_equal(
        provhsm_test_config_use(
            env.config,
            "[store]\npath = %s\npassphrase_env = %s\nscrypt_log2_n = 10\n[tpm]\ntcti = %s\n",
            env.store, PASS_ENV, env.tpm.tcti),
        0);
}

static int group_setup(void **state)
{
    (void)state;
    if (provhsm_test_workdir_make(env.dir, sizeof(env.dir), "rekey") != 0)
        return -1;
    snprintf(env.config, sizeof(env.config), "%s/provhsm.conf", env.dir);
    if (provhsm_test_swtpm_start(&env.tpm, NULL) != 0)
        return -1;
    provhsm_config cfg;
    void *st = NULL;
    provhsm_test_tpm_config(&cfg, env.tpm.tcti);
    if (provhsm_backend_tpm.open(&cfg, PROVHSM_KIND_TPM, &st) != PROVHSM_OK)
        return -1;
    provhsm_backend_tpm.close(st);
    unsetenv(PASS_ENV);
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

/* Both identities through the SDK's tables; NULL fields when the store does not open. */
static identities read_identities(void)
{
    identities id = {NULL, NULL, NULL};
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
    if (h != NULL) {
        id.symmetric = k->hsm_client_get_symm_key(h);
        k->hsm_client_key_destroy(h);
    }
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    h = x->hsm_client_x509_create();
    if (h != NULL) {
        id.cert = x->hsm_client_get_cert(h);
        id.alias = x->hsm_client_get_key(h);
        x->hsm_client_x509_destroy(h);
    }
    return id;
}

static void identities_free(identities *id)
{
    free(id->symmetric);
    free(id->cert);
    free(id->alias);
}

static void assert_same_identities(const identities *want)
{
    identities got = read_identities();
    assert_non_null(got.symmetric);
    assert_non_null(got.cert);
    assert_non_null(got.alias);
    assert_string_equal(got.symmetric, want->symmetric);
    assert_string_equal(got.cert, want->cert);
    assert_string_equal(got.alias, want->alias);
    identities_free(&got);
}

static identities populate(void)
{
    char *pem = NULL;
    assert_int_equal(provhsm_symmetric_set("rekey-device", SYM_KEY_B64), PROVHSM_OK);
    assert_int_equal(provhsm_x509_generate("rekey-x509", PROVHSM_KEY_EC_P256, 30, 0, &pem),
                     PROVHSM_OK);
    free(pem);
    identities id = read_identities();
    assert_non_null(id.symmetric);
    assert_non_null(id.cert);
    assert_non_null(id.alias);
    return id;
}

/* Files of the store directory whose name ends in `suffix`. */
static int count_suffixed(const char *suffix)
{
    DIR *d = opendir(env.store);
    assert_non_null(d);
    struct dirent *de;
    int n = 0;
    size_t sl = strlen(suffix);
    while ((de = readdir(d)) != NULL) {
        size_t nl = strlen(de->d_name);
        n += nl > sl && strcmp(de->d_name + nl - sl, suffix) == 0;
    }
    closedir(d);
    return n;
}

static char *key_mode(void)
{
    char *mode = NULL;
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    return mode;
}

/*
 * A crash at each step of a rekey from one mode to another; the store opens after each,
 * nothing lost. `from_sealed`: the store starts sealed to the TPM (its holder is
 * store.sealed) rather than with a key file (store.key).
 */
static void crash_at_every_step(int from_sealed, const char *to, const char *to_mode_prefix)
{
    const char *holder = from_sealed ? "store.sealed" : "store.key";
    const char *from_mode_prefix = from_sealed ? "tpm" : "key-file";
    int succeeded_at = 0, before_switch = 0, after_switch = 0;
    for (int step = 1; step <= 40 && succeeded_at == 0; step++) {
        char name[48];
        snprintf(name, sizeof(name), "crash-%s-%02d", to, step);
        use_store(name);
        assert_int_equal(from_sealed ? provhsm_store_init_sealed() : provhsm_store_init(),
                         PROVHSM_OK);
        identities want = populate();
        int entries = count_suffixed(".entry");
        assert_true(entries >= 2);
        char keypath[450];
        uint8_t *key_before = NULL, *key_after = NULL;
        size_t kb_len = 0, ka_len = 0;
        snprintf(keypath, sizeof(keypath), "%s/%s", env.store, holder);
        assert_int_equal(provhsm_test_read_file(keypath, &key_before, &kb_len), 0);

        provhsm_store_test_rekey_fail_at = step;
        provhsm_err rc = provhsm_store_rekey(to);
        provhsm_store_test_rekey_fail_at = 0;
        /* crash points: each entry staged, the check staged (the store is still the old
           one), then the switch and what follows it */
        int switched = rc == PROVHSM_OK || step > entries + 1;
        if (rc == PROVHSM_OK) {
            succeeded_at = step;
        } else if (switched) {
            after_switch++; /* the mode is checked once opening has completed it */
        } else {
            char *mode = key_mode();
            before_switch++;
            assert_int_equal(strncmp(mode, from_mode_prefix, strlen(from_mode_prefix)), 0);
            free(mode);
            /* the old key holder, untouched */
            assert_int_equal(provhsm_test_read_file(keypath, &key_after, &ka_len), 0);
            assert_int_equal(ka_len, kb_len);
            assert_memory_equal(key_after, key_before, kb_len);
            free(key_after);
        }
        /* opening (through the SDK) finishes or undoes the rekey: identities as they were */
        assert_same_identities(&want);
        assert_int_equal(count_suffixed(".new"), 0);
        char *mode = key_mode();
        if (switched) {
            assert_int_equal(strncmp(mode, to_mode_prefix, strlen(to_mode_prefix)), 0);
            /* the old key holder is gone: no key left on disk */
            assert_int_not_equal(access(keypath, F_OK), 0);
        } else {
            assert_int_equal(strncmp(mode, from_mode_prefix, strlen(from_mode_prefix)), 0);
        }
        free(mode);
        free(key_before);
        identities_free(&want);
    }
    printf("# rekey %s -> %s: %d crashes before the switch, %d after, success at step %d\n",
           from_mode_prefix, to, before_switch, after_switch, succeeded_at);
    assert_true(succeeded_at > 0);
    assert_true(before_switch >= 3); /* two entries and the check at least */
    assert_true(after_switch >= 3);  /* the switch, two entries moved */
}

static void test_rekey_to_tpm_survives_a_crash_at_every_step(void **state)
{
    (void)state;
    crash_at_every_step(0, "tpm", "tpm (");
}

static void test_rekey_from_tpm_survives_a_crash_at_every_step(void **state)
{
    (void)state;
    crash_at_every_step(1, "key-file", "key-file");
}

/* key file -> TPM -> key file -> passphrase -> TPM, identities unchanged throughout. */
static void test_rekey_between_every_mode(void **state)
{
    (void)state;
    use_store("modes");
    assert_int_equal(provhsm_store_init(), PROVHSM_OK);
    identities want = populate();
    char *mode = NULL;

    assert_int_equal(provhsm_store_rekey("tpm"), PROVHSM_OK);
    assert_same_identities(&want);
    mode = key_mode();
    assert_string_equal(mode, "tpm (sealed blob in the store directory, PCRs none)");
    free(mode);

    assert_int_equal(provhsm_store_rekey("key-file"), PROVHSM_OK);
    assert_same_identities(&want);
    mode = key_mode();
    assert_string_equal(mode, "key-file");
    free(mode);
    char path[450];
    snprintf(path, sizeof(path), "%s/store.sealed", env.store);
    assert_int_not_equal(access(path, F_OK), 0);

    setenv(PASS_ENV, "correct horse battery staple", 1);
    assert_int_equal(provhsm_store_rekey("passphrase"), PROVHSM_OK);
    assert_same_identities(&want);
    mode = key_mode();
    assert_string_equal(mode, "passphrase");
    free(mode);
    snprintf(path, sizeof(path), "%s/store.key", env.store);
    assert_int_not_equal(access(path, F_OK), 0);
    /* a wrong passphrase does not open it */
    setenv(PASS_ENV, "wrong", 1);
    identities none = read_identities();
    assert_null(none.symmetric);
    identities_free(&none);
    setenv(PASS_ENV, "correct horse battery staple", 1);

    assert_int_equal(provhsm_store_rekey("tpm"), PROVHSM_OK);
    unsetenv(PASS_ENV);
    assert_same_identities(&want);
    assert_int_equal(count_suffixed(".new"), 0);
    identities_free(&want);
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    provhsm_test_log_capture();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rekey_to_tpm_survives_a_crash_at_every_step),
        cmocka_unit_test(test_rekey_from_tpm_survives_a_crash_at_every_step),
        cmocka_unit_test(test_rekey_between_every_mode),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
