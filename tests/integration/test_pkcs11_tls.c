/*
 * An X.509 identity whose key is on a SoftHSM2 token, end to end as a device uses it:
 * the store made, `x509 generate` (a CSR signed on the token), the CA's certificate
 * imported, then the SDK's X.509 table gives the certificate and the alias key, which
 * the harness's client loads as the SDK's OpenSSL TLS layer does (after
 * hsm_client_x509_init) for TLS 1.3 and 1.2 handshakes with client authentication
 * against a server that requires and verifies the certificate.
 * Counted: PKCS#11 calls per handshake (two: C_SignInit + C_Sign), no new session over
 * 1,000 handshakes, 4 threads at once; the key deleted from the token, then the token
 * removed mid-run, fail the handshake with a logged reason, in bounded time.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>
#include <cmocka.h>

#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <p11-kit/uri.h>

#include "hsm_client_data.h"
#include "keyref.h"
#include "p11_wrap.h"
#include "provhsm/provhsm.h"
#include "softhsm_fixture.h"
#include "tls_harness.h"

#define CN "pkcs11-device"

static struct {
    provhsm_test_softhsm hsm;
    tls_ca *ca;
    tls_server *srv;
    const HSM_CLIENT_X509_INTERFACE *x509;
    HSM_CLIENT_HANDLE handle;
    char *cert_pem, *key_pem; /* from the SDK's X.509 table */
} G;

static int write_config(void)
{
    char path[320];
    snprintf(path, sizeof(path), "%s/provhsm.conf", G.hsm.dir);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f,
            "[store]\npath = %s/store\n[x509]\nbackend = pkcs11\n[pkcs11]\nmodule = %s\n"
            "token = pkcs11:token=%s\npin_env = %s\n",
            G.hsm.dir, G.hsm.module, G.hsm.label, PROVHSM_TEST_PIN_ENV);
    fclose(f);
    chmod(path, 0600);
    setenv("PROVHSM_CONFIG", path, 1);
    unsetenv("PROVHSM_STORE");
    return 0;
}

/* The identity made as on a factory line: key on the token, CSR, certificate imported. */
static int enroll(void)
{
    char *csr = NULL, *leaf = NULL;
    int expired = 0;
    if (provhsm_store_init() != PROVHSM_OK ||
        provhsm_x509_generate(CN, PROVHSM_KEY_EC_P256, 0, 0, &csr) != PROVHSM_OK)
        return -1;
    int rc = tls_ca_issue_from_csr(G.ca, csr, &leaf) == 0 &&
                     provhsm_x509_import(leaf, NULL, &expired) == PROVHSM_OK
                 ? 0
                 : -1;
    free(csr);
    free(leaf);
    return rc;
}

static int group_teardown(void **unused)
{
    (void)unused;
    tls_server_stop(G.srv);
    if (G.handle != NULL)
        G.x509->hsm_client_x509_destroy(G.handle);
    free(G.cert_pem);
    free(G.key_pem);
    tls_ca_free(G.ca);
    hsm_client_x509_deinit();
    provhsm_test_softhsm_stop(&G.hsm);
    memset(&G, 0, sizeof(G));
    return 0;
}

static int setup_steps(void)
{
    if (provhsm_test_softhsm_start(&G.hsm, "provhsm-tls") != 0 || write_config() != 0)
        return -1;
    if (hsm_client_x509_init() != 0)
        return -1;
    G.ca = tls_ca_new("pkcs11 test CA");
    if (G.ca == NULL || enroll() != 0)
        return -1;
    G.x509 = hsm_client_x509_interface();
    G.handle = G.x509->hsm_client_x509_create();
    if (G.handle == NULL)
        return -1;
    G.cert_pem = G.x509->hsm_client_get_cert(G.handle);
    G.key_pem = G.x509->hsm_client_get_key(G.handle);
    G.srv = tls_server_start(G.ca);
    return G.cert_pem != NULL && G.key_pem != NULL && G.srv != NULL ? 0 : -1;
}

static int group_setup(void **unused)
{
    (void)unused;
    provhsm_test_p11_log_capture();
    if (setup_steps() == 0)
        return 0;
    fprintf(stderr, "setup failed\n");
    group_teardown(NULL);
    return -1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The alias key is a reference to the token's key, with no private key material. */
static void test_alias_key_is_a_token_reference(void **unused)
{
    (void)unused;
    assert_null(strstr(G.key_pem, "PRIVATE KEY"));
    provhsm_keyref ref = {0};
    assert_int_equal(provhsm_keyref_from_pem(G.key_pem, strlen(G.key_pem), &ref), PROVHSM_OK);
    assert_string_equal(ref.backend, "pkcs11");
    assert_true(strncmp(ref.locator, "pkcs11:", 7) == 0);
    assert_non_null(strstr(ref.locator, "token=provhsm-tls"));
    provhsm_keyref_clear(&ref);
    char *line = NULL;
    assert_int_equal(provhsm_x509_key_location(&line), PROVHSM_OK);
    assert_non_null(strstr(line, "PKCS#11 token provhsm-tls"));
    assert_non_null(strstr(line, "not extractable"));
    free(line);
}

/* TLS 1.3 and 1.2 handshakes with the token's key, the server verifying the certificate. */
static void test_handshakes_tls13_and_tls12(void **unused)
{
    (void)unused;
    const int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
    for (size_t i = 0; i < 2; i++) {
        char err[512] = "";
        unsigned long before = tls_server_verified_handshakes(G.srv);
        int rc = tls_handshake(G.srv, G.cert_pem, G.key_pem, versions[i], err, sizeof(err));
        if (rc != 0)
            fprintf(stderr, "handshake 0x%x: %s\n", versions[i], err);
        assert_int_equal(rc, 0);
        assert_int_equal(tls_server_verified_handshakes(G.srv), before + 1);
        char cn[64];
        tls_server_last_client_cn(G.srv, cn, sizeof(cn));
        assert_string_equal(cn, CN);
    }
}

/* Two PKCS#11 calls per handshake; 1,000 handshakes open no session and log in no more. */
static void test_two_calls_per_handshake_no_session_leak(void **unused)
{
    (void)unused;
    const int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
    const unsigned rounds[] = {750, 250}; /* 1,000 in all */
    uint64_t sessions = provhsm_p11_sessions_opened_total();
    uint64_t logins = provhsm_p11_logins_total();
    for (size_t i = 0; i < 2; i++) {
        char err[512] = "";
        tls_client *cl =
            tls_client_new(G.srv, G.cert_pem, G.key_pem, versions[i], err, sizeof(err));
        assert_non_null(cl);
        assert_int_equal(tls_client_handshake(cl, err, sizeof(err)), 0);
        uint64_t calls = provhsm_p11_calls_total();
        double t0 = now_s();
        int rc = tls_client_handshakes(cl, rounds[i], err, sizeof(err));
        double per = (now_s() - t0) / rounds[i];
        if (rc != 0)
            fprintf(stderr, "handshakes: %s\n", err);
        assert_int_equal(rc, 0);
        uint64_t spent = provhsm_p11_calls_total() - calls;
        fprintf(stderr, "TLS 0x%x: %.2f PKCS#11 calls and %.2f ms per handshake\n", versions[i],
                (double)spent / rounds[i], per * 1000);
        assert_int_equal(spent, 2 * rounds[i]);
        tls_client_free(cl);
    }
    assert_int_equal(provhsm_p11_sessions_opened_total(), sessions);
    assert_int_equal(provhsm_p11_logins_total(), logins);
}

typedef struct thread_arg {
    int version;
    int rc;
    char err[512];
} thread_arg;

static void *handshake_many(void *p)
{
    thread_arg *a = p;
    tls_client *cl =
        tls_client_new(G.srv, G.cert_pem, G.key_pem, a->version, a->err, sizeof(a->err));
    a->rc = cl != NULL ? tls_client_handshakes(cl, 50, a->err, sizeof(a->err)) : -1;
    tls_client_free(cl);
    return NULL;
}

/* 4 threads handshaking at once share the token's one session. */
static void test_four_threads_handshaking(void **unused)
{
    (void)unused;
    uint64_t sessions = provhsm_p11_sessions_opened_total();
    unsigned long before = tls_server_verified_handshakes(G.srv);
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        memset(&args[i], 0, sizeof(args[i]));
        args[i].version = i % 2 ? TLS1_2_VERSION : TLS1_3_VERSION;
        assert_int_equal(pthread_create(&th[i], NULL, handshake_many, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        if (args[i].rc != 0)
            fprintf(stderr, "thread %d: %s\n", i, args[i].err);
        assert_int_equal(args[i].rc, 0);
    }
    assert_int_equal(tls_server_verified_handshakes(G.srv), before + 200);
    assert_int_equal(provhsm_p11_sessions_opened_total(), sessions);
}

/*
 * The other side of test_wrong_pin_in_another_process, run as `itest_pkcs11_tls
 * --wrong-pin` with a wrong PIN in the environment: the alias key is decoded the SDK's
 * way and must fail, with "wrong PIN" logged and one login attempt, a second decode with
 * none. Exit 0 when all that held.
 */
static int wrong_pin_child(void)
{
    provhsm_test_p11_log_capture();
    if (hsm_client_x509_init() != 0)
        return 10;
    const HSM_CLIENT_X509_INTERFACE *x509 = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = x509->hsm_client_x509_create();
    char *key_pem = h != NULL ? x509->hsm_client_get_key(h) : NULL;
    if (key_pem == NULL)
        return 11;
    int rc = 0;
    for (int attempt = 0; attempt < 2 && rc == 0; attempt++) {
        BIO *bio = BIO_new_mem_buf(key_pem, -1);
        EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
        BIO_free(bio);
        if (key != NULL)
            rc = 12; /* decoded, so the token accepted the PIN */
        else if (!provhsm_test_p11_log_seen("wrong PIN"))
            rc = 13;
        else if (provhsm_p11_logins_total() != 1)
            rc = 14; /* the refused PIN was sent again */
        EVP_PKEY_free(key);
    }
    free(key_pem);
    x509->hsm_client_x509_destroy(h);
    hsm_client_x509_deinit();
    return rc;
}

/* A device process with a wrong PIN: the SDK's decode of the alias key fails, clearly. */
static void test_wrong_pin_in_another_process(void **unused)
{
    (void)unused;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv(PROVHSM_TEST_PIN_ENV, "00000000", 1);
        execl("/proc/self/exe", "itest_pkcs11_tls", "--wrong-pin", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    double t0 = now_s();
    while (waitpid(pid, &status, WNOHANG) == 0 && now_s() - t0 < 30.0)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    if (now_s() - t0 >= 30.0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fail_msg("the process with a wrong PIN hung");
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* this process's session is untouched */
    char err[512] = "";
    assert_int_equal(tls_handshake(G.srv, G.cert_pem, G.key_pem, TLS1_3_VERSION, err, sizeof(err)),
                     0);
}

/* The CKA_ID of the identity's key, from the alias key's URI (read with p11-kit). */
static size_t key_id(uint8_t *id, size_t room)
{
    provhsm_keyref ref = {0};
    assert_int_equal(provhsm_keyref_from_pem(G.key_pem, strlen(G.key_pem), &ref), PROVHSM_OK);
    P11KitUri *uri = p11_kit_uri_new();
    assert_int_equal(p11_kit_uri_parse(ref.locator, P11_KIT_URI_FOR_ANY, uri), P11_KIT_URI_OK);
    CK_ATTRIBUTE *a = p11_kit_uri_get_attribute(uri, CKA_ID);
    assert_non_null(a);
    assert_true(a->ulValueLen <= room);
    memcpy(id, a->pValue, a->ulValueLen);
    size_t len = a->ulValueLen;
    p11_kit_uri_free(uri);
    provhsm_keyref_clear(&ref);
    return len;
}

/* One handshake that must fail within bounded time, the log saying `why`. */
static void handshake_fails(tls_client *cl, const char *why)
{
    char err[512] = "";
    provhsm_test_p11_log_clear();
    unsigned long before = tls_server_verified_handshakes(G.srv);
    double t0 = now_s();
    assert_int_not_equal(tls_client_handshake(cl, err, sizeof(err)), 0);
    assert_true(now_s() - t0 < 15.0);
    assert_int_equal(tls_server_verified_handshakes(G.srv), before);
    assert_true(provhsm_test_p11_log_seen(why));
}

/*
 * The key deleted from the token, then the token's files deleted: each time the next
 * handshake fails, says why, and does not hang. Last: nothing is left to sign with.
 */
static void test_key_deleted_then_token_removed(void **unused)
{
    (void)unused;
    char err[512] = "";
    tls_client *cl = tls_client_new(G.srv, G.cert_pem, G.key_pem, TLS1_3_VERSION, err, sizeof(err));
    assert_non_null(cl);
    assert_int_equal(tls_client_handshake(cl, err, sizeof(err)), 0);

    uint8_t id[64];
    size_t id_len = key_id(id, sizeof(id));
    provhsm_test_p11 direct;
    assert_int_equal(provhsm_test_p11_open(&G.hsm, &direct), 0);
    CK_OBJECT_HANDLE priv = provhsm_test_p11_find(&direct, CKO_PRIVATE_KEY, id, id_len);
    assert_int_equal(direct.fl->C_DestroyObject(direct.session, priv), CKR_OK);
    provhsm_test_p11_close(&direct);
    handshake_fails(cl, "no private key");

    assert_int_equal(provhsm_test_softhsm_remove_tokens(&G.hsm), 0);
    handshake_fails(cl, "token not present");
    tls_client_free(cl);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--wrong-pin") == 0)
        return wrong_pin_child();
    if (!provhsm_test_softhsm_available()) {
        fprintf(stderr, "SoftHSM2 (module and softhsm2-util) not installed: skipped\n");
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alias_key_is_a_token_reference),
        cmocka_unit_test(test_handshakes_tls13_and_tls12),
        cmocka_unit_test(test_two_calls_per_handshake_no_session_leak),
        cmocka_unit_test(test_four_threads_handshaking),
        cmocka_unit_test(test_wrong_pin_in_another_process),
        cmocka_unit_test(test_key_deleted_then_token_removed), /* last: nothing left */
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
