/*
 * The admin API where it goes through the SDK's tables (src/admin.c), against a mock
 * backend: provhsm_sas_token() reports the backend's own error rather than a generic
 * one, and leaves *token_out alone on failure. Also: the configuration's [log] level
 * follows the file when it is read again, including when the file stops setting one.
 * Against a real store in a temporary directory: a pending request is not replaced
 * without `replace` and the refusal names it; an import racing with a generate in
 * another process loses no key (the store lock); a stored key that is not the stored
 * certificate's is refused by the software backend; a chain out of order is refused and
 * the identity in place stays. PROVHSM_LOG stays unset in this program (the logger
 * reads it once).
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

#include <sys/wait.h>
#include <time.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "backend.h"
#include "front.h"
#include "hsm_client_data.h"
#include "identity.h"
#include "log.h"
#include "secmem.h"
#include "store.h"

static struct {
    provhsm_err sign_result;
    provhsm_err symkey_result;
} mock;

static provhsm_err m_open(const provhsm_config *cfg, provhsm_kind kind, void **state)
{
    (void)cfg;
    (void)kind;
    *state = malloc(1);
    return *state != NULL ? PROVHSM_OK : PROVHSM_E_NOMEM;
}

static void m_close(void *state)
{
    free(state);
}

static provhsm_err m_string(const char *value, char **out)
{
    *out = strdup(value);
    return *out != NULL ? PROVHSM_OK : PROVHSM_E_NOMEM;
}

static provhsm_err m_symkey(void *s, char **out)
{
    (void)s;
    if (mock.symkey_result != PROVHSM_OK)
        return mock.symkey_result;
    return m_string("c3RvcmVkLWtleS0xMjM0NTY3OA==", out);
}

static provhsm_err m_regid(void *s, char **out)
{
    (void)s;
    if (mock.symkey_result != PROVHSM_OK)
        return mock.symkey_result;
    return m_string("dev-1", out);
}

static provhsm_err m_override(void *s, const char *id, const char *key)
{
    (void)s;
    (void)id;
    (void)key;
    return PROVHSM_OK;
}

static provhsm_err m_ek(void *s, uint8_t **out, size_t *len)
{
    (void)s;
    *out = malloc(2);
    if (*out == NULL)
        return PROVHSM_E_NOMEM;
    memcpy(*out, "\x00\x00", 2);
    *len = 2;
    return PROVHSM_OK;
}

static provhsm_err m_activate(void *s, const uint8_t *blob, size_t len)
{
    (void)s;
    (void)blob;
    (void)len;
    return PROVHSM_OK;
}

static provhsm_err m_sign(void *s, const uint8_t *data, size_t len, uint8_t **sig, size_t *slen)
{
    (void)s;
    (void)data;
    (void)len;
    if (mock.sign_result != PROVHSM_OK)
        return mock.sign_result;
    *sig = malloc(32);
    if (*sig == NULL)
        return PROVHSM_E_NOMEM;
    memset(*sig, 0xab, 32);
    *slen = 32;
    return PROVHSM_OK;
}

static const provhsm_backend mock_backend = {
    .name = "mock",
    .caps = PROVHSM_CAP_SYMMETRIC | PROVHSM_CAP_TPM,
    .open = m_open,
    .close = m_close,
    .symmetric_key = m_symkey,
    .registration_id = m_regid,
    .symmetric_override = m_override,
    .tpm_endorsement_key = m_ek,
    .tpm_storage_root_key = m_ek,
    .tpm_activate = m_activate,
    .tpm_sign = m_sign,
};

static void quiet(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)level;
    (void)module;
    (void)message;
    (void)ctx;
}

static int setup(void **state)
{
    (void)state;
    memset(&mock, 0, sizeof(mock));
    unsetenv("PROVHSM_LOG");
    setenv("PROVHSM_CONFIG", "/dev/null", 1);
    setenv("PROVHSM_STORE", "/nonexistent/provhsm-review-test", 1);
    setenv("PROVHSM_TCTI", "mssim:host=127.0.0.1,port=1", 1);
    provhsm_set_log_callback(quiet, NULL);
    provhsm_backend_test_override = &mock_backend;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    provhsm_backend_test_override = NULL;
    provhsm_set_log_callback(NULL, NULL);
    return 0;
}

static void tpm_token_and_its_errors(void **state)
{
    (void)state;
    char *token = NULL;
    assert_int_equal(
        provhsm_sas_token("tpm", "0ne/registrations/dev-1", 1700000000, "registration", &token),
        PROVHSM_OK);
    assert_non_null(token);
    assert_non_null(strstr(token, "SharedAccessSignature sr=0ne%2fregistrations%2fdev-1&sig="));
    assert_non_null(strstr(token, "&se=1700000000&skn=registration"));
    free(token);

    /* the backend's reason reaches the caller; the output stays untouched */
    static const provhsm_err reasons[] = {PROVHSM_E_NOT_FOUND, PROVHSM_E_NO_DEVICE, PROVHSM_E_TPM};
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        char sentinel[] = "untouched";
        token = sentinel;
        mock.sign_result = reasons[i];
        assert_int_equal(provhsm_sas_token("tpm", "s", 60, "registration", &token), reasons[i]);
        assert_ptr_equal(token, sentinel);
    }
}

static void symmetric_token_errors(void **state)
{
    (void)state;
    char *token = NULL;
    assert_int_equal(provhsm_sas_token("symmetric", "s", 60, "registration", &token), PROVHSM_OK);
    free(token);
    char sentinel[] = "untouched";
    token = sentinel;
    mock.symkey_result = PROVHSM_E_TAMPERED;
    assert_int_equal(provhsm_sas_token("symmetric", "s", 60, "registration", &token),
                     PROVHSM_E_TAMPERED);
    assert_ptr_equal(token, sentinel);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
    /* whatever the umask: a configuration file others can write is refused */
    assert_int_equal(chmod(path, 0644), 0);
}

static void log_level_follows_a_reread_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/provhsm-review-XXXXXX";
    char path[64], *store = NULL;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/provhsm.conf", dir);
    unsetenv("PROVHSM_STORE");

    write_text(path, "[store]\npath = /nonexistent/a\n[log]\nlevel = debug\n");
    assert_int_equal(provhsm_config_use_file(path), PROVHSM_OK);
    assert_int_equal(provhsm_config_store_dir(&store), PROVHSM_OK);
    assert_string_equal(store, "/nonexistent/a");
    free(store);
    assert_true(provhsm_log_enabled(PROVHSM_LOG_DEBUG));

    write_text(path, "[store]\npath = /nonexistent/b\n");
    assert_int_equal(provhsm_config_store_dir(&store), PROVHSM_OK);
    assert_string_equal(store, "/nonexistent/b");
    free(store);
    assert_false(provhsm_log_enabled(PROVHSM_LOG_DEBUG));
    assert_false(provhsm_log_enabled(PROVHSM_LOG_INFO));
    assert_true(provhsm_log_enabled(PROVHSM_LOG_WARN));

    assert_int_equal(provhsm_config_use_file(NULL), PROVHSM_OK);
    unlink(path);
    rmdir(dir);
}

/* Administration against a real store in a temporary directory (no mock backend). */
static void pending_key_lifecycle(void **state)
{
    (void)state;
    char dir[] = "/tmp/provhsm-admin-XXXXXX", path[128], *csr = NULL, *cert = NULL;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/store", dir);
    setenv("PROVHSM_STORE", path, 1);
    setenv("PROVHSM_CONFIG", "/dev/null", 1);
    provhsm_backend_test_override = NULL;
    assert_int_equal(provhsm_store_init(), PROVHSM_OK);

    /* a self-signed identity, then a CSR: the working identity stays until import */
    assert_int_equal(provhsm_x509_generate("dev-a", PROVHSM_KEY_EC_P256, 10, 0, &cert), PROVHSM_OK);
    assert_int_equal(provhsm_x509_generate("dev-b", PROVHSM_KEY_EC_P256, 0, 0, &csr), PROVHSM_OK);
    assert_non_null(strstr(csr, "CERTIFICATE REQUEST"));
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = x->hsm_client_x509_create();
    assert_non_null(h);
    char *cn = x->hsm_client_get_common_name(h);
    assert_string_equal(cn, "dev-a");
    free(cn);
    x->hsm_client_x509_destroy(h);

    /* a certificate for neither stored key is refused */
    char *other = NULL;
    assert_int_equal(provhsm_x509_generate("dev-c", PROVHSM_KEY_EC_P256, 10, 1, &other),
                     PROVHSM_OK);
    /* that replaced dev-a; the pending key for dev-b is still there */
    assert_int_equal(provhsm_identity_remove("x509"), PROVHSM_OK);
    /* removed both the identity and the pending key: nothing left to remove */
    assert_int_equal(provhsm_identity_remove("x509"), PROVHSM_E_NOT_FOUND);
    assert_null(x->hsm_client_x509_create());

    /* only a pending key: remove takes it away and succeeds */
    free(csr);
    csr = NULL;
    assert_int_equal(provhsm_x509_generate("dev-d", PROVHSM_KEY_EC_P256, 0, 0, &csr), PROVHSM_OK);
    assert_int_equal(provhsm_identity_remove("x509"), PROVHSM_OK);
    assert_int_equal(provhsm_identity_remove("x509"), PROVHSM_E_NOT_FOUND);

    free(csr);
    free(cert);
    free(other);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- the real store: pending requests, locking, stored pairs, chain order ---------- */

static char store_root[64];
static char captured[8192];

static void capture(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)level;
    (void)ctx;
    size_t used = strlen(captured);
    snprintf(captured + used, sizeof(captured) - used, "[%s] %s\n", module, message);
}

static int logged(const char *text)
{
    return strstr(captured, text) != NULL;
}

static int store_setup(void **state)
{
    char path[128];
    (void)state;
    snprintf(store_root, sizeof(store_root), "/tmp/provhsm-admin-XXXXXX");
    if (mkdtemp(store_root) == NULL)
        return -1;
    snprintf(path, sizeof(path), "%s/store", store_root);
    setenv("PROVHSM_STORE", path, 1);
    setenv("PROVHSM_CONFIG", "/dev/null", 1);
    unsetenv("PROVHSM_LOG");
    provhsm_backend_test_override = NULL;
    provhsm_store_test_before_remove = NULL;
    captured[0] = '\0';
    provhsm_set_log_callback(capture, NULL);
    return provhsm_store_init() == PROVHSM_OK ? 0 : -1;
}

static int store_teardown(void **state)
{
    char cmd[128];
    (void)state;
    provhsm_store_test_before_remove = NULL;
    provhsm_set_log_callback(NULL, NULL);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", store_root);
    return system(cmd) == 0 ? 0 : -1;
}

static EVP_PKEY *new_key(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    assert_non_null(key);
    return key;
}

/* A certificate for `subject_key` named CN=cn, signed by issuer (self-signed when NULL). */
static X509 *issue(EVP_PKEY *subject_key, const char *cn, EVP_PKEY *issuer_key, X509 *issuer,
                   int is_ca)
{
    static long serial = 1;
    X509 *cert = X509_new();
    assert_non_null(cert);
    assert_int_equal(X509_set_version(cert, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(cert), -60));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(cert), 86400));
    X509_NAME *name = X509_get_subject_name(cert);
    assert_int_equal(
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0),
        1);
    assert_int_equal(
        X509_set_issuer_name(cert, issuer != NULL ? X509_get_subject_name(issuer) : name), 1);
    assert_int_equal(X509_set_pubkey(cert, subject_key), 1);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer != NULL ? issuer : cert, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_basic_constraints,
                                              is_ca ? "critical,CA:TRUE" : "CA:FALSE");
    assert_non_null(ext);
    assert_int_equal(X509_add_ext(cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
    if (is_ca) {
        ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
        assert_non_null(ext);
        assert_int_equal(X509_add_ext(cert, ext, -1), 1);
        X509_EXTENSION_free(ext);
    }
    assert_true(X509_sign(cert, issuer_key != NULL ? issuer_key : subject_key, EVP_sha256()) > 0);
    return cert;
}

/* The PEM of up to three certificates, in the order given (NULLs skipped). */
static char *pem_of(X509 *a, X509 *b, X509 *c)
{
    X509 *certs[] = {a, b, c};
    BIO *bio = BIO_new(BIO_s_mem());
    char *data = NULL;
    assert_non_null(bio);
    for (int i = 0; i < 3; i++)
        if (certs[i] != NULL)
            assert_int_equal(PEM_write_bio_X509(bio, certs[i]), 1);
    long len = BIO_get_mem_data(bio, &data);
    /* the BIO's bytes carry no NUL: copy exactly len of them (strndup would look further) */
    char *pem = malloc((size_t)len + 1);
    assert_non_null(pem);
    memcpy(pem, data, (size_t)len);
    pem[len] = '\0';
    BIO_free(bio);
    return pem;
}

static char *key_pem_of(EVP_PKEY *key)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data = NULL;
    assert_non_null(bio);
    assert_int_equal(PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL), 1);
    long len = BIO_get_mem_data(bio, &data);
    char *pem = provhsm_secure_alloc((size_t)len + 1);
    assert_non_null(pem);
    memcpy(pem, data, (size_t)len);
    BIO_free(bio);
    return pem;
}

/* The public key inside a PEM certificate request. */
static EVP_PKEY *csr_key(const char *csr_pem)
{
    BIO *bio = BIO_new_mem_buf(csr_pem, -1);
    assert_non_null(bio);
    X509_REQ *req = PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL);
    assert_non_null(req);
    EVP_PKEY *key = X509_REQ_get_pubkey(req);
    assert_non_null(key);
    X509_REQ_free(req);
    BIO_free(bio);
    return key;
}

/* A CA-signed certificate for the request, as PEM (leaf only). */
static char *sign_request(const char *csr_pem, const char *cn, EVP_PKEY *ca_key, X509 *ca)
{
    EVP_PKEY *pub = csr_key(csr_pem);
    X509 *leaf = issue(pub, cn, ca_key, ca, 0);
    char *pem = pem_of(leaf, NULL, NULL);
    X509_free(leaf);
    EVP_PKEY_free(pub);
    return pem;
}

/* The common name the SDK's X.509 table sees now, or NULL when it has no identity. */
static char *sdk_common_name(void)
{
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = x->hsm_client_x509_create();
    if (h == NULL)
        return NULL;
    char *cn = x->hsm_client_get_common_name(h);
    x->hsm_client_x509_destroy(h);
    return cn;
}

static void expect_sdk_cn(const char *want)
{
    char *cn = sdk_common_name();
    assert_non_null(cn);
    assert_string_equal(cn, want);
    free(cn);
}

/* Issue item 3: a pending key is replaced only with `replace`, and the refusal names it. */
static void pending_request_not_replaced(void **state)
{
    (void)state;
    char *csr1 = NULL, *csr2 = NULL, *csr3 = NULL, today[16];
    EVP_PKEY *ca_key = new_key();
    X509 *ca = issue(ca_key, "Test CA", NULL, NULL, 1);
    time_t now = time(NULL);
    struct tm tm;
    assert_non_null(gmtime_r(&now, &tm));
    assert_true(strftime(today, sizeof(today), "%Y-%m-%d", &tm) > 0);

    assert_int_equal(provhsm_x509_generate("dev-first", PROVHSM_KEY_EC_P256, 0, 0, &csr1),
                     PROVHSM_OK);
    captured[0] = '\0';
    assert_int_equal(provhsm_x509_generate("dev-second", PROVHSM_KEY_EC_P256, 0, 0, &csr2),
                     PROVHSM_E_EXISTS);
    assert_null(csr2);
    assert_true(logged("CN=dev-first"));
    assert_true(logged(today));
    assert_true(logged("--force"));

    /* the first request's key is still there: its certificate imports */
    char *cert1 = sign_request(csr1, "dev-first", ca_key, ca);
    assert_int_equal(provhsm_x509_import(cert1, NULL, NULL), PROVHSM_OK);
    expect_sdk_cn("dev-first");

    /* the import used the pending key up: a new request needs no force */
    assert_int_equal(provhsm_x509_generate("dev-third", PROVHSM_KEY_EC_P256, 0, 0, &csr2),
                     PROVHSM_OK);
    /* with replace, the pending key is replaced: the older request's certificate matches
     * nothing any more, the newer one's does */
    assert_int_equal(provhsm_x509_generate("dev-fourth", PROVHSM_KEY_EC_P256, 0, 1, &csr3),
                     PROVHSM_OK);
    char *cert2 = sign_request(csr2, "dev-third", ca_key, ca);
    char *cert3 = sign_request(csr3, "dev-fourth", ca_key, ca);
    assert_int_equal(provhsm_x509_import(cert2, NULL, NULL), PROVHSM_E_MISMATCH);
    expect_sdk_cn("dev-first");
    assert_int_equal(provhsm_x509_import(cert3, NULL, NULL), PROVHSM_OK);
    expect_sdk_cn("dev-fourth");

    free(cert1);
    free(cert2);
    free(cert3);
    free(csr1);
    free(csr2);
    free(csr3);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
}

static int race_go[2] = {-1, -1};
static int race_fired;

/* In the importer, between writing the identity and removing the pending key it used:
 * start the other process and give it time to write, as a slow disk would. */
static void let_the_generator_run(const char *name)
{
    if (race_fired || strcmp(name, "x509-pending") != 0)
        return;
    race_fired = 1;
    assert_int_equal(write(race_go[1], "g", 1), 1);
    const struct timespec half_a_second = {0, 500 * 1000 * 1000};
    nanosleep(&half_a_second, NULL);
}

/* The other process: waits for the signal, makes a new request, sends its CSR back. */
static void run_generator(int result_fd)
{
    char go;
    char *csr = NULL;
    provhsm_store_test_before_remove = NULL;
    close(race_go[1]); /* a parent that dies early then ends the read */
    if (read(race_go[0], &go, 1) != 1)
        _exit(90);
    provhsm_err err = provhsm_x509_generate("dev-new", PROVHSM_KEY_EC_P256, 0, 1, &csr);
    if (err != PROVHSM_OK)
        _exit(91);
    size_t len = strlen(csr);
    _exit(write(result_fd, csr, len) == (ssize_t)len ? 0 : 92);
}

/*
 * Issue item 2: an import (load pending, write identity, remove pending) racing with a
 * generate --csr in another process. The import holds the store lock throughout, so the
 * generate waits and its new pending key survives; without the lock the import removes it.
 */
static void import_and_generate_race(void **state)
{
    (void)state;
    char *csr_old = NULL, csr_new[8192];
    int result[2], status = 0;
    EVP_PKEY *ca_key = new_key();
    X509 *ca = issue(ca_key, "Test CA", NULL, NULL, 1);

    assert_int_equal(provhsm_x509_generate("dev-old", PROVHSM_KEY_EC_P256, 0, 0, &csr_old),
                     PROVHSM_OK);
    char *cert_old = sign_request(csr_old, "dev-old", ca_key, ca);
    assert_int_equal(pipe(race_go), 0);
    assert_int_equal(pipe(result), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        close(result[0]);
        run_generator(result[1]);
    }
    close(result[1]);
    race_fired = 0;
    provhsm_store_test_before_remove = let_the_generator_run;
    assert_int_equal(provhsm_x509_import(cert_old, NULL, NULL), PROVHSM_OK);
    provhsm_store_test_before_remove = NULL;
    assert_true(race_fired);
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    ssize_t n = read(result[0], csr_new, sizeof(csr_new) - 1);
    assert_true(n > 0);
    csr_new[n] = '\0';
    close(result[0]);
    close(race_go[0]);
    close(race_go[1]);
    expect_sdk_cn("dev-old");

    /* the request made during the import still has its key in the store */
    char *cert_new = sign_request(csr_new, "dev-new", ca_key, ca);
    assert_int_equal(provhsm_x509_import(cert_new, NULL, NULL), PROVHSM_OK);
    expect_sdk_cn("dev-new");

    free(cert_new);
    free(cert_old);
    free(csr_old);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
}

/* Writes an X.509 identity straight into the store, as a hand-edited store would be. */
static void store_pair(const char *key_pem, const char *chain_pem)
{
    provhsm_config cfg;
    provhsm_store *st = NULL;
    provhsm_x509_identity id = {(char *)key_pem, (char *)chain_pem, NULL};
    assert_int_equal(provhsm_front_config(&cfg), PROVHSM_OK);
    assert_int_equal(provhsm_store_open(&cfg, &st), PROVHSM_OK);
    assert_int_equal(provhsm_identity_x509_save(st, PROVHSM_ENTRY_X509, &id), PROVHSM_OK);
    provhsm_store_close(st);
}

/* Issue item 11: the software backend refuses a stored key that is not the certificate's. */
static void stored_pair_mismatch_refused(void **state)
{
    (void)state;
    provhsm_config cfg;
    void *backend_state = NULL;
    EVP_PKEY *key_a = new_key(), *key_b = new_key();
    X509 *cert_b = issue(key_b, "dev-b", NULL, NULL, 0);
    char *key_a_pem = key_pem_of(key_a), *key_b_pem = key_pem_of(key_b);
    char *cert_b_pem = pem_of(cert_b, NULL, NULL);
    const provhsm_backend *sw = provhsm_backend_find("software");
    assert_non_null(sw);
    assert_int_equal(provhsm_front_config(&cfg), PROVHSM_OK);

    /* the matching pair opens: the refusal below is about the key alone */
    store_pair(key_b_pem, cert_b_pem);
    expect_sdk_cn("dev-b");

    store_pair(key_a_pem, cert_b_pem);
    captured[0] = '\0';
    assert_null(sdk_common_name());
    assert_true(logged("does not match"));
    assert_int_equal(sw->open(&cfg, PROVHSM_KIND_X509, &backend_state), PROVHSM_E_MISMATCH);
    assert_null(backend_state);

    provhsm_secure_free(key_a_pem);
    provhsm_secure_free(key_b_pem);
    free(cert_b_pem);
    X509_free(cert_b);
    EVP_PKEY_free(key_a);
    EVP_PKEY_free(key_b);
}

/* Issue item 11: a chain out of order is refused and the identity in place stays. */
static void chain_out_of_order_refused(void **state)
{
    (void)state;
    char *self = NULL;
    EVP_PKEY *root_key = new_key(), *int_key = new_key(), *leaf_key = new_key();
    EVP_PKEY *other_key = new_key();
    X509 *root = issue(root_key, "Test Root", NULL, NULL, 1);
    X509 *inter = issue(int_key, "Test Intermediate", root_key, root, 1);
    X509 *leaf = issue(leaf_key, "dev-chained", int_key, inter, 0);
    X509 *other = issue(other_key, "Unrelated CA", NULL, NULL, 1);
    char *leaf_key_pem = key_pem_of(leaf_key);

    assert_int_equal(provhsm_x509_generate("dev-kept", PROVHSM_KEY_EC_P256, 10, 0, &self),
                     PROVHSM_OK);
    char *unrelated = pem_of(leaf, other, NULL);
    char *root_first = pem_of(leaf, root, inter);
    char *in_order = pem_of(leaf, inter, root);
    assert_int_equal(provhsm_x509_import(unrelated, leaf_key_pem, NULL), PROVHSM_E_INVALID_ARG);
    expect_sdk_cn("dev-kept");
    assert_int_equal(provhsm_x509_import(root_first, leaf_key_pem, NULL), PROVHSM_E_INVALID_ARG);
    expect_sdk_cn("dev-kept");
    assert_int_equal(provhsm_x509_import(in_order, leaf_key_pem, NULL), PROVHSM_OK);
    expect_sdk_cn("dev-chained");

    free(unrelated);
    free(root_first);
    free(in_order);
    free(self);
    provhsm_secure_free(leaf_key_pem);
    X509 *certs[] = {root, inter, leaf, other};
    EVP_PKEY *keys[] = {root_key, int_key, leaf_key, other_key};
    for (int i = 0; i < 4; i++) {
        X509_free(certs[i]);
        EVP_PKEY_free(keys[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(tpm_token_and_its_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(symmetric_token_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(log_level_follows_a_reread_file, setup, teardown),
        cmocka_unit_test_setup_teardown(pending_key_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(pending_request_not_replaced, store_setup, store_teardown),
        cmocka_unit_test_setup_teardown(import_and_generate_race, store_setup, store_teardown),
        cmocka_unit_test_setup_teardown(stored_pair_mismatch_refused, store_setup, store_teardown),
        cmocka_unit_test_setup_teardown(chain_out_of_order_refused, store_setup, store_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
