/*
 * TLS client-authentication harness for the hardware-key tests (provider, TPM, PKCS#11)
 * and benchmarks. Test code only.
 *
 * A throw-away CA, an in-process TLS server that requires and verifies a client
 * certificate issued by that CA, and a client that loads its certificate and key exactly
 * as the SDK's OpenSSL TLS layer does (c-utility's x509_openssl_add_credentials): in the
 * default library context, on SSL_CTX_new(TLS_client_method()),
 *   1. PEM_read_bio_PrivateKey on the key string + SSL_CTX_use_PrivateKey,
 *   2. PEM_read_bio_X509_AUX on the certificate string + SSL_CTX_use_certificate (leaf),
 *   3. PEM_read_bio_X509 for each further certificate + SSL_CTX_add_extra_chain_cert.
 * A handshake counts as done when the server has verified the client's certificate and
 * said so to the client over the connection (with TLS 1.3 the client finishes its side
 * before the server has checked the certificate, so the client waits for that byte).
 *
 * Typical use:
 *     tls_ca *ca = tls_ca_new("test CA");
 *     char *leaf = NULL;
 *     tls_ca_issue_from_csr(ca, csr_pem, &leaf);        // or _from_cert, or tls_ca_issue
 *     tls_server *srv = tls_server_start(ca);
 *     char err[512];
 *     assert_int_equal(tls_handshake(srv, leaf, alias_key_pem, TLS1_3_VERSION, err,
 *                                    sizeof(err)), 0);
 *     // many handshakes on one client context:
 *     tls_client *cl = tls_client_new(srv, leaf, alias_key_pem, TLS1_2_VERSION, err, sizeof(err));
 *     tls_client_handshakes(cl, 100, err, sizeof(err));
 *     tls_client_free(cl);
 *     tls_server_stop(srv);
 *     tls_ca_free(ca);
 *
 * Every function is thread-safe with respect to the others (the server serves each
 * connection on a thread of its own; clients may run on several threads at once, one
 * tls_client per thread). All sockets have 10 s timeouts: nothing hangs. SIGPIPE is
 * ignored once a server starts. Errors are reported as text in `err` (OpenSSL's error
 * queue, or the server's reason when it refused the client).
 */
#ifndef PROVHSM_TLS_HARNESS_H
#define PROVHSM_TLS_HARNESS_H

#include <stddef.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

typedef struct tls_ca tls_ca;
typedef struct tls_server tls_server;
typedef struct tls_client tls_client;

/* A CA with a fresh EC P-256 key and a self-signed certificate; NULL on failure. */
tls_ca *tls_ca_new(const char *cn);
void tls_ca_free(tls_ca *ca);
/* The CA certificate as PEM (owned by the CA) and as an X509 (owned by the CA). */
const char *tls_ca_cert_pem(const tls_ca *ca);
X509 *tls_ca_cert(const tls_ca *ca);

/*
 * Issues a leaf certificate for `subject_key` (only its public half is used, so a key of
 * any provider works) with CN=cn, valid 1 day, usable for TLS client and server
 * authentication. *leaf_pem_out: malloc'd PEM. 0 on success.
 */
int tls_ca_issue(tls_ca *ca, EVP_PKEY *subject_key, const char *cn, char **leaf_pem_out);
/* Same, for the key and CN of a PKCS#10 request (its signature is verified first). */
int tls_ca_issue_from_csr(tls_ca *ca, const char *csr_pem, char **leaf_pem_out);
/* Same, for the key and CN of a (self-signed) certificate, as a CA re-issuing it. */
int tls_ca_issue_from_cert(tls_ca *ca, const char *cert_pem, char **leaf_pem_out);

/*
 * Starts a TLS server on 127.0.0.1 (an ephemeral port) on a thread of its own, with a
 * software EC P-256 certificate issued by `ca`, accepting TLS 1.2 and 1.3, and requiring
 * a client certificate that verifies against `ca` (SSL_VERIFY_PEER |
 * SSL_VERIFY_FAIL_IF_NO_PEER_CERT). The CA must outlive the server. NULL on failure.
 */
tls_server *tls_server_start(tls_ca *ca);
/* Stops accepting, waits for connections in progress, frees. NULL is fine. */
void tls_server_stop(tls_server *srv);
int tls_server_port(const tls_server *srv);
/* Handshakes the server completed with a verified client certificate. */
unsigned long tls_server_verified_handshakes(const tls_server *srv);
/* Copies the subject CN of the last verified client certificate ("" when none). */
void tls_server_last_client_cn(tls_server *srv, char *buf, size_t len);

/*
 * A client SSL_CTX set up as the SDK does (see above), restricted to `tls_version`
 * (TLS1_2_VERSION or TLS1_3_VERSION), trusting `srv`'s CA for the server certificate.
 * NULL on failure, with the reason in err (a key PEM_read_bio_PrivateKey cannot decode,
 * a certificate that does not match the key, ...).
 */
tls_client *tls_client_new(const tls_server *srv, const char *cert_chain_pem, const char *key_pem,
                           int tls_version, char *err, size_t errlen);
void tls_client_free(tls_client *cl);
/* The client's SSL_CTX (owned by the client), e.g. to look at the key it holds. */
struct ssl_ctx_st *tls_client_ctx(tls_client *cl);
/* One full client-authenticated handshake (new connection, no session resumption). 0 = ok. */
int tls_client_handshake(tls_client *cl, char *err, size_t errlen);
/* n handshakes in a row on the same client context; stops at the first failure. 0 = ok. */
int tls_client_handshakes(tls_client *cl, unsigned n, char *err, size_t errlen);

/* tls_client_new + one handshake + tls_client_free. 0 on a completed, verified handshake. */
int tls_handshake(const tls_server *srv, const char *cert_chain_pem, const char *key_pem,
                  int tls_version, char *err, size_t errlen);

/*
 * Keys as the SDK's strings carry them. tls_key_to_pkcs8_pem: the key's PKCS#8 PEM
 * (malloc'd; NULL on failure). tls_key_from_pem: PEM_read_bio_PrivateKey in the default
 * library context, as the SDK decodes its alias key (NULL when no provider decodes it).
 * tls_key_provider_name: the name of the provider that holds the key ("(no key)" for
 * NULL, "(none)" when it has none), to check who serves it.
 */
char *tls_key_to_pkcs8_pem(EVP_PKEY *key);
EVP_PKEY *tls_key_from_pem(const char *pem);
const char *tls_key_provider_name(const EVP_PKEY *key);

#endif
