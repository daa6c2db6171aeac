/*
 * The software store with its key sealed to the TPM (issue 8), on private swtpms:
 *  - init --seal-to-tpm, identities (symmetric and X.509) written through the admin API
 *    and read back through the SDK's tables, with the TPM commands each create costs
 *    (Load, Unseal, FlushContext with a blob; two more with a PCR policy), and no
 *    transient object or session left behind;
 *  - the same store directory opened against another TPM: refused with "sealed to another
 *    TPM", every file of the store unchanged byte for byte;
 *  - a PCR-bound store refused after a PCR extend (with the way out named), readable
 *    after the TPM restarts (PCRs reset), then reseal --unbound, the extend, reseal, read;
 *  - the TPM gone: the cause is named;
 *  - init on a fresh TPM makes the SRK; a rekey to the TPM honours sealed_key_handle;
 *  - a TPM table handle or a TPM X.509 key open (the TPM backend's connection held): the
 *    sealed store opens, reseals and rekeys on that one connection (no second one is ever
 *    open), at the same command counts; the TPM gone and back meanwhile: the store's
 *    reconnect serves the table too;
 *  - the sealed-blob parser refuses a truncated or altered file;
 *  - reseal --pcr-values: bound, before an update, to the PolicyOR of the PCR values now
 *    and those after it (read before the extend and after it, refused after another one;
 *    a plain reseal after the update drops the old values), a wrong value that leaves the
 *    store readable and is corrected by a second reseal, the same at a persistent handle,
 *    malformed or unfitting values refused with nothing changed, malformed branch data in
 *    store.sealed refused, and the SHA-1 bank's values digested with the policy's hash.
 */
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <openssl/evp.h>

#include "backend.h"
#include "hsm_client_data.h"
#include "keyref.h"
#include "provhsm/provhsm.h"
#include "provhsm/provhsm_store_key.h"
#include "secmem.h"
#include "store.h"
#include "swtpm_fixture.h"
#include "testutil.h"
#include "tpm_esys.h"

/* initialize_hsm_system and deinitialize_hsm_system: tests/common/sdk_hsm_system.c */

#define SYM_KEY_B64 "c2VhbGVkLXN0b3JlLXN5bW1ldHJpYy1rZXktMzI="

typedef struct sealed_env {
    provhsm_test_swtpm tpm_a, tpm_b;
    char dir[256];
    char config[300];
} sealed_env;

static sealed_env env;

/* The TPM backend's open makes the EK and SRK: what "a provisioned TPM" means here;
 * owner_auth_file: NULL for the empty owner authorisation. */
static void provision_with(const char *tcti, const char *owner_auth_file)
{
    provhsm_config cfg;
    void *st = NULL;
    provhsm_test_tpm_config(&cfg, tcti);
    if (owner_auth_file != NULL)
        snprintf(cfg.owner_auth_file, sizeof(cfg.owner_auth_file), "%s", owner_auth_file);
    assert_int_equal(provhsm_backend_tpm.open(&cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    provhsm_backend_tpm.close(st);
}

static void provision(const char *tcti)
{
    provision_with(tcti, NULL);
}

/* Writes the configuration (0600) for the store `store` on `tcti` and makes it current;
 * `store_lines` and `tpm_lines` (optional) are added to [store] and [tpm]. */
static void use_config_with(const char *store, const char *tcti, const char *store_lines,
                            const char *tpm_lines)
{
    assert_int_equal(provhsm_test_config_use(
                         env.config, "[store]\npath = %s/%s\n%s[tpm]\ntcti = %s\n%s", env.dir,
                         store, store_lines, tcti, tpm_lines != NULL ? tpm_lines : ""),
                     0);
}

static void use_config(const char *store, const char *tcti, const char *seal_pcrs)
{
    char lines[128] = "";
    if (seal_pcrs != NULL)
        snprintf(lines, sizeof(lines), "seal_pcrs = %s\n", seal_pcrs);
    use_config_with(store, tcti, lines, NULL);
}

static int group_setup(void **state)
{
    (void)state;
    memset(&env, 0, sizeof(env));
    if (provhsm_test_workdir_make(env.dir, sizeof(env.dir), "sealed") != 0)
        return -1;
    snprintf(env.config, sizeof(env.config), "%s/provhsm.conf", env.dir);
    if (provhsm_test_swtpm_start(&env.tpm_a, NULL) != 0 ||
        provhsm_test_swtpm_start(&env.tpm_b, NULL) != 0)
        return -1;
    return initialize_hsm_system();
}

static int group_teardown(void **state)
{
    (void)state;
    deinitialize_hsm_system();
    provhsm_test_swtpm_stop(&env.tpm_a);
    provhsm_test_swtpm_stop(&env.tpm_b);
    provhsm_test_remove_tree(env.dir);
    return 0;
}

/* Reads the symmetric identity through the SDK's table; *commands: TPM commands it cost. */
static char *read_symmetric(uint64_t *commands)
{
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    uint64_t before = provhsm_tpm_commands_total();
    /* create opens the store: a store that does not open gives no handle */
    HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
    if (h == NULL)
        return NULL;
    char *key = k->hsm_client_get_symm_key(h);
    if (key != NULL) {
        char *name = k->hsm_client_get_registration_name(h);
        assert_non_null(name);
        assert_string_equal(name, "sealed-device");
        free(name);
    }
    k->hsm_client_key_destroy(h);
    if (commands != NULL)
        *commands = provhsm_tpm_commands_total() - before;
    return key;
}

/* A read of the symmetric identity that must give the stored key; returns the TPM
 * commands it cost, printed with `what` (NULL: not printed). */
static uint64_t symmetric_read_cost(const char *what)
{
    uint64_t commands = 0;
    char *key = read_symmetric(&commands);
    assert_non_null(key);
    assert_string_equal(key, SYM_KEY_B64);
    free(key);
    if (what != NULL)
        printf("# symmetric create + get on %s: %llu TPM commands\n", what,
               (unsigned long long)commands);
    return commands;
}

/* tpm2_changeauth: the owner authorisation of the TPM at `tcti` becomes `pass`. */
static void owner_auth_change(const char *tcti, const char *pass)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "TPM2TOOLS_TCTI='%s' tpm2_changeauth -c owner %s >/dev/null", tcti,
             pass);
    assert_int_equal(system(cmd), 0);
}

/* An owner_auth_file's content: `line` as is. */
static void auth_file_write(const char *path, const char *line)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(line, f);
    assert_int_equal(fclose(f), 0);
}

/* The store directory's files and their bytes, as one text for comparison. */
static char *snapshot(const char *store)
{
    char path[600];
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(1, cap);
    assert_non_null(out);
    snprintf(path, sizeof(path), "%s/%s", env.dir, store);
    DIR *d = opendir(path);
    assert_non_null(d);
    struct dirent *de;
    char *names[64];
    int n = 0;
    while ((de = readdir(d)) != NULL && n < 64)
        if (de->d_name[0] != '.')
            names[n++] = strdup(de->d_name);
    closedir(d);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (strcmp(names[i], names[j]) > 0) {
                char *t = names[i];
                names[i] = names[j];
                names[j] = t;
            }
    for (int i = 0; i < n; i++) {
        uint8_t *buf = NULL;
        size_t blen = 0;
        snprintf(path, sizeof(path), "%s/%s/%s", env.dir, store, names[i]);
        assert_int_equal(provhsm_test_read_file(path, &buf, &blen), 0);
        len += (size_t)snprintf(out + len, cap - len, "%s:", names[i]);
        for (size_t b = 0; b < blen && len + 3 < cap; b++)
            len += (size_t)snprintf(out + len, cap - len, "%02x", buf[b]);
        len += (size_t)snprintf(out + len, cap - len, "\n");
        free(buf);
        free(names[i]);
    }
    return out;
}

static void extend_pcr(const char *tcti, unsigned pcr)
{
    static const uint8_t digest[32] = {0x5e, 0xa1, 0xed};
    provhsm_tpm *tpm = NULL;
    assert_int_equal(provhsm_tpm_connect(tcti, &tpm), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_pcr_extend_sha256(tpm, pcr, digest), PROVHSM_OK);
    provhsm_tpm_disconnect(tpm);
}

/* Init sealed; identities through the SDK tables; TPM commands per create; no leak. */
static void test_sealed_store_serves_the_sdk(void **state)
{
    (void)state;
    provision(env.tpm_a.tcti);
    use_config("store-a", env.tpm_a.tcti, NULL);
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);

    char *mode = NULL;
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    assert_string_equal(mode, "tpm (sealed blob in the store directory, PCRs none)");
    free(mode);
    /* nothing secret beside the store: no key file */
    char path[400];
    struct stat sb;
    snprintf(path, sizeof(path), "%s/store-a/store.key", env.dir);
    assert_int_not_equal(stat(path, &sb), 0);
    snprintf(path, sizeof(path), "%s/store-a/store.sealed", env.dir);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);

    assert_int_equal(provhsm_symmetric_set("sealed-device", SYM_KEY_B64), PROVHSM_OK);
    char *pem = NULL;
    assert_int_equal(provhsm_x509_generate("sealed-x509", PROVHSM_KEY_EC_P256, 30, 0, &pem),
                     PROVHSM_OK);
    free(pem);

    provhsm_test_tpm_counts counts;
    assert_int_equal(provhsm_test_tpm_counts_get(env.tpm_a.tcti, &counts), 0);

    /* Load, Unseal, FlushContext */
    assert_int_equal(symmetric_read_cost("a sealed store (blob)"), 3);

    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    uint64_t before = provhsm_tpm_commands_total();
    HSM_CLIENT_HANDLE h = x->hsm_client_x509_create();
    assert_non_null(h);
    char *cert = x->hsm_client_get_cert(h);
    char *alias = x->hsm_client_get_key(h);
    char *cn = x->hsm_client_get_common_name(h);
    assert_non_null(cert);
    assert_non_null(alias);
    assert_non_null(cn);
    assert_string_equal(cn, "sealed-x509");
    free(cert);
    free(alias);
    free(cn);
    x->hsm_client_x509_destroy(h);
    uint64_t commands = provhsm_tpm_commands_total() - before;
    printf("# x509 create + get on a sealed store (blob): %llu TPM commands\n",
           (unsigned long long)commands);
    assert_int_equal(commands, 3);
    assert_int_equal(provhsm_test_tpm_counts_unchanged(env.tpm_a.tcti, &counts), 0);
}

/* The same store directory on another TPM: refused as such, nothing changed. */
static void test_another_tpm_is_refused(void **state)
{
    (void)state;
    provision(env.tpm_b.tcti);
    use_config("store-a", env.tpm_b.tcti, NULL);
    char *before = snapshot("store-a");
    provhsm_test_log_clear();
    char *key = read_symmetric(NULL);
    assert_null(key);
    assert_true(provhsm_test_log_seen("sealed to another TPM"));
    char *after = snapshot("store-a");
    assert_string_equal(before, after);
    free(before);
    free(after);
    /* and it still opens on its own TPM */
    use_config("store-a", env.tpm_a.tcti, NULL);
    key = read_symmetric(NULL);
    assert_non_null(key);
    free(key);
}

/* No TPM answering: the cause is named, nothing changed. */
static void test_tpm_absent_is_named(void **state)
{
    (void)state;
    use_config("store-a", env.tpm_a.tcti, NULL);
    char *before = snapshot("store-a");
    provhsm_test_swtpm_kill(&env.tpm_a);
    provhsm_test_log_clear();
    char *key = read_symmetric(NULL);
    assert_null(key);
    assert_true(provhsm_test_log_seen("sealed to a TPM, and none answers"));
    assert_int_equal(provhsm_test_swtpm_restart(&env.tpm_a), 0);
    char *after = snapshot("store-a");
    assert_string_equal(before, after);
    free(before);
    free(after);
}

/* PCR-bound: refused after an extend, readable after a restart, reseal around an update. */
static void test_pcr_bound_store_and_reseal(void **state)
{
    (void)state;
    use_config("store-pcr", env.tpm_a.tcti, "sha256:0,7");
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    char *mode = NULL;
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    assert_string_equal(mode, "tpm (sealed blob in the store directory, PCRs sha256:0,7)");
    free(mode);
    assert_int_equal(provhsm_symmetric_set("sealed-device", SYM_KEY_B64), PROVHSM_OK);

    provhsm_test_tpm_counts counts;
    assert_int_equal(provhsm_test_tpm_counts_get(env.tpm_a.tcti, &counts), 0);
    uint64_t commands = 0;
    char *key = read_symmetric(&commands);
    assert_non_null(key);
    free(key);
    printf("# symmetric create + get on a PCR-bound sealed store: %llu TPM commands\n",
           (unsigned long long)commands);
    /* Load, StartAuthSession, PolicyPCR, Unseal, FlushContext */
    assert_int_equal(commands, 5);
    assert_int_equal(provhsm_test_tpm_counts_unchanged(env.tpm_a.tcti, &counts), 0);

    /* a boot change: PCR 7 extended */
    char *before = snapshot("store-pcr");
    extend_pcr(env.tpm_a.tcti, 7);
    provhsm_test_log_clear();
    assert_null(read_symmetric(NULL));
    assert_true(provhsm_test_log_seen("no longer hold the values"));
    assert_true(provhsm_test_log_seen("provhsm store reseal"));
    /* reseal cannot help now (the key does not unseal), and changes nothing */
    assert_int_not_equal(provhsm_store_reseal(0), PROVHSM_OK);
    char *after = snapshot("store-pcr");
    assert_string_equal(before, after);
    free(after);
    assert_int_equal(provhsm_test_tpm_counts_unchanged(env.tpm_a.tcti, &counts), 0);

    /* the previous boot state again (PCRs reset): readable */
    provhsm_test_swtpm_kill(&env.tpm_a);
    assert_int_equal(provhsm_test_swtpm_restart(&env.tpm_a), 0);
    key = read_symmetric(NULL);
    assert_non_null(key);
    free(key);

    /* the update done right: reseal --unbound, update, reseal */
    assert_int_equal(provhsm_store_reseal(1), PROVHSM_OK);
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    assert_string_equal(mode, "tpm (sealed blob in the store directory, PCRs none)");
    free(mode);
    extend_pcr(env.tpm_a.tcti, 7);
    key = read_symmetric(NULL);
    assert_non_null(key);
    free(key);
    assert_int_equal(provhsm_store_reseal(0), PROVHSM_OK);
    key = read_symmetric(NULL);
    assert_non_null(key);
    assert_string_equal(key, SYM_KEY_B64);
    free(key);
    /* bound again: the next change is refused */
    extend_pcr(env.tpm_a.tcti, 0);
    assert_null(read_symmetric(NULL));
    /* entries were never rewritten by reseal */
    after = snapshot("store-pcr");
    const char *entry = strstr(before, "symmetric.entry:");
    assert_non_null(entry);
    const char *end = strchr(entry, '\n');
    char *line = strndup(entry, (size_t)(end - entry));
    assert_non_null(strstr(after, line));
    free(line);
    free(before);
    free(after);
}

/* The sealed key at a persistent handle: one TPM command per create; reseal keeps it. */
static void test_persistent_handle(void **state)
{
    (void)state;
    provhsm_test_tpm_counts before, counts;
    assert_int_equal(provhsm_test_tpm_counts_get(env.tpm_a.tcti, &before), 0);
    use_config_with("store-h", env.tpm_a.tcti, "sealed_key_handle = 0x81000200\n", NULL);
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    char *mode = NULL;
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    assert_string_equal(mode, "tpm (persistent handle 0x81000200, PCRs none)");
    free(mode);
    assert_int_equal(provhsm_test_tpm_counts_get(env.tpm_a.tcti, &counts), 0);
    assert_int_equal(counts.persistent, before.persistent + 1);
    assert_int_equal(counts.transient, 0);
    assert_int_equal(provhsm_symmetric_set("sealed-device", SYM_KEY_B64), PROVHSM_OK);

    /* Unseal */
    assert_int_equal(symmetric_read_cost("a sealed store (persistent handle)"), 1);

    /* reseal: a new object at the same handle, nothing else persisted */
    assert_int_equal(provhsm_store_reseal(0), PROVHSM_OK);
    assert_int_equal(provhsm_test_tpm_counts_unchanged(env.tpm_a.tcti, &counts), 0);
    uint64_t commands = 0;
    char *key = read_symmetric(&commands);
    assert_non_null(key);
    free(key);
    assert_int_equal(commands, 1);

    /* bound to PCRs at a handle: the policy session adds two commands */
    use_config_with("store-hp", env.tpm_a.tcti,
                    "sealed_key_handle = 0x81000201\nseal_pcrs = sha256:0,7\n", NULL);
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    assert_int_equal(provhsm_symmetric_set("sealed-device", SYM_KEY_B64), PROVHSM_OK);
    key = read_symmetric(&commands);
    assert_non_null(key);
    free(key);
    printf("# ... bound to PCRs, at a persistent handle: %llu TPM commands\n",
           (unsigned long long)commands);
    assert_int_equal(commands, 3); /* StartAuthSession, PolicyPCR, Unseal */

    /* a rekey away from the TPM evicts the sealed key it no longer uses */
    assert_int_equal(provhsm_test_tpm_counts_get(env.tpm_a.tcti, &counts), 0);
    assert_int_equal(counts.persistent, before.persistent + 2);
    assert_int_equal(provhsm_store_rekey("key-file"), PROVHSM_OK);
    key = read_symmetric(NULL);
    assert_non_null(key);
    assert_string_equal(key, SYM_KEY_B64);
    free(key);
    assert_int_equal(provhsm_test_tpm_counts_get(env.tpm_a.tcti, &counts), 0);
    assert_int_equal(counts.persistent, before.persistent + 1);
}

/* init --seal-to-tpm on a fresh TPM: the SRK is made and persisted, as the backend would. */
static void test_init_on_fresh_tpm_makes_the_srk(void **state)
{
    (void)state;
    provhsm_test_swtpm fresh;
    provhsm_test_tpm_counts counts;
    memset(&fresh, 0, sizeof(fresh));
    assert_int_equal(provhsm_test_swtpm_start(&fresh, NULL), 0);
    assert_int_equal(provhsm_test_tpm_counts_get(fresh.tcti, &counts), 0);
    assert_int_equal(counts.persistent, 0);

    /* the SRK is made under the owner authorisation of [tpm]: a wrong one is named */
    char tpm_lines[500] = "", auth[400] = "";
    if (provhsm_test_programs_available("tpm2_changeauth", NULL)) {
        owner_auth_change(fresh.tcti, "freshpass");
        snprintf(auth, sizeof(auth), "%s/fresh-owner.auth", env.dir);
        auth_file_write(auth, "wrongpass\n");
        assert_int_equal(chmod(auth, 0600), 0);
        snprintf(tpm_lines, sizeof(tpm_lines), "owner_auth_file = %s\n", auth);
        use_config_with("store-fresh", fresh.tcti, "", tpm_lines);
        provhsm_test_log_clear();
        assert_int_not_equal(provhsm_store_init_sealed(), PROVHSM_OK);
        assert_true(provhsm_test_log_seen("refused the owner authorisation"));
        assert_int_equal(provhsm_test_tpm_counts_get(fresh.tcti, &counts), 0);
        assert_int_equal(counts.persistent, 0);
        auth_file_write(auth, "freshpass\n");
    }
    use_config_with("store-fresh", fresh.tcti, "", tpm_lines);
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    assert_int_equal(provhsm_test_tpm_counts_get(fresh.tcti, &counts), 0);
    assert_int_equal(counts.persistent, 1); /* the SRK, nothing else */
    assert_int_equal(counts.transient, 0);
    assert_int_equal(provhsm_symmetric_set("sealed-device", SYM_KEY_B64), PROVHSM_OK);
    char *key = read_symmetric(NULL);
    assert_non_null(key);
    assert_string_equal(key, SYM_KEY_B64);
    free(key);

    /* the backend finds that SRK and uses it: only the EK is added */
    provision_with(fresh.tcti, auth[0] != '\0' ? auth : NULL);
    assert_int_equal(provhsm_test_tpm_counts_get(fresh.tcti, &counts), 0);
    assert_int_equal(counts.persistent, 2);
    key = read_symmetric(NULL);
    assert_non_null(key);
    free(key);
    provhsm_test_swtpm_stop(&fresh);
}

/* A rekey to the TPM with sealed_key_handle keeps the new key there, as init does. */
static void test_rekey_to_tpm_at_handle(void **state)
{
    (void)state;
    provhsm_test_tpm_counts before, counts;
    char *mode = NULL;
    assert_int_equal(provhsm_test_tpm_counts_get(env.tpm_a.tcti, &before), 0);
    use_config_with("store-rk", env.tpm_a.tcti, "sealed_key_handle = 0x81000210\n", NULL);
    assert_int_equal(provhsm_store_init(), PROVHSM_OK);
    assert_int_equal(provhsm_symmetric_set("sealed-device", SYM_KEY_B64), PROVHSM_OK);

    assert_int_equal(provhsm_store_rekey("tpm"), PROVHSM_OK);
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    assert_string_equal(mode, "tpm (persistent handle 0x81000210, PCRs none)");
    free(mode);
    assert_int_equal(provhsm_test_tpm_counts_get(env.tpm_a.tcti, &counts), 0);
    assert_int_equal(counts.persistent, before.persistent + 1);
    assert_int_equal(counts.transient, 0);
    assert_int_equal(symmetric_read_cost(NULL), 1); /* Unseal at the handle */

    /* again, to a new key: the object at the handle is replaced, nothing else persisted */
    assert_int_equal(provhsm_store_rekey("tpm"), PROVHSM_OK);
    assert_int_equal(provhsm_test_tpm_counts_unchanged(env.tpm_a.tcti, &counts), 0);
    assert_int_equal(symmetric_read_cost(NULL), 1);

    /* a handle held by another object (store-h's key): the rekey completes, as a blob */
    use_config_with("store-rk", env.tpm_a.tcti, "sealed_key_handle = 0x81000200\n", NULL);
    provhsm_test_log_clear();
    assert_int_equal(provhsm_store_rekey("tpm"), PROVHSM_E_EXISTS);
    assert_true(provhsm_test_log_seen("the rekey is complete"));
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    assert_string_equal(mode, "tpm (sealed blob in the store directory, PCRs none)");
    free(mode);
    assert_int_equal(symmetric_read_cost(NULL), 3); /* Load, Unseal, FlushContext */

    /* and away from the TPM: nothing of this store is left persistent */
    assert_int_equal(provhsm_store_rekey("key-file"), PROVHSM_OK);
    assert_int_equal(provhsm_test_tpm_counts_get(env.tpm_a.tcti, &counts), 0);
    assert_int_equal(counts.persistent, before.persistent);
}

/* ---- beside the TPM backend's open connection ---------------------------------------- */

/*
 * One store operation run on a thread of its own while this thread watches the number of
 * open TPM connections. A bare /dev/tpm0 refuses a second one, and a simulator socket in
 * use leaves it waiting; tss2's swtpm TCTI connects per command, so here the count is what
 * shows a second connection. Should one ever wait, the program ends after
 * STORE_OP_LIMIT_S with the reason (the stuck thread holds the TPM's lock).
 */
#define STORE_OP_LIMIT_S 20

typedef enum { OP_READ, OP_RESEAL, OP_REKEY } store_op_kind;

typedef struct store_op {
    store_op_kind kind;
    const char *rekey_to;
    char *key;         /* OP_READ: the symmetric key read through the SDK's table */
    uint64_t commands; /* OP_READ: TPM commands the create cost */
    provhsm_err err;   /* OP_RESEAL, OP_REKEY */
    atomic_int done;
} store_op;

static void *store_op_thread(void *arg)
{
    store_op *op = arg;
    if (op->kind == OP_READ)
        op->key = read_symmetric(&op->commands);
    else if (op->kind == OP_RESEAL)
        op->err = provhsm_store_reseal(0);
    else
        op->err = provhsm_store_rekey(op->rekey_to);
    atomic_store(&op->done, 1);
    return NULL;
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs *op; returns the most TPM connections seen open while it ran. */
static unsigned run_store_op(store_op *op)
{
    pthread_t thread;
    unsigned peak = provhsm_tpm_test_open_connections();
    const double deadline = seconds_now() + STORE_OP_LIMIT_S;
    atomic_init(&op->done, 0);
    assert_int_equal(pthread_create(&thread, NULL, store_op_thread, op), 0);
    while (!atomic_load(&op->done)) {
        unsigned now = provhsm_tpm_test_open_connections();
        peak = now > peak ? now : peak;
        if (seconds_now() > deadline) {
            fprintf(stderr,
                    "the store operation did not finish within %d s, up to %u TPM connections "
                    "open\n",
                    STORE_OP_LIMIT_S, peak);
            fflush(stderr);
            _exit(1);
        }
        struct timespec pause = {0, 200000}; /* 0.2 ms */
        nanosleep(&pause, NULL);
    }
    assert_int_equal(pthread_join(thread, NULL), 0);
    return peak;
}

/* Reads the symmetric key beside the open connection: one connection, `commands` commands. */
static void read_beside(uint64_t commands)
{
    store_op op = {.kind = OP_READ};
    assert_int_equal(run_store_op(&op), 1);
    assert_non_null(op.key);
    assert_string_equal(op.key, SYM_KEY_B64);
    free(op.key);
    assert_int_equal(op.commands, commands);
    assert_int_equal(provhsm_tpm_test_open_connections(), 1);
}

/* A TPM table handle open: the sealed store's reads, reseal and rekeys share its connection. */
static void test_sealed_store_beside_an_open_tpm_table(void **state)
{
    (void)state;
    provhsm_config cfg;
    void *table = NULL;
    uint8_t *mac = NULL;
    size_t mac_len = 0;
    provhsm_test_tpm_counts counts;
    provhsm_test_tpm_config(&cfg, env.tpm_a.tcti);
    assert_int_equal(provhsm_tpm_test_open_connections(), 0);
    assert_int_equal(provhsm_test_tpm_counts_get(env.tpm_a.tcti, &counts), 0);
    assert_int_equal(provhsm_backend_tpm.open(&cfg, PROVHSM_KIND_TPM, &table), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_test_open_connections(), 1);

    use_config("store-a", env.tpm_a.tcti, NULL);
    read_beside(3); /* Load, Unseal, FlushContext */
    use_config_with("store-h", env.tpm_a.tcti, "sealed_key_handle = 0x81000200\n", NULL);
    read_beside(1); /* Unseal */

    /* writes: a reseal at the handle (owner authorisation), a rekey to the TPM and away */
    store_op reseal = {.kind = OP_RESEAL};
    assert_int_equal(run_store_op(&reseal), 1);
    assert_int_equal(reseal.err, PROVHSM_OK);
    read_beside(1);
    use_config_with("store-rk", env.tpm_a.tcti, "sealed_key_handle = 0x81000210\n", NULL);
    store_op rekey = {.kind = OP_REKEY, .rekey_to = "tpm"};
    assert_int_equal(run_store_op(&rekey), 1);
    assert_int_equal(rekey.err, PROVHSM_OK);
    read_beside(1);
    rekey.rekey_to = "key-file";
    assert_int_equal(run_store_op(&rekey), 1);
    assert_int_equal(rekey.err, PROVHSM_OK);

    /* the table still reaches the TPM on that connection (no identity key there) */
    assert_int_equal(provhsm_backend_tpm.tpm_sign(table, (const uint8_t *)"x", 1, &mac, &mac_len),
                     PROVHSM_E_NOT_FOUND);
    assert_int_equal(provhsm_tpm_test_open_connections(), 1);
    provhsm_backend_tpm.close(table);
    assert_int_equal(provhsm_tpm_test_open_connections(), 0);
    /* no transient object or session left, the persistent ones as before */
    assert_int_equal(provhsm_test_tpm_counts_unchanged(env.tpm_a.tcti, &counts), 0);

    /* alone, the store lets the TPM go again after each create */
    use_config("store-a", env.tpm_a.tcti, NULL);
    uint64_t commands = 0;
    char *key = read_symmetric(&commands);
    assert_non_null(key);
    free(key);
    assert_int_equal(commands, 3);
    assert_int_equal(provhsm_tpm_test_open_connections(), 0);
}

/* A TPM X.509 key open: the sealed store opens on its connection, and the key still signs. */
static void test_sealed_store_beside_an_open_tpm_x509_key(void **state)
{
    (void)state;
    provhsm_config cfg;
    provhsm_keyref ref;
    char *secret = NULL;
    void *key = NULL;
    uint8_t digest[32] = {1, 2, 3}, rs[64];
    size_t rs_len = sizeof(rs);
    memset(&ref, 0, sizeof(ref));
    provhsm_test_tpm_config(&cfg, env.tpm_a.tcti);
    assert_int_equal(provhsm_backend_tpm.key_generate(&cfg, PROVHSM_KEY_EC_P256, 1, &ref, &secret),
                     PROVHSM_OK);
    assert_int_equal(provhsm_backend_tpm.key_open(&cfg, &ref, secret, &key), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_test_open_connections(), 1);

    use_config("store-a", env.tpm_a.tcti, NULL);
    read_beside(3);
    use_config_with("store-h", env.tpm_a.tcti, "sealed_key_handle = 0x81000200\n", NULL);
    read_beside(1);
    assert_int_equal(provhsm_backend_tpm.key_sign(key, digest, sizeof(digest), rs, &rs_len),
                     PROVHSM_OK);
    assert_int_equal(rs_len, 64);

    provhsm_backend_tpm.key_close(key);
    assert_int_equal(provhsm_backend_tpm.key_destroy(&cfg, &ref, secret), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_test_open_connections(), 0);
    provhsm_secure_free(secret);
    provhsm_keyref_clear(&ref);
}

/* The TPM gone and back while a table handle is open: the store's reconnect serves the table. */
static void test_store_reconnects_the_shared_connection(void **state)
{
    (void)state;
    provhsm_config cfg;
    void *table = NULL;
    uint8_t *mac = NULL;
    size_t mac_len = 0;
    provhsm_test_tpm_config(&cfg, env.tpm_a.tcti);
    assert_int_equal(provhsm_backend_tpm.open(&cfg, PROVHSM_KIND_TPM, &table), PROVHSM_OK);
    use_config("store-a", env.tpm_a.tcti, NULL);

    provhsm_test_swtpm_kill(&env.tpm_a);
    provhsm_test_log_clear();
    assert_null(read_symmetric(NULL));
    assert_true(provhsm_test_log_seen("sealed to a TPM, and none answers"));
    assert_int_equal(provhsm_test_swtpm_restart(&env.tpm_a), 0);

    /* the store reconnects first; the table's handles were of the lost connection */
    read_beside(3);
    assert_int_equal(provhsm_backend_tpm.tpm_sign(table, (const uint8_t *)"x", 1, &mac, &mac_len),
                     PROVHSM_E_NOT_FOUND);
    assert_int_equal(provhsm_tpm_test_open_connections(), 1);
    provhsm_backend_tpm.close(table);
    assert_int_equal(provhsm_tpm_test_open_connections(), 0);
}

/* A wrong owner authorisation: the cause named, no store made, nothing persisted. */
static void test_wrong_owner_authorisation(void **state)
{
    (void)state;
    if (!provhsm_test_programs_available("tpm2_changeauth", NULL))
        skip();
    char auth[400];
    owner_auth_change(env.tpm_b.tcti, "ownerpass");
    snprintf(auth, sizeof(auth), "%s/owner.auth", env.dir);
    auth_file_write(auth, "wrongpass\n");
    assert_int_equal(chmod(auth, 0600), 0);
    char tpm_lines[500];
    snprintf(tpm_lines, sizeof(tpm_lines), "owner_auth_file = %s\n", auth);

    provhsm_test_tpm_counts counts;
    assert_int_equal(provhsm_test_tpm_counts_get(env.tpm_b.tcti, &counts), 0);
    use_config_with("store-w", env.tpm_b.tcti, "sealed_key_handle = 0x81000300\n", tpm_lines);
    provhsm_test_log_clear();
    assert_int_not_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    assert_true(provhsm_test_log_seen("refused the owner authorisation"));
    assert_int_equal(provhsm_test_tpm_counts_unchanged(env.tpm_b.tcti, &counts), 0);
    char path[400];
    snprintf(path, sizeof(path), "%s/store-w/store.meta", env.dir);
    assert_int_not_equal(access(path, F_OK), 0);
    snprintf(path, sizeof(path), "%s/store-w/store.sealed", env.dir);
    assert_int_not_equal(access(path, F_OK), 0);

    /* the right value works */
    auth_file_write(auth, "ownerpass\n");
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
}

/* The parser of store.sealed refuses a truncated or altered file before any TPM command. */
static void test_sealed_file_parser(void **state)
{
    (void)state;
    char path[400];
    uint8_t *buf = NULL;
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/store-a/store.sealed", env.dir);
    assert_int_equal(provhsm_test_read_file(path, &buf, &len), 0);
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_OK);
    for (size_t cut = 0; cut < len; cut += 7)
        assert_int_equal(provhsm_store_parse_sealed(buf, cut, path), PROVHSM_E_CORRUPT);
    /* the public area (after the 20-byte header and a 4-byte empty PCR selection): its
       size, type, nameAlg, then the attributes; byte 33 holds userWithAuth (0x40) */
    buf[33] ^= 0x40;
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_E_CORRUPT);
    buf[33] ^= 0x40;
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_OK);
    buf[0] ^= 1;
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_E_CORRUPT);
    free(buf);
}

/* PCR `pcr` of `bank` read on its own connection; 0 when the TPM has no such bank. */
static int pcr_value(const char *tcti, TPMI_ALG_HASH bank, unsigned pcr, TPM2B_DIGEST *out)
{
    provhsm_tpm *tpm = NULL;
    TPM2B_DIGEST values[24];
    memset(values, 0, sizeof(values));
    assert_int_equal(provhsm_tpm_connect(tcti, &tpm), PROVHSM_OK);
    provhsm_err rc = provhsm_tpm_pcr_read(tpm, bank, 1ul << pcr, values);
    provhsm_tpm_disconnect(tpm);
    if (rc == PROVHSM_E_NOT_FOUND)
        return 0;
    assert_int_equal(rc, PROVHSM_OK);
    *out = values[pcr];
    return 1;
}

static void hex_of(const uint8_t *bytes, size_t len, char *out)
{
    for (size_t i = 0; i < len; i++)
        snprintf(out + 2 * i, 3, "%02x", bytes[i]);
}

/* The SHA-256 bank's PCR after PCR_Extend(digest): SHA-256(value || digest). */
static void sha256_extended(const TPM2B_DIGEST *value, const uint8_t digest[32], uint8_t out[32])
{
    uint8_t both[64];
    unsigned int len = 0;
    assert_int_equal(value->size, 32);
    memcpy(both, value->buffer, 32);
    memcpy(both + 32, digest, 32);
    assert_int_equal(EVP_Digest(both, sizeof(both), out, &len, EVP_sha256(), NULL), 1);
    assert_int_equal(len, 32);
}

/* A reseal refused before anything is read: its log line, no TPM command, no byte changed. */
static void expect_reseal_to_refused(const char *store, const char *values, provhsm_err want,
                                     const char *why)
{
    char *before = snapshot(store);
    uint64_t commands = provhsm_tpm_commands_total();
    provhsm_test_log_clear();
    assert_int_equal(provhsm_store_reseal_to(values), want);
    if (!provhsm_test_log_seen(why))
        fail_msg("reseal --pcr-values %.40s...: no log line with \"%s\"", values, why);
    assert_int_equal(provhsm_tpm_commands_total(), commands);
    char *after = snapshot(store);
    assert_string_equal(before, after);
    free(before);
    free(after);
}

/* The format version of the store's store.sealed (bytes 8..9). */
static unsigned sealed_version(const char *store)
{
    char path[400];
    uint8_t *buf = NULL;
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/%s/store.sealed", env.dir, store);
    assert_int_equal(provhsm_test_read_file(path, &buf, &len), 0);
    assert_true(len > 10);
    unsigned version = (unsigned)buf[8] << 8 | buf[9];
    free(buf);
    return version;
}

/* PCR_Extend of the SHA-256 bank of `pcr` with `digest`, on its own connection. */
static void extend_pcr_with(const char *tcti, unsigned pcr, const uint8_t digest[32])
{
    provhsm_tpm *tpm = NULL;
    assert_int_equal(provhsm_tpm_connect(tcti, &tpm), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_pcr_extend_sha256(tpm, pcr, digest), PROVHSM_OK);
    provhsm_tpm_disconnect(tpm);
}

/* "sha256:<pcr>=<hex>": the value PCR `pcr` of the SHA-256 bank holds after one extend
 * with `digest`, from its value now. */
static void values_after_extend(const char *tcti, unsigned pcr, const uint8_t digest[32], char *out,
                                size_t outlen)
{
    TPM2B_DIGEST now;
    uint8_t after[32];
    char hex[65];
    assert_true(pcr_value(tcti, TPM2_ALG_SHA256, pcr, &now));
    sha256_extended(&now, digest, after);
    hex_of(after, 32, hex);
    snprintf(out, outlen, "sha256:%u=%s", pcr, hex);
}

/* A create that must fail on the PCRs, with `why` in the log, no file of `store` changed. */
static void expect_refused_on_pcrs(const char *store, const char *why)
{
    char *before = snapshot(store);
    provhsm_test_log_clear();
    assert_null(read_symmetric(NULL));
    if (!provhsm_test_log_seen(why))
        fail_msg("the refused create logged no line with \"%s\"", why);
    char *after = snapshot(store);
    assert_string_equal(before, after);
    free(before);
    free(after);
}

#define PENDING_NOTE                                                                               \
    ", also the values given by reseal --pcr-values: run `provhsm store reseal` once the "         \
    "update is in"

static const uint8_t update_digest[32] = {0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78};

/*
 * An update prepared with reseal --pcr-values: the store bound to PCRs 0 and 16 is
 * sealed again, before the "update", to the PolicyOR of PCR 16's value now (branch A)
 * and the value it will have after one known extend (branch B; PCR 0 not named: its
 * current value in both). It opens before the extend (A) and after it (B), one TPM
 * command more per create (PolicyOR), and is refused after a second extend (neither).
 * With the old values back (a TPM restart) it opens again; after the update, a plain
 * reseal narrows to the values then, and the old values no longer open it. A malformed
 * value, a PCR outside seal_pcrs, another bank: refused, nothing changed.
 */
static void test_reseal_to_future_pcr_values(void **state)
{
    static const uint8_t boot_digest[32] = {0xb0, 0x07};
    (void)state;
    char values[200], hex[65];

    /* PCR 23 stands for a PCR the boot measures the same way each time: not named in
       --pcr-values, so its value now (not zero) must go into the future branch too */
    extend_pcr_with(env.tpm_a.tcti, 23, boot_digest);
    use_config("store-future", env.tpm_a.tcti, "sha256:0,16,23");
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    assert_int_equal(provhsm_symmetric_set("sealed-device", SYM_KEY_B64), PROVHSM_OK);
    symmetric_read_cost(NULL);

    /* refused before the store or the TPM is touched */
    hex_of(update_digest, 32, hex);
    snprintf(values, sizeof(values), "sha256:16=%.63s", hex);
    expect_reseal_to_refused("store-future", values, PROVHSM_E_INVALID_ARG,
                             "the value must be 64 hex digits");
    snprintf(values, sizeof(values), "sha256:16=%.63sz", hex);
    expect_reseal_to_refused("store-future", values, PROVHSM_E_INVALID_ARG, "not a hex digit");
    snprintf(values, sizeof(values), "sha256:7=%s,16=%s", hex, hex);
    expect_reseal_to_refused("store-future", values, PROVHSM_E_INVALID_ARG,
                             "PCRs 7 are not in [store] seal_pcrs = sha256:0,16,23");
    snprintf(values, sizeof(values), "sha1:16=%.40s", hex);
    expect_reseal_to_refused("store-future", values, PROVHSM_E_INVALID_ARG,
                             "values of the sha1 bank");
    symmetric_read_cost(NULL);

    /* the value PCR 16 will hold after the update's extend */
    values_after_extend(env.tpm_a.tcti, 16, update_digest, values, sizeof(values));
    char *before = snapshot("store-future");
    assert_int_equal(provhsm_store_reseal_to(values), PROVHSM_OK);
    char *mode = NULL;
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    assert_string_equal(
        mode, "tpm (sealed blob in the store directory, PCRs sha256:0,16,23" PENDING_NOTE ")");
    free(mode);
    assert_int_equal(sealed_version("store-future"), 2);
    char *resealed = snapshot("store-future");
    assert_string_not_equal(before, resealed);
    /* only store.sealed changed: the entries and the header are the same bytes */
    const char *entry = strstr(before, "symmetric.entry:");
    assert_non_null(entry);
    char *line = strndup(entry, (size_t)(strchr(entry, '\n') - entry));
    assert_non_null(strstr(resealed, line));
    free(line);
    free(before);
    free(resealed);

    /* before the update: branch A. Load, StartAuthSession, PolicyPCR, PolicyOR, Unseal,
       FlushContext */
    assert_int_equal(symmetric_read_cost("a store resealed to future PCR values, before the "
                                         "update"),
                     6);
    /* the update: one extend of PCR 16, and the store opens through branch B */
    extend_pcr_with(env.tpm_a.tcti, 16, update_digest);
    assert_int_equal(symmetric_read_cost("a store resealed to future PCR values, after the "
                                         "update"),
                     6);
    /* a second extend is neither: refused, saying so */
    extend_pcr_with(env.tpm_a.tcti, 16, update_digest);
    expect_refused_on_pcrs("store-future", "hold neither the values they had");
    assert_true(provhsm_test_log_seen("nor the values given with --pcr-values"));

    /* a rolled-back update (the TPM restarted: PCRs reset): branch A still opens it */
    provhsm_test_swtpm_kill(&env.tpm_a);
    assert_int_equal(provhsm_test_swtpm_restart(&env.tpm_a), 0);
    extend_pcr_with(env.tpm_a.tcti, 23, boot_digest);
    symmetric_read_cost(NULL);

    /* the update in: a plain reseal binds to the values now, and drops the old ones */
    extend_pcr_with(env.tpm_a.tcti, 16, update_digest);
    symmetric_read_cost(NULL);
    assert_int_equal(provhsm_store_reseal(0), PROVHSM_OK);
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    assert_string_equal(mode, "tpm (sealed blob in the store directory, PCRs sha256:0,16,23)");
    free(mode);
    assert_int_equal(sealed_version("store-future"), 1);
    assert_int_equal(symmetric_read_cost("the same store after a plain reseal"), 5);
    /* the old values back (the old firmware booted again): refused, the old branch is gone */
    provhsm_test_swtpm_kill(&env.tpm_a);
    assert_int_equal(provhsm_test_swtpm_restart(&env.tpm_a), 0);
    extend_pcr_with(env.tpm_a.tcti, 23, boot_digest);
    expect_refused_on_pcrs("store-future", "no longer hold the values");
    /* the new values once more: readable */
    extend_pcr_with(env.tpm_a.tcti, 16, update_digest);
    symmetric_read_cost(NULL);
}

/*
 * A wrong value given to reseal --pcr-values (a typo, or the values of another update):
 * the store still opens under the values now (branch A), so a second reseal --pcr-values
 * with the right value can run, and the update then opens it.
 */
static void test_reseal_to_a_wrong_value_is_corrected(void **state)
{
    (void)state;
    static const uint8_t other_digest[32] = {0xba, 0xd0};
    char values[200];

    provhsm_test_swtpm_kill(&env.tpm_a); /* PCRs reset */
    assert_int_equal(provhsm_test_swtpm_restart(&env.tpm_a), 0);
    use_config("store-typo", env.tpm_a.tcti, "sha256:16");
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    assert_int_equal(provhsm_symmetric_set("sealed-device", SYM_KEY_B64), PROVHSM_OK);

    /* the value after an extend with another digest: not what the update will give */
    values_after_extend(env.tpm_a.tcti, 16, other_digest, values, sizeof(values));
    assert_int_equal(provhsm_store_reseal_to(values), PROVHSM_OK);
    symmetric_read_cost(NULL);
    /* the right value, from a store that still opens */
    values_after_extend(env.tpm_a.tcti, 16, update_digest, values, sizeof(values));
    assert_int_equal(provhsm_store_reseal_to(values), PROVHSM_OK);
    char *mode = NULL;
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    assert_string_equal(mode,
                        "tpm (sealed blob in the store directory, PCRs sha256:16" PENDING_NOTE ")");
    free(mode);
    symmetric_read_cost(NULL);
    extend_pcr_with(env.tpm_a.tcti, 16, update_digest);
    symmetric_read_cost("a store resealed twice to future PCR values, after the update");
    /* what the wrong value would have given is not accepted either */
    provhsm_test_swtpm_kill(&env.tpm_a);
    assert_int_equal(provhsm_test_swtpm_restart(&env.tpm_a), 0);
    extend_pcr_with(env.tpm_a.tcti, 16, other_digest);
    expect_refused_on_pcrs("store-typo", "hold neither the values they had");
    provhsm_test_swtpm_kill(&env.tpm_a);
    assert_int_equal(provhsm_test_swtpm_restart(&env.tpm_a), 0);
}

/*
 * reseal --pcr-values with [store] sealed_key_handle: the handle form of store.sealed
 * carries the PolicyOR branches, so the key at the handle opens before the update and
 * after it (StartAuthSession, PolicyPCR, PolicyOR, Unseal), and not after another change.
 */
static void test_reseal_to_future_values_at_a_handle(void **state)
{
    (void)state;
    char values[200];
    provhsm_test_swtpm_kill(&env.tpm_a); /* PCRs reset */
    assert_int_equal(provhsm_test_swtpm_restart(&env.tpm_a), 0);
    use_config_with("store-future-h", env.tpm_a.tcti,
                    "sealed_key_handle = 0x81000220\nseal_pcrs = sha256:16\n", NULL);
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    assert_int_equal(provhsm_symmetric_set("sealed-device", SYM_KEY_B64), PROVHSM_OK);
    assert_int_equal(symmetric_read_cost(NULL), 3);

    values_after_extend(env.tpm_a.tcti, 16, update_digest, values, sizeof(values));
    assert_int_equal(provhsm_store_reseal_to(values), PROVHSM_OK);
    char *mode = NULL;
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    assert_string_equal(mode, "tpm (persistent handle 0x81000220, PCRs sha256:16" PENDING_NOTE ")");
    free(mode);
    assert_int_equal(sealed_version("store-future-h"), 2);
    assert_int_equal(symmetric_read_cost("a store at a handle resealed to future PCR values, "
                                         "before the update"),
                     4);
    extend_pcr_with(env.tpm_a.tcti, 16, update_digest);
    assert_int_equal(symmetric_read_cost("... after the update"), 4);
    extend_pcr_with(env.tpm_a.tcti, 16, update_digest);
    expect_refused_on_pcrs("store-future-h", "hold neither the values they had");

    /* back to the old values; away from the TPM, which evicts the handle */
    provhsm_test_swtpm_kill(&env.tpm_a);
    assert_int_equal(provhsm_test_swtpm_restart(&env.tpm_a), 0);
    assert_int_equal(provhsm_store_rekey("key-file"), PROVHSM_OK);
    symmetric_read_cost(NULL);
}

/*
 * The parser refuses malformed or inconsistent PolicyOR branches in a version-2
 * store.sealed (one written by reseal --pcr-values on the TPM) before any TPM command.
 */
static void test_sealed_file_parser_branches(void **state)
{
    (void)state;
    char path[400], values[200];
    uint8_t *buf = NULL;
    size_t len = 0;

    use_config("store-or-parse", env.tpm_a.tcti, "sha256:16");
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    values_after_extend(env.tpm_a.tcti, 16, update_digest, values, sizeof(values));
    assert_int_equal(provhsm_store_reseal_to(values), PROVHSM_OK);
    snprintf(path, sizeof(path), "%s/store-or-parse/store.sealed", env.dir);
    assert_int_equal(provhsm_test_read_file(path, &buf, &len), 0);
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_OK);
    for (size_t cut = 0; cut < len; cut += 5)
        assert_int_equal(provhsm_store_parse_sealed(buf, cut, path), PROVHSM_E_CORRUPT);

    /* header 20 bytes; PCR selection: count 1, sha256, 3 select bytes (10 bytes); then
       the branch list: count (4 bytes), each branch a 2-byte size and 32 bytes */
    const size_t branches = 30, branch1 = branches + 4 + 34 + 2;
    assert_int_equal(buf[9], 2);
    assert_int_equal(buf[branches + 3], 2);
    assert_int_equal(buf[branches + 5], 32);

    /* a branch altered: no longer what the object's policy was made from */
    buf[branch1 + 7] ^= 0x01;
    provhsm_test_log_clear();
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_E_CORRUPT);
    assert_true(provhsm_test_log_seen("is not the PolicyOR of the branches"));
    buf[branch1 + 7] ^= 0x01;
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_OK);

    /* one branch counted: format version 2 has two */
    buf[branches + 3] = 1;
    provhsm_test_log_clear();
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_E_CORRUPT);
    assert_true(provhsm_test_log_seen("1 PolicyOR branches; format version 2 has 2"));
    /* nine: more than a digest list holds */
    buf[branches + 3] = 9;
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_E_CORRUPT);
    buf[branches + 3] = 2;

    /* a branch of 20 bytes (the list then runs into the object) */
    buf[branches + 5] = 20;
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_E_CORRUPT);
    buf[branches + 5] = 32;

    /* version 1: the branch list read as the object */
    buf[9] = 1;
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_E_CORRUPT);
    buf[9] = 3;
    provhsm_test_log_clear();
    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_E_CORRUPT);
    assert_true(provhsm_test_log_seen("this build reads versions 1 and 2"));
    buf[9] = 2;

    /* branches without a PCR selection: the 10-byte selection replaced by an empty one */
    uint8_t *unbound = malloc(len);
    assert_non_null(unbound);
    memcpy(unbound, buf, 20);
    memset(unbound + 20, 0, 4);
    memcpy(unbound + 24, buf + branches, len - branches);
    provhsm_test_log_clear();
    assert_int_equal(provhsm_store_parse_sealed(unbound, len - 6, path), PROVHSM_E_CORRUPT);
    assert_true(provhsm_test_log_seen("PolicyOR branches for a key bound to no PCR"));
    free(unbound);

    assert_int_equal(provhsm_store_parse_sealed(buf, len, path), PROVHSM_OK);
    free(buf);
}

/*
 * The digest PolicyPCR compares is made with the policy session's hash (SHA-256), not
 * with the bank's: a store bound to the SHA-1 bank, resealed to the PCR's current SHA-1
 * value given as a --pcr-values value, gets the same digest as the current values, so
 * it is sealed to them alone (no PolicyOR branches: format version 1) and opens.
 */
static void test_reseal_to_values_of_the_sha1_bank(void **state)
{
    (void)state;
    TPM2B_DIGEST now;
    char values[128], hex[41];
    if (!pcr_value(env.tpm_a.tcti, TPM2_ALG_SHA1, 23, &now)) {
        printf("# the TPM has no SHA-1 PCR bank: not run\n");
        skip();
    }
    use_config("store-sha1", env.tpm_a.tcti, "sha1:23");
    assert_int_equal(provhsm_store_init_sealed(), PROVHSM_OK);
    assert_int_equal(provhsm_symmetric_set("sealed-device", SYM_KEY_B64), PROVHSM_OK);
    assert_int_equal(now.size, 20);
    hex_of(now.buffer, 20, hex);
    snprintf(values, sizeof(values), "sha1:23=%s", hex);
    assert_int_equal(provhsm_store_reseal_to(values), PROVHSM_OK);
    char *mode = NULL;
    assert_int_equal(provhsm_store_key_mode(&mode), PROVHSM_OK);
    assert_string_equal(mode, "tpm (sealed blob in the store directory, PCRs sha1:23)");
    free(mode);
    assert_int_equal(sealed_version("store-sha1"), 1);
    assert_int_equal(symmetric_read_cost("a store resealed to the SHA-1 bank's values"), 5);
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    provhsm_test_log_capture();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sealed_store_serves_the_sdk),
        cmocka_unit_test(test_another_tpm_is_refused),
        cmocka_unit_test(test_tpm_absent_is_named),
        cmocka_unit_test(test_pcr_bound_store_and_reseal),
        cmocka_unit_test(test_persistent_handle),
        cmocka_unit_test(test_init_on_fresh_tpm_makes_the_srk),
        cmocka_unit_test(test_rekey_to_tpm_at_handle),
        cmocka_unit_test(test_sealed_store_beside_an_open_tpm_table),
        cmocka_unit_test(test_sealed_store_beside_an_open_tpm_x509_key),
        cmocka_unit_test(test_store_reconnects_the_shared_connection),
        cmocka_unit_test(test_wrong_owner_authorisation),
        cmocka_unit_test(test_sealed_file_parser),
        cmocka_unit_test(test_reseal_to_future_pcr_values),
        cmocka_unit_test(test_reseal_to_a_wrong_value_is_corrected),
        cmocka_unit_test(test_reseal_to_future_values_at_a_handle),
        cmocka_unit_test(test_sealed_file_parser_branches),
        cmocka_unit_test(test_reseal_to_values_of_the_sha1_bank),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
