/*
 * The SDK-facing front against a mock backend descriptor: dispatch, capability and
 * handle checks, the open/close contract, ownership of outputs, the symmetric-key
 * rules, and the universal handle of the seed names. No store, no TPM.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backend.h"
#include "hsm_client_data.h"

HSM_CLIENT_HANDLE custom_hsm_create(void);
void custom_hsm_destroy(HSM_CLIENT_HANDLE handle);
char *custom_hsm_get_certificate(HSM_CLIENT_HANDLE handle);
int custom_hsm_import_key(HSM_CLIENT_HANDLE handle, const unsigned char *key, size_t key_len);
int hsm_client_sign_with_identity(HSM_CLIENT_HANDLE handle, const unsigned char *data,
                                  size_t data_len, unsigned char **signed_value,
                                  size_t *signed_len);

static struct {
    int opens, closes, open_fail;
    provhsm_kind last_kind;
    char override_id[64];
    char override_key[128];
} mock;

typedef struct mock_state {
    provhsm_kind kind;
    unsigned serial;
} mock_state;

static provhsm_err m_open(const provhsm_config *cfg, provhsm_kind kind, void **state)
{
    (void)cfg;
    if (mock.open_fail)
        return PROVHSM_E_NOT_FOUND;
    mock_state *st = malloc(sizeof(*st));
    st->kind = kind;
    st->serial = (unsigned)++mock.opens;
    mock.last_kind = kind;
    *state = st;
    return PROVHSM_OK;
}

static void m_close(void *state)
{
    mock.closes++;
    free(state);
}

static provhsm_err m_string(const char *value, char **out)
{
    *out = strdup(value);
    return PROVHSM_OK;
}

static provhsm_err m_cert(void *s, char **out)
{
    (void)s;
    return m_string("CERT", out);
}

static provhsm_err m_key(void *s, char **out)
{
    (void)s;
    return m_string("KEY", out);
}

static provhsm_err m_cn(void *s, char **out)
{
    (void)s;
    return m_string("CN", out);
}

static provhsm_err m_symkey(void *s, char **out)
{
    (void)s;
    return m_string(mock.override_key[0] ? mock.override_key : "c3RvcmVkLWtleS0xMjM0NTY3OA==", out);
}

static provhsm_err m_regid(void *s, char **out)
{
    (void)s;
    return m_string(mock.override_id[0] ? mock.override_id : "stored-id", out);
}

static provhsm_err m_override(void *s, const char *id, const char *key)
{
    (void)s;
    strcpy(mock.override_id, id);
    strcpy(mock.override_key, key);
    return PROVHSM_OK;
}

static provhsm_err m_ek(void *s, uint8_t **out, size_t *len)
{
    (void)s;
    *out = malloc(3);
    memcpy(*out, "\x00\x01\xee", 3);
    *len = 3;
    return PROVHSM_OK;
}

static provhsm_err m_activate(void *s, const uint8_t *blob, size_t len)
{
    (void)s;
    return len == 4 && memcmp(blob, "good", 4) == 0 ? PROVHSM_OK : PROVHSM_E_CORRUPT;
}

static provhsm_err m_sign(void *s, const uint8_t *data, size_t len, uint8_t **sig, size_t *slen)
{
    (void)s;
    *sig = malloc(len);
    for (size_t i = 0; i < len; i++)
        (*sig)[i] = (uint8_t)(data[i] ^ 0xff);
    *slen = len;
    return PROVHSM_OK;
}

/* Serves X.509 and symmetric; TPM only with all its slots, unless removed by a test. */
static provhsm_backend mock_backend = {
    .name = "mock",
    .caps = PROVHSM_CAP_X509 | PROVHSM_CAP_SYMMETRIC | PROVHSM_CAP_TPM,
    .open = m_open,
    .close = m_close,
    .x509_certificate = m_cert,
    .x509_alias_key = m_key,
    .x509_common_name = m_cn,
    .symmetric_key = m_symkey,
    .registration_id = m_regid,
    .symmetric_override = m_override,
    .tpm_endorsement_key = m_ek,
    .tpm_storage_root_key = m_ek,
    .tpm_activate = m_activate,
    .tpm_sign = m_sign,
};

static int setup(void **state)
{
    (void)state;
    memset(&mock, 0, sizeof(mock));
    setenv("PROVHSM_CONFIG", "/dev/null", 1);
    setenv("PROVHSM_STORE", "/nonexistent/provhsm-test", 1);
    setenv("PROVHSM_TCTI", "mssim:host=127.0.0.1,port=1", 1);
    setenv("PROVHSM_LOG", "error", 1);
    mock_backend.caps = PROVHSM_CAP_X509 | PROVHSM_CAP_SYMMETRIC | PROVHSM_CAP_TPM;
    mock_backend.x509_alias_key = m_key;
    provhsm_backend_test_override = &mock_backend;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    provhsm_backend_test_override = NULL;
    return 0;
}

static void dispatch_and_ownership(void **state)
{
    (void)state;
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = x->hsm_client_x509_create();
    assert_non_null(h);
    assert_int_equal(mock.opens, 1);
    assert_int_equal(mock.last_kind, PROVHSM_KIND_X509);
    char *a = x->hsm_client_get_cert(h), *b = x->hsm_client_get_key(h),
         *c = x->hsm_client_get_common_name(h);
    assert_string_equal(a, "CERT");
    assert_string_equal(b, "KEY");
    assert_string_equal(c, "CN");
    free(a);
    free(b);
    free(c);
    x->hsm_client_x509_destroy(h);
    assert_int_equal(mock.closes, 1);
}

static void failed_open_gives_null_and_no_close(void **state)
{
    (void)state;
    mock.open_fail = 1;
    assert_null(hsm_client_x509_interface()->hsm_client_x509_create());
    assert_null(hsm_client_key_interface()->hsm_client_key_create());
    assert_int_equal(mock.closes, 0);
}

static void missing_capability_is_refused(void **state)
{
    (void)state;
    mock_backend.caps = PROVHSM_CAP_SYMMETRIC;
    assert_null(hsm_client_x509_interface()->hsm_client_x509_create());
    assert_null(hsm_client_tpm_interface()->hsm_client_tpm_create());
    assert_int_equal(mock.opens, 0);
}

static void missing_slot_fails_cleanly(void **state)
{
    (void)state;
    mock_backend.x509_alias_key = NULL;
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = x->hsm_client_x509_create();
    assert_non_null(h);
    assert_null(x->hsm_client_get_key(h));
    x->hsm_client_x509_destroy(h);
}

static void tpm_without_configuration(void **state)
{
    (void)state;
    unsetenv("PROVHSM_TCTI");
    assert_null(hsm_client_tpm_interface()->hsm_client_tpm_create());
    assert_int_equal(mock.opens, 0);
}

static void tpm_dispatch(void **state)
{
    (void)state;
    const HSM_CLIENT_TPM_INTERFACE *t = hsm_client_tpm_interface();
    HSM_CLIENT_HANDLE h = t->hsm_client_tpm_create();
    assert_non_null(h);
    unsigned char *ek = NULL, *sig = NULL;
    size_t ek_len = 0, sig_len = 0;
    assert_int_equal(t->hsm_client_get_ek(h, &ek, &ek_len), 0);
    assert_int_equal(ek_len, 3);
    assert_memory_equal(ek, "\x00\x01\xee", 3);
    free(ek);
    assert_int_equal(t->hsm_client_activate_identity_key(h, (const unsigned char *)"good", 4), 0);
    assert_int_not_equal(t->hsm_client_activate_identity_key(h, (const unsigned char *)"bad", 3),
                         0);
    assert_int_not_equal(t->hsm_client_activate_identity_key(h, NULL, 4), 0);
    assert_int_equal(
        t->hsm_client_sign_with_identity(h, (const unsigned char *)"\x0f", 1, &sig, &sig_len), 0);
    assert_int_equal(sig_len, 1);
    assert_int_equal(sig[0], 0xf0);
    free(sig);
    /* outputs stay untouched on failure */
    ek = (unsigned char *)"keep";
    assert_int_not_equal(t->hsm_client_get_ek(h, NULL, &ek_len), 0);
    assert_int_not_equal(t->hsm_client_sign_with_identity(h, NULL, 1, &sig, &sig_len), 0);
    t->hsm_client_tpm_destroy(h);
}

static void symmetric_rules(void **state)
{
    (void)state;
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
    assert_non_null(h);
    assert_int_equal(k->hsm_client_set_symm_key_info(h, NULL, NULL), 0);
    assert_string_equal(mock.override_id, "");
    assert_int_not_equal(k->hsm_client_set_symm_key_info(h, "id", NULL), 0);
    assert_int_not_equal(k->hsm_client_set_symm_key_info(h, NULL, "a2V5"), 0);
    assert_int_not_equal(k->hsm_client_set_symm_key_info(h, "id", "%%%not-base64"), 0);
    assert_int_not_equal(
        k->hsm_client_set_symm_key_info(h, "bad id with spaces", "c3RvcmVkLWtleS0xMjM0NTY3OA=="),
        0);
    assert_string_equal(mock.override_id, "");
    assert_int_equal(
        k->hsm_client_set_symm_key_info(h, "app-id", "YXBwLWtleS0wMTIzNDU2Nzg5YWJjZA=="), 0);
    char *id = k->hsm_client_get_registration_name(h);
    assert_string_equal(id, "app-id");
    free(id);
    k->hsm_client_key_destroy(h);
}

static void foreign_and_dead_handles(void **state)
{
    (void)state;
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    HSM_CLIENT_HANDLE kh = k->hsm_client_key_create();
    assert_null(x->hsm_client_get_cert(kh));
    assert_int_equal(mock.opens, 1);
    k->hsm_client_key_destroy(kh);
    int not_a_handle = 12345;
    assert_null(x->hsm_client_get_cert(&not_a_handle));
    x->hsm_client_x509_destroy(&not_a_handle); /* logged and ignored */
    assert_int_equal(mock.closes, 1);
}

static void universal_handle_opens_each_kind_once(void **state)
{
    (void)state;
    HSM_CLIENT_HANDLE h = custom_hsm_create();
    assert_non_null(h);
    assert_int_equal(mock.opens, 0);
    for (int i = 0; i < 3; i++) {
        char *c = custom_hsm_get_certificate(h);
        assert_string_equal(c, "CERT");
        free(c);
    }
    assert_int_equal(mock.opens, 1);
    assert_int_equal(custom_hsm_import_key(h, (const unsigned char *)"good", 4), 0);
    assert_int_equal(mock.opens, 2);
    custom_hsm_destroy(h);
    assert_int_equal(mock.closes, 2);
}

static void init_deinit_counting(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(hsm_client_x509_init(), 0);
        assert_int_equal(hsm_client_tpm_init(), 0);
    }
    for (int i = 0; i < 3; i++) {
        hsm_client_tpm_deinit();
        hsm_client_x509_deinit();
    }
    hsm_client_x509_deinit(); /* one too many: ignored, no crash */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(dispatch_and_ownership, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_open_gives_null_and_no_close, setup, teardown),
        cmocka_unit_test_setup_teardown(missing_capability_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(missing_slot_fails_cleanly, setup, teardown),
        cmocka_unit_test_setup_teardown(tpm_without_configuration, setup, teardown),
        cmocka_unit_test_setup_teardown(tpm_dispatch, setup, teardown),
        cmocka_unit_test_setup_teardown(symmetric_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(foreign_and_dead_handles, setup, teardown),
        cmocka_unit_test_setup_teardown(universal_handle_opens_each_kind_once, setup, teardown),
        cmocka_unit_test_setup_teardown(init_deinit_counting, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
