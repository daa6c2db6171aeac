/*
 * tls_client_auth: a TLS client that authenticates with the device's X.509 identity the
 * way the Azure IoT C SDK's OpenSSL TLS layer does, so that a key kept in the TPM or on a
 * PKCS#11 token can be seen signing a real handshake:
 *
 *   hsm_client_x509_init()                        (loads provhsm's OpenSSL provider)
 *   get_cert / get_alias_key from the X.509 table (the alias key is a key reference)
 *   PEM_read_bio_PrivateKey + SSL_CTX_use_PrivateKey       (default library context)
 *   PEM_read_bio_X509_AUX + SSL_CTX_use_certificate, the rest as extra chain certificates
 *
 * Usage: tls_client_auth HOST PORT [1.2|1.3]
 * Exit 0 when the handshake completed; it prints the protocol, and which provider holds
 * the private key ("provhsm" for a hardware key, "default" for a software one).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>

#include "hsm_client_data.h"

static int fail(const char *what)
{
    fprintf(stderr, "tls_client_auth: %s\n", what);
    ERR_print_errors_fp(stderr);
    return 1;
}

/* The SDK's order: the key first, then the leaf, then the chain. */
static int add_credentials(SSL_CTX *ctx, const char *chain_pem, const char *key_pem)
{
    int ok = 0;
    BIO *kb = BIO_new_mem_buf(key_pem, -1), *cb = BIO_new_mem_buf(chain_pem, -1);
    EVP_PKEY *key = kb != NULL ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
    X509 *leaf = NULL, *extra = NULL;

    if (key == NULL || SSL_CTX_use_PrivateKey(ctx, key) != 1)
        goto out;
    printf("private key: %s, held by provider \"%s\"\n", EVP_PKEY_get0_type_name(key),
           OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key)));
    if ((leaf = PEM_read_bio_X509_AUX(cb, NULL, NULL, NULL)) == NULL ||
        SSL_CTX_use_certificate(ctx, leaf) != 1)
        goto out;
    while ((extra = PEM_read_bio_X509(cb, NULL, NULL, NULL)) != NULL) {
        if (SSL_CTX_add_extra_chain_cert(ctx, extra) != 1) {
            X509_free(extra);
            goto out;
        }
    }
    ERR_clear_error(); /* the end of the chain */
    ok = SSL_CTX_check_private_key(ctx) == 1;
out:
    X509_free(leaf);
    EVP_PKEY_free(key);
    BIO_free(kb);
    BIO_free(cb);
    return ok;
}

static int handshake(SSL_CTX *ctx, const char *host, const char *port)
{
    int rc = 1;
    BIO *conn = BIO_new_ssl_connect(ctx);
    SSL *ssl = NULL;

    if (conn == NULL)
        return fail("BIO_new_ssl_connect");
    BIO_get_ssl(conn, &ssl);
    BIO_set_conn_hostname(conn, host);
    BIO_set_conn_port(conn, port);
    if (BIO_do_handshake(conn) != 1) {
        rc = fail("the TLS handshake failed");
    } else {
        /* the server asks for the client's certificate; a short read completes it in 1.3 */
        const char request[] = "GET / HTTP/1.0\r\n\r\n";
        char reply[64];
        if (BIO_write(conn, request, (int)strlen(request)) > 0)
            (void)BIO_read(conn, reply, sizeof(reply));
        printf("handshake completed: %s, client certificate sent\n", SSL_get_version(ssl));
        rc = 0;
    }
    BIO_free_all(conn);
    return rc;
}

int main(int argc, char **argv)
{
    const HSM_CLIENT_X509_INTERFACE *t = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = NULL;
    char *chain = NULL, *key = NULL;
    SSL_CTX *ctx = NULL;
    int rc = 1;

    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s HOST PORT [1.2|1.3]\n", argv[0]);
        return 2;
    }
    if (hsm_client_x509_init() != 0)
        return fail("hsm_client_x509_init failed");
    if ((h = t->hsm_client_x509_create()) == NULL || (chain = t->hsm_client_get_cert(h)) == NULL ||
        (key = t->hsm_client_get_key(h)) == NULL) {
        rc = fail("no X.509 identity (provhsm x509 generate)");
        goto out;
    }
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        rc = fail("SSL_CTX_new");
        goto out;
    }
    if (argc == 4) {
        int v = strcmp(argv[3], "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
        SSL_CTX_set_min_proto_version(ctx, v);
        SSL_CTX_set_max_proto_version(ctx, v);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* a demo server with its own cert */
    if (!add_credentials(ctx, chain, key)) {
        rc = fail("the SDK's way of loading the certificate and key failed");
        goto out;
    }
    rc = handshake(ctx, argv[1], argv[2]);
out:
    SSL_CTX_free(ctx);
    free(chain);
    free(key);
    if (h != NULL)
        t->hsm_client_x509_destroy(h);
    hsm_client_x509_deinit();
    return rc;
}
