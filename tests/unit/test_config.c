/*
 * Unit tests for src/config.c: built-in defaults, every key of the INI format, its
 * comment/quoting/whitespace rules, each kind of error (with the exact "origin:line:"
 * prefix, one log line, and the caller's struct left untouched), the environment
 * overrides, and the whole load chain with PROVHSM_CONFIG and an explicit path.
 *
 * Nothing here reads the machine's configuration: HOME, XDG_DATA_HOME and every
 * PROVHSM_* variable are set or cleared by each test, and files live in a private
 * temporary directory. The store-directory default depends on the effective uid, which
 * a test cannot change, so the expectation is picked with geteuid().
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

/* ---- fixture: temp dir, clean environment, captured log ------------------------- */

static char tmpdir[PATH_MAX];
static char origcwd[PATH_MAX];

static int log_errors;
static char log_last[1024];
static char log_last_module[32];

static void capture_log(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)ctx;
    if (level != PROVHSM_LOG_ERROR)
        return;
    log_errors++;
    snprintf(log_last, sizeof(log_last), "%s", message);
    snprintf(log_last_module, sizeof(log_last_module), "%s", module);
}

static const char *const env_vars[] = {"PROVHSM_CONFIG", "PROVHSM_STORE",      "PROVHSM_LOG",
                                       "PROVHSM_TCTI",   "PROVHSM_PASSPHRASE", "XDG_DATA_HOME"};

static int group_setup(void **state)
{
    const char *base = getenv("TMPDIR");

    (void)state;
    if (base == NULL || base[0] != '/')
        base = "/tmp";
    snprintf(tmpdir, sizeof(tmpdir), "%s/provhsm-test-config-XXXXXX", base);
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    if (getcwd(origcwd, sizeof(origcwd)) == NULL)
        return -1;
    provhsm_set_log_callback(capture_log, NULL);
    provhsm_set_log_level(PROVHSM_LOG_ERROR);
    return 0;
}

static const char *const tmp_files[] = {"a.conf",    "b.conf",    "nul.conf",  "bad.conf",
                                        "safe.conf", "link.conf", "fifo.conf", "other.conf"};

static int group_teardown(void **state)
{
    char path[PATH_MAX + 32];

    (void)state;
    if (chdir(origcwd) != 0)
        return -1;
    for (size_t i = 0; i < sizeof(tmp_files) / sizeof(tmp_files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", tmpdir, tmp_files[i]);
        unlink(path);
    }
    rmdir(tmpdir);
    provhsm_set_log_callback(NULL, NULL);
    return 0;
}

/* Each test starts from a known environment and an empty log. */
static int test_setup(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(env_vars) / sizeof(env_vars[0]); i++)
        unsetenv(env_vars[i]);
    setenv("HOME", tmpdir, 1);
    log_errors = 0;
    log_last[0] = '\0';
    log_last_module[0] = '\0';
    return chdir(origcwd);
}

static const char *tmp_path(const char *name)
{
    static char path[PATH_MAX + 32];

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    return path;
}

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    /* whatever the umask: a configuration file others can write is refused */
    assert_int_equal(chmod(path, 0644), 0);
}

static void write_text(const char *path, const char *text)
{
    write_file(path, text, strlen(text));
}

/* A config with defaults, from a heap block so tests can snapshot it cheaply. */
static provhsm_config *new_config(void)
{
    provhsm_config *cfg = malloc(sizeof(*cfg));

    assert_non_null(cfg);
    provhsm_config_defaults(cfg);
    return cfg;
}

/* ---- defaults ------------------------------------------------------------------- */

static void test_defaults_values(void **state)
{
    provhsm_config *cfg = new_config();

    (void)state;
    assert_string_equal(cfg->source, "built-in defaults");
    assert_string_equal(cfg->key_file, "");
    assert_string_equal(cfg->passphrase_file, "");
    assert_string_equal(cfg->passphrase_env, "PROVHSM_PASSPHRASE");
    assert_int_equal(cfg->scrypt_log2_n, 15);
    assert_int_equal(cfg->scrypt_r, 8);
    assert_int_equal(cfg->scrypt_p, 1);
    assert_string_equal(cfg->x509_backend, "software");
    assert_string_equal(cfg->symmetric_backend, "software");
    assert_string_equal(cfg->tpm_backend, "tpm");
    assert_int_equal(cfg->tpm_configured, 0);
    assert_string_equal(cfg->tcti, "device:/dev/tpmrm0");
    assert_int_equal(cfg->ek_handle, 0x81010001u);
    assert_int_equal(cfg->srk_handle, 0x81000001u);
    assert_int_equal(cfg->identity_handle, 0x81000100u);
    assert_string_equal(cfg->owner_auth_file, "");
    assert_string_equal(cfg->owner_auth_env, "");
    assert_string_equal(cfg->endorsement_auth_file, "");
    assert_string_equal(cfg->endorsement_auth_env, "");
    assert_int_equal(cfg->log_level, -1);
    free(cfg);
}

/* The store directory the defaults must pick, given the non-root expectation. */
static void expect_store_default(const char *nonroot_expected)
{
    provhsm_config *cfg = new_config();

    if (geteuid() == 0)
        assert_string_equal(cfg->store_dir, "/var/lib/provhsm");
    else
        assert_string_equal(cfg->store_dir, nonroot_expected);
    free(cfg);
}

static void test_defaults_store_xdg(void **state)
{
    (void)state;
    setenv("XDG_DATA_HOME", "/srv/data", 1);
    expect_store_default("/srv/data/provhsm");
    setenv("XDG_DATA_HOME", "/srv/data/", 1);
    expect_store_default("/srv/data/provhsm");
}

static void test_defaults_store_home(void **state)
{
    char expected[PATH_MAX + 64];

    (void)state;
    snprintf(expected, sizeof(expected), "%s/.local/share/provhsm", tmpdir);
    expect_store_default(expected); /* XDG_DATA_HOME unset */
    setenv("XDG_DATA_HOME", "", 1); /* empty: ignored */
    expect_store_default(expected);
    setenv("XDG_DATA_HOME", "relative/data", 1); /* relative: ignored */
    expect_store_default(expected);
}

static void test_defaults_store_no_home(void **state)
{
    struct passwd *pw = getpwuid(geteuid());
    char expected[PATH_MAX + 64] = "";

    (void)state;
    unsetenv("HOME");
    if (pw != NULL && pw->pw_dir != NULL && pw->pw_dir[0] == '/')
        snprintf(expected, sizeof(expected), "%s/.local/share/provhsm", pw->pw_dir);
    expect_store_default(expected);
}

/* ---- parsing every key -------------------------------------------------------------- */

static const char full_config[] = "# every key, none at its default\n"
                                  "[store]\n"
                                  "path = /srv/provhsm/store\n"
                                  "key_file = /etc/provhsm/store.key\n"
                                  "passphrase_file = /run/secrets/provhsm\n"
                                  "passphrase_env = MY_PASS_2\n"
                                  "scrypt_log2_n = 18\n"
                                  "scrypt_r = 16\n"
                                  "scrypt_p = 4\n"
                                  "\n"
                                  "[x509]\n"
                                  "backend = tpm\n"
                                  "[symmetric]\n"
                                  "backend = pkcs11\n"
                                  "[tpm]\n"
                                  "backend = software\n"
                                  "tcti = mssim:host=localhost,port=2321\n"
                                  "ek_handle = 0x81010002\n"
                                  "srk_handle = 2164260866\n" /* 0x81000002 */
                                  "identity_handle = 0X810001ff\n"
                                  "owner_auth_file = /etc/provhsm/owner.auth\n"
                                  "owner_auth_env = TPM_OWNER\n"
                                  "endorsement_auth_file = /etc/provhsm/eh.auth\n"
                                  "endorsement_auth_env = _EH_AUTH\n"
                                  "[log]\n"
                                  "level = debug\n";

static void check_full_config(const provhsm_config *cfg)
{
    assert_string_equal(cfg->store_dir, "/srv/provhsm/store");
    assert_string_equal(cfg->key_file, "/etc/provhsm/store.key");
    assert_string_equal(cfg->passphrase_file, "/run/secrets/provhsm");
    assert_string_equal(cfg->passphrase_env, "MY_PASS_2");
    assert_int_equal(cfg->scrypt_log2_n, 18);
    assert_int_equal(cfg->scrypt_r, 16);
    assert_int_equal(cfg->scrypt_p, 4);
    assert_string_equal(cfg->x509_backend, "tpm");
    assert_string_equal(cfg->symmetric_backend, "pkcs11");
    assert_string_equal(cfg->tpm_backend, "software");
    assert_int_equal(cfg->tpm_configured, 1);
    assert_string_equal(cfg->tcti, "mssim:host=localhost,port=2321");
    assert_int_equal(cfg->ek_handle, 0x81010002u);
    assert_int_equal(cfg->srk_handle, 0x81000002u);
    assert_int_equal(cfg->identity_handle, 0x810001FFu);
    assert_string_equal(cfg->owner_auth_file, "/etc/provhsm/owner.auth");
    assert_string_equal(cfg->owner_auth_env, "TPM_OWNER");
    assert_string_equal(cfg->endorsement_auth_file, "/etc/provhsm/eh.auth");
    assert_string_equal(cfg->endorsement_auth_env, "_EH_AUTH");
    assert_int_equal(cfg->log_level, PROVHSM_LOG_DEBUG);
}

static void test_parse_every_key(void **state)
{
    provhsm_config *cfg = new_config();
    char err[256] = "stale";

    (void)state;
    assert_int_equal(provhsm_config_parse(cfg, full_config, "full.conf", err, sizeof(err)),
                     PROVHSM_OK);
    assert_string_equal(err, "");
    check_full_config(cfg);
    /* parse() applies text; it does not claim a file as the source */
    assert_string_equal(cfg->source, "built-in defaults");
    assert_int_equal(log_errors, 0);
    free(cfg);
}

static void test_parse_bounds_accepted(void **state)
{
    provhsm_config *cfg = new_config();
    static const char text[] = "[store]\nscrypt_log2_n = 10\nscrypt_r = 32\nscrypt_p = 16\n"
                               "[tpm]\nek_handle = 0x81000000\nsrk_handle = 0x81FFFFFF\n"
                               "identity_handle = 2164260864\n"
                               "[log]\nlevel = WARN\n";

    (void)state;
    assert_int_equal(provhsm_config_parse(cfg, text, "b", NULL, 0), PROVHSM_OK);
    assert_int_equal(cfg->scrypt_log2_n, 10);
    assert_int_equal(cfg->scrypt_r, 32);
    assert_int_equal(cfg->scrypt_p, 16);
    assert_int_equal(cfg->ek_handle, 0x81000000u);
    assert_int_equal(cfg->srk_handle, 0x81FFFFFFu);
    assert_int_equal(cfg->identity_handle, 0x81000000u);
    assert_int_equal(cfg->log_level, PROVHSM_LOG_WARN);
    free(cfg);
}

/* The sealed store key's keys: a PCR bank and PCR numbers parsed, a handle; "" clears. */
static void test_parse_seal_keys(void **state)
{
    provhsm_config *cfg = new_config();
    static const char text[] = "[store]\nseal_pcrs = sha256:0,7,23\n"
                               "sealed_key_handle = 0x81000200\n";

    (void)state;
    assert_int_equal(cfg->seal_pcr_bank, 0);
    assert_int_equal(cfg->sealed_key_handle, 0);
    assert_int_equal(provhsm_config_parse(cfg, text, "s", NULL, 0), PROVHSM_OK);
    assert_string_equal(cfg->seal_pcrs, "sha256:0,7,23");
    assert_int_equal(cfg->seal_pcr_bank, 0x000b);
    assert_int_equal(cfg->seal_pcr_mask, (1u << 0) | (1u << 7) | (1u << 23));
    assert_int_equal(cfg->sealed_key_handle, 0x81000200u);
    assert_int_equal(provhsm_config_parse(cfg, "[store]\nseal_pcrs = sha1:16\n", "s", NULL, 0),
                     PROVHSM_OK);
    assert_int_equal(cfg->seal_pcr_bank, 0x0004);
    assert_int_equal(cfg->seal_pcr_mask, 1u << 16);
    assert_int_equal(provhsm_config_parse(cfg, "[store]\nseal_pcrs =\n", "s", NULL, 0), PROVHSM_OK);
    assert_string_equal(cfg->seal_pcrs, "");
    assert_int_equal(cfg->seal_pcr_bank, 0);
    assert_int_equal(cfg->seal_pcr_mask, 0);
    free(cfg);
}

/* An empty [tpm] section still marks the TPM as configured; other sections do not. */
static void test_parse_tpm_section_presence(void **state)
{
    provhsm_config *cfg = new_config();

    (void)state;
    assert_int_equal(provhsm_config_parse(cfg, "[store]\n[log]\n", "t", NULL, 0), PROVHSM_OK);
    assert_int_equal(cfg->tpm_configured, 0);
    assert_int_equal(provhsm_config_parse(cfg, "[tpm]\n", "t", NULL, 0), PROVHSM_OK);
    assert_int_equal(cfg->tpm_configured, 1);
    free(cfg);
}

/* Keys left out keep their earlier values; empty optional paths and names clear them. */
static void test_parse_partial_and_clearing(void **state)
{
    provhsm_config *cfg = new_config();
    char before_store[PROVHSM_PATH_MAX];

    (void)state;
    snprintf(before_store, sizeof(before_store), "%s", cfg->store_dir);
    assert_int_equal(provhsm_config_parse(cfg, full_config, "a", NULL, 0), PROVHSM_OK);
    assert_int_equal(provhsm_config_parse(cfg,
                                          "[store]\nkey_file = \"\"\npassphrase_file =\n"
                                          "[tpm]\nowner_auth_env =\nendorsement_auth_file = \"\"\n",
                                          "b", NULL, 0),
                     PROVHSM_OK);
    assert_string_equal(cfg->key_file, "");
    assert_string_equal(cfg->passphrase_file, "");
    assert_string_equal(cfg->owner_auth_env, "");
    assert_string_equal(cfg->endorsement_auth_file, "");
    /* untouched by the second text */
    assert_string_equal(cfg->store_dir, "/srv/provhsm/store");
    assert_string_equal(cfg->endorsement_auth_env, "_EH_AUTH");
    assert_int_equal(cfg->scrypt_r, 16);

    /* the empty text changes nothing */
    provhsm_config_defaults(cfg);
    assert_int_equal(provhsm_config_parse(cfg, "", "c", NULL, 0), PROVHSM_OK);
    assert_string_equal(cfg->store_dir, before_store);
    free(cfg);
}

static void test_parse_comments_quoting_whitespace(void **state)
{
    provhsm_config *cfg = new_config();
    static const char text[] = "   # indented comment\n"
                               "#[nosuchsection]\n"
                               "\t\n"
                               "  [ store ]   # a comment after the header\r\n"
                               "\tpath\t=\t/srv/with/trailing/  # comment after blanks\r\n"
                               "key_file=/k#not-a-comment\n"
                               "passphrase_file = \"/run/my secrets/p # 1\"   # real comment\n"
                               "[tpm]\n"
                               "tcti = \"swtpm:path=/tmp/a \\\"b\\\" c\\\\d\"\n"
                               "owner_auth_file =    /o/a   \n"
                               "endorsement_auth_file = \"/e/a\"\n"
                               "[log]\n"
                               "level = info# not a comment, so a bad level would fail\n";
    char err[256];

    (void)state;
    /* the last line must be rejected: '#' without a blank before it is part of the value */
    assert_int_equal(provhsm_config_parse(cfg, text, "q.conf", err, sizeof(err)), PROVHSM_E_CONFIG);
    assert_memory_equal(err, "q.conf:13: ", strlen("q.conf:13: "));

    /* without that line, everything else parses */
    char *good = strdup(text);
    assert_non_null(good);
    *strstr(good, "[log]") = '\0';
    assert_int_equal(provhsm_config_parse(cfg, good, "q.conf", err, sizeof(err)), PROVHSM_OK);
    free(good);
    assert_string_equal(cfg->store_dir, "/srv/with/trailing");
    assert_string_equal(cfg->key_file, "/k#not-a-comment");
    assert_string_equal(cfg->passphrase_file, "/run/my secrets/p # 1");
    assert_string_equal(cfg->tcti, "swtpm:path=/tmp/a \"b\" c\\d");
    assert_string_equal(cfg->owner_auth_file, "/o/a");
    assert_string_equal(cfg->endorsement_auth_file, "/e/a");

    /* an inline comment right after '=' leaves an empty value; for level that is an error */
    assert_int_equal(provhsm_config_parse(cfg, "[log]\nlevel = # none\n", "e", err, sizeof(err)),
                     PROVHSM_E_CONFIG);
    assert_memory_equal(err, "e:2: ", 5);
    assert_int_equal(provhsm_config_parse(cfg, "[store]\nkey_file = # none\n", "e", NULL, 0),
                     PROVHSM_OK);
    assert_string_equal(cfg->key_file, "");

    /* a last line without a newline counts */
    assert_int_equal(provhsm_config_parse(cfg, "[log]\nlevel = error", "e", NULL, 0), PROVHSM_OK);
    assert_int_equal(cfg->log_level, PROVHSM_LOG_ERROR);
    free(cfg);
}

/* ---- errors ------------------------------------------------------------------------- */

typedef struct bad_case {
    const char *text;
    unsigned line;      /* expected line number in the message */
    const char *reason; /* a substring of the reason */
} bad_case;

static const bad_case bad_cases[] = {
    {"[nosuch]\n", 1, "unknown section [nosuch]"},
    {"[store]\nseal_pcrs = sha256\n", 2, "does not start with a PCR bank"},
    {"[store]\nseal_pcrs = md5:0\n", 2, "does not start with a PCR bank"},
    {"[store]\nseal_pcrs = sha256:\n", 2, "expected a PCR number"},
    {"[store]\nseal_pcrs = sha256:0,,7\n", 2, "expected a PCR number"},
    {"[store]\nseal_pcrs = sha256:24\n", 2, "out of range (0..23) or named twice"},
    {"[store]\nseal_pcrs = sha256:7,7\n", 2, "out of range (0..23) or named twice"},
    {"[store]\nseal_pcrs = sha256:0;7\n", 2, "expected ','"},
    {"[store]\nseal_pcrs = sha256:-1\n", 2, "expected a PCR number"},
    {"[store]\nsealed_key_handle = 0x80000001\n", 2, "is not a persistent handle"},
    {"[store]\n[Store]\n", 2, "unknown section [Store]"},
    {"[]\n", 1, "unknown section []"},
    {"[store\n", 1, "without ']'"},
    {"[store] extra\n", 1, "after the section header"},
    {"[store]# no blank\n", 1, "after the section header"},
    {"[store]\nsize = 3\n", 2, "unknown key \"size\" in [store]"},
    {"[x509]\npath = /a\n", 2, "unknown key \"path\" in [x509]"},
    {"[store]\nPath = /a\n", 2, "unknown key \"Path\""},
    {"# comment\n\npath = /a\n", 3, "outside any [section]"},
    {"[store]\npath = /a\n# x\npath = /b\n", 4, "duplicate key \"path\" in [store]"},
    {"[store]\npath = /a\n[log]\n[store]\npath = /b\n", 5, "duplicate key \"path\""},
    {"[tpm]\nbackend = tpm\n[x509]\nbackend = tpm\n[tpm]\nbackend = tpm\n", 6,
     "duplicate key \"backend\" in [tpm]"},
    {"[store]\n\npath /a\n", 3, "expected \"key = value\""},
    {"[store]\n = /a\n", 2, "missing key name"},
    {"[store]\npath = relative/dir\n", 2, "[store] path: must be an absolute path"},
    {"[store]\npath =\n", 2, "[store] path: must not be empty"},
    {"[store]\nkey_file = store.key\n", 2, "[store] key_file: must be an absolute path"},
    {"[store]\npassphrase_file = ./p\n", 2, "passphrase_file: must be an absolute path"},
    {"[tpm]\nowner_auth_file = o\n", 2, "owner_auth_file: must be an absolute path"},
    {"[tpm]\nendorsement_auth_file = e\n", 2, "endorsement_auth_file: must be"},
    {"[store]\npassphrase_env = my_pass\n", 2, "passphrase_env: not an environment variable"},
    {"[store]\npassphrase_env = 1PASS\n", 2, "passphrase_env: not an environment variable"},
    {"[store]\npassphrase_env = PASS-WORD\n", 2, "not an environment variable"},
    {"[store]\npassphrase_env =\n", 2, "passphrase_env: not an environment variable"},
    {"[store]\npassphrase_env = ABCDEFGHIJKLMNOPQRSTUVWXYZ012345\n", 2, "longer than 31"},
    {"[tpm]\nowner_auth_env = owner\n", 2, "owner_auth_env: not an environment variable"},
    {"[tpm]\nendorsement_auth_env = E H\n", 2, "endorsement_auth_env: not an environment"},
    {"[store]\nscrypt_log2_n = 9\n", 2, "scrypt_log2_n: \"9\" is not an integer in 10..22"},
    {"[store]\nscrypt_log2_n = 23\n", 2, "in 10..22"},
    {"[store]\nscrypt_log2_n = 15x\n", 2, "\"15x\" is not an integer"},
    {"[store]\nscrypt_log2_n = +15\n", 2, "\"+15\" is not an integer"},
    {"[store]\nscrypt_log2_n = -1\n", 2, "\"-1\" is not an integer"},
    {"[store]\nscrypt_log2_n = 0x10\n", 2, "is not an integer"},
    {"[store]\nscrypt_log2_n =\n", 2, "is not an integer"},
    {"[store]\nscrypt_log2_n = 99999999999999999999999\n", 2, "is not an integer"},
    {"[store]\nscrypt_r = 0\n", 2, "scrypt_r: \"0\" is not an integer in 1..32"},
    {"[store]\nscrypt_r = 33\n", 2, "in 1..32"},
    {"[store]\nscrypt_p = 0\n", 2, "scrypt_p: \"0\" is not an integer in 1..16"},
    {"[store]\nscrypt_p = 17\n", 2, "in 1..16"},
    {"[tpm]\nek_handle = 0x80FFFFFF\n", 2, "ek_handle: \"0x80FFFFFF\" is not a persistent handle"},
    {"[tpm]\nsrk_handle = 0x82000000\n", 2, "srk_handle: \"0x82000000\" is not a persistent"},
    {"[tpm]\nidentity_handle = 2164260863\n", 2, "identity_handle: \"2164260863\" is not"},
    {"[tpm]\nek_handle = 0x\n", 2, "is not a persistent handle"},
    {"[tpm]\nek_handle = 0x81O10001\n", 2, "is not a persistent handle"},
    {"[tpm]\nek_handle = 0x-81010001\n", 2, "is not a persistent handle"},
    {"[tpm]\nek_handle = 0x1000000081010001\n", 2, "is not a persistent handle"},
    {"[tpm]\nek_handle = 0x81010001 extra\n", 2, "is not a persistent handle"},
    {"[tpm]\nek_handle =\n", 2, "is not a persistent handle"},
    {"[x509]\nbackend = sofware\n", 2, "[x509] backend: unknown backend \"sofware\""},
    {"[symmetric]\nbackend = Software\n", 2, "[symmetric] backend: unknown backend"},
    {"[tpm]\nbackend = \n", 2, "[tpm] backend: unknown backend"},
    {"[tpm]\ntcti =\n", 2, "[tpm] tcti: must not be empty"},
    {"[log]\nlevel = verbose\n", 2, "[log] level: \"verbose\" is not error, warn, info or debug"},
    {"[log]\nlevel = 3\n", 2, "is not error, warn, info or debug"},
    {"[store]\npath = \"/a\n", 2, "unterminated quoted value"},
    {"[store]\npath = \"/a\\\"\n", 2, "unterminated quoted value"},
    {"[store]\npath = \"/a\" b\n", 2, "unexpected text after the closing quote"},
    {"[store]\npath = \"/a\"# c\n", 2, "unexpected text after the closing quote"},
};

static void test_parse_errors(void **state)
{
    provhsm_config *cfg = new_config();
    provhsm_config *snapshot = new_config();
    char err[512], prefix[64];

    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const bad_case *c = &bad_cases[i];

        log_errors = 0;
        memcpy(snapshot, cfg, sizeof(*cfg));
        err[0] = '\0';
        provhsm_err rc = provhsm_config_parse(cfg, c->text, "bad.conf", err, sizeof(err));
        if (rc != PROVHSM_E_CONFIG || strstr(err, c->reason) == NULL)
            print_error("case %zu: rc=%d err=\"%s\" (wanted \"%s\")\n", i, rc, err, c->reason);
        assert_int_equal(rc, PROVHSM_E_CONFIG);
        snprintf(prefix, sizeof(prefix), "bad.conf:%u: ", c->line);
        assert_memory_equal(err, prefix, strlen(prefix));
        assert_non_null(strstr(err, c->reason));
        /* logged exactly once, by the config module, with the same text */
        assert_int_equal(log_errors, 1);
        assert_string_equal(log_last_module, "config");
        assert_string_equal(log_last, err);
        /* the caller's struct is untouched on failure */
        assert_memory_equal(cfg, snapshot, sizeof(*cfg));
    }
    free(cfg);
    free(snapshot);
}

/* A failure after several good lines leaves none of them applied. */
static void test_parse_error_is_atomic(void **state)
{
    provhsm_config *cfg = new_config();
    provhsm_config *snapshot = new_config();

    (void)state;
    memcpy(snapshot, cfg, sizeof(*cfg));
    assert_int_equal(
        provhsm_config_parse(cfg, "[store]\npath = /x\n[tpm]\nek_handle = 1\n", "a", NULL, 0),
        PROVHSM_E_CONFIG);
    assert_memory_equal(cfg, snapshot, sizeof(*cfg));
    assert_int_equal(cfg->tpm_configured, 0);
    assert_int_equal(log_errors, 1);
    free(cfg);
    free(snapshot);
}

static void test_parse_errbuf_small_and_null(void **state)
{
    provhsm_config *cfg = new_config();
    char err[12];

    (void)state;
    memset(err, 'Z', sizeof(err));
    assert_int_equal(provhsm_config_parse(cfg, "x\n", "origin.conf", err, 8), PROVHSM_E_CONFIG);
    assert_string_equal(err, "origin."); /* truncated, terminated, within the given length */
    assert_int_equal(err[8], 'Z');
    assert_int_equal(provhsm_config_parse(cfg, "x\n", "origin.conf", NULL, 0), PROVHSM_E_CONFIG);
    assert_int_equal(provhsm_config_parse(cfg, "x\n", "origin.conf", err, 0), PROVHSM_E_CONFIG);
    assert_int_equal(provhsm_config_parse(NULL, "", "o", NULL, 0), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_config_parse(cfg, NULL, "o", NULL, 0), PROVHSM_E_INVALID_ARG);
    free(cfg);
}

static void test_parse_line_length(void **state)
{
    provhsm_config *cfg = new_config();
    size_t n = 3 * 4200;
    char *text = malloc(n);
    char err[256];

    (void)state;
    assert_non_null(text);
    /* line 1: a 4096-byte comment (accepted); line 2: 4097 bytes (rejected) */
    memset(text, ' ', n);
    text[0] = '#';
    text[4096] = '\n';
    memcpy(text + 4097, "[store]", 7);
    text[4097 + 4097] = '\n';
    text[4097 + 4098] = '\0';
    assert_int_equal(provhsm_config_parse(cfg, text, "long.conf", err, sizeof(err)),
                     PROVHSM_E_CONFIG);
    assert_memory_equal(err, "long.conf:2: ", 13);
    assert_non_null(strstr(err, "line longer than 4096 bytes"));

    /* exactly 4096 bytes on line 2 is fine */
    text[4097 + 4096] = '\n';
    text[4097 + 4097] = '\0';
    assert_int_equal(provhsm_config_parse(cfg, text, "long.conf", err, sizeof(err)), PROVHSM_OK);
    free(text);
    free(cfg);
}

/* Paths that do not fit are refused, never cut. */
static void test_parse_path_too_long(void **state)
{
    provhsm_config *cfg = new_config();
    char *text = malloc(8192);
    char err[256];
    size_t len;

    (void)state;
    assert_non_null(text);
    /* a 4086-byte store path: <path>/store.key would need 4096 bytes plus the NUL */
    len = (size_t)snprintf(text, 8192, "[store]\npath = /");
    memset(text + len, 'a', 4085);
    strcpy(text + len + 4085, "\n");
    assert_int_equal(provhsm_config_parse(cfg, text, "p", err, sizeof(err)), PROVHSM_E_CONFIG);
    assert_memory_equal(err, "p:2: ", 5);
    assert_non_null(strstr(err, "[store] path: path is too long"));

    /* one byte shorter fits, and the key file path built from it fits too */
    strcpy(text + len + 4084, "\n");
    assert_int_equal(provhsm_config_parse(cfg, text, "p", err, sizeof(err)), PROVHSM_OK);
    assert_int_equal(strlen(cfg->store_dir), 4085);
    char key[PROVHSM_PATH_MAX];
    provhsm_config_key_file(cfg, key, sizeof(key));
    assert_int_equal(strlen(key), PROVHSM_PATH_MAX - 1);

    /* a TCTI string longer than its 511-byte buffer */
    len = (size_t)snprintf(text, 8192, "[tpm]\ntcti = ");
    memset(text + len, 't', 512);
    strcpy(text + len + 512, "\n");
    assert_int_equal(provhsm_config_parse(cfg, text, "p", err, sizeof(err)), PROVHSM_E_CONFIG);
    assert_non_null(strstr(err, "p:2: [tpm] tcti: value is longer than 511"));
    strcpy(text + len + 511, "\n");
    assert_int_equal(provhsm_config_parse(cfg, text, "p", err, sizeof(err)), PROVHSM_OK);
    assert_int_equal(strlen(cfg->tcti), 511);
    free(text);
    free(cfg);
}

/* ---- files ------------------------------------------------------------------------ */

static void test_parse_file(void **state)
{
    provhsm_config *cfg = new_config();
    char err[PROVHSM_PATH_MAX + 128];
    const char *path = tmp_path("a.conf");

    (void)state;
    write_file(path, full_config, strlen(full_config));
    assert_int_equal(provhsm_config_parse_file(cfg, path, err, sizeof(err)), PROVHSM_OK);
    check_full_config(cfg);
    assert_string_equal(cfg->source, path);

    /* a bad file names itself and the line */
    char bad[] = "[store]\n\n\nscrypt_p = 99\n";
    path = tmp_path("bad.conf");
    write_file(path, bad, strlen(bad));
    provhsm_config_defaults(cfg);
    assert_int_equal(provhsm_config_parse_file(cfg, path, err, sizeof(err)), PROVHSM_E_CONFIG);
    char prefix[PATH_MAX + 64];
    snprintf(prefix, sizeof(prefix), "%s:4: [store] scrypt_p:", path);
    assert_memory_equal(err, prefix, strlen(prefix));
    assert_string_equal(cfg->source, "built-in defaults");
    free(cfg);
}

static void test_parse_file_missing(void **state)
{
    provhsm_config *cfg = new_config();
    char err[PROVHSM_PATH_MAX + 128];
    const char *path = tmp_path("does-not-exist.conf");

    (void)state;
    assert_int_equal(provhsm_config_parse_file(cfg, path, err, sizeof(err)), PROVHSM_E_NOT_FOUND);
    assert_non_null(strstr(err, path));
    assert_int_equal(log_errors, 1);
    assert_string_equal(cfg->source, "built-in defaults");
    free(cfg);
}

static void test_parse_file_nul_byte(void **state)
{
    provhsm_config *cfg = new_config();
    char err[PROVHSM_PATH_MAX + 128], prefix[PATH_MAX + 64];
    static const char data[] = "[store]\n# x\npath = /a\0/b\n";
    const char *path = tmp_path("nul.conf");

    (void)state;
    write_file(path, data, sizeof(data) - 1);
    assert_int_equal(provhsm_config_parse_file(cfg, path, err, sizeof(err)), PROVHSM_E_CONFIG);
    snprintf(prefix, sizeof(prefix), "%s:3: ", path);
    assert_memory_equal(err, prefix, strlen(prefix));
    assert_non_null(strstr(err, "NUL byte"));
    assert_string_equal(cfg->source, "built-in defaults");
    free(cfg);
}

/* ---- who may write the file ----------------------------------------------------- */

/* A valid file (it sets the log level) the tests below make unsafe one way or another. */
static const char safe_text[] = "[log]\nlevel = debug\n";

/* parse_file must refuse with `want`, name the file in errbuf and the log, change nothing. */
static void expect_refused(const char *path, provhsm_err want, const char *reason)
{
    provhsm_config *cfg = new_config();
    char err[PROVHSM_PATH_MAX + 512];

    log_errors = 0;
    assert_int_equal(provhsm_config_parse_file(cfg, path, err, sizeof(err)), want);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, reason));
    assert_non_null(strstr(err, "configuration file"));
    assert_int_equal(log_errors, 1);
    assert_non_null(strstr(log_last, path));
    assert_int_equal(cfg->log_level, -1);
    assert_string_equal(cfg->source, "built-in defaults");
    free(cfg);
}

static void expect_accepted(const char *path)
{
    provhsm_config *cfg = new_config();

    assert_int_equal(provhsm_config_parse_file(cfg, path, NULL, 0), PROVHSM_OK);
    assert_int_equal(cfg->log_level, PROVHSM_LOG_DEBUG);
    free(cfg);
}

/* The configuration names the TCTI library to load: others may read it, never write it. */
static void test_parse_file_writable_by_others(void **state)
{
    const char *path = tmp_path("safe.conf");
    static const struct {
        mode_t mode;
        const char *shown;
    } refused[] = {{0664, "0664"}, {0646, "0646"}, {0620, "0620"}, {0666, "0666"}};

    (void)state;
    write_text(path, safe_text);
    expect_accepted(path);
    assert_int_equal(chmod(path, 0600), 0);
    expect_accepted(path);
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        assert_int_equal(chmod(path, refused[i].mode), 0);
        expect_refused(path, PROVHSM_E_PERMISSION, refused[i].shown);
    }
    assert_int_equal(chmod(path, 0644), 0);
    expect_accepted(path);
}

static void test_parse_file_symlink(void **state)
{
    char link_path[PATH_MAX + 32];

    (void)state;
    write_text(tmp_path("safe.conf"), safe_text);
    snprintf(link_path, sizeof(link_path), "%s", tmp_path("link.conf"));
    unlink(link_path);
    assert_int_equal(symlink(tmp_path("safe.conf"), link_path), 0);
    expect_refused(link_path, PROVHSM_E_PERMISSION, "symbolic link");
}

/* A FIFO is refused at once: the open does not wait for a writer, nothing is read. */
static void test_parse_file_fifo(void **state)
{
    char fifo[PATH_MAX + 32];

    (void)state;
    snprintf(fifo, sizeof(fifo), "%s", tmp_path("fifo.conf"));
    unlink(fifo);
    assert_int_equal(mkfifo(fifo, 0644), 0);
    alarm(10); /* a blocking open would end the program here */
    expect_refused(fifo, PROVHSM_E_CORRUPT, "not a regular file");
    alarm(0);
}

/* Owned by someone else (not root): refused. Needs the right to chown, so root (CI). */
static void test_parse_file_other_owner(void **state)
{
    char path[PATH_MAX + 32];

    (void)state;
    if (geteuid() != 0) {
        printf("note: not root: a configuration file of another owner is not tried\n");
        return;
    }
    snprintf(path, sizeof(path), "%s", tmp_path("other.conf"));
    write_text(path, safe_text);
    assert_int_equal(chown(path, 4242, (gid_t)-1), 0);
    expect_refused(path, PROVHSM_E_PERMISSION, "owner uid 4242");
    /* root's own file is trusted by anyone (root owns /etc/provhsm) */
    assert_int_equal(chown(path, 0, (gid_t)-1), 0);
    expect_accepted(path);
}

/* The same check on the whole chain, with the file named by PROVHSM_CONFIG. */
static void test_load_refuses_writable_file(void **state)
{
    provhsm_config *cfg = new_config();
    const char *path = tmp_path("safe.conf");

    (void)state;
    write_text(path, safe_text);
    assert_int_equal(chmod(path, 0664), 0);
    setenv("PROVHSM_CONFIG", path, 1);
    setenv("PROVHSM_STORE", "/var/tmp/provhsm-test-store", 1);
    log_errors = 0;
    assert_int_equal(provhsm_config_load(cfg, NULL), PROVHSM_E_PERMISSION);
    assert_int_equal(log_errors, 1);
    assert_non_null(strstr(log_last, path));
    assert_non_null(strstr(log_last, "PROVHSM_CONFIG"));
    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(provhsm_config_load(cfg, NULL), PROVHSM_OK);
    free(cfg);
}

/* /dev/null, the usual "no file", is an empty configuration although not a regular file. */
static void test_parse_file_dev_null(void **state)
{
    provhsm_config *cfg = new_config();

    (void)state;
    assert_int_equal(provhsm_config_parse_file(cfg, "/dev/null", NULL, 0), PROVHSM_OK);
    assert_string_equal(cfg->source, "/dev/null");
    free(cfg);
}

/* ---- environment -------------------------------------------------------------------- */

static void test_env_store(void **state)
{
    provhsm_config *cfg = new_config();
    char cwd[PATH_MAX], expected[PATH_MAX + 64];

    (void)state;
    setenv("PROVHSM_STORE", "/opt/store/", 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_OK);
    assert_string_equal(cfg->store_dir, "/opt/store");

    /* relative: made absolute against the current directory */
    assert_int_equal(chdir(tmpdir), 0);
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    setenv("PROVHSM_STORE", "rel/store", 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_OK);
    snprintf(expected, sizeof(expected), "%s/rel/store", cwd);
    assert_string_equal(cfg->store_dir, expected);

    assert_int_equal(chdir("/"), 0);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_OK);
    assert_string_equal(cfg->store_dir, "/rel/store");

    /* empty: an error, and nothing changes */
    setenv("PROVHSM_STORE", "", 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_E_CONFIG);
    assert_string_equal(cfg->store_dir, "/rel/store");
    assert_int_equal(log_errors, 1);
    assert_non_null(strstr(log_last, "PROVHSM_STORE"));

    /* too long: an error, not a cut path */
    char *lng = malloc(PROVHSM_PATH_MAX + 2);
    assert_non_null(lng);
    lng[0] = '/';
    memset(lng + 1, 's', PROVHSM_PATH_MAX);
    lng[PROVHSM_PATH_MAX + 1] = '\0';
    setenv("PROVHSM_STORE", lng, 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_E_CONFIG);
    assert_string_equal(cfg->store_dir, "/rel/store");
    free(lng);
    free(cfg);
}

static void test_env_log(void **state)
{
    provhsm_config *cfg = new_config();

    (void)state;
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_OK); /* unset: stays -1 */
    assert_int_equal(cfg->log_level, -1);

    setenv("PROVHSM_LOG", "debug", 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_OK);
    assert_int_equal(cfg->log_level, PROVHSM_LOG_DEBUG);

    /* the environment wins over the file */
    assert_int_equal(provhsm_config_parse(cfg, "[log]\nlevel = error\n", "f", NULL, 0), PROVHSM_OK);
    assert_int_equal(cfg->log_level, PROVHSM_LOG_ERROR);
    setenv("PROVHSM_LOG", "Info", 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_OK);
    assert_int_equal(cfg->log_level, PROVHSM_LOG_INFO);

    /* empty means unset */
    setenv("PROVHSM_LOG", "", 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_OK);
    assert_int_equal(cfg->log_level, PROVHSM_LOG_INFO);

    /* anything else is a configuration error with a clear message */
    setenv("PROVHSM_LOG", "loud", 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_E_CONFIG);
    assert_int_equal(cfg->log_level, PROVHSM_LOG_INFO);
    assert_int_equal(log_errors, 1);
    assert_non_null(strstr(log_last, "PROVHSM_LOG=\"loud\""));
    assert_non_null(strstr(log_last, "error, warn, info, debug"));
    free(cfg);
}

static void test_env_tcti(void **state)
{
    provhsm_config *cfg = new_config();

    (void)state;
    setenv("PROVHSM_TCTI", "swtpm:host=127.0.0.1,port=2321", 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_OK);
    assert_string_equal(cfg->tcti, "swtpm:host=127.0.0.1,port=2321");
    assert_int_equal(cfg->tpm_configured, 1);

    provhsm_config_defaults(cfg);
    setenv("PROVHSM_TCTI", "", 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_E_CONFIG);
    assert_int_equal(cfg->tpm_configured, 0);
    assert_string_equal(cfg->tcti, "device:/dev/tpmrm0");

    char lng[600];
    memset(lng, 'x', sizeof(lng) - 1);
    lng[sizeof(lng) - 1] = '\0';
    setenv("PROVHSM_TCTI", lng, 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_E_CONFIG);
    assert_int_equal(cfg->tpm_configured, 0);
    assert_string_equal(cfg->tcti, "device:/dev/tpmrm0");
    free(cfg);
}

/* One bad variable rejects the whole set: no half-applied environment. */
static void test_env_atomic(void **state)
{
    provhsm_config *cfg = new_config();
    provhsm_config *snapshot = new_config();

    (void)state;
    memcpy(snapshot, cfg, sizeof(*cfg));
    setenv("PROVHSM_STORE", "/new/store", 1);
    setenv("PROVHSM_TCTI", "mssim", 1);
    setenv("PROVHSM_LOG", "chatty", 1);
    assert_int_equal(provhsm_config_apply_env(cfg), PROVHSM_E_CONFIG);
    assert_memory_equal(cfg, snapshot, sizeof(*cfg));
    free(cfg);
    free(snapshot);
}

/* ---- the whole chain -------------------------------------------------------------- */

static void test_load_from_env_file(void **state)
{
    provhsm_config *cfg = malloc(sizeof(*cfg));
    const char *path = tmp_path("a.conf");
    char pathcopy[PATH_MAX + 32];

    (void)state;
    assert_non_null(cfg);
    snprintf(pathcopy, sizeof(pathcopy), "%s", path);
    write_file(pathcopy, full_config, strlen(full_config));
    setenv("PROVHSM_CONFIG", pathcopy, 1);
    assert_int_equal(provhsm_config_load(cfg, NULL), PROVHSM_OK);
    check_full_config(cfg);
    assert_string_equal(cfg->source, pathcopy);

    /* environment overrides come last */
    setenv("PROVHSM_STORE", "/env/store", 1);
    setenv("PROVHSM_LOG", "warn", 1);
    setenv("PROVHSM_TCTI", "mssim:port=1", 1);
    assert_int_equal(provhsm_config_load(cfg, NULL), PROVHSM_OK);
    assert_string_equal(cfg->store_dir, "/env/store");
    assert_int_equal(cfg->log_level, PROVHSM_LOG_WARN);
    assert_string_equal(cfg->tcti, "mssim:port=1");
    assert_string_equal(cfg->key_file, "/etc/provhsm/store.key"); /* still from the file */
    assert_int_equal(log_errors, 0);
    free(cfg);
}

static void test_load_env_file_missing(void **state)
{
    provhsm_config *cfg = new_config();
    provhsm_config *snapshot = new_config();

    (void)state;
    memcpy(snapshot, cfg, sizeof(*cfg));
    setenv("PROVHSM_CONFIG", tmp_path("missing.conf"), 1);
    assert_int_equal(provhsm_config_load(cfg, NULL), PROVHSM_E_NOT_FOUND);
    assert_memory_equal(cfg, snapshot, sizeof(*cfg));
    assert_int_equal(log_errors, 1);
    assert_non_null(strstr(log_last, "missing.conf"));
    assert_non_null(strstr(log_last, "PROVHSM_CONFIG"));
    free(cfg);
    free(snapshot);
}

static void test_load_explicit_path(void **state)
{
    provhsm_config *cfg = malloc(sizeof(*cfg));
    char a[PATH_MAX + 32], b[PATH_MAX + 32];

    (void)state;
    assert_non_null(cfg);
    snprintf(a, sizeof(a), "%s", tmp_path("a.conf"));
    snprintf(b, sizeof(b), "%s", tmp_path("b.conf"));
    write_text(a, "[store]\npath = /from/env-file\n");
    write_text(b, "[store]\npath = /from/explicit\n");
    setenv("PROVHSM_CONFIG", a, 1);
    assert_int_equal(provhsm_config_load(cfg, b), PROVHSM_OK);
    assert_string_equal(cfg->store_dir, "/from/explicit");
    assert_string_equal(cfg->source, b);

    /* an explicit file that is missing is an error even when PROVHSM_CONFIG is fine */
    assert_int_equal(provhsm_config_load(cfg, tmp_path("gone.conf")), PROVHSM_E_NOT_FOUND);
    assert_string_equal(cfg->source, b);
    assert_int_equal(log_errors, 1);

    /* a bad file fails the load with the file's error */
    write_text(b, "[store]\npath = x\n");
    assert_int_equal(provhsm_config_load(cfg, b), PROVHSM_E_CONFIG);
    assert_string_equal(cfg->store_dir, "/from/explicit");
    free(cfg);
}

/* Without a file anywhere, the defaults plus the environment. Skipped when this machine
 * has a system configuration, which this test must not depend on. */
static void test_load_defaults_only(void **state)
{
    provhsm_config *cfg = malloc(sizeof(*cfg));
    struct stat st;

    (void)state;
    assert_non_null(cfg);
    if (stat("/etc/provhsm/provhsm.conf", &st) == 0 || errno != ENOENT) {
        free(cfg);
        skip();
    }
    setenv("PROVHSM_CONFIG", "", 1); /* empty: as if unset */
    setenv("PROVHSM_STORE", "/only/env", 1);
    assert_int_equal(provhsm_config_load(cfg, NULL), PROVHSM_OK);
    assert_string_equal(cfg->source, "built-in defaults");
    assert_string_equal(cfg->store_dir, "/only/env");
    assert_int_equal(cfg->scrypt_log2_n, 15);
    free(cfg);
}

/* ---- key file ------------------------------------------------------------------------ */

static void test_key_file(void **state)
{
    provhsm_config *cfg = new_config();
    char out[PROVHSM_PATH_MAX];
    char small[8];

    (void)state;
    assert_int_equal(provhsm_config_parse(cfg, "[store]\npath = /srv/st\n", "k", NULL, 0),
                     PROVHSM_OK);
    provhsm_config_key_file(cfg, out, sizeof(out));
    assert_string_equal(out, "/srv/st/store.key");

    assert_int_equal(provhsm_config_parse(cfg, "[store]\nkey_file = /keys/key\n", "k", NULL, 0),
                     PROVHSM_OK);
    provhsm_config_key_file(cfg, out, sizeof(out));
    assert_string_equal(out, "/keys/key");

    /* too small a buffer: empty output and a log line, never a cut path */
    memset(small, 'Z', sizeof(small));
    provhsm_config_key_file(cfg, small, sizeof(small));
    assert_string_equal(small, "");
    assert_int_equal(log_errors, 1);

    provhsm_config_defaults(cfg);
    assert_int_equal(provhsm_config_parse(cfg, "[store]\npath = /\n", "k", NULL, 0), PROVHSM_OK);
    provhsm_config_key_file(cfg, out, sizeof(out));
    assert_string_equal(out, "/store.key");
    free(cfg);
}

/* Which TCTIs release a closed connection's objects: the store skips a flush only there. */
static void test_tcti_releases_on_close(void **state)
{
    static const char *const with_manager[] = {
        "device:/dev/tpmrm0",
        "device:/dev/tpmrm12",
        "tabrmd",
        "tabrmd:",
        "tabrmd:bus_type=session",
        "tabrmd:bus_name=com.example.Tabrmd,bus_type=system",
        "libtss2-tcti-tabrmd.so.0",
        "libtss2-tcti-tabrmd.so.0:bus_type=session",
        "libtss2-tcti-tabrmd.so",
        "libtss2-tcti-device.so.0:/dev/tpmrm0",
    };
    static const char *const without[] = {
        "",
        "device",
        "device:",
        "device:/dev/tpm0",
        "device:/dev/tpmrm",
        "device:/dev/tpmrm0x",
        "device:/dev/tpmrm0/",
        "device:/dev/tpmrm-1",
        "device:/tmp/dev/tpmrm0",
        "device:/dev/tpm0,/dev/tpmrm0",
        "swtpm:host=127.0.0.1,port=2321",
        "mssim",
        "mssim:host=localhost",
        "tabrmdx",
        "tabrm",
        "xtabrmd",
        "Tabrmd",
        "libtss2-tcti-tabrmd",
        "libtss2-tcti-tabrmd.so0",
        "libtss2-tcti-tabrmdx.so.0",
        "libtss2-tcti-device.so:/dev/tpm0",
        "/dev/tpmrm0",
        "tpmrm0",
        ":tabrmd",
        "spi-helper:/dev/tpmrm0",
    };
    (void)state;
    for (size_t i = 0; i < sizeof(with_manager) / sizeof(with_manager[0]); i++)
        if (!provhsm_tcti_releases_on_close(with_manager[i]))
            fail_msg("\"%s\" goes through a resource manager", with_manager[i]);
    for (size_t i = 0; i < sizeof(without) / sizeof(without[0]); i++)
        if (provhsm_tcti_releases_on_close(without[i]))
            fail_msg("\"%s\" has no resource manager that is known here", without[i]);
    assert_int_equal(provhsm_tcti_releases_on_close(NULL), 0);

    /* the default TCTI is the kernel's resource manager */
    provhsm_config *cfg = new_config();
    assert_int_equal(provhsm_tcti_releases_on_close(cfg->tcti), 1);
    free(cfg);
}

#define T(f) cmocka_unit_test_setup(f, test_setup)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_defaults_values),
        T(test_tcti_releases_on_close),
        T(test_defaults_store_xdg),
        T(test_defaults_store_home),
        T(test_defaults_store_no_home),
        T(test_parse_every_key),
        T(test_parse_bounds_accepted),
        T(test_parse_seal_keys),
        T(test_parse_tpm_section_presence),
        T(test_parse_partial_and_clearing),
        T(test_parse_comments_quoting_whitespace),
        T(test_parse_errors),
        T(test_parse_error_is_atomic),
        T(test_parse_errbuf_small_and_null),
        T(test_parse_line_length),
        T(test_parse_path_too_long),
        T(test_parse_file),
        T(test_parse_file_missing),
        T(test_parse_file_nul_byte),
        T(test_parse_file_writable_by_others),
        T(test_parse_file_symlink),
        T(test_parse_file_fifo),
        T(test_parse_file_other_owner),
        T(test_load_refuses_writable_file),
        T(test_parse_file_dev_null),
        T(test_env_store),
        T(test_env_log),
        T(test_env_tcti),
        T(test_env_atomic),
        T(test_load_from_env_file),
        T(test_load_env_file_missing),
        T(test_load_explicit_path),
        T(test_load_defaults_only),
        T(test_key_file),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
