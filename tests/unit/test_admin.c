/*
 * The admin API where it goes through the SDK's tables (src/admin.c), against a mock
 * backend: provhsm_sas_token() reports the backend's own error rather than a generic
 * one, and leaves *token_out alone on failure. Also: the configuration's [log] level
 * follows the file when it is read again, including when the file stops setting one.
 * PROVHSM_LOG stays unset in this program (the logger reads it once).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend.h"
#include "hsm_client_data.h"
#include "log.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(tpm_token_and_its_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(symmetric_token_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(log_level_follows_a_reread_file, setup, teardown),
        cmocka_unit_test_setup_teardown(pending_key_lifecycle, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
