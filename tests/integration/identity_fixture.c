/* The X.509 identity tests' shared steps (identity_fixture.h). Test code only. */
#include "identity_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/x509.h>

#include "hsm_client_data.h"
#include "provhsm/provhsm.h"
#include "secmem.h"

static int failed(const char *step)
{
    fprintf(stderr, "identity fixture: %s failed\n", step);
    return -1;
}

void identity_tls_env_clear(identity_tls_env *env)
{
    tls_server_stop(env->srv);
    tls_ca_free(env->ca);
    provhsm_test_remove_tree(env->dir);
    memset(env, 0, sizeof(*env));
}

int identity_config_write(const char *dir, const char *backend, const char *more_sections)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/provhsm.conf", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return failed("writing the config file");
    fprintf(f, "[store]\npath = %s/store\n[x509]\nbackend = %s\n%s", dir, backend,
            more_sections != NULL ? more_sections : "");
    fclose(f);
    chmod(path, 0600);
    setenv("PROVHSM_CONFIG", path, 1);
    unsetenv("PROVHSM_STORE");
    return 0;
}

int identity_generate_in_another_process(const char *cn)
{
    pid_t pid = fork();
    if (pid < 0)
        return failed("fork");
    if (pid == 0) {
        char *self_signed = NULL;
        int ok = provhsm_store_init() == PROVHSM_OK &&
                 provhsm_x509_generate(cn, PROVHSM_KEY_EC_P256, 30, 1, &self_signed) == PROVHSM_OK;
        free(self_signed);
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return failed("x509 generate --self-signed in another process");
    return 0;
}

int identity_import_cert_for_csr(tls_ca *ca, const char *csr_pem)
{
    char *leaf = NULL;
    int expired = 1;
    if (tls_ca_issue_from_csr(ca, csr_pem, &leaf) != 0)
        return failed("issuing the certificate for the CSR");
    provhsm_err err = provhsm_x509_import(leaf, NULL, &expired);
    free(leaf);
    if (err != PROVHSM_OK)
        return failed("x509 import of the issued certificate");
    return expired == 0 ? 0 : failed("x509 import (the certificate counts as expired)");
}

int identity_issue_for_keyref(tls_ca *ca, const provhsm_keyref *ref, const char *cn,
                              char **leaf_pem_out)
{
    const unsigned char *p = ref->spki;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, (long)ref->spki_len);
    int rc = pub != NULL && tls_ca_issue(ca, pub, cn, leaf_pem_out) == 0 ? 0 : -1;
    EVP_PKEY_free(pub);
    return rc == 0 ? 0 : failed("issuing the certificate for the key reference");
}

int identity_sdk_strings(char **cert_pem_out, char **key_pem_out)
{
    const HSM_CLIENT_X509_INTERFACE *x509 = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE handle = x509->hsm_client_x509_create();
    *cert_pem_out = NULL;
    *key_pem_out = NULL;
    if (handle == NULL)
        return failed("hsm_client_x509_create");
    *cert_pem_out = x509->hsm_client_get_cert(handle);
    *key_pem_out = x509->hsm_client_get_key(handle);
    x509->hsm_client_x509_destroy(handle);
    if (*cert_pem_out == NULL || *key_pem_out == NULL)
        return failed("hsm_client_get_cert / hsm_client_get_key");
    return 0;
}

int identity_hw_key_make(identity_hw_key *key, const provhsm_backend *backend,
                         const provhsm_config *cfg, provhsm_key_type type, tls_ca *ca,
                         const char *cn)
{
    char *secret = NULL;
    memset(key, 0, sizeof(*key));
    if (backend->key_generate(cfg, type, 0, &key->ref, &secret) != PROVHSM_OK)
        return failed("key_generate");
    provhsm_err err = provhsm_hwkey_register(&key->ref, secret, &key->held);
    provhsm_secure_free(secret);
    if (err != PROVHSM_OK || provhsm_keyref_to_pem(&key->ref, &key->alias_pem) != PROVHSM_OK)
        return failed("opening the key and writing its reference");
    const unsigned char *p = key->ref.spki;
    key->pub = d2i_PUBKEY(NULL, &p, (long)key->ref.spki_len);
    if (key->pub == NULL || tls_ca_issue(ca, key->pub, cn, &key->leaf_pem) != 0)
        return failed("issuing the key's certificate");
    return 0;
}

void identity_hw_key_clear(identity_hw_key *key)
{
    provhsm_hwkey_release(key->held);
    provhsm_keyref_clear(&key->ref);
    free(key->alias_pem);
    EVP_PKEY_free(key->pub);
    free(key->leaf_pem);
    memset(key, 0, sizeof(*key));
}
