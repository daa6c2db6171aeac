/*
 * SoftHSM2 tokens for the PKCS#11 integration tests (softhsm_fixture.h).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <p11-kit/p11-kit.h>

#include "provhsm/provhsm.h"
#include "softhsm_fixture.h"
#include "testutil.h"

#define USER_PIN "24681357"
#define SO_PIN   "97531086"

static const char *const module_places[] = {
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
};

const char *provhsm_test_softhsm_module(void)
{
    const char *env = getenv("PROVHSM_TEST_SOFTHSM_MODULE");
    if (env != NULL && *env != '\0')
        return access(env, R_OK) == 0 ? env : NULL;
    for (size_t i = 0; i < sizeof(module_places) / sizeof(module_places[0]); i++)
        if (access(module_places[i], R_OK) == 0)
            return module_places[i];
    return NULL;
}

static int on_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (path == NULL)
        return 0;
    char *copy = strdup(path);
    int found = 0;
    for (char *save = NULL, *d = strtok_r(copy, ":", &save); d != NULL && !found;
         d = strtok_r(NULL, ":", &save)) {
        char full[1024];
        snprintf(full, sizeof(full), "%s/%s", d, prog);
        found = access(full, X_OK) == 0;
    }
    free(copy);
    return found;
}

int provhsm_test_softhsm_available(void)
{
    return provhsm_test_softhsm_module() != NULL && on_path("softhsm2-util");
}

/* Runs argv (stdout to /dev/null, stderr kept); 0 when it exits with 0. */
static int run_quiet(char *const argv[])
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, STDOUT_FILENO);
        execvp(argv[0], argv);
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        ;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static int init_token(const char *label)
{
    char *argv[] = {"softhsm2-util", "--init-token", "--free", "--label", (char *)label,
                    "--so-pin",      SO_PIN,         "--pin",  USER_PIN,  NULL};
    if (run_quiet(argv) != 0) {
        fprintf(stderr, "softhsm fixture: softhsm2-util --init-token failed\n");
        return -1;
    }
    return 0;
}

int provhsm_test_softhsm_add_token(provhsm_test_softhsm *h, const char *label)
{
    (void)h; /* SOFTHSM2_CONF already names its directory */
    return init_token(label);
}

int provhsm_test_softhsm_start(provhsm_test_softhsm *h, const char *label)
{
    memset(h, 0, sizeof(*h));
    h->module = provhsm_test_softhsm_module();
    h->pin = USER_PIN;
    h->so_pin = SO_PIN;
    snprintf(h->label, sizeof(h->label), "%s", label);
    const char *tmp = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
    snprintf(h->dir, sizeof(h->dir), "%s/provhsm-softhsm-XXXXXX", tmp);
    if (h->module == NULL || mkdtemp(h->dir) == NULL) {
        fprintf(stderr, "softhsm fixture: no module or no temporary directory\n");
        h->dir[0] = '\0';
        return -1;
    }
    snprintf(h->tokendir, sizeof(h->tokendir), "%s/tokens", h->dir);
    char conf[320];
    snprintf(conf, sizeof(conf), "%s/softhsm2.conf", h->dir);
    FILE *f = fopen(conf, "w");
    if (mkdir(h->tokendir, 0700) != 0 || f == NULL) {
        fprintf(stderr, "softhsm fixture: cannot write %s\n", conf);
        if (f != NULL)
            fclose(f);
        return -1;
    }
    fprintf(f, "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n",
            h->tokendir);
    fclose(f);
    setenv("SOFTHSM2_CONF", conf, 1);
    setenv(PROVHSM_TEST_PIN_ENV, USER_PIN, 1);
    return init_token(h->label);
}

void provhsm_test_softhsm_stop(provhsm_test_softhsm *h)
{
    if (h->dir[0] != '\0')
        provhsm_test_remove_tree(h->dir);
    h->dir[0] = '\0';
}

int provhsm_test_softhsm_remove_tokens(provhsm_test_softhsm *h)
{
    provhsm_test_remove_tree(h->tokendir);
    return access(h->tokendir, F_OK) == 0 ? -1 : 0;
}

void provhsm_test_softhsm_config(const provhsm_test_softhsm *h, provhsm_config *cfg)
{
    provhsm_config_defaults(cfg);
    snprintf(cfg->x509_backend, sizeof(cfg->x509_backend), "pkcs11");
    snprintf(cfg->pkcs11_module, sizeof(cfg->pkcs11_module), "%s", h->module);
    snprintf(cfg->pkcs11_token, sizeof(cfg->pkcs11_token), "pkcs11:token=%s", h->label);
    snprintf(cfg->pkcs11_pin_env, sizeof(cfg->pkcs11_pin_env), "%s", PROVHSM_TEST_PIN_ENV);
    cfg->pkcs11_pin_file[0] = '\0';
}

/* ---- the test's own access to the module -------------------------------------------- */

static int find_slot(CK_FUNCTION_LIST *fl, const char *label, CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    if (fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return -1;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO info;
        if (fl->C_GetTokenInfo(slots[i], &info) != CKR_OK)
            continue;
        if (p11_kit_space_strlen(info.label, sizeof(info.label)) == strlen(label) &&
            memcmp(info.label, label, strlen(label)) == 0) {
            *out = slots[i];
            return 0;
        }
    }
    return -1;
}

int provhsm_test_p11_open(const provhsm_test_softhsm *h, provhsm_test_p11 *p)
{
    memset(p, 0, sizeof(*p));
    p->fl = p11_kit_module_load(h->module, 0);
    if (p->fl == NULL)
        return -1;
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    CK_RV rv = p->fl->C_Initialize(&args);
    if (rv == CKR_OK && find_slot(p->fl, h->label, &p->slot) == 0)
        rv = p->fl->C_OpenSession(p->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                  &p->session);
    else
        rv = CKR_TOKEN_NOT_PRESENT;
    if (rv == CKR_OK) {
        rv = p->fl->C_Login(p->session, CKU_USER, (CK_UTF8CHAR_PTR)h->pin, strlen(h->pin));
        if (rv == CKR_USER_ALREADY_LOGGED_IN)
            rv = CKR_OK;
    }
    if (rv != CKR_OK) {
        fprintf(stderr, "softhsm fixture: cannot open the token (CK_RV 0x%lx)\n", rv);
        provhsm_test_p11_close(p);
        return -1;
    }
    return 0;
}

void provhsm_test_p11_close(provhsm_test_p11 *p)
{
    if (p->fl == NULL)
        return;
    p->fl->C_Finalize(NULL); /* closes this instance's sessions */
    p11_kit_module_release(p->fl);
    p->fl = NULL;
}

CK_OBJECT_HANDLE provhsm_test_p11_find(provhsm_test_p11 *p, CK_OBJECT_CLASS cls, const uint8_t *id,
                                       size_t id_len)
{
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)id, id_len}};
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;
    if (p->fl->C_FindObjectsInit(p->session, tmpl, 2) != CKR_OK)
        return CK_INVALID_HANDLE;
    CK_RV rv = p->fl->C_FindObjects(p->session, found, 2, &n);
    p->fl->C_FindObjectsFinal(p->session);
    return rv == CKR_OK && n == 1 ? found[0] : CK_INVALID_HANDLE;
}

int provhsm_test_p11_make_key(provhsm_test_p11 *p, int rsa, int extractable, const uint8_t *id,
                              size_t id_len, const char *label)
{
    /* DER of the OID of prime256v1 */
    static const uint8_t p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL extr = extractable ? CK_TRUE : CK_FALSE, sens = extractable ? CK_FALSE : CK_TRUE;
    CK_ULONG bits = 2048;
    uint8_t exponent[] = {0x01, 0x00, 0x01};
    CK_ATTRIBUTE pub[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_VERIFY, &yes, sizeof(yes)},
        {CKA_ID, (void *)id, id_len},
        {CKA_LABEL, (void *)label, strlen(label)},
        rsa ? (CK_ATTRIBUTE){CKA_MODULUS_BITS, &bits, sizeof(bits)}
            : (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)p256, sizeof(p256)},
        rsa ? (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent)}
            : (CK_ATTRIBUTE){CKA_PRIVATE, &no, sizeof(no)},
    };
    CK_ATTRIBUTE priv[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &sens, sizeof(sens)},
        {CKA_EXTRACTABLE, &extr, sizeof(extr)},
        {CKA_SIGN, &yes, sizeof(yes)},
        {CKA_ID, (void *)id, id_len},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    CK_MECHANISM mech = {rsa ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE a, b;
    CK_RV rv = p->fl->C_GenerateKeyPair(p->session, &mech, pub, sizeof(pub) / sizeof(pub[0]), priv,
                                        sizeof(priv) / sizeof(priv[0]), &a, &b);
    if (rv != CKR_OK)
        fprintf(stderr, "softhsm fixture: C_GenerateKeyPair: CK_RV 0x%lx\n", rv);
    return rv == CKR_OK ? 0 : -1;
}

/* ---- certificates ------------------------------------------------------------------- */

EVP_PKEY *provhsm_test_p11_public_key(provhsm_test_p11 *p, const uint8_t *id, size_t id_len)
{
    CK_OBJECT_HANDLE pub = provhsm_test_p11_find(p, CKO_PUBLIC_KEY, id, id_len);
    uint8_t attr[160];
    CK_ATTRIBUTE a = {CKA_EC_POINT, attr, sizeof(attr)};
    if (pub == CK_INVALID_HANDLE || p->fl->C_GetAttributeValue(p->session, pub, &a, 1) != CKR_OK) {
        fprintf(stderr, "softhsm fixture: no EC public key with that id\n");
        return NULL;
    }
    /* CKA_EC_POINT is the DER of an OCTET STRING holding the point */
    const unsigned char *q = attr;
    ASN1_OCTET_STRING *point = d2i_ASN1_OCTET_STRING(NULL, &q, (long)a.ulValueLen);
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"P-256", 0),
        OSSL_PARAM_construct_octet_string(
            OSSL_PKEY_PARAM_PUB_KEY, point != NULL ? (void *)ASN1_STRING_get0_data(point) : NULL,
            point != NULL ? (size_t)ASN1_STRING_length(point) : 0),
        OSSL_PARAM_construct_end()};
    if (point == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1)
        fprintf(stderr, "softhsm fixture: the token's EC point is not a P-256 public key\n");
    EVP_PKEY_CTX_free(ctx);
    ASN1_OCTET_STRING_free(point);
    return key;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer != NULL ? issuer : cert, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    int ok = ext != NULL && X509_add_ext(cert, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

X509 *provhsm_test_make_cert(const char *cn, EVP_PKEY *subject_key, int ca, X509 *issuer,
                             EVP_PKEY *signer)
{
    static long serial = 1000;
    X509 *cert = X509_new();
    if (cert == NULL)
        return NULL;
    X509_NAME *name = X509_get_subject_name(cert);
    int ok =
        X509_set_version(cert, 2) == 1 &&
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                   0) == 1 &&
        X509_set_issuer_name(cert, issuer != NULL ? X509_get_subject_name(issuer) : name) == 1 &&
        ASN1_INTEGER_set(X509_get_serialNumber(cert), ++serial) == 1 &&
        X509_gmtime_adj(X509_getm_notBefore(cert), 0) != NULL &&
        X509_gmtime_adj(X509_getm_notAfter(cert), 86400) != NULL &&
        X509_set_pubkey(cert, subject_key) == 1 &&
        (!ca || add_ext(cert, issuer, NID_basic_constraints, "critical,CA:TRUE")) &&
        X509_sign(cert, signer, EVP_sha256()) > 0;
    if (!ok) {
        fprintf(stderr, "softhsm fixture: cannot make the certificate CN=%s\n", cn);
        X509_free(cert);
        return NULL;
    }
    return cert;
}

STACK_OF(X509) *provhsm_test_pem_chain(const char *pem)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    STACK_OF(X509) *chain = sk_X509_new_null();
    X509 *x;
    int ok = bio != NULL && chain != NULL;
    while (ok && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        ok = sk_X509_push(chain, x) > 0;
        if (!ok)
            X509_free(x);
    }
    ERR_clear_error(); /* the read past the last certificate */
    BIO_free(bio);
    if (!ok) {
        fprintf(stderr, "softhsm fixture: cannot read the certificate chain\n");
        sk_X509_pop_free(chain, X509_free);
        return NULL;
    }
    return chain;
}

int provhsm_test_p11_put_cert(provhsm_test_p11 *p, X509 *cert, const uint8_t *id, size_t id_len,
                              const char *label)
{
    unsigned char *der = NULL, *subject = NULL, *issuer = NULL;
    int der_len = i2d_X509(cert, &der);
    int subject_len = i2d_X509_NAME(X509_get_subject_name(cert), &subject);
    int issuer_len = i2d_X509_NAME(X509_get_issuer_name(cert), &issuer);
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE type = CKC_X_509;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_CERTIFICATE_TYPE, &type, sizeof(type)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_SUBJECT, subject, (CK_ULONG)subject_len},
        {CKA_ISSUER, issuer, (CK_ULONG)issuer_len},
        {CKA_VALUE, der, (CK_ULONG)der_len},
        {CKA_ID, (void *)id, id_len}, /* left out without an id */
    };
    CK_ULONG n = sizeof(tmpl) / sizeof(tmpl[0]) - (id == NULL ? 1 : 0);
    CK_OBJECT_HANDLE obj;
    CK_RV rv = CKR_ARGUMENTS_BAD;
    if (der_len > 0 && subject_len > 0 && issuer_len > 0)
        rv = p->fl->C_CreateObject(p->session, tmpl, n, &obj);
    if (rv != CKR_OK)
        fprintf(stderr, "softhsm fixture: C_CreateObject (certificate): CK_RV 0x%lx\n", rv);
    OPENSSL_free(der);
    OPENSSL_free(subject);
    OPENSSL_free(issuer);
    return rv == CKR_OK ? 0 : -1;
}

/* ---- log capture: the one of testutil.h, under the names the PKCS#11 tests use ------- */

void provhsm_test_p11_log_capture(void)
{
    provhsm_test_log_capture();
}

void provhsm_test_p11_log_clear(void)
{
    provhsm_test_log_clear();
}

int provhsm_test_p11_log_seen(const char *text)
{
    return provhsm_test_log_seen(text);
}
