/*
 * The steps the X.509 identity tests share, around the admin API and the SDK's X.509
 * table: a private directory with a config file and a store, an identity made the way
 * the tool makes one, its certificate issued by a throw-away CA (tls_harness.h), a key
 * made by a hardware-key backend and held open, and the certificate and alias key as the
 * SDK reads them. Test code only. Every function returns 0 on success and -1 with the
 * step that failed printed on stderr, so that a test asserts the result and a group
 * setup can clean up after a failure.
 */
#ifndef PROVHSM_IDENTITY_FIXTURE_H
#define PROVHSM_IDENTITY_FIXTURE_H

#include <stddef.h>

#include <openssl/evp.h>

#include "backend.h"
#include "config.h"
#include "hwkey.h"
#include "keyref.h"
#include "testutil.h" /* provhsm_test_workdir_make, provhsm_test_remove_tree */
#include "tls_harness.h"

/*
 * Writes <dir>/provhsm.conf (mode 0600): the store at <dir>/store, [x509] backend =
 * `backend`, then `more_sections` as is (NULL for none). Points PROVHSM_CONFIG at it and
 * unsets PROVHSM_STORE, so that the library reads this file only. The store is not made.
 */
int identity_config_write(const char *dir, const char *backend, const char *more_sections);

/*
 * In a child process, as `provhsm x509 generate --self-signed` would: the store made and
 * an EC P-256 identity with a self-signed certificate CN=cn, valid 30 days. This process
 * does not touch OpenSSL.
 */
int identity_generate_in_another_process(const char *cn);

/* The certificate the test CA issues for a CSR, imported into the store: not expired. */
int identity_import_cert_for_csr(tls_ca *ca, const char *csr_pem);

/* A certificate CN=cn from the test CA for the public key of a key reference. */
int identity_issue_for_keyref(tls_ca *ca, const provhsm_keyref *ref, const char *cn,
                              char **leaf_pem_out);

/* The SDK's X.509 table: a handle, its certificate and alias key (malloc'd), destroyed. */
int identity_sdk_strings(char **cert_pem_out, char **key_pem_out);

/* What a TLS identity test holds for its run: its directory, the test CA, the server. */
typedef struct identity_tls_env {
    char dir[64];
    tls_ca *ca;
    tls_server *srv;
} identity_tls_env;

/* Stops the server, frees the CA, removes the directory; each part may be missing. */
void identity_tls_env_clear(identity_tls_env *env);

/* A key made by a hardware-key backend's key_generate and held open. */
typedef struct identity_hw_key {
    provhsm_keyref ref;
    provhsm_hwkey *held; /* open, as the admin API holds it after `x509 generate` */
    char *alias_pem;     /* the key reference PEM, what x509_alias_key hands the SDK */
    EVP_PKEY *pub;       /* its public half, on the default provider */
    char *leaf_pem;      /* its certificate, issued by the test CA */
} identity_hw_key;

int identity_hw_key_make(identity_hw_key *key, const provhsm_backend *backend,
                         const provhsm_config *cfg, provhsm_key_type type, tls_ca *ca,
                         const char *cn);
/* Releases and frees all of it; the struct is zeroed (so a second call does nothing). */
void identity_hw_key_clear(identity_hw_key *key);

#endif
