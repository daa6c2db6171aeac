/*
 * The SDK-facing front against a mock backend descriptor: dispatch, capability and
 * handle checks, the open/close contract, ownership of outputs, the symmetric-key
 * rules, the universal handle of the seed names, and the init/deinit reference count
 * (the mock counts global_init/global_deinit). No TPM.
 *
 * Against the real software backend, on a store made here: create/get/destroy on a
 * thread with a small stack (embedded applications run the SDK on small stacks), and the
 * error-level line that says where a missing symmetric identity was looked for.
 */
#include <limits.h>
#include <pthread.h>
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

#include "backend.h"
#include "hsm_client_data.h"
#include "provhsm/provhsm.h"

HSM_CLIENT_HANDLE custom_hsm_create(void);
void custom_hsm_destroy(HSM_CLIENT_HANDLE handle);
char *custom_hsm_get_certificate(HSM_CLIENT_HANDLE handle);
int custom_hsm_import_key(HSM_CLIENT_HANDLE handle, const unsigned char *key, size_t key_len);
int hsm_client_sign_with_identity(HSM_CLIENT_HANDLE handle, const unsigned char *data,
                                  size_t data_len, unsigned char **signed_value,
                                  size_t *signed_len);

static struct {
    int opens, closes, open_fail;
    int global_inits, global_deinits;
    int ek_fail, sign_fail;
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

static provhsm_err m_global_init(void)
{
    mock.global_inits++;
    return PROVHSM_OK;
}

static void m_global_deinit(void)
{
    mock.global_deinits++;
}

static provhsm_err m_ek(void *s, uint8_t **out, size_t *len)
{
    (void)s;
    if (mock.ek_fail)
        return PROVHSM_E_TPM;
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
    if (mock.sign_fail)
        return PROVHSM_E_TPM;
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
    .global_init = m_global_init,
    .global_deinit = m_global_deinit,
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

/* A private directory with an empty configuration file (0600, as the loader wants). */
static char workdir[] = "/tmp/provhsm-front-XXXXXX";
static char empty_config[sizeof(workdir) + 16];

/* Error lines the library logged while a test ran. */
static struct {
    int count;
    char text[8][512];
} errors;

static void collect_errors(provhsm_log_level level, const char *module, const char *message,
                           void *ctx)
{
    (void)ctx;
    if (level == PROVHSM_LOG_ERROR && errors.count < 8)
        snprintf(errors.text[errors.count++], sizeof(errors.text[0]), "[%s] %s", module, message);
}

/* The first error line containing every one of the given strings, or NULL. */
static const char *error_with(const char *a, const char *b)
{
    for (int i = 0; i < errors.count; i++)
        if (strstr(errors.text[i], a) != NULL && (b == NULL || strstr(errors.text[i], b) != NULL))
            return errors.text[i];
    return NULL;
}

static int group_setup(void **state)
{
    (void)state;
    if (mkdtemp(workdir) == NULL)
        return -1;
    snprintf(empty_config, sizeof(empty_config), "%s/empty.conf", workdir);
    FILE *f = fopen(empty_config, "w");
    if (f == NULL)
        return -1;
    fclose(f);
    /* whatever the umask: a configuration others can write is refused */
    return chmod(empty_config, 0600);
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[sizeof(workdir) + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", workdir);
    return system(cmd) == 0 ? 0 : -1;
}

static int setup(void **state)
{
    (void)state;
    memset(&mock, 0, sizeof(mock));
    memset(&errors, 0, sizeof(errors));
    provhsm_set_log_callback(collect_errors, NULL);
    setenv("PROVHSM_CONFIG", empty_config, 1);
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
    provhsm_set_log_callback(NULL, NULL);
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
    assert_non_null(error_with("does not support", "get_alias_key"));
    /* the other slots still work */
    char *cert = x->hsm_client_get_cert(h);
    assert_string_equal(cert, "CERT");
    free(cert);
    x->hsm_client_x509_destroy(h);
    assert_int_equal(mock.closes, 1);
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
    t->hsm_client_tpm_destroy(h);
}

/* On every failure path (refused arguments, a failing backend) the outputs stay untouched. */
static void tpm_outputs_untouched_on_failure(void **state)
{
    (void)state;
    unsigned char keep = 0;
    unsigned char *const sentinel = &keep;
    const HSM_CLIENT_TPM_INTERFACE *t = hsm_client_tpm_interface();
    HSM_CLIENT_HANDLE h = t->hsm_client_tpm_create();
    assert_non_null(h);
    unsigned char *ek = sentinel, *sig = sentinel;
    size_t ek_len = 77, sig_len = 77;

    mock.ek_fail = 1;
    assert_int_not_equal(t->hsm_client_get_ek(h, &ek, &ek_len), 0);
    assert_int_not_equal(t->hsm_client_get_srk(h, &ek, &ek_len), 0);
    assert_ptr_equal(ek, sentinel);
    assert_int_equal(ek_len, 77);
    assert_int_not_equal(t->hsm_client_get_ek(h, NULL, &ek_len), 0);
    assert_int_not_equal(t->hsm_client_get_ek(h, &ek, NULL), 0);
    assert_ptr_equal(ek, sentinel);
    assert_int_equal(ek_len, 77);

    mock.sign_fail = 1;
    assert_int_not_equal(
        t->hsm_client_sign_with_identity(h, (const unsigned char *)"x", 1, &sig, &sig_len), 0);
    assert_int_not_equal(t->hsm_client_sign_with_identity(h, NULL, 1, &sig, &sig_len), 0);
    assert_int_not_equal(
        t->hsm_client_sign_with_identity(h, (const unsigned char *)"x", 0, &sig, &sig_len), 0);
    assert_ptr_equal(sig, sentinel);
    assert_int_equal(sig_len, 77);

    /* and a NULL handle, with the backend willing */
    mock.ek_fail = mock.sign_fail = 0;
    assert_int_not_equal(t->hsm_client_get_ek(NULL, &ek, &ek_len), 0);
    assert_int_not_equal(
        t->hsm_client_sign_with_identity(NULL, (const unsigned char *)"x", 1, &sig, &sig_len), 0);
    assert_ptr_equal(ek, sentinel);
    assert_ptr_equal(sig, sentinel);
    assert_int_equal(ek_len + sig_len, 154);
    t->hsm_client_tpm_destroy(h);
}

static void symmetric_rules(void **state)
{
    (void)state;
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
    assert_non_null(h);
    /* both NULL keeps the stored identity */
    assert_int_equal(k->hsm_client_set_symm_key_info(h, NULL, NULL), 0);
    assert_string_equal(mock.override_id, "");
    char *stored = k->hsm_client_get_registration_name(h);
    assert_string_equal(stored, "stored-id");
    free(stored);
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
    assert_non_null(error_with("x509", "from another table"));
    assert_int_equal(mock.opens, 1);
    k->hsm_client_key_destroy(kh);
    uint32_t not_a_handle[8] = {12345};
    assert_null(x->hsm_client_get_cert(not_a_handle));
    /* what a destroyed handle's memory holds: its magic overwritten with a dead mark */
    uint32_t dead_handle[8] = {0xdeadf00du};
    assert_null(x->hsm_client_get_cert(dead_handle));
    errors.count = 0;
    x->hsm_client_x509_destroy(not_a_handle); /* logged and ignored */
    x->hsm_client_x509_destroy(dead_handle);
    assert_non_null(error_with("already destroyed; ignored", NULL));
    assert_int_equal(errors.count, 2);
    assert_int_equal(not_a_handle[0], 12345);
    assert_int_equal(dead_handle[0], 0xdeadf00du);
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

/* initialize_hsm_system / deinitialize_hsm_system of the SDK: both tables each time. */
static void sdk_initialize_hsm_system(void)
{
    assert_int_equal(hsm_client_x509_init(), 0);
    assert_int_equal(hsm_client_tpm_init(), 0);
}

static void sdk_deinitialize_hsm_system(void)
{
    hsm_client_x509_deinit();
    hsm_client_tpm_deinit();
}

/*
 * The SDK's own sequence is unbalanced: prov_dev_security_init initialises twice,
 * prov_dev_security_deinit deinitialises once. The backends' global state is set up once
 * and must survive; it goes only when every init has its deinit.
 */
static void init_deinit_unbalanced_as_the_sdk_does(void **state)
{
    (void)state;
    sdk_initialize_hsm_system();
    assert_int_equal(mock.global_inits, 1);
    sdk_initialize_hsm_system();
    assert_int_equal(mock.global_inits, 1); /* counted, not run again */
    sdk_deinitialize_hsm_system();
    assert_int_equal(mock.global_deinits, 0); /* two inits still outstanding */
    /* a handle still works in between */
    HSM_CLIENT_HANDLE h = hsm_client_x509_interface()->hsm_client_x509_create();
    assert_non_null(h);
    hsm_client_x509_interface()->hsm_client_x509_destroy(h);
    /* balance it: the last deinit tears down, once */
    sdk_deinitialize_hsm_system();
    assert_int_equal(mock.global_deinits, 1);
    assert_int_equal(mock.global_inits, 1);
}

static void init_deinit_counting(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++)
        sdk_initialize_hsm_system();
    assert_int_equal(mock.global_inits, 1);
    for (int i = 0; i < 3; i++) {
        sdk_deinitialize_hsm_system();
        assert_int_equal(mock.global_deinits, i == 2 ? 1 : 0);
    }
    hsm_client_x509_deinit(); /* one too many: ignored, no crash */
    assert_int_equal(mock.global_deinits, 1);
    /* the count did not go below zero: the next init sets up again, one deinit tears down */
    assert_int_equal(hsm_client_tpm_init(), 0);
    assert_int_equal(mock.global_inits, 2);
    hsm_client_tpm_deinit();
    assert_int_equal(mock.global_deinits, 2);
}

/* ---- the software backend on a store made here --------------------------------- */

#define SMALL_STACK   16384
#define SYMMETRIC_KEY "c3RhY2stdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2RlZg=="

static int software_setup(void **state)
{
    static int store_count;
    char store[sizeof(workdir) + 32];
    (void)state;
    memset(&errors, 0, sizeof(errors));
    provhsm_set_log_callback(collect_errors, NULL);
    provhsm_backend_test_override = NULL;
    snprintf(store, sizeof(store), "%s/store%d", workdir, ++store_count);
    setenv("PROVHSM_CONFIG", empty_config, 1);
    setenv("PROVHSM_STORE", store, 1);
    setenv("PROVHSM_LOG", "warn", 1);
    unsetenv("PROVHSM_TCTI");
    return 0;
}

typedef struct stack_run {
    int x509_ok, symmetric_ok;
} stack_run;

static void *create_get_destroy(void *arg)
{
    stack_run *r = arg;
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = x->hsm_client_x509_create();
    if (h != NULL) {
        char *cert = x->hsm_client_get_cert(h), *key = x->hsm_client_get_key(h),
             *cn = x->hsm_client_get_common_name(h);
        r->x509_ok = cert != NULL && key != NULL && cn != NULL && strcmp(cn, "stack-dev") == 0;
        free(cert);
        provhsm_free_secret(key);
        free(cn);
        x->hsm_client_x509_destroy(h);
    }
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    h = k->hsm_client_key_create();
    if (h != NULL) {
        char *id = NULL, *key = NULL;
        if (k->hsm_client_set_symm_key_info(h, NULL, NULL) == 0) {
            id = k->hsm_client_get_registration_name(h);
            key = k->hsm_client_get_symm_key(h);
        }
        r->symmetric_ok = id != NULL && strcmp(id, "stack-dev") == 0 && key != NULL &&
                          strcmp(key, SYMMETRIC_KEY) == 0;
        free(id);
        provhsm_free_secret(key);
        k->hsm_client_key_destroy(h);
    }
    return NULL;
}

/*
 * The thread stack the small-stack tests give the SDK calls: 16 KB; 32 KB under
 * AddressSanitizer, whose red zones make every frame larger (16 KB fits there today with
 * less than 4 KB to spare), still too small for a 25 KB configuration on the stack.
 */
static size_t small_stack(void)
{
    size_t stack = SMALL_STACK;
#if defined(__SANITIZE_ADDRESS__)
    stack *= 2;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    stack *= 2;
#endif
#endif
    /* no thread is smaller than the platform's floor (glibc on aarch64: 128 KB) */
    if (stack < (size_t)PTHREAD_STACK_MIN)
        stack = (size_t)PTHREAD_STACK_MIN;
    return stack;
}

/* Runs fn(arg) on a thread with small_stack(); a frame that does not fit is a SIGSEGV. */
static void run_on_small_stack(void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_t thread;
    assert_int_equal(pthread_attr_init(&attr), 0);
    assert_int_equal(pthread_attr_setstacksize(&attr, small_stack()), 0);
    assert_int_equal(pthread_create(&thread, &attr, fn, arg), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    pthread_attr_destroy(&attr);
}

/*
 * create/get/destroy of both software tables on a 16 KB thread stack (embedded SDK
 * threads). A frame that does not fit runs into the stack's guard page and the test dies
 * with SIGSEGV. 16 KB holds glibc's thread descriptor and TLS (about 6 KB here) and what
 * create needs, not the 25 KB provhsm_config, and not the three nested 4 KB path
 * buffers provhsm_store_open had.
 */
static void create_runs_on_a_small_thread_stack(void **state)
{
    (void)state;
    char *pem = NULL;
    assert_int_equal(provhsm_store_init(), PROVHSM_OK);
    assert_int_equal(provhsm_x509_generate("stack-dev", PROVHSM_KEY_EC_P256, 30, 0, &pem),
                     PROVHSM_OK);
    free(pem);
    assert_int_equal(provhsm_symmetric_set("stack-dev", SYMMETRIC_KEY), PROVHSM_OK);
    stack_run r = {0, 0};
    run_on_small_stack(create_get_destroy, &r);
    assert_true(r.x509_ok);
    assert_true(r.symmetric_ok);
}

static void *create_with_bad_configuration(void *arg)
{
    int *refused = arg;
    *refused = hsm_client_x509_interface()->hsm_client_x509_create() == NULL &&
               hsm_client_key_interface()->hsm_client_key_create() == NULL;
    return NULL;
}

/*
 * A configuration file with an error, reported to stderr, on the same small stack: the
 * parser's line buffer and the error line must both fit (the parse and its report nest).
 */
static void bad_configuration_on_a_small_thread_stack(void **state)
{
    (void)state;
    char path[sizeof(workdir) + 16];
    snprintf(path, sizeof(path), "%s/bad.conf", workdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("[store]\nno_such_key = 1\n", f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0600), 0);
    setenv("PROVHSM_CONFIG", path, 1);
    provhsm_set_log_callback(NULL, NULL);
    int refused = 0;
    run_on_small_stack(create_with_bad_configuration, &refused);
    assert_true(refused);
}

typedef struct admin_run {
    provhsm_err init, generate, import, symmetric, remove;
    const char *backend;
} admin_run;

static void *admin_calls(void *arg)
{
    admin_run *r = arg;
    char *pem = NULL;
    r->init = provhsm_store_init();
    r->generate = provhsm_x509_generate("stack-admin", PROVHSM_KEY_EC_P256, 30, 0, &pem);
    if (r->generate == PROVHSM_OK)
        r->import = provhsm_x509_import(pem, NULL, NULL); /* its own certificate again */
    free(pem);
    r->symmetric = provhsm_symmetric_set("stack-admin", SYMMETRIC_KEY);
    r->backend = provhsm_backend_name("symmetric");
    r->remove = provhsm_identity_remove("symmetric");
    return NULL;
}

/*
 * The administration API on the same small stack: a factory tool or an agent may call it
 * from a worker thread. Each call loads the configuration, which lives on the heap.
 */
static void admin_api_runs_on_a_small_thread_stack(void **state)
{
    (void)state;
    admin_run r = {-1, -1, -1, -1, -1, NULL};
    run_on_small_stack(admin_calls, &r);
    assert_int_equal(r.init, PROVHSM_OK);
    assert_int_equal(r.generate, PROVHSM_OK);
    assert_int_equal(r.import, PROVHSM_OK);
    assert_int_equal(r.symmetric, PROVHSM_OK);
    assert_non_null(r.backend);
    assert_string_equal(r.backend, "software");
    assert_int_equal(r.remove, PROVHSM_OK);
}

static void *symmetric_without_identity(void *arg)
{
    int *refused = arg;
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
    if (h != NULL) {
        *refused = k->hsm_client_set_symm_key_info(h, NULL, NULL) != 0 &&
                   k->hsm_client_get_registration_name(h) == NULL;
        k->hsm_client_key_destroy(h);
    }
    return NULL;
}

/*
 * The error lines of a failing call fit the small stack too, written where a device
 * application sees them by default: stderr, without a log callback (glibc's fprintf
 * takes an 8 KB buffer on the stack for an unbuffered stream).
 */
static void errors_to_stderr_fit_a_small_stack(void **state)
{
    (void)state;
    int refused = 0;
    provhsm_set_log_callback(NULL, NULL);
    run_on_small_stack(symmetric_without_identity, &refused);
    assert_true(refused);
}

/* Exactly one error line was logged since the count was reset, and it holds a and b. */
static void assert_one_error_with(const char *a, const char *b)
{
    if (errors.count != 1)
        fail_msg("%d error lines where one was expected (first: %s; second: %s)", errors.count,
                 errors.count > 0 ? errors.text[0] : "-", errors.count > 1 ? errors.text[1] : "-");
    if (error_with(a, b) == NULL)
        fail_msg("the error line does not say \"%s\" and %s: %s", a, b, errors.text[0]);
    errors.count = 0;
}

/*
 * No store, or a store without a symmetric identity, and nothing from the application:
 * one error-level line (seen at the default level) says what is missing and where, and
 * no second line repeats it.
 */
static void missing_symmetric_identity_says_where(void **state)
{
    (void)state;
    const char *store = getenv("PROVHSM_STORE");
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
    assert_non_null(h); /* the application may still pass its identity */
    assert_int_equal(errors.count, 0);
    assert_int_not_equal(k->hsm_client_set_symm_key_info(h, NULL, NULL), 0);
    assert_one_error_with("no store at", store);
    assert_null(k->hsm_client_get_registration_name(h));
    assert_one_error_with("no registration id: there is no store at", store);
    assert_null(k->hsm_client_get_symm_key(h));
    assert_one_error_with("no symmetric key: there is no store at", store);
    k->hsm_client_key_destroy(h);

    assert_int_equal(provhsm_store_init(), PROVHSM_OK);
    errors.count = 0;
    h = k->hsm_client_key_create();
    assert_non_null(h);
    assert_int_equal(errors.count, 0);
    assert_null(k->hsm_client_get_symm_key(h));
    assert_one_error_with("holds no symmetric identity", store);
    /* what the application passes is enough */
    assert_int_equal(k->hsm_client_set_symm_key_info(h, "app-dev", SYMMETRIC_KEY), 0);
    char *id = k->hsm_client_get_registration_name(h);
    assert_non_null(id);
    assert_string_equal(id, "app-dev");
    free(id);
    k->hsm_client_key_destroy(h);
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
        cmocka_unit_test_setup_teardown(tpm_outputs_untouched_on_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(symmetric_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(foreign_and_dead_handles, setup, teardown),
        cmocka_unit_test_setup_teardown(universal_handle_opens_each_kind_once, setup, teardown),
        cmocka_unit_test_setup_teardown(init_deinit_counting, setup, teardown),
        cmocka_unit_test_setup_teardown(init_deinit_unbalanced_as_the_sdk_does, setup, teardown),
        cmocka_unit_test_setup_teardown(create_runs_on_a_small_thread_stack, software_setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(missing_symmetric_identity_says_where, software_setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(errors_to_stderr_fit_a_small_stack, software_setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(admin_api_runs_on_a_small_thread_stack, software_setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(bad_configuration_on_a_small_thread_stack, software_setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
