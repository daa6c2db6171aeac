/*
 * libFuzzer target for the configuration (src/config.c). The input is split at NUL bytes:
 * the first part is the INI text given to provhsm_config_parse on fresh defaults (as
 * provhsm_config_load does with the file it reads), the next three are the values of
 * PROVHSM_STORE, PROVHSM_LOG and PROVHSM_TCTI (a missing part leaves the variable
 * unset) for provhsm_config_apply_env (whose PROVHSM_LOG and [log] level values go
 * through provhsm_log_parse_level). Checked: a refused text says why in the error
 * buffer, a refused environment leaves the configuration as it was, and every string
 * field stays NUL-terminated within its array. Inputs of odd length are also written
 * whole to a file (0600, ours) and read with provhsm_config_parse_file, as the library
 * reads its file: a file holding a NUL byte is refused, any other gives exactly what
 * parsing its text gave.
 */
#define _XOPEN_SOURCE 700 /* putenv */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "fuzz_common.h"

static provhsm_config cfg, before, from_file;
static char conf_path[] = "/tmp/provhsm-fuzz-config.XXXXXX";

static const char *const env_names[] = {"PROVHSM_STORE", "PROVHSM_LOG", "PROVHSM_TCTI"};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    unsetenv("PROVHSM_CONFIG");
    unsetenv("PROVHSM_PASSPHRASE");
    int fd = mkstemp(conf_path);
    FUZZ_CHECK(fd >= 0);
    close(fd);
    return 0;
}

/* The same input as a configuration file, as provhsm_config_load reads one. */
static void check_file_path(const uint8_t *data, size_t size, provhsm_err text_rc)
{
    char errbuf[512];
    fuzz_write_file(conf_path, data, size);
    memset(&from_file, 0, sizeof(from_file));
    provhsm_config_defaults(&from_file);
    provhsm_err rc = provhsm_config_parse_file(&from_file, conf_path, errbuf, sizeof(errbuf));
    if (memchr(data, '\0', size) != NULL) {
        FUZZ_CHECK(rc == PROVHSM_E_CONFIG);
        return;
    }
    FUZZ_CHECK(rc == text_rc);
    if (rc == PROVHSM_OK) {
        memcpy(from_file.source, cfg.source, sizeof(cfg.source));
        FUZZ_CHECK(memcmp(&from_file, &cfg, sizeof(cfg)) == 0);
    }
}

#define TERMINATED(field) (memchr((field), '\0', sizeof(field)) != NULL)

static void check_terminated(const provhsm_config *c)
{
    FUZZ_CHECK(TERMINATED(c->source) && TERMINATED(c->store_dir) && TERMINATED(c->key_file));
    FUZZ_CHECK(TERMINATED(c->passphrase_file) && TERMINATED(c->passphrase_env));
    FUZZ_CHECK(TERMINATED(c->x509_backend) && TERMINATED(c->symmetric_backend) &&
               TERMINATED(c->tpm_backend));
    FUZZ_CHECK(TERMINATED(c->tcti) && TERMINATED(c->owner_auth_file) &&
               TERMINATED(c->owner_auth_env));
    FUZZ_CHECK(TERMINATED(c->endorsement_auth_file) && TERMINATED(c->endorsement_auth_env));
}

/*
 * glibc's setenv keeps every value it replaces, so a fuzzer calling it millions of times
 * grows without bound; putenv of a buffer of our own that is rewritten in place does not.
 */
static char env_slots[3][4200];

static void set_variable(size_t i, const char *value)
{
    if (value == NULL) {
        unsetenv(env_names[i]);
        return;
    }
    snprintf(env_slots[i], sizeof(env_slots[i]), "%s=%s", env_names[i], value);
    putenv(env_slots[i]);
}

/* Sets each variable from the next NUL-separated part after the text, or unsets it. */
static void set_environment(const char *text, size_t size)
{
    size_t at = strlen(text) + 1;
    for (size_t i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++) {
        if (at > size) {
            set_variable(i, NULL);
            continue;
        }
        set_variable(i, text + at);
        at += strlen(text + at) + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_text(data, size);
    char errbuf[512];

    memset(&cfg, 0, sizeof(cfg));
    provhsm_config_defaults(&cfg);
    errbuf[0] = '\0';
    provhsm_err text_rc = provhsm_config_parse(&cfg, text, "fuzz.conf", errbuf, sizeof(errbuf));
    if (text_rc != PROVHSM_OK)
        FUZZ_CHECK(errbuf[0] != '\0');
    check_terminated(&cfg);
    /* the TCTI string as configured: a manager is named, never found inside another name */
    if (provhsm_tcti_releases_on_close(cfg.tcti))
        FUZZ_CHECK(strstr(cfg.tcti, "tabrmd") != NULL || strstr(cfg.tcti, "/dev/tpmrm") != NULL);
    if (size % 2 == 1)
        check_file_path(data, size, text_rc);

    set_environment(text, size);
    memcpy(&before, &cfg, sizeof(cfg));
    if (provhsm_config_apply_env(&cfg) != PROVHSM_OK)
        FUZZ_CHECK(memcmp(&before, &cfg, sizeof(cfg)) == 0);
    check_terminated(&cfg);
    free(text);
    return 0;
}
