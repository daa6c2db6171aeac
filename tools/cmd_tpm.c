/*
 * The provhsm tool's TPM commands: tpm info (what an individual TPM enrollment needs),
 * tpm activate (the service's activation blob), tpm sign and tpm clear-identity. All but
 * clear-identity go through the SDK's TPM table, the way the SDK calls it; the library's
 * log lines during those calls are captured and shown as the reason of a failure.
 *
 * Called from the command table in provhsm.c. No static state.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "hsm_client_data.h"

#define BLOB_FILE_MAX (64 * 1024)
#define SIGN_DATA_MAX (16 * 1024 * 1024)

static const char tpm_hint[] = "check PROVHSM_TCTI or the [tpm] section of the configuration";

/* Creates a TPM handle; on failure prints why and returns NULL. Capturing is left on. */
static HSM_CLIENT_HANDLE tpm_open(const HSM_CLIENT_TPM_INTERFACE **t_out)
{
    const HSM_CLIENT_TPM_INTERFACE *t;
    HSM_CLIENT_HANDLE h;

    if (provhsm_cli_sdk_init() != 0)
        return NULL;
    t = hsm_client_tpm_interface();
    provhsm_cli_capture_begin();
    h = t != NULL ? t->hsm_client_tpm_create() : NULL;
    if (h == NULL) {
        char reason[512];
        provhsm_cli_capture_end(reason, sizeof(reason));
        provhsm_cli_error("cannot use the TPM: %s (%s)",
                          reason[0] != '\0' ? reason : "the TPM table could not create a handle",
                          tpm_hint);
        return NULL;
    }
    *t_out = t;
    return h;
}

/* Ends capturing and prints "<what>: <reason>"; returns 1. */
static int tpm_failed(const char *what)
{
    char reason[512];

    provhsm_cli_capture_end(reason, sizeof(reason));
    return provhsm_cli_error("%s: %s", what, reason[0] != '\0' ? reason : "the library refused");
}

int provhsm_cli_cmd_tpm_info(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[] = {{"json", 0, 0, NULL, 0}};
    const HSM_CLIENT_TPM_INTERFACE *t = NULL;
    HSM_CLIENT_HANDLE h;
    unsigned char *ek = NULL, *srk = NULL;
    size_t ek_len = 0, srk_len = 0;
    char *ek_b64 = NULL, *srk_b64 = NULL, *regid = NULL;
    char ignored[8];
    provhsm_cli_buf out = {0};
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, opts, 1, NULL, 0, NULL, &rc))
        return rc;
    h = tpm_open(&t);
    if (h == NULL)
        return PROVHSM_CLI_FAIL;
    if (t->hsm_client_get_ek(h, &ek, &ek_len) != 0 || ek == NULL) {
        rc = tpm_failed("cannot read the endorsement key");
        goto cleanup;
    }
    if (t->hsm_client_get_srk(h, &srk, &srk_len) != 0 || srk == NULL) {
        rc = tpm_failed("cannot read the storage root key");
        goto cleanup;
    }
    provhsm_cli_capture_end(ignored, sizeof(ignored));
    ek_b64 = provhsm_base64_encode(ek, ek_len);
    srk_b64 = provhsm_base64_encode(srk, srk_len);
    if (provhsm_tpm_registration_id(ek, ek_len, &regid) != PROVHSM_OK || ek_b64 == NULL ||
        srk_b64 == NULL) {
        rc = provhsm_cli_error("out of memory");
        goto cleanup;
    }
    if (opts[0].seen) {
        provhsm_cli_json j;
        provhsm_cli_json_begin(&j, &out);
        provhsm_cli_json_str(&j, "registration_id", regid);
        provhsm_cli_json_str(&j, "endorsement_key", ek_b64);
        provhsm_cli_json_str(&j, "storage_root_key", srk_b64);
        provhsm_cli_json_end(&j);
    } else {
        provhsm_cli_buf_printf(&out, "registration id:  %s\n", regid);
        provhsm_cli_buf_printf(&out, "endorsement key:  %s\n", ek_b64);
        provhsm_cli_buf_printf(&out, "storage root key: %s\n", srk_b64);
    }
    rc = provhsm_cli_buf_flush(&out);
cleanup:
    provhsm_cli_buf_free(&out);
    free(regid);
    free(ek_b64);
    free(srk_b64);
    free(ek);
    free(srk);
    t->hsm_client_tpm_destroy(h);
    return rc;
}

/* Nothing, or only line breaks and blanks (an empty base64 text). */
static int is_blank(const char *raw, size_t raw_len)
{
    for (size_t i = 0; i < raw_len; i++)
        if (strchr(" \t\r\n", raw[i]) == NULL || raw[i] == '\0')
            return 0;
    return 1;
}

/* Binary, or base64 text when every byte is of base64's alphabet and it decodes cleanly. */
static void blob_bytes(char *raw, size_t raw_len, uint8_t **blob, size_t *blob_len, int *decoded)
{
    int textual = raw_len > 0;

    for (size_t i = 0; i < raw_len && textual; i++) {
        unsigned char c = (unsigned char)raw[i];
        textual = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '+' || c == '/' || c == '=' || c == ' ' || c == '\t' || c == '\n' ||
                  c == '\r';
    }
    *decoded = 0;
    if (textual) {
        size_t n = 0;
        uint8_t *bin = NULL;
        if (provhsm_base64_decode_text(raw, raw_len, &bin, &n) == PROVHSM_OK) {
            *blob = bin;
            *blob_len = n;
            *decoded = 1;
            return;
        }
    }
    *blob = (uint8_t *)raw;
    *blob_len = raw_len;
}

int provhsm_cli_cmd_tpm_activate(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[] = {{"blob", 1, 0, NULL, 0}};
    const HSM_CLIENT_TPM_INTERFACE *t = NULL;
    HSM_CLIENT_HANDLE h = NULL;
    char *raw = NULL, ignored[8];
    size_t raw_len = 0, blob_len = 0;
    uint8_t *blob = NULL;
    int decoded = 0, rc;
    provhsm_cli_buf out = {0};

    if (provhsm_cli_parse(cmd, argc, argv, opts, 1, NULL, 0, NULL, &rc))
        return rc;
    if (!opts[0].seen || opts[0].value[0] == '\0')
        return provhsm_cli_usage_error(cmd, "--blob is required (a file, or '-' for stdin)");
    rc = provhsm_cli_read_file(opts[0].value, BLOB_FILE_MAX, &raw, &raw_len);
    if (rc != 0)
        return rc;
    if (is_blank(raw, raw_len)) {
        /* a failure of the input, like any bad blob: exit 1, not a usage error */
        rc = provhsm_cli_error("the activation blob %s is empty", opts[0].value);
        goto cleanup;
    }
    blob_bytes(raw, raw_len, &blob, &blob_len, &decoded);
    h = tpm_open(&t);
    if (h == NULL) {
        rc = PROVHSM_CLI_FAIL;
        goto cleanup;
    }
    if (t->hsm_client_activate_identity_key(h, blob, blob_len) != 0) {
        rc = tpm_failed("the TPM did not accept the activation blob");
        goto cleanup;
    }
    provhsm_cli_capture_end(ignored, sizeof(ignored));
    provhsm_cli_buf_printf(&out, "activated the TPM identity key (%zu-byte blob%s)\n", blob_len,
                           decoded ? ", decoded from base64" : "");
    rc = provhsm_cli_buf_flush(&out);
cleanup:
    provhsm_cli_buf_free(&out);
    if (h != NULL)
        t->hsm_client_tpm_destroy(h);
    if (decoded)
        provhsm_cli_free_wiped(blob, blob_len);
    provhsm_cli_free_wiped(raw, raw_len + 1);
    return rc;
}

enum { S_DATA, S_FILE, S_JSON, S__N };

int provhsm_cli_cmd_tpm_sign(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[S__N] = {
        [S_DATA] = {"data", 1, 0, NULL, 0},
        [S_FILE] = {"file", 1, 0, NULL, 0},
        [S_JSON] = {"json", 0, 0, NULL, 0},
    };
    const HSM_CLIENT_TPM_INTERFACE *t = NULL;
    HSM_CLIENT_HANDLE h = NULL;
    char *file_data = NULL, *b64 = NULL, ignored[8];
    const unsigned char *data;
    size_t data_len = 0, sig_len = 0;
    unsigned char *sig = NULL;
    provhsm_cli_buf out = {0};
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, opts, S__N, NULL, 0, NULL, &rc))
        return rc;
    if (opts[S_DATA].seen == opts[S_FILE].seen)
        return provhsm_cli_usage_error(cmd, "give exactly one of --data STRING or --file FILE");
    if (opts[S_FILE].seen) {
        if (opts[S_FILE].value[0] == '\0')
            return provhsm_cli_usage_error(cmd, "--file needs a file name or '-'");
        rc = provhsm_cli_read_file(opts[S_FILE].value, SIGN_DATA_MAX, &file_data, &data_len);
        if (rc != 0)
            return rc;
        data = (const unsigned char *)file_data;
    } else {
        data = (const unsigned char *)opts[S_DATA].value;
        data_len = strlen(opts[S_DATA].value);
    }
    h = tpm_open(&t);
    if (h == NULL) {
        rc = PROVHSM_CLI_FAIL;
        goto cleanup;
    }
    if (t->hsm_client_sign_with_identity(h, data, data_len, &sig, &sig_len) != 0 || sig == NULL) {
        rc = tpm_failed("cannot sign with the TPM identity key");
        goto cleanup;
    }
    provhsm_cli_capture_end(ignored, sizeof(ignored));
    b64 = provhsm_base64_encode(sig, sig_len);
    if (b64 == NULL) {
        rc = provhsm_cli_error("out of memory");
        goto cleanup;
    }
    if (opts[S_JSON].seen) {
        provhsm_cli_json j;
        provhsm_cli_json_begin(&j, &out);
        provhsm_cli_json_str(&j, "signature", b64);
        provhsm_cli_json_end(&j);
    } else {
        provhsm_cli_buf_printf(&out, "%s\n", b64);
    }
    rc = provhsm_cli_buf_flush(&out);
cleanup:
    provhsm_cli_buf_free(&out);
    free(b64);
    provhsm_cli_free_wiped(sig, sig_len);
    if (h != NULL)
        t->hsm_client_tpm_destroy(h);
    free(file_data);
    return rc;
}

int provhsm_cli_cmd_tpm_clear(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_buf out = {0};
    provhsm_err err;
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, NULL, 0, NULL, 0, NULL, &rc))
        return rc;
    err = provhsm_tpm_clear_identity();
    switch (err) {
    case PROVHSM_OK:
        break;
    case PROVHSM_E_NOT_FOUND:
        return provhsm_cli_fail(err, "there is no TPM identity key to clear");
    case PROVHSM_E_UNSUPPORTED:
        return provhsm_cli_fail(err, "this build of provhsm has no TPM support");
    case PROVHSM_E_NO_DEVICE:
        return provhsm_cli_fail(err, "cannot reach the TPM (%s)", tpm_hint);
    default:
        return provhsm_cli_fail(err, "cannot clear the TPM identity key");
    }
    provhsm_cli_buf_printf(&out, "cleared the TPM identity key\n");
    rc = provhsm_cli_buf_flush(&out);
    provhsm_cli_buf_free(&out);
    return rc;
}
