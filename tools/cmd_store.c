/*
 * The provhsm tool's store-wide commands: init, info, export x509-cert, identity remove.
 * `info` and `export` read identities through the SDK's three tables exactly as the SDK
 * does, so what they show is what a device application will get. `info` never calls the
 * getters that return secrets (get_alias_key, get_symmetric_key).
 *
 * Called from the command table in provhsm.c. No static state.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "cli.h"
#include "hsm_client_data.h"
#include "provhsm/provhsm_store_key.h"

int provhsm_cli_cmd_init(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[] = {
        {"json", 0, 0, NULL, 0}, {"owner", 1, 0, NULL, 0}, {"seal-to-tpm", 0, 0, NULL, 0}};
    const provhsm_cli_opt *owner_opt = &opts[1];
    const provhsm_cli_opt *seal_opt = &opts[2];
    provhsm_cli_buf out = {0};
    provhsm_cli_owner owner;
    char *dir = NULL;
    provhsm_err err;
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, opts, 3, NULL, 0, NULL, &rc))
        return rc;
    if (owner_opt->seen && provhsm_cli_resolve_owner(owner_opt->value, &owner) != 0)
        return PROVHSM_CLI_FAIL;
    err = provhsm_config_store_dir(&dir);
    if (err != PROVHSM_OK)
        return provhsm_cli_fail(err, "cannot read the configuration");
    if (owner_opt->seen) {
        rc = provhsm_cli_init_as_owner(dir, &owner);
        if (rc != PROVHSM_CLI_OK)
            goto cleanup;
    }
    err = seal_opt->seen ? provhsm_store_init_sealed() : provhsm_store_init();
    if (err == PROVHSM_E_EXISTS) {
        rc = provhsm_cli_fail(err, "a store is already initialised at %s", dir);
        goto cleanup;
    }
    if (err != PROVHSM_OK) {
        rc = provhsm_cli_fail(err, "cannot create the store at %s", dir);
        goto cleanup;
    }
    if (opts[0].seen) {
        provhsm_cli_json j;
        provhsm_cli_json_begin(&j, &out);
        provhsm_cli_json_str(&j, "store_dir", dir);
        provhsm_cli_json_end(&j);
    } else {
        provhsm_cli_buf_printf(&out, "%s\n", dir);
    }
    rc = provhsm_cli_buf_flush(&out);
cleanup:
    provhsm_cli_buf_free(&out);
    free(dir);
    return rc;
}

/* ---- info ------------------------------------------------------------------------ */

typedef struct attestation_info {
    const char *name;
    const char *backend;
    int present;
    char *registration_id;
    char reason[512];
    int have_cert; /* x509: cert summary filled */
    provhsm_cli_cert_info cert;
    char *key_location; /* x509: where the private key is (never the key) */
    int activated;      /* tpm: the identity key signs */
    char activation_reason[512];
} attestation_info;

static void set_reason(char *reason, size_t len, const char *fallback)
{
    if (reason[0] == '\0')
        snprintf(reason, len, "%s", fallback);
}

static void probe_x509(attestation_info *a)
{
    const HSM_CLIENT_X509_INTERFACE *t = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = NULL;
    char *cn = NULL, *pem = NULL;

    provhsm_cli_capture_begin();
    if (t != NULL)
        h = t->hsm_client_x509_create();
    if (h != NULL) {
        cn = t->hsm_client_get_common_name(h);
        pem = t->hsm_client_get_cert(h);
    }
    provhsm_cli_capture_end(a->reason, sizeof(a->reason));
    if (h == NULL) {
        set_reason(a->reason, sizeof(a->reason), "the X.509 table could not create a handle");
    } else if (cn == NULL || pem == NULL) {
        set_reason(a->reason, sizeof(a->reason), "no X.509 identity");
    } else if (provhsm_cli_cert_summary(pem, &a->cert) != 0) {
        snprintf(a->reason, sizeof(a->reason), "the stored certificate cannot be parsed");
    } else {
        a->have_cert = 1;
        a->present = 1;
        a->registration_id = cn;
        cn = NULL;
        if (provhsm_x509_key_location(&a->key_location) != PROVHSM_OK)
            a->key_location = NULL;
    }
    free(cn);
    free(pem);
    if (h != NULL)
        t->hsm_client_x509_destroy(h);
}

static void probe_symmetric(attestation_info *a)
{
    const HSM_CLIENT_KEY_INTERFACE *t = hsm_client_key_interface();
    HSM_CLIENT_HANDLE h = NULL;
    char *name = NULL;

    provhsm_cli_capture_begin();
    if (t != NULL)
        h = t->hsm_client_key_create();
    if (h != NULL)
        name = t->hsm_client_get_registration_name(h);
    provhsm_cli_capture_end(a->reason, sizeof(a->reason));
    if (h == NULL) {
        set_reason(a->reason, sizeof(a->reason), "the key table could not create a handle");
    } else if (name == NULL) {
        set_reason(a->reason, sizeof(a->reason), "no symmetric-key identity");
    } else {
        a->present = 1;
        a->registration_id = name;
    }
    if (h != NULL)
        t->hsm_client_key_destroy(h);
}

static void probe_tpm(attestation_info *a)
{
    static const unsigned char probe[] = "provhsm identity probe";
    const HSM_CLIENT_TPM_INTERFACE *t = hsm_client_tpm_interface();
    HSM_CLIENT_HANDLE h = NULL;
    unsigned char *ek = NULL, *sig = NULL;
    size_t ek_len = 0, sig_len = 0;
    int ek_rc = -1, sign_rc = -1;

    provhsm_cli_capture_begin();
    if (t != NULL)
        h = t->hsm_client_tpm_create();
    if (h != NULL)
        ek_rc = t->hsm_client_get_ek(h, &ek, &ek_len);
    provhsm_cli_capture_end(a->reason, sizeof(a->reason));
    if (h == NULL) {
        set_reason(a->reason, sizeof(a->reason), "the TPM table could not create a handle");
        goto cleanup;
    }
    if (ek_rc != 0 || ek == NULL) {
        set_reason(a->reason, sizeof(a->reason), "the endorsement key cannot be read");
        goto cleanup;
    }
    if (provhsm_tpm_registration_id(ek, ek_len, &a->registration_id) != PROVHSM_OK) {
        snprintf(a->reason, sizeof(a->reason), "cannot hash the endorsement key");
        goto cleanup;
    }
    a->present = 1;

    /* an HMAC over fixed public bytes tells whether an identity key was activated */
    provhsm_cli_capture_begin();
    sign_rc = t->hsm_client_sign_with_identity(h, probe, sizeof(probe) - 1, &sig, &sig_len);
    provhsm_cli_capture_end(a->activation_reason, sizeof(a->activation_reason));
    a->activated = sign_rc == 0 && sig != NULL;
    if (!a->activated)
        set_reason(a->activation_reason, sizeof(a->activation_reason), "sign_with_identity failed");
cleanup:
    free(ek);
    provhsm_cli_free_wiped(sig, sig_len);
    if (h != NULL)
        t->hsm_client_tpm_destroy(h);
}

static const char *backend_of(const char *attestation)
{
    const char *b = provhsm_backend_name(attestation);
    return b != NULL ? b : "none";
}

static void info_json(provhsm_cli_buf *out, const char *store_dir, const char *key_mode,
                      attestation_info *atts, size_t n)
{
    provhsm_cli_json j;

    provhsm_cli_json_begin(&j, out);
    provhsm_cli_json_str(&j, "version", provhsm_version());
    provhsm_cli_json_str(&j, "store_dir", store_dir);
    provhsm_cli_json_str(&j, "store_key", key_mode);
    for (size_t i = 0; i < n; i++) {
        attestation_info *a = &atts[i];
        provhsm_cli_json_open(&j, a->name);
        provhsm_cli_json_str(&j, "backend", a->backend);
        provhsm_cli_json_bool(&j, "present", a->present);
        if (!a->present) {
            provhsm_cli_json_str(&j, "reason", a->reason);
            provhsm_cli_json_close(&j);
            continue;
        }
        provhsm_cli_json_str(&j, "registration_id", a->registration_id);
        if (a->have_cert) {
            provhsm_cli_json_str(&j, "subject", a->cert.subject);
            provhsm_cli_json_str(&j, "issuer", a->cert.issuer);
            provhsm_cli_json_str(&j, "not_before", a->cert.not_before);
            provhsm_cli_json_str(&j, "not_after", a->cert.not_after);
            provhsm_cli_json_bool(&j, "expired", a->cert.expired);
            provhsm_cli_json_str(&j, "fingerprint_sha256", a->cert.fingerprint);
            provhsm_cli_json_int(&j, "chain_length", a->cert.count);
        }
        if (a->key_location != NULL)
            provhsm_cli_json_str(&j, "private_key", a->key_location);
        if (strcmp(a->name, "tpm") == 0) {
            provhsm_cli_json_bool(&j, "identity_key_activated", a->activated);
            if (!a->activated)
                provhsm_cli_json_str(&j, "identity_key_reason", a->activation_reason);
        }
        provhsm_cli_json_close(&j);
    }
    provhsm_cli_json_end(&j);
}

/* value may come from a certificate or the store: written through provhsm_cli_buf_text */
static void info_line(provhsm_cli_buf *out, const char *label, const char *value,
                      const char *suffix)
{
    provhsm_cli_buf_printf(out, "  %-20s ", label);
    provhsm_cli_buf_text(out, value);
    provhsm_cli_buf_printf(out, "%s\n", suffix != NULL ? suffix : "");
}

static void info_text(provhsm_cli_buf *out, const char *store_dir, const char *key_mode,
                      attestation_info *atts, size_t n)
{
    provhsm_cli_buf_puts(out, "store: ");
    provhsm_cli_buf_text(out, store_dir);
    provhsm_cli_buf_puts(out, "\nstore key: ");
    provhsm_cli_buf_text(out, key_mode);
    provhsm_cli_buf_puts(out, "\n");
    for (size_t i = 0; i < n; i++) {
        attestation_info *a = &atts[i];
        provhsm_cli_buf_printf(out, "\n%s (backend: %s)\n", a->name, a->backend);
        if (!a->present) {
            provhsm_cli_buf_printf(out, "  %-20s none (", "identity:");
            provhsm_cli_buf_text(out, a->reason);
            provhsm_cli_buf_puts(out, ")\n");
            continue;
        }
        info_line(out, "identity:", "present", NULL);
        info_line(out, "registration id:", a->registration_id, NULL);
        if (a->have_cert) {
            char chain[32];
            snprintf(chain, sizeof(chain), "%d certificate%s", a->cert.count,
                     a->cert.count == 1 ? "" : "s");
            info_line(out, "subject:", a->cert.subject, NULL);
            info_line(out, "issuer:", a->cert.issuer, NULL);
            info_line(out, "not before:", a->cert.not_before, NULL);
            info_line(out, "not after:", a->cert.not_after, a->cert.expired ? " (EXPIRED)" : NULL);
            info_line(out, "SHA-256 fingerprint:", a->cert.fingerprint, NULL);
            info_line(out, "chain:", chain, NULL);
        }
        if (a->key_location != NULL)
            info_line(out, "private key:", a->key_location, NULL);
        if (strcmp(a->name, "tpm") == 0) {
            if (a->activated)
                info_line(out, "identity key:", "activated", NULL);
            else {
                provhsm_cli_buf_printf(out, "  %-20s not activated (", "identity key:");
                provhsm_cli_buf_text(out, a->activation_reason);
                provhsm_cli_buf_puts(out, ")\n");
            }
        }
    }
}

int provhsm_cli_cmd_info(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[] = {{"json", 0, 0, NULL, 0}};
    attestation_info atts[3];
    struct stat st;
    provhsm_cli_buf out = {0};
    char *dir = NULL, *key_mode = NULL;
    provhsm_err err;
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, opts, 1, NULL, 0, NULL, &rc))
        return rc;
    memset(atts, 0, sizeof(atts));
    /* tpm2-tss prints its own lines for an absent TPM; the reason field says it already */
    if (!provhsm_cli_verbose() && getenv("TSS2_LOG") == NULL)
        setenv("TSS2_LOG", "all+none", 0);
    err = provhsm_config_store_dir(&dir);
    if (err != PROVHSM_OK)
        return provhsm_cli_fail(err, "cannot read the configuration");
    rc = provhsm_cli_sdk_init();
    if (rc != 0)
        goto cleanup;

    atts[0].name = "x509";
    atts[1].name = "symmetric";
    atts[2].name = "tpm";
    for (size_t i = 0; i < 3; i++)
        atts[i].backend = backend_of(atts[i].name);
    probe_x509(&atts[0]);
    probe_symmetric(&atts[1]);
    probe_tpm(&atts[2]);
    /* the library tells "not found"; say which thing is missing */
    if (stat(dir, &st) != 0 && errno == ENOENT) {
        for (size_t i = 0; i < 2; i++)
            if (!atts[i].present && strcmp(atts[i].backend, "software") == 0)
                snprintf(atts[i].reason, sizeof(atts[i].reason),
                         "no store at %s; run 'provhsm init'", dir);
    }

    /* what protects the store: read from its header, no TPM command */
    if (provhsm_store_key_mode(&key_mode) != PROVHSM_OK)
        key_mode = NULL;
    if (opts[0].seen)
        info_json(&out, dir, key_mode != NULL ? key_mode : "none", atts, 3);
    else
        info_text(&out, dir, key_mode != NULL ? key_mode : "none", atts, 3);
    rc = provhsm_cli_buf_flush(&out);
cleanup:
    for (size_t i = 0; i < 3; i++) {
        free(atts[i].registration_id);
        free(atts[i].key_location);
        provhsm_cli_cert_info_free(&atts[i].cert);
    }
    provhsm_cli_buf_free(&out);
    free(key_mode);
    free(dir);
    return rc;
}

/* ---- export x509-cert ----------------------------------------------------------- */

int provhsm_cli_cmd_export_cert(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    const HSM_CLIENT_X509_INTERFACE *t;
    HSM_CLIENT_HANDLE h = NULL;
    provhsm_cli_buf out = {0};
    char *pem = NULL;
    char reason[512];
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, NULL, 0, NULL, 0, NULL, &rc))
        return rc;
    rc = provhsm_cli_sdk_init();
    if (rc != 0)
        return rc;
    t = hsm_client_x509_interface();
    provhsm_cli_capture_begin();
    h = t->hsm_client_x509_create();
    if (h != NULL)
        pem = t->hsm_client_get_cert(h);
    provhsm_cli_capture_end(reason, sizeof(reason));
    if (pem == NULL || *pem == '\0') {
        rc = provhsm_cli_error("cannot read the X.509 certificate: %s",
                               reason[0] != '\0' ? reason : "no X.509 identity");
        goto cleanup;
    }
    provhsm_cli_buf_puts(&out, pem);
    if (pem[strlen(pem) - 1] != '\n')
        provhsm_cli_buf_puts(&out, "\n");
    rc = provhsm_cli_buf_flush(&out);
cleanup:
    provhsm_cli_buf_free(&out);
    free(pem);
    if (h != NULL)
        t->hsm_client_x509_destroy(h);
    return rc;
}

/* ---- identity remove ------------------------------------------------------------ */

int provhsm_cli_cmd_identity_remove(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    const char *pos[1];
    size_t npos = 0;
    provhsm_err err;
    provhsm_cli_buf out = {0};
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, NULL, 0, pos, 1, &npos, &rc))
        return rc;
    if (npos != 1)
        return provhsm_cli_usage_error(cmd, "name the attestation: x509 or symmetric");
    if (strcmp(pos[0], "tpm") == 0)
        return provhsm_cli_usage_error(cmd, "for the TPM use 'provhsm tpm clear-identity'");
    if (strcmp(pos[0], "x509") != 0 && strcmp(pos[0], "symmetric") != 0)
        return provhsm_cli_usage_error(cmd, "unknown attestation '%s' (x509 or symmetric)", pos[0]);
    err = provhsm_identity_remove(pos[0]);
    if (err == PROVHSM_E_NOT_FOUND)
        return provhsm_cli_fail(err, "there is no %s identity to remove", pos[0]);
    if (err != PROVHSM_OK)
        return provhsm_cli_fail(err, "cannot remove the %s identity", pos[0]);
    provhsm_cli_buf_printf(&out, "removed the %s identity\n", pos[0]);
    rc = provhsm_cli_buf_flush(&out);
    provhsm_cli_buf_free(&out);
    return rc;
}

/* ---- store reseal --------------------------------------------------------------- */

/* A failed reseal or rekey: no store at all is named as such, with the way out. */
static int store_key_fail(provhsm_err err, const char *what)
{
    char *dir = NULL;
    struct stat st;
    int rc;
    if (err == PROVHSM_E_NOT_FOUND && provhsm_config_store_dir(&dir) == PROVHSM_OK &&
        (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)))
        rc = provhsm_cli_error("%s: there is no store at %s; run 'provhsm init'", what, dir);
    else if (err == PROVHSM_E_UNSUPPORTED) /* the library said why */
        rc = provhsm_cli_error("%s", what);
    else
        rc = provhsm_cli_fail(err, "%s", what);
    free(dir);
    return rc;
}

int provhsm_cli_cmd_store_reseal(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[] = {{"unbound", 0, 0, NULL, 0}, {"pcr-values", 1, 0, NULL, 0}};
    const provhsm_cli_opt *unbound_opt = &opts[0];
    const provhsm_cli_opt *values_opt = &opts[1];
    provhsm_cli_buf out = {0};
    char *mode = NULL;
    provhsm_err err;
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, opts, 2, NULL, 0, NULL, &rc))
        return rc;
    if (unbound_opt->seen && values_opt->seen)
        return provhsm_cli_usage_error(cmd, "--unbound and --pcr-values exclude each other");
    if (values_opt->seen)
        err = provhsm_store_reseal_to(values_opt->value);
    else
        err = provhsm_store_reseal(unbound_opt->seen);
    if (err != PROVHSM_OK)
        return store_key_fail(err, "cannot seal the store key again");
    if (provhsm_store_key_mode(&mode) != PROVHSM_OK)
        mode = NULL;
    provhsm_cli_buf_printf(&out, "store key sealed again: %s\n", mode != NULL ? mode : "tpm");
    free(mode);
    rc = provhsm_cli_buf_flush(&out);
    provhsm_cli_buf_free(&out);
    return rc;
}

/* ---- store rekey ---------------------------------------------------------------- */

int provhsm_cli_cmd_store_rekey(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[] = {{"to", 1, 0, NULL, 0}};
    provhsm_cli_buf out = {0};
    char *mode = NULL;
    provhsm_err err;
    int rc;

    if (provhsm_cli_parse(cmd, argc, argv, opts, 1, NULL, 0, NULL, &rc))
        return rc;
    if (!opts[0].seen)
        return provhsm_cli_usage_error(cmd,
                                       "say which key to move to: --to tpm|key-file|passphrase");
    if (strcmp(opts[0].value, "tpm") != 0 && strcmp(opts[0].value, "key-file") != 0 &&
        strcmp(opts[0].value, "passphrase") != 0)
        return provhsm_cli_usage_error(cmd, "unknown key mode '%s' (tpm, key-file or passphrase)",
                                       opts[0].value);
    err = provhsm_store_rekey(opts[0].value);
    if (err != PROVHSM_OK)
        return store_key_fail(err, "cannot rekey the store");
    if (provhsm_store_key_mode(&mode) != PROVHSM_OK)
        mode = NULL;
    provhsm_cli_buf_printf(&out, "store rekeyed: %s\n", mode != NULL ? mode : opts[0].value);
    free(mode);
    rc = provhsm_cli_buf_flush(&out);
    provhsm_cli_buf_free(&out);
    return rc;
}
