/*
 * TLS client-authentication harness (tls_harness.h): a throw-away CA, a loopback TLS
 * server on its own thread, and a client that loads its credentials the SDK's way.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls_harness.h"

#define IO_TIMEOUT_SECONDS 10
/* The byte the server sends once it has verified the client's certificate. */
#define VERIFIED_BYTE 'V'

struct tls_ca {
    EVP_PKEY *key;
    X509 *cert;
    char *cert_pem;
};

struct tls_server {
    tls_ca *ca;
    SSL_CTX *ctx;
    int listen_fd;
    int port;
    pthread_t thread;
    atomic_int stopping;
    atomic_ulong verified;
    pthread_mutex_t lock; /* guards active and last_cn */
    pthread_cond_t idle;
    int active;
    char last_cn[256];
};

struct tls_client {
    SSL_CTX *ctx;
    int port;
};

/* ---- small helpers --------------------------------------------------------------- */

/* Appends OpenSSL's error queue (and clears it) to `err` after a prefix. */
static void set_err(char *err, size_t errlen, const char *what)
{
    if (err == NULL || errlen == 0) {
        ERR_clear_error();
        return;
    }
    size_t used = (size_t)snprintf(err, errlen, "%s", what);
    unsigned long code;
    const char *data = NULL;
    int flags = 0;
    while ((code = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0 && used + 2 < errlen) {
        char buf[256];
        ERR_error_string_n(code, buf, sizeof(buf));
        int has_text = (flags & ERR_TXT_STRING) != 0 && data != NULL && data[0] != '\0';
        used += (size_t)snprintf(err + used, errlen - used, "; %s%s%s", buf, has_text ? ": " : "",
                                 has_text ? data : "");
        if (used >= errlen)
            break;
    }
    ERR_clear_error();
}

static char *bio_to_string(BIO *bio)
{
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s != NULL) {
        memcpy(s, data, (size_t)n);
        s[n] = '\0';
    }
    return s;
}

static char *cert_to_pem(X509 *cert)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    if (bio != NULL && PEM_write_bio_X509(bio, cert))
        pem = bio_to_string(bio);
    BIO_free(bio);
    return pem;
}

char *tls_key_to_pkcs8_pem(EVP_PKEY *key)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    if (bio != NULL && PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) == 1)
        pem = bio_to_string(bio);
    BIO_free(bio);
    return pem;
}

EVP_PKEY *tls_key_from_pem(const char *pem)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *key = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    return key;
}

const char *tls_key_provider_name(const EVP_PKEY *key)
{
    if (key == NULL)
        return "(no key)";
    const OSSL_PROVIDER *prov = EVP_PKEY_get0_provider(key);
    return prov != NULL ? OSSL_PROVIDER_get0_name(prov) : "(none)";
}

static EVP_PKEY *software_ec_key(void)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    int ok = ext != NULL && X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

static int set_random_serial(X509 *cert)
{
    unsigned char bytes[16];
    if (RAND_bytes(bytes, sizeof(bytes)) != 1)
        return 0;
    bytes[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(bytes, sizeof(bytes), NULL);
    int ok = bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
    BN_free(bn);
    return ok;
}

/* A certificate for `subject_key` named `subject`, signed by `signer_key` as `issuer`. */
static X509 *make_cert(EVP_PKEY *subject_key, const X509_NAME *subject, X509 *issuer_cert,
                       EVP_PKEY *signer_key, int is_ca)
{
    X509 *cert = X509_new();
    if (cert == NULL)
        return NULL;
    const X509_NAME *issuer = issuer_cert != NULL ? X509_get_subject_name(issuer_cert) : subject;
    int ok = X509_set_version(cert, X509_VERSION_3) && set_random_serial(cert) &&
             X509_set_subject_name(cert, subject) && X509_set_issuer_name(cert, issuer) &&
             X509_gmtime_adj(X509_getm_notBefore(cert), -60) != NULL &&
             X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600) != NULL &&
             X509_set_pubkey(cert, subject_key);
    X509 *issuer_for_ext = issuer_cert != NULL ? issuer_cert : cert;
    if (ok && is_ca)
        ok = add_ext(cert, issuer_for_ext, NID_basic_constraints, "critical,CA:TRUE") &&
             add_ext(cert, issuer_for_ext, NID_key_usage, "critical,keyCertSign,cRLSign") &&
             add_ext(cert, issuer_for_ext, NID_subject_key_identifier, "hash");
    else if (ok)
        ok = add_ext(cert, issuer_for_ext, NID_basic_constraints, "critical,CA:FALSE") &&
             add_ext(cert, issuer_for_ext, NID_key_usage, "critical,digitalSignature") &&
             add_ext(cert, issuer_for_ext, NID_ext_key_usage, "clientAuth,serverAuth") &&
             add_ext(cert, issuer_for_ext, NID_authority_key_identifier, "keyid");
    if (!ok || X509_sign(cert, signer_key, EVP_sha256()) <= 0) {
        X509_free(cert);
        return NULL;
    }
    return cert;
}

static X509_NAME *name_with_cn(const char *cn)
{
    X509_NAME *name = X509_NAME_new();
    if (name != NULL && !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                                    (const unsigned char *)cn, -1, -1, 0)) {
        X509_NAME_free(name);
        return NULL;
    }
    return name;
}

/* ---- the CA ---------------------------------------------------------------------- */

tls_ca *tls_ca_new(const char *cn)
{
    tls_ca *ca = calloc(1, sizeof(*ca));
    X509_NAME *name = name_with_cn(cn != NULL ? cn : "provhsm test CA");
    if (ca == NULL || name == NULL)
        goto fail;
    ca->key = software_ec_key();
    if (ca->key == NULL)
        goto fail;
    ca->cert = make_cert(ca->key, name, NULL, ca->key, 1);
    if (ca->cert == NULL)
        goto fail;
    ca->cert_pem = cert_to_pem(ca->cert);
    if (ca->cert_pem == NULL)
        goto fail;
    X509_NAME_free(name);
    return ca;
fail:
    X509_NAME_free(name);
    tls_ca_free(ca);
    return NULL;
}

void tls_ca_free(tls_ca *ca)
{
    if (ca == NULL)
        return;
    EVP_PKEY_free(ca->key);
    X509_free(ca->cert);
    free(ca->cert_pem);
    free(ca);
}

const char *tls_ca_cert_pem(const tls_ca *ca)
{
    return ca->cert_pem;
}

X509 *tls_ca_cert(const tls_ca *ca)
{
    return ca->cert;
}

static int issue_for_name(tls_ca *ca, EVP_PKEY *subject_key, const X509_NAME *subject,
                          char **leaf_pem_out)
{
    X509 *leaf = make_cert(subject_key, subject, ca->cert, ca->key, 0);
    char *pem = leaf != NULL ? cert_to_pem(leaf) : NULL;
    X509_free(leaf);
    if (pem == NULL)
        return -1;
    *leaf_pem_out = pem;
    return 0;
}

int tls_ca_issue(tls_ca *ca, EVP_PKEY *subject_key, const char *cn, char **leaf_pem_out)
{
    if (ca == NULL || subject_key == NULL || cn == NULL || leaf_pem_out == NULL)
        return -1;
    X509_NAME *name = name_with_cn(cn);
    int rc = name != NULL ? issue_for_name(ca, subject_key, name, leaf_pem_out) : -1;
    X509_NAME_free(name);
    return rc;
}

int tls_ca_issue_from_csr(tls_ca *ca, const char *csr_pem, char **leaf_pem_out)
{
    if (ca == NULL || csr_pem == NULL || leaf_pem_out == NULL)
        return -1;
    BIO *bio = BIO_new_mem_buf(csr_pem, -1);
    X509_REQ *req = bio != NULL ? PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL) : NULL;
    EVP_PKEY *pub = req != NULL ? X509_REQ_get_pubkey(req) : NULL;
    int rc = -1;
    if (pub != NULL && X509_REQ_verify(req, pub) == 1)
        rc = issue_for_name(ca, pub, X509_REQ_get_subject_name(req), leaf_pem_out);
    EVP_PKEY_free(pub);
    X509_REQ_free(req);
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

int tls_ca_issue_from_cert(tls_ca *ca, const char *cert_pem, char **leaf_pem_out)
{
    if (ca == NULL || cert_pem == NULL || leaf_pem_out == NULL)
        return -1;
    BIO *bio = BIO_new_mem_buf(cert_pem, -1);
    X509 *cert = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    EVP_PKEY *pub = cert != NULL ? X509_get_pubkey(cert) : NULL;
    int rc = -1;
    if (pub != NULL)
        rc = issue_for_name(ca, pub, X509_get_subject_name(cert), leaf_pem_out);
    EVP_PKEY_free(pub);
    X509_free(cert);
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

/* ---- the server ------------------------------------------------------------------ */

/*
 * Timeouts so that nothing hangs, and TCP_NODELAY: a handshake is a few small writes,
 * and Nagle's algorithm against delayed acknowledgements would add tens of milliseconds
 * to TLS 1.2 handshakes, which would hide what the key's device costs.
 */
static void set_timeouts(int fd)
{
    struct timeval tv = {.tv_sec = IO_TIMEOUT_SECONDS};
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static SSL_CTX *server_ctx(tls_ca *ca)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    EVP_PKEY *key = software_ec_key();
    X509_NAME *name = name_with_cn("localhost");
    X509 *cert = key != NULL && name != NULL ? make_cert(key, name, ca->cert, ca->key, 0) : NULL;
    int ok = ctx != NULL && cert != NULL && SSL_CTX_use_certificate(ctx, cert) == 1 &&
             SSL_CTX_use_PrivateKey(ctx, key) == 1 &&
             SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) &&
             SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
             X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca->cert) == 1;
    X509_free(cert);
    EVP_PKEY_free(key);
    X509_NAME_free(name);
    if (!ok) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    /* every handshake is a full one, so every handshake makes the client sign */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    (void)SSL_CTX_set_num_tickets(ctx, 0);
    return ctx;
}

static void record_client(tls_server *srv, SSL *ssl)
{
    X509 *peer = SSL_get0_peer_certificate(ssl);
    char cn[256] = "";
    if (peer != NULL)
        (void)X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn,
                                        sizeof(cn));
    pthread_mutex_lock(&srv->lock);
    memcpy(srv->last_cn, cn, sizeof(cn));
    pthread_mutex_unlock(&srv->lock);
}

typedef struct connection {
    tls_server *srv;
    int fd;
} connection;

static void *serve_connection(void *arg)
{
    connection *conn = arg;
    tls_server *srv = conn->srv;
    SSL *ssl = SSL_new(srv->ctx);
    if (ssl != NULL && SSL_set_fd(ssl, conn->fd) == 1 && SSL_accept(ssl) == 1 &&
        SSL_get0_peer_certificate(ssl) != NULL && SSL_get_verify_result(ssl) == X509_V_OK) {
        record_client(srv, ssl);
        unsigned char verified = VERIFIED_BYTE, ignored;
        /* counted before the client hears of it, so a client that returns sees the count */
        atomic_fetch_add(&srv->verified, 1);
        if (SSL_write(ssl, &verified, 1) == 1)
            (void)SSL_read(ssl, &ignored, 1); /* the client closes after reading the byte */
    }
    ERR_clear_error();
    SSL_free(ssl);
    close(conn->fd);
    free(conn);
    pthread_mutex_lock(&srv->lock);
    srv->active--;
    pthread_cond_broadcast(&srv->idle);
    pthread_mutex_unlock(&srv->lock);
    ERR_clear_error();
    return NULL;
}

static void *accept_loop(void *arg)
{
    tls_server *srv = arg;
    while (!atomic_load(&srv->stopping)) {
        struct pollfd pfd = {.fd = srv->listen_fd, .events = POLLIN};
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        int fd = accept(srv->listen_fd, NULL, NULL);
        if (fd < 0)
            continue;
        set_timeouts(fd);
        connection *conn = malloc(sizeof(*conn));
        pthread_t thread;
        if (conn == NULL) {
            close(fd);
            continue;
        }
        conn->srv = srv;
        conn->fd = fd;
        pthread_mutex_lock(&srv->lock);
        srv->active++;
        pthread_mutex_unlock(&srv->lock);
        if (pthread_create(&thread, NULL, serve_connection, conn) != 0) {
            pthread_mutex_lock(&srv->lock);
            srv->active--;
            pthread_mutex_unlock(&srv->lock);
            close(fd);
            free(conn);
            continue;
        }
        pthread_detach(thread);
    }
    return NULL;
}

static int listen_loopback(int *port_out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t len = sizeof(addr);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        close(fd);
        return -1;
    }
    *port_out = ntohs(addr.sin_port);
    return fd;
}

tls_server *tls_server_start(tls_ca *ca)
{
    if (ca == NULL)
        return NULL;
    signal(SIGPIPE, SIG_IGN);
    tls_server *srv = calloc(1, sizeof(*srv));
    if (srv == NULL)
        return NULL;
    srv->ca = ca;
    srv->listen_fd = -1;
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->idle, NULL);
    srv->ctx = server_ctx(ca);
    if (srv->ctx != NULL)
        srv->listen_fd = listen_loopback(&srv->port);
    if (srv->listen_fd < 0 || pthread_create(&srv->thread, NULL, accept_loop, srv) != 0) {
        if (srv->listen_fd >= 0)
            close(srv->listen_fd);
        SSL_CTX_free(srv->ctx);
        pthread_mutex_destroy(&srv->lock);
        pthread_cond_destroy(&srv->idle);
        free(srv);
        ERR_clear_error();
        return NULL;
    }
    return srv;
}

void tls_server_stop(tls_server *srv)
{
    if (srv == NULL)
        return;
    atomic_store(&srv->stopping, 1);
    pthread_join(srv->thread, NULL);
    close(srv->listen_fd);
    pthread_mutex_lock(&srv->lock);
    while (srv->active > 0)
        pthread_cond_wait(&srv->idle, &srv->lock);
    pthread_mutex_unlock(&srv->lock);
    SSL_CTX_free(srv->ctx);
    pthread_mutex_destroy(&srv->lock);
    pthread_cond_destroy(&srv->idle);
    free(srv);
}

int tls_server_port(const tls_server *srv)
{
    return srv->port;
}

unsigned long tls_server_verified_handshakes(const tls_server *srv)
{
    return atomic_load(&((tls_server *)srv)->verified);
}

void tls_server_last_client_cn(tls_server *srv, char *buf, size_t len)
{
    if (len == 0)
        return;
    pthread_mutex_lock(&srv->lock);
    snprintf(buf, len, "%s", srv->last_cn);
    pthread_mutex_unlock(&srv->lock);
}

/* ---- the client ------------------------------------------------------------------ */

/* The SDK's order: the key first, then the leaf, then the rest of the chain. */
static int add_credentials_like_sdk(SSL_CTX *ctx, const char *cert_chain_pem, const char *key_pem,
                                    char *err, size_t errlen)
{
    BIO *key_bio = BIO_new_mem_buf(key_pem, -1);
    EVP_PKEY *key = key_bio != NULL ? PEM_read_bio_PrivateKey(key_bio, NULL, NULL, NULL) : NULL;
    BIO_free(key_bio);
    if (key == NULL) {
        set_err(err, errlen, "PEM_read_bio_PrivateKey");
        return -1;
    }
    int ok = SSL_CTX_use_PrivateKey(ctx, key) == 1;
    EVP_PKEY_free(key);
    if (!ok) {
        set_err(err, errlen, "SSL_CTX_use_PrivateKey");
        return -1;
    }

    BIO *cert_bio = BIO_new_mem_buf(cert_chain_pem, -1);
    X509 *leaf = cert_bio != NULL ? PEM_read_bio_X509_AUX(cert_bio, NULL, NULL, NULL) : NULL;
    ok = leaf != NULL && SSL_CTX_use_certificate(ctx, leaf) == 1;
    X509_free(leaf);
    if (!ok) {
        BIO_free(cert_bio);
        set_err(err, errlen, "PEM_read_bio_X509_AUX + SSL_CTX_use_certificate");
        return -1;
    }
    X509 *extra;
    while ((extra = PEM_read_bio_X509(cert_bio, NULL, NULL, NULL)) != NULL) {
        if (SSL_CTX_add_extra_chain_cert(ctx, extra) != 1) {
            X509_free(extra);
            BIO_free(cert_bio);
            set_err(err, errlen, "SSL_CTX_add_extra_chain_cert");
            return -1;
        }
    }
    BIO_free(cert_bio);
    ERR_clear_error(); /* the end of the chain reads as "no start line" */
    return 0;
}

tls_client *tls_client_new(const tls_server *srv, const char *cert_chain_pem, const char *key_pem,
                           int tls_version, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (srv == NULL || cert_chain_pem == NULL || key_pem == NULL) {
        if (err != NULL)
            snprintf(err, errlen, "tls_client_new: NULL argument");
        return NULL;
    }
    tls_client *cl = calloc(1, sizeof(*cl));
    if (cl == NULL)
        return NULL;
    cl->port = srv->port;
    cl->ctx = SSL_CTX_new(TLS_client_method());
    if (cl->ctx == NULL || !SSL_CTX_set_min_proto_version(cl->ctx, tls_version) ||
        !SSL_CTX_set_max_proto_version(cl->ctx, tls_version) ||
        X509_STORE_add_cert(SSL_CTX_get_cert_store(cl->ctx), srv->ca->cert) != 1) {
        set_err(err, errlen, "client SSL_CTX");
        tls_client_free(cl);
        return NULL;
    }
    SSL_CTX_set_verify(cl->ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_session_cache_mode(cl->ctx, SSL_SESS_CACHE_OFF);
    if (add_credentials_like_sdk(cl->ctx, cert_chain_pem, key_pem, err, errlen) != 0) {
        tls_client_free(cl);
        return NULL;
    }
    return cl;
}

void tls_client_free(tls_client *cl)
{
    if (cl == NULL)
        return;
    SSL_CTX_free(cl->ctx);
    free(cl);
}

struct ssl_ctx_st *tls_client_ctx(tls_client *cl)
{
    return cl->ctx;
}

static int connect_loopback(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return -1;
    set_timeouts(fd);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int tls_client_handshake(tls_client *cl, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    int fd = connect_loopback(cl->port);
    if (fd < 0) {
        if (err != NULL)
            snprintf(err, errlen, "connect to 127.0.0.1:%d: %s", cl->port, strerror(errno));
        return -1;
    }
    SSL *ssl = SSL_new(cl->ctx);
    int rc = -1;
    unsigned char byte = 0;
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1) {
        set_err(err, errlen, "SSL_new");
    } else if (SSL_connect(ssl) != 1) {
        set_err(err, errlen, "SSL_connect");
    } else if (SSL_read(ssl, &byte, 1) != 1 || byte != VERIFIED_BYTE) {
        set_err(err, errlen, "the server did not confirm the client certificate");
    } else {
        rc = 0;
        (void)SSL_shutdown(ssl);
    }
    SSL_free(ssl);
    close(fd);
    ERR_clear_error();
    return rc;
}

int tls_client_handshakes(tls_client *cl, unsigned n, char *err, size_t errlen)
{
    for (unsigned i = 0; i < n; i++)
        if (tls_client_handshake(cl, err, errlen) != 0)
            return -1;
    return 0;
}

int tls_handshake(const tls_server *srv, const char *cert_chain_pem, const char *key_pem,
                  int tls_version, char *err, size_t errlen)
{
    tls_client *cl = tls_client_new(srv, cert_chain_pem, key_pem, tls_version, err, errlen);
    if (cl == NULL)
        return -1;
    int rc = tls_client_handshake(cl, err, errlen);
    tls_client_free(cl);
    return rc;
}
