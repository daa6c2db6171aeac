/*
 * The provhsm tool's symmetric-key commands (symmetric set, symmetric derive) and
 * sas-token. Keys arrive on the command line or, with "-", as one line on stdin (so they
 * stay out of the process list); either way they are copied into a local buffer, the
 * argv copy is wiped, and every buffer that held a key is wiped before it is released.
 *
 * Called from the command table in provhsm.c. No static state.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "cli.h"

#define KEY_TEXT_MAX 4096

/* Copies a key option's value into buf (one stdin line for "-"), then wipes it in argv. */
static int take_secret(const provhsm_cli_opt *o, char **argv, char *buf, size_t buflen)
{
    size_t n;

    if (strcmp(o->value, "-") == 0)
        return provhsm_cli_read_secret_line(buf, buflen);
    n = strlen(o->value);
    if (n + 1 <= buflen)
        memcpy(buf, o->value, n + 1);
    OPENSSL_cleanse(argv[o->value_index], strlen(argv[o->value_index]));
    if (n + 1 > buflen)
        return provhsm_cli_error("the value of --%s is too long", o->name);
    return 0;
}

static int print_stored(const char *registration_id, int json)
{
    provhsm_cli_buf out = {0};
    int rc;

    if (json) {
        provhsm_cli_json j;
        provhsm_cli_json_begin(&j, &out);
        provhsm_cli_json_str(&j, "registration_id", registration_id);
        provhsm_cli_json_bool(&j, "stored", 1);
        provhsm_cli_json_end(&j);
    } else {
        provhsm_cli_buf_printf(&out, "stored symmetric identity for %s\n", registration_id);
    }
    rc = provhsm_cli_buf_flush(&out);
    provhsm_cli_buf_free(&out);
    return rc;
}

static int store_failed(provhsm_err err, const char *registration_id)
{
    if (err == PROVHSM_E_INVALID_ARG)
        return provhsm_cli_fail(err,
                                "cannot store the symmetric identity for %s (the key must be "
                                "valid base64 of at least 16 bytes)",
                                registration_id);
    return provhsm_cli_fail(err, "cannot store the symmetric identity for %s", registration_id);
}

enum { SET_ID, SET_KEY, SET_JSON, SET__N };

int provhsm_cli_cmd_symmetric_set(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[SET__N] = {
        [SET_ID] = {"registration-id", 1, 0, NULL, 0},
        [SET_KEY] = {"key", 1, 0, NULL, 0},
        [SET_JSON] = {"json", 0, 0, NULL, 0},
    };
    char key[KEY_TEXT_MAX];
    provhsm_err err;
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, opts, SET__N, NULL, 0, NULL, &rc))
        return rc;
    if (!opts[SET_ID].seen)
        return provhsm_cli_usage_error(cmd, "--registration-id is required");
    if (!opts[SET_KEY].seen)
        return provhsm_cli_usage_error(cmd, "--key is required (use '-' to read it from stdin)");
    if (take_secret(&opts[SET_KEY], argv, key, sizeof(key)) != 0)
        return PROVHSM_CLI_FAIL;

    err = provhsm_symmetric_set(opts[SET_ID].value, key);
    if (err != PROVHSM_OK)
        rc = store_failed(err, opts[SET_ID].value);
    else
        rc = print_stored(opts[SET_ID].value, opts[SET_JSON].seen);
    OPENSSL_cleanse(key, sizeof(key));
    return rc;
}

enum { DER_ID, DER_GROUP, DER_PRINT, DER_JSON, DER__N };

int provhsm_cli_cmd_symmetric_derive(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[DER__N] = {
        [DER_ID] = {"registration-id", 1, 0, NULL, 0},
        [DER_GROUP] = {"group-key", 1, 0, NULL, 0},
        [DER_PRINT] = {"print-only", 0, 0, NULL, 0},
        [DER_JSON] = {"json", 0, 0, NULL, 0},
    };
    char group_key[KEY_TEXT_MAX];
    char *device_key = NULL;
    const char *id;
    provhsm_cli_buf out = {0};
    provhsm_err err;
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, opts, DER__N, NULL, 0, NULL, &rc))
        return rc;
    if (!opts[DER_ID].seen)
        return provhsm_cli_usage_error(cmd, "--registration-id is required");
    if (!opts[DER_GROUP].seen)
        return provhsm_cli_usage_error(cmd,
                                       "--group-key is required (use '-' to read it from stdin)");
    if (take_secret(&opts[DER_GROUP], argv, group_key, sizeof(group_key)) != 0)
        return PROVHSM_CLI_FAIL;
    id = opts[DER_ID].value;

    err = provhsm_symmetric_derive(id, group_key, &device_key);
    if (err != PROVHSM_OK) {
        rc = provhsm_cli_fail(err,
                              err == PROVHSM_E_INVALID_ARG
                                  ? "cannot derive the device key for %s (the group key must "
                                    "be valid base64 of at least 16 bytes)"
                                  : "cannot derive the device key for %s",
                              id);
        goto cleanup;
    }
    if (!opts[DER_PRINT].seen) {
        err = provhsm_symmetric_set(id, device_key);
        rc = err != PROVHSM_OK ? store_failed(err, id) : print_stored(id, opts[DER_JSON].seen);
        goto cleanup;
    }
    if (opts[DER_JSON].seen) {
        provhsm_cli_json j;
        provhsm_cli_json_begin(&j, &out);
        provhsm_cli_json_str(&j, "registration_id", id);
        provhsm_cli_json_str(&j, "device_key", device_key);
        provhsm_cli_json_end(&j);
    } else {
        provhsm_cli_buf_printf(&out, "%s\n", device_key);
    }
    rc = provhsm_cli_buf_flush(&out);
cleanup:
    provhsm_cli_buf_free(&out);
    provhsm_free_secret(device_key);
    OPENSSL_cleanse(group_key, sizeof(group_key));
    return rc;
}

enum { SAS_SCOPE, SAS_EXPIRY, SAS_TYPE, SAS_KEYNAME, SAS_JSON, SAS__N };

/* A thousand years: far beyond any token's use, far below any overflow. */
#define SAS_EXPIRY_MAX 31557600000ULL

int provhsm_cli_cmd_sas_token(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[SAS__N] = {
        [SAS_SCOPE] = {"scope", 1, 0, NULL, 0}, [SAS_EXPIRY] = {"expiry", 1, 0, NULL, 0},
        [SAS_TYPE] = {"type", 1, 0, NULL, 0},   [SAS_KEYNAME] = {"key-name", 1, 0, NULL, 0},
        [SAS_JSON] = {"json", 0, 0, NULL, 0},
    };
    const char *type = "symmetric", *key_name = "registration";
    provhsm_cli_buf out = {0};
    char *token = NULL;
    uint64_t lifetime, expiry;
    time_t now;
    provhsm_err err;
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, opts, SAS__N, NULL, 0, NULL, &rc))
        return rc;
    if (!opts[SAS_SCOPE].seen || opts[SAS_SCOPE].value[0] == '\0')
        return provhsm_cli_usage_error(cmd, "--scope is required");
    if (!opts[SAS_EXPIRY].seen)
        return provhsm_cli_usage_error(cmd, "--expiry is required");
    if (provhsm_cli_parse_u64(opts[SAS_EXPIRY].value, 1, SAS_EXPIRY_MAX, &lifetime) != 0)
        return provhsm_cli_usage_error(cmd, "--expiry '%s' is not a positive number of seconds",
                                       opts[SAS_EXPIRY].value);
    if (opts[SAS_TYPE].seen) {
        type = opts[SAS_TYPE].value;
        if (strcmp(type, "symmetric") != 0 && strcmp(type, "tpm") != 0)
            return provhsm_cli_usage_error(cmd, "--type '%s' is not symmetric or tpm", type);
    }
    if (opts[SAS_KEYNAME].seen) {
        key_name = opts[SAS_KEYNAME].value;
        if (key_name[0] == '\0')
            return provhsm_cli_usage_error(cmd, "--key-name must not be empty");
    }
    now = time(NULL);
    if (now < 0)
        return provhsm_cli_error("the system clock is not set");
    expiry = (uint64_t)now + lifetime;

    rc = provhsm_cli_sdk_init();
    if (rc != 0)
        return rc;
    err = provhsm_sas_token(type, opts[SAS_SCOPE].value, expiry, key_name, &token);
    if (err != PROVHSM_OK)
        return provhsm_cli_fail(err, "cannot make a SAS token with the %s identity", type);
    if (opts[SAS_JSON].seen) {
        provhsm_cli_json j;
        provhsm_cli_json_begin(&j, &out);
        provhsm_cli_json_str(&j, "token", token);
        provhsm_cli_json_int(&j, "expiry", (long long)expiry);
        provhsm_cli_json_end(&j);
    } else {
        provhsm_cli_buf_printf(&out, "%s\n", token);
    }
    rc = provhsm_cli_buf_flush(&out);
    provhsm_cli_buf_free(&out);
    provhsm_free_secret(token); /* a bearer credential until it expires */
    return rc;
}
