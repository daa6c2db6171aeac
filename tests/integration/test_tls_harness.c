/*
 * The TLS harness itself (tls_harness.h), with software keys only: a client certificate
 * from the server's CA completes a verified handshake on TLS 1.2 and 1.3; a certificate
 * from another CA, or a key that does not match the certificate, does not.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "tls_harness.h"

typedef struct fixture {
    tls_ca *ca;
    tls_server *srv;
    EVP_PKEY *key;
    char *key_pem;
    char *leaf_pem;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->ca = tls_ca_new("harness CA");
    f->srv = tls_server_start(f->ca);
    f->key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    f->key_pem = tls_key_to_pkcs8_pem(f->key);
    if (f->ca == NULL || f->srv == NULL || f->key_pem == NULL ||
        tls_ca_issue(f->ca, f->key, "harness-device", &f->leaf_pem) != 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    tls_server_stop(f->srv);
    tls_ca_free(f->ca);
    EVP_PKEY_free(f->key);
    free(f->key_pem);
    free(f->leaf_pem);
    free(f);
    return 0;
}

static void test_verified_handshake_both_versions(void **state)
{
    fixture *f = *state;
    char err[1024], cn[64];
    unsigned long before = tls_server_verified_handshakes(f->srv);
    assert_int_equal(
        tls_handshake(f->srv, f->leaf_pem, f->key_pem, TLS1_3_VERSION, err, sizeof(err)), 0);
    assert_int_equal(
        tls_handshake(f->srv, f->leaf_pem, f->key_pem, TLS1_2_VERSION, err, sizeof(err)), 0);
    assert_int_equal(tls_server_verified_handshakes(f->srv), before + 2);
    tls_server_last_client_cn(f->srv, cn, sizeof(cn));
    assert_string_equal(cn, "harness-device");
}

static void test_many_handshakes_one_context(void **state)
{
    fixture *f = *state;
    char err[1024];
    tls_client *cl =
        tls_client_new(f->srv, f->leaf_pem, f->key_pem, TLS1_3_VERSION, err, sizeof(err));
    assert_non_null(cl);
    unsigned long before = tls_server_verified_handshakes(f->srv);
    assert_int_equal(tls_client_handshakes(cl, 5, err, sizeof(err)), 0);
    assert_int_equal(tls_server_verified_handshakes(f->srv), before + 5);
    tls_client_free(cl);
}

static void test_certificate_of_another_ca_refused(void **state)
{
    fixture *f = *state;
    char err[1024];
    char *other_leaf = NULL;
    tls_ca *other = tls_ca_new("another CA");
    assert_non_null(other);
    assert_int_equal(tls_ca_issue(other, f->key, "stranger", &other_leaf), 0);
    unsigned long before = tls_server_verified_handshakes(f->srv);
    for (int version = TLS1_2_VERSION; version <= TLS1_3_VERSION; version++) {
        assert_int_not_equal(
            tls_handshake(f->srv, other_leaf, f->key_pem, version, err, sizeof(err)), 0);
        assert_true(strlen(err) > 0);
    }
    assert_int_equal(tls_server_verified_handshakes(f->srv), before);
    free(other_leaf);
    tls_ca_free(other);
}

static void test_key_not_matching_certificate_refused(void **state)
{
    fixture *f = *state;
    char err[1024];
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    char *other_pem = tls_key_to_pkcs8_pem(other);
    /* SSL_CTX_use_certificate after the key drops the key that does not match */
    assert_int_not_equal(
        tls_handshake(f->srv, f->leaf_pem, other_pem, TLS1_3_VERSION, err, sizeof(err)), 0);
    free(other_pem);
    EVP_PKEY_free(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verified_handshake_both_versions),
        cmocka_unit_test(test_many_handshakes_one_context),
        cmocka_unit_test(test_certificate_of_another_ca_refused),
        cmocka_unit_test(test_key_not_matching_certificate_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
