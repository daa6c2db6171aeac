/*
 * The provhsm tool's X.509 commands: x509 generate (device key in the store, then a
 * self-signed certificate or a CSR) and x509 import (a CA-signed chain, with or without
 * its key). The library does the key work; this file checks options, handles the files
 * and prints what the enrollment needs (subject, SHA-256 fingerprint / thumbprint).
 *
 * Called from the command table in provhsm.c. No static state.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "hsm_client_data.h"

#define PEM_FILE_MAX (1024 * 1024)
#define DAYS_MAX     36500

/* The fingerprint without colons: the form the provisioning service's portal takes. */
static void thumbprint(const char *fingerprint, char *out, size_t outlen)
{
    size_t o = 0;

    for (const char *p = fingerprint; *p != '\0' && o + 1 < outlen; p++)
        if (*p != ':')
            out[o++] = *p;
    out[o] = '\0';
}

static void describe_cert(provhsm_cli_buf *out, const provhsm_cli_cert_info *ci, int json,
                          provhsm_cli_json *j)
{
    char thumb[80];

    thumbprint(ci->fingerprint, thumb, sizeof(thumb));
    if (json) {
        provhsm_cli_json_str(j, "common_name", ci->common_name);
        provhsm_cli_json_str(j, "subject", ci->subject);
        provhsm_cli_json_str(j, "issuer", ci->issuer);
        provhsm_cli_json_str(j, "not_before", ci->not_before);
        provhsm_cli_json_str(j, "not_after", ci->not_after);
        provhsm_cli_json_bool(j, "expired", ci->expired);
        provhsm_cli_json_str(j, "fingerprint_sha256", ci->fingerprint);
        provhsm_cli_json_str(j, "thumbprint", thumb);
        provhsm_cli_json_int(j, "chain_length", ci->count);
        return;
    }
    provhsm_cli_buf_puts(out, "subject:             ");
    provhsm_cli_buf_text(out, ci->subject);
    provhsm_cli_buf_puts(out, "\nissuer:              ");
    provhsm_cli_buf_text(out, ci->issuer);
    provhsm_cli_buf_puts(out, "\n");
    provhsm_cli_buf_printf(out, "not after:           %s%s\n", ci->not_after,
                           ci->expired ? " (EXPIRED)" : "");
    provhsm_cli_buf_printf(out, "SHA-256 fingerprint: %s\n", ci->fingerprint);
    provhsm_cli_buf_printf(out, "thumbprint:          %s\n", thumb);
    provhsm_cli_buf_printf(out, "chain:               %d certificate%s\n", ci->count,
                           ci->count == 1 ? "" : "s");
}

/* Writes all of text to fd; 0 or errno. */
static int write_all(int fd, const char *text, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, text, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        text += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Opens the CSR output before the key is generated, so an unwritable path fails before
 * the store changes. *created tells whether the file is new (removed again on failure).
 * An existing file is reused only when it is a plain file with one link, opened without
 * following a symbolic link: the tool often runs as root in a shared directory, and the
 * file is later truncated and set to 0644, which must not reach another file through a
 * planted link (nor block on a FIFO).
 */
static int open_csr_file(const char *path, int *fd_out, int *created)
{
    struct stat st;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);

    *created = fd >= 0;
    if (fd >= 0) {
        *fd_out = fd;
        return 0;
    }
    if (errno == EEXIST)
        fd = open(path, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ELOOP)
            return provhsm_cli_error("cannot write %s: it is a symbolic link", path);
        if (errno == ENXIO) /* a FIFO without a reader */
            return provhsm_cli_error("cannot write %s: not a regular file (use '-' for stdout)",
                                     path);
        return provhsm_cli_error("cannot open %s for writing: %s", path, strerror(errno));
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
        close(fd);
        return provhsm_cli_error("cannot write %s: not a regular file with a single link "
                                 "(use '-' for stdout)",
                                 path);
    }
    *fd_out = fd;
    return 0;
}

enum { G_CN, G_CURVE, G_RSA, G_SELF, G_DAYS, G_CSR, G_FORCE, G_JSON, G__N };

/* Checks the key choice; returns 0 or a usage error's exit code. */
static int key_type_of(const provhsm_cli_cmd *cmd, const provhsm_cli_opt *opts,
                       provhsm_key_type *type, const char **label)
{
    *type = PROVHSM_KEY_EC_P256;
    *label = "ec-p256";
    if (opts[G_CURVE].seen && opts[G_RSA].seen)
        return provhsm_cli_usage_error(cmd, "give either --curve or --rsa, not both");
    if (opts[G_CURVE].seen) {
        const char *c = opts[G_CURVE].value;
        if (strcasecmp(c, "p384") == 0 || strcasecmp(c, "p-384") == 0 ||
            strcmp(c, "secp384r1") == 0) {
            *type = PROVHSM_KEY_EC_P384;
            *label = "ec-p384";
        } else if (strcasecmp(c, "p256") != 0 && strcasecmp(c, "p-256") != 0 &&
                   strcmp(c, "prime256v1") != 0 && strcmp(c, "secp256r1") != 0) {
            return provhsm_cli_usage_error(cmd, "--curve '%s' is not supported (p256, p384)", c);
        }
    }
    if (opts[G_RSA].seen) {
        const char *bits = opts[G_RSA].value;
        if (strcmp(bits, "2048") == 0) {
            *type = PROVHSM_KEY_RSA_2048;
            *label = "rsa-2048";
        } else if (strcmp(bits, "3072") == 0) {
            *type = PROVHSM_KEY_RSA_3072;
            *label = "rsa-3072";
        } else if (strcmp(bits, "4096") == 0) {
            *type = PROVHSM_KEY_RSA_4096;
            *label = "rsa-4096";
        } else {
            return provhsm_cli_usage_error(cmd, "--rsa '%s' is not 2048, 3072 or 4096", bits);
        }
    }
    return 0;
}

int provhsm_cli_cmd_x509_generate(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[G__N] = {
        [G_CN] = {"cn", 1, 0, NULL, 0},       [G_CURVE] = {"curve", 1, 0, NULL, 0},
        [G_RSA] = {"rsa", 1, 0, NULL, 0},     [G_SELF] = {"self-signed", 0, 0, NULL, 0},
        [G_DAYS] = {"days", 1, 0, NULL, 0},   [G_CSR] = {"csr", 1, 0, NULL, 0},
        [G_FORCE] = {"force", 0, 0, NULL, 0}, [G_JSON] = {"json", 0, 0, NULL, 0},
    };
    provhsm_key_type type;
    const char *label, *cn, *csr_path = NULL;
    uint64_t days = 365;
    int fd = -1, created = 0, json, rc, werr;
    char *pem = NULL;
    provhsm_cli_cert_info ci = {0};
    provhsm_cli_buf out = {0};
    provhsm_cli_json j;
    provhsm_err err;

    if (provhsm_cli_parse(cmd, argc, argv, opts, G__N, NULL, 0, NULL, &rc))
        return rc;
    json = opts[G_JSON].seen;
    if (!opts[G_CN].seen || opts[G_CN].value[0] == '\0')
        return provhsm_cli_usage_error(cmd, "--cn is required (the registration id)");
    cn = opts[G_CN].value;
    rc = key_type_of(cmd, opts, &type, &label);
    if (rc != 0)
        return rc;
    if (opts[G_SELF].seen == opts[G_CSR].seen)
        return provhsm_cli_usage_error(cmd, "give exactly one of --self-signed or --csr FILE");
    if (opts[G_DAYS].seen) {
        if (!opts[G_SELF].seen)
            return provhsm_cli_usage_error(cmd, "--days goes with --self-signed");
        if (provhsm_cli_parse_u64(opts[G_DAYS].value, 1, DAYS_MAX, &days) != 0)
            return provhsm_cli_usage_error(cmd, "--days '%s' is not a number from 1 to %d",
                                           opts[G_DAYS].value, DAYS_MAX);
    }
    if (opts[G_CSR].seen) {
        csr_path = opts[G_CSR].value;
        if (csr_path[0] == '\0')
            return provhsm_cli_usage_error(cmd, "--csr needs a file name or '-'");
        if (strcmp(csr_path, "-") != 0 && open_csr_file(csr_path, &fd, &created) != 0)
            return PROVHSM_CLI_FAIL;
    }

    err =
        provhsm_x509_generate(cn, type, csr_path != NULL ? 0 : (int)days, opts[G_FORCE].seen, &pem);
    if (err == PROVHSM_E_EXISTS) {
        /* the library's message above names the pending request (CN and date) */
        rc = provhsm_cli_fail(err, "%s",
                              csr_path != NULL
                                  ? "a certificate request is already pending (--force replaces "
                                    "its key)"
                                  : "an X.509 identity is already stored (--force replaces it)");
        goto cleanup;
    }
    if (err != PROVHSM_OK) {
        rc = provhsm_cli_fail(err, "cannot generate the X.509 key for %s", cn);
        goto cleanup;
    }

    if (fd >= 0) {
        werr = ftruncate(fd, 0) != 0 ? errno : write_all(fd, pem, strlen(pem));
        if (werr == 0 && fchmod(fd, 0644) != 0)
            werr = errno;
        if (werr == 0 && fsync(fd) != 0)
            werr = errno;
        if (close(fd) != 0 && werr == 0)
            werr = errno;
        fd = -1;
        if (werr != 0) {
            rc = provhsm_cli_error("the key was generated, but writing %s failed: %s "
                                   "(run again with --force)",
                                   csr_path, strerror(werr));
            goto cleanup;
        }
        created = 0; /* keep it */
    }

    if (json)
        provhsm_cli_json_begin(&j, &out);
    if (csr_path != NULL) {
        if (json) {
            provhsm_cli_json_str(&j, "common_name", cn);
            provhsm_cli_json_str(&j, "key_type", label);
            if (strcmp(csr_path, "-") == 0)
                provhsm_cli_json_str(&j, "csr", pem);
            else
                provhsm_cli_json_str(&j, "csr_file", csr_path);
        } else if (strcmp(csr_path, "-") == 0) {
            provhsm_cli_buf_puts(&out, pem);
        } else {
            provhsm_cli_buf_puts(&out, "wrote the certificate request for ");
            provhsm_cli_buf_text(&out, cn);
            provhsm_cli_buf_printf(&out, " to %s\n", csr_path);
        }
    } else {
        if (provhsm_cli_cert_summary(pem, &ci) != 0) {
            rc = provhsm_cli_error("the identity was stored, but its certificate cannot be "
                                   "parsed");
            goto cleanup;
        }
        if (json) {
            provhsm_cli_json_str(&j, "key_type", label);
        } else {
            provhsm_cli_buf_puts(&out, "generated X.509 identity ");
            provhsm_cli_buf_text(&out, cn);
            provhsm_cli_buf_printf(&out, " (%s, self-signed)\n", label);
        }
        describe_cert(&out, &ci, json, &j);
    }
    if (json)
        provhsm_cli_json_end(&j);
    rc = provhsm_cli_buf_flush(&out);
cleanup:
    if (fd >= 0)
        close(fd);
    if (created)
        unlink(csr_path);
    provhsm_cli_cert_info_free(&ci);
    provhsm_cli_buf_free(&out);
    free(pem);
    return rc;
}

enum { I_CERT, I_KEY, I_JSON, I__N };

int provhsm_cli_cmd_x509_import(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[I__N] = {
        [I_CERT] = {"cert", 1, 0, NULL, 0},
        [I_KEY] = {"key", 1, 0, NULL, 0},
        [I_JSON] = {"json", 0, 0, NULL, 0},
    };
    char *chain = NULL, *key = NULL;
    size_t chain_len = 0, key_len = 0;
    int expired = 0, rc;
    provhsm_cli_cert_info ci = {0};
    provhsm_cli_buf out = {0};
    provhsm_cli_json j;
    provhsm_err err;

    if (provhsm_cli_parse(cmd, argc, argv, opts, I__N, NULL, 0, NULL, &rc))
        return rc;
    if (!opts[I_CERT].seen || opts[I_CERT].value[0] == '\0')
        return provhsm_cli_usage_error(cmd, "--cert is required");
    if (opts[I_KEY].seen && opts[I_KEY].value[0] == '\0')
        return provhsm_cli_usage_error(cmd, "--key needs a file name");
    if (opts[I_KEY].seen && strcmp(opts[I_CERT].value, "-") == 0 &&
        strcmp(opts[I_KEY].value, "-") == 0)
        return provhsm_cli_usage_error(cmd, "only one of --cert and --key can be '-'");

    rc = provhsm_cli_read_file(opts[I_CERT].value, PEM_FILE_MAX, &chain, &chain_len);
    if (rc != 0)
        goto cleanup;
    if (opts[I_KEY].seen) {
        rc = provhsm_cli_read_file(opts[I_KEY].value, PEM_FILE_MAX, &key, &key_len);
        if (rc != 0)
            goto cleanup;
    }
    if (strlen(chain) != chain_len) {
        rc = provhsm_cli_error("%s is not a PEM file", opts[I_CERT].value);
        goto cleanup;
    }

    err = provhsm_x509_import(chain, key, &expired);
    if (err == PROVHSM_E_MISMATCH) {
        rc = provhsm_cli_fail(err, "the certificate does not belong to %s",
                              key != NULL ? "the given key" : "the key generated in the store");
        goto cleanup;
    }
    if (err == PROVHSM_E_NO_CN) {
        rc = provhsm_cli_fail(err, "the leaf certificate's subject has no common name (CN), "
                                   "and the CN is the registration id");
        goto cleanup;
    }
    if (err != PROVHSM_OK) {
        rc = provhsm_cli_fail(err, "cannot import the X.509 identity from %s", opts[I_CERT].value);
        goto cleanup;
    }
    if (provhsm_cli_cert_summary(chain, &ci) != 0) {
        rc = provhsm_cli_error("the identity was imported, but the certificate cannot be "
                               "summarised");
        goto cleanup;
    }
    if (expired || ci.expired)
        provhsm_cli_warn("the certificate expired on %s; it was imported, but the service "
                         "will refuse it",
                         ci.not_after);
    if (opts[I_JSON].seen) {
        provhsm_cli_json_begin(&j, &out);
        provhsm_cli_json_bool(&j, "key_imported", key != NULL);
        describe_cert(&out, &ci, 1, &j);
        provhsm_cli_json_end(&j);
    } else {
        provhsm_cli_buf_puts(&out, "imported X.509 identity ");
        provhsm_cli_buf_text(&out, ci.common_name != NULL ? ci.common_name : "");
        provhsm_cli_buf_puts(&out, key != NULL ? " with its key\n" : "\n");
        describe_cert(&out, &ci, 0, NULL);
    }
    rc = provhsm_cli_buf_flush(&out);
cleanup:
    provhsm_cli_cert_info_free(&ci);
    provhsm_cli_buf_free(&out);
    /* a chain file given by mistake may also hold the private key */
    provhsm_cli_free_wiped(chain, chain_len + 1);
    provhsm_cli_free_wiped(key, key_len + 1);
    return rc;
}

enum { A_KEY, A_CERT, A_FORCE, A_JSON, A__N };

/* The chain just stored, as the SDK's X.509 table gives it (malloc'd), or NULL. */
static char *stored_chain(void)
{
    const HSM_CLIENT_X509_INTERFACE *t = NULL;
    HSM_CLIENT_HANDLE h = NULL;
    char *pem = NULL;

    if (provhsm_cli_sdk_init() != 0 || (t = hsm_client_x509_interface()) == NULL)
        return NULL;
    h = t->hsm_client_x509_create();
    if (h != NULL) {
        pem = t->hsm_client_get_cert(h);
        t->hsm_client_x509_destroy(h);
    }
    return pem;
}

/* Reads the --cert file; without --cert *chain stays NULL: the device's chain is used. */
static int read_adopt_chain(const provhsm_cli_opt *cert, char **chain, size_t *chain_len)
{
    if (!cert->seen)
        return 0;
    int rc = provhsm_cli_read_file(cert->value, PEM_FILE_MAX, chain, chain_len);
    if (rc == 0 && strlen(*chain) != *chain_len)
        rc = provhsm_cli_error("%s is not a PEM file", cert->value);
    return rc;
}

int provhsm_cli_cmd_x509_adopt(const provhsm_cli_cmd *cmd, int argc, char **argv)
{
    provhsm_cli_opt opts[A__N] = {
        [A_KEY] = {"key", 1, 0, NULL, 0},
        [A_CERT] = {"cert", 1, 0, NULL, 0},
        [A_FORCE] = {"force", 0, 0, NULL, 0},
        [A_JSON] = {"json", 0, 0, NULL, 0},
    };
    char *chain = NULL, *where = NULL;
    size_t chain_len = 0;
    int rc;
    provhsm_cli_cert_info ci = {0};
    provhsm_cli_buf out = {0};
    provhsm_cli_json j;
    provhsm_err err;

    if (provhsm_cli_parse(cmd, argc, argv, opts, A__N, NULL, 0, NULL, &rc))
        return rc;
    if (!opts[A_KEY].seen || opts[A_KEY].value[0] == '\0')
        return provhsm_cli_usage_error(cmd, "--key is required (a TPM handle or a PKCS#11 URI)");
    if (opts[A_CERT].seen && opts[A_CERT].value[0] == '\0')
        return provhsm_cli_usage_error(cmd, "--cert needs a file (or leave it out to read the "
                                            "certificate from the token)");
    rc = read_adopt_chain(&opts[A_CERT], &chain, &chain_len);
    if (rc != 0)
        goto cleanup;
    err = provhsm_x509_adopt(opts[A_KEY].value, chain, opts[A_FORCE].seen);
    if (err == PROVHSM_E_EXISTS) {
        rc = provhsm_cli_fail(err, "an X.509 identity exists already; add --force to replace it");
        goto cleanup;
    }
    if (err != PROVHSM_OK) {
        rc = provhsm_cli_fail(err, "cannot adopt the key %s%s", opts[A_KEY].value,
                              chain == NULL ? " with the certificate on the device (or give "
                                              "the chain with --cert)"
                                            : "");
        goto cleanup;
    }
    if (chain == NULL)
        chain = stored_chain();
    if (chain == NULL || provhsm_cli_cert_summary(chain, &ci) != 0 ||
        provhsm_x509_key_location(&where) != 0) {
        rc = provhsm_cli_error("the key was adopted, but the identity cannot be summarised");
        goto cleanup;
    }
    if (opts[A_JSON].seen) {
        provhsm_cli_json_begin(&j, &out);
        provhsm_cli_json_str(&j, "key", where);
        describe_cert(&out, &ci, 1, &j);
        provhsm_cli_json_end(&j);
    } else {
        provhsm_cli_buf_puts(&out, "adopted X.509 identity ");
        provhsm_cli_buf_text(&out, ci.common_name != NULL ? ci.common_name : "");
        provhsm_cli_buf_puts(&out, "\n  key: ");
        provhsm_cli_buf_text(&out, where);
        provhsm_cli_buf_puts(&out, "\n");
        describe_cert(&out, &ci, 0, NULL);
    }
    rc = provhsm_cli_buf_flush(&out);
cleanup:
    free(where);
    provhsm_cli_cert_info_free(&ci);
    provhsm_cli_buf_free(&out);
    free(chain);
    return rc;
}
