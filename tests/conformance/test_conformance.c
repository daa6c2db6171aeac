/*
 * Conformance: consumes the built static library exactly as the SDK's provisioning and
 * IoT Hub auth layers do, through the three tables only (plus the public admin API to
 * put identities in a temporary store first). Checks every member is non-NULL, computes
 * registration ids and SAS tokens the SDK's way with its own code, verifies signatures
 * independently with OpenSSL, and releases everything with free(). Run plainly, under
 * ASan/UBSan, and under valgrind (tests/conformance/CMakeLists.txt).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <pthread.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "hsm_client_data.h"
#include "provhsm/provhsm.h"
#include "testutil.h"

/* initialize_hsm_system and deinitialize_hsm_system: tests/common/sdk_hsm_system.c */

static char tmpdir[256];
static char *vectors;

/* ---- the SDK's encodings, written again here so the library is checked against them */

static char *sdk_url_encode(const char *s)
{
    static const char keep[] = "!()*-._";
    char *out = malloc(strlen(s) * 6 + 1), *p = out;
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
            strchr(keep, *c) != NULL)
            *p++ = (char)*c;
        else if (*c < 0x80)
            p += sprintf(p, "%%%02x", *c);
        else
            p += sprintf(p, "%%c%c%%%02x", *c < 0xc0 ? '2' : '3', *c < 0xc0 ? *c : *c - 0x40);
    }
    *p = '\0';
    return out;
}

static char *b64(const unsigned char *data, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

static unsigned char *unb64(const char *text, size_t *len)
{
    size_t n = strlen(text);
    unsigned char *out = malloc(n);
    int r = EVP_DecodeBlock(out, (const unsigned char *)text, (int)n);
    assert_true(r >= 0);
    size_t pad = (n > 0 && text[n - 1] == '=') + (n > 1 && text[n - 2] == '=');
    *len = (size_t)r - pad;
    return out;
}

/* prov_auth_construct_sas_token's way, with the key table's key. */
static char *sdk_symmetric_sas(const char *key_b64, const char *scope, unsigned long long expiry,
                               const char *key_name)
{
    char payload[512], *enc_scope = sdk_url_encode(scope);
    snprintf(payload, sizeof(payload), "%s\n%llu", enc_scope, expiry);
    size_t key_len;
    unsigned char *key = unb64(key_b64, &key_len);
    unsigned char mac[32];
    size_t mac_len = 0;
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len,
                              (unsigned char *)payload, strlen(payload), mac, 32, &mac_len));
    char *sig = b64(mac, mac_len), *enc_sig = sdk_url_encode(sig);
    char *token = malloc(1024);
    snprintf(token, 1024, "SharedAccessSignature sr=%s&sig=%s&se=%llu&skn=%s", enc_scope, enc_sig,
             expiry, key_name);
    free(key);
    free(sig);
    free(enc_sig);
    free(enc_scope);
    return token;
}

static const char *vector(const char *name)
{
    /* a few rotating buffers: several lookups may appear in one call's arguments */
    static char values[4][512];
    static unsigned next;
    char *value = values[next++ % 4];
    char *line = vectors;
    size_t n = strlen(name);
    while (line && *line) {
        if (strncmp(line, name, n) == 0 && strncmp(line + n, " = ", 3) == 0) {
            const char *v = line + n + 3;
            size_t len = strcspn(v, "\n");
            memcpy(value, v, len);
            value[len] = '\0';
            return value;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    fail_msg("no vector %s", name);
    return NULL;
}

/* ---- set-up ------------------------------------------------------------------ */

static int suite_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/provhsm-conf-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    char path[512];
    snprintf(path, sizeof(path), "%s/provhsm.conf", tmpdir);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs("# conformance test: software store only\n[log]\nlevel = error\n", f);
    /* whatever the umask: a configuration others can write is refused */
    if (fclose(f) != 0 || chmod(path, 0644) != 0)
        return -1;
    setenv("PROVHSM_CONFIG", path, 1);
    snprintf(path, sizeof(path), "%s/store", tmpdir);
    setenv("PROVHSM_STORE", path, 1);
    unsetenv("PROVHSM_TCTI");
    unsetenv("PROVHSM_PASSPHRASE");
    uint8_t *buf;
    size_t len;
    if (provhsm_test_read_fixture("sas/vectors.txt", &buf, &len) != 0)
        return -1;
    vectors = (char *)buf;
    if (provhsm_store_init() != PROVHSM_OK)
        return -1;
    return initialize_hsm_system();
}

static int suite_teardown(void **state)
{
    (void)state;
    deinitialize_hsm_system();
    free(vectors);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- tests --------------------------------------------------------------------- */

static void tables_are_complete(void **state)
{
    (void)state;
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    const HSM_CLIENT_TPM_INTERFACE *t = hsm_client_tpm_interface();
    assert_non_null(x);
    assert_non_null(k);
    assert_non_null(t);
    /* The SDK checks each member; so do we, member by member, by position. */
    void (*const *slots)(void);
    slots = (void (*const *)(void))x;
    for (size_t i = 0; i < sizeof(*x) / sizeof(void (*)(void)); i++)
        assert_non_null(slots[i]);
    slots = (void (*const *)(void))k;
    for (size_t i = 0; i < sizeof(*k) / sizeof(void (*)(void)); i++)
        assert_non_null(slots[i]);
    slots = (void (*const *)(void))t;
    for (size_t i = 0; i < sizeof(*t) / sizeof(void (*)(void)); i++)
        assert_non_null(slots[i]);
    assert_int_equal(sizeof(*x), 5 * sizeof(void *));
    assert_int_equal(sizeof(*k), 5 * sizeof(void *));
    assert_int_equal(sizeof(*t), 6 * sizeof(void *));
}

static void init_is_reference_counted(void **state)
{
    (void)state;
    /* prov_dev_security_init and the IoT Hub security init both run it */
    assert_int_equal(initialize_hsm_system(), 0);
    assert_int_equal(initialize_hsm_system(), 0);
    deinitialize_hsm_system();
    deinitialize_hsm_system();
    /* still initialised once from the suite set-up: tables still work */
    HSM_CLIENT_HANDLE h = hsm_client_key_interface()->hsm_client_key_create();
    assert_non_null(h);
    hsm_client_key_interface()->hsm_client_key_destroy(h);
}

static void no_identity_gives_null(void **state)
{
    (void)state;
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    assert_null(x->hsm_client_x509_create());
    /* without [tpm] configuration the TPM create fails, it does not crash */
    assert_null(hsm_client_tpm_interface()->hsm_client_tpm_create());
    /* symmetric: create works (the application may pass the identity), but
       set(NULL, NULL) with nothing stored is an error */
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
    assert_non_null(h);
    assert_int_not_equal(k->hsm_client_set_symm_key_info(h, NULL, NULL), 0);
    assert_null(k->hsm_client_get_symm_key(h));
    assert_null(k->hsm_client_get_registration_name(h));
    k->hsm_client_key_destroy(h);
}

static void x509_identity_as_the_sdk_uses_it(void **state)
{
    (void)state;
    char *generated = NULL;
    assert_int_equal(
        provhsm_x509_generate("conformance-device-1", PROVHSM_KEY_EC_P256, 30, 0, &generated),
        PROVHSM_OK);
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    HSM_CLIENT_HANDLE h = x->hsm_client_x509_create();
    assert_non_null(h);

    char *cert_pem = x->hsm_client_get_cert(h);
    char *key_pem = x->hsm_client_get_key(h);
    char *cn = x->hsm_client_get_common_name(h);
    assert_non_null(cert_pem);
    assert_non_null(key_pem);
    assert_non_null(cn);
    assert_string_equal(cert_pem, generated);
    /* registration id = subject CN */
    assert_string_equal(cn, "conformance-device-1");

    /* tlsio_openssl reads them with these exact calls */
    BIO *bio = BIO_new_mem_buf(cert_pem, -1);
    X509 *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    assert_non_null(cert);
    bio = BIO_new_mem_buf(key_pem, -1);
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    assert_non_null(key);
    assert_int_equal(EVP_PKEY_eq(key, X509_get0_pubkey(cert)), 1);

    char cn_buf[128];
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn_buf,
                                          sizeof(cn_buf)) > 0);
    assert_string_equal(cn_buf, cn);

    /* a signature made with the alias key verifies under the certificate */
    unsigned char sig[256];
    size_t sig_len = sizeof(sig);
    const unsigned char msg[] = "tls handshake transcript";
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key), 1);
    assert_int_equal(EVP_DigestSign(md, sig, &sig_len, msg, sizeof(msg)), 1);
    EVP_MD_CTX_free(md);
    md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, X509_get0_pubkey(cert)), 1);
    assert_int_equal(EVP_DigestVerify(md, sig, sig_len, msg, sizeof(msg)), 1);
    EVP_MD_CTX_free(md);

    /* every string is the caller's own copy: two calls, two buffers */
    char *cert_again = x->hsm_client_get_cert(h);
    assert_ptr_not_equal(cert_again, cert_pem);
    assert_string_equal(cert_again, cert_pem);

    EVP_PKEY_free(key);
    X509_free(cert);
    free(cert_again);
    free(cert_pem);
    free(key_pem);
    free(cn);
    free(generated);
    x->hsm_client_x509_destroy(h);
}

static void symmetric_identity_and_sas(void **state)
{
    (void)state;
    const char *key_b64 = vector("symmetric_key");
    assert_int_equal(provhsm_symmetric_set("device-01", key_b64), PROVHSM_OK);
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
    assert_non_null(h);
    assert_int_equal(k->hsm_client_set_symm_key_info(h, NULL, NULL), 0);
    char *reg = k->hsm_client_get_registration_name(h);
    char *key = k->hsm_client_get_symm_key(h);
    assert_string_equal(reg, "device-01");
    assert_string_equal(key, key_b64);

    /* SAS token the SDK's way equals the independent known answer and the library's */
    unsigned long long expiry = strtoull(vector("expiry"), NULL, 10);
    char *sdk_token = sdk_symmetric_sas(key, vector("scope"), expiry, vector("key_name"));
    assert_string_equal(sdk_token, vector("token"));
    char *lib_token = NULL;
    assert_int_equal(
        provhsm_sas_token("symmetric", vector("scope"), expiry, vector("key_name"), &lib_token),
        PROVHSM_OK);
    assert_string_equal(lib_token, vector("token"));
    free(lib_token);
    free(sdk_token);
    free(reg);
    free(key);
    k->hsm_client_key_destroy(h);
}

static void symmetric_override_is_per_handle(void **state)
{
    (void)state;
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    assert_int_equal(provhsm_symmetric_set("device-01", vector("symmetric_key")), PROVHSM_OK);
    HSM_CLIENT_HANDLE a = k->hsm_client_key_create();
    HSM_CLIENT_HANDLE b = k->hsm_client_key_create();
    assert_non_null(a);
    assert_non_null(b);
    const char *other_key = "c2Vjb25kLWtleS1mb3ItdGhlLW92ZXJyaWRlLXRlc3Q=";
    assert_int_equal(k->hsm_client_set_symm_key_info(a, "app-device", other_key), 0);
    char *ra = k->hsm_client_get_registration_name(a);
    char *ka = k->hsm_client_get_symm_key(a);
    char *rb = k->hsm_client_get_registration_name(b);
    assert_string_equal(ra, "app-device");
    assert_string_equal(ka, other_key);
    assert_string_equal(rb, "device-01");
    /* nothing was written: a new handle still sees the stored identity */
    HSM_CLIENT_HANDLE c = k->hsm_client_key_create();
    char *rc = k->hsm_client_get_registration_name(c);
    assert_string_equal(rc, "device-01");

    /* one NULL and one value, or a key that is not base64: errors, identity unchanged */
    assert_int_not_equal(k->hsm_client_set_symm_key_info(b, "x", NULL), 0);
    assert_int_not_equal(k->hsm_client_set_symm_key_info(b, NULL, other_key), 0);
    assert_int_not_equal(k->hsm_client_set_symm_key_info(b, "dev", "not base64!"), 0);
    char *rb2 = k->hsm_client_get_registration_name(b);
    assert_string_equal(rb2, "device-01");

    free(ra);
    free(ka);
    free(rb);
    free(rb2);
    free(rc);
    k->hsm_client_key_destroy(a);
    k->hsm_client_key_destroy(b);
    k->hsm_client_key_destroy(c);
}

static void group_key_derivation(void **state)
{
    (void)state;
    char *device_key = NULL;
    assert_int_equal(
        provhsm_symmetric_derive(vector("registration_id"), vector("group_key"), &device_key),
        PROVHSM_OK);
    assert_string_equal(device_key, vector("device_key"));
    provhsm_free_secret(device_key);
}

static void bad_arguments_never_crash(void **state)
{
    (void)state;
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    const HSM_CLIENT_TPM_INTERFACE *t = hsm_client_tpm_interface();
    unsigned char *buf = (unsigned char *)"x";
    size_t len = 1;

    assert_null(x->hsm_client_get_cert(NULL));
    assert_null(x->hsm_client_get_key(NULL));
    assert_null(x->hsm_client_get_common_name(NULL));
    assert_null(k->hsm_client_get_symm_key(NULL));
    assert_null(k->hsm_client_get_registration_name(NULL));
    assert_int_not_equal(k->hsm_client_set_symm_key_info(NULL, "a", "b"), 0);
    assert_int_not_equal(t->hsm_client_activate_identity_key(NULL, buf, 1), 0);
    assert_int_not_equal(t->hsm_client_get_ek(NULL, &buf, &len), 0);
    assert_int_not_equal(t->hsm_client_get_srk(NULL, &buf, &len), 0);
    assert_int_not_equal(t->hsm_client_sign_with_identity(NULL, buf, 1, &buf, &len), 0);
    x->hsm_client_x509_destroy(NULL);
    k->hsm_client_key_destroy(NULL);
    t->hsm_client_tpm_destroy(NULL);

    /* a handle from one table is refused by another */
    HSM_CLIENT_HANDLE kh = k->hsm_client_key_create();
    assert_non_null(kh);
    assert_null(x->hsm_client_get_cert(kh));
    assert_null(x->hsm_client_get_key(kh));
    assert_int_not_equal(t->hsm_client_sign_with_identity(kh, buf, 1, &buf, &len), 0);
    k->hsm_client_key_destroy(kh);
}

static void *thread_body(void *arg)
{
    (void)arg;
    const HSM_CLIENT_KEY_INTERFACE *k = hsm_client_key_interface();
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    for (int i = 0; i < 20; i++) {
        HSM_CLIENT_HANDLE h = k->hsm_client_key_create();
        HSM_CLIENT_HANDLE hx = x->hsm_client_x509_create();
        if (h == NULL || hx == NULL)
            return (void *)1;
        char *r = k->hsm_client_get_registration_name(h);
        char *cn = x->hsm_client_get_common_name(hx);
        int ok = r != NULL && strcmp(r, "device-01") == 0 && cn != NULL &&
                 strcmp(cn, "conformance-device-1") == 0;
        free(r);
        free(cn);
        k->hsm_client_key_destroy(h);
        x->hsm_client_x509_destroy(hx);
        if (!ok)
            return (void *)1;
    }
    return NULL;
}

static void handles_on_several_threads(void **state)
{
    (void)state;
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, thread_body, NULL), 0);
    for (int i = 0; i < 4; i++) {
        void *res = (void *)1;
        pthread_join(th[i], &res);
        assert_null(res);
    }
}

/* The seed document's per-operation names work on a handle from custom_hsm_create(). */
HSM_CLIENT_HANDLE custom_hsm_create(void);
void custom_hsm_destroy(HSM_CLIENT_HANDLE handle);
char *custom_hsm_get_common_name(HSM_CLIENT_HANDLE handle);
char *hsm_client_get_registration_name(HSM_CLIENT_HANDLE handle);

static void seed_names(void **state)
{
    (void)state;
    HSM_CLIENT_HANDLE h = custom_hsm_create();
    assert_non_null(h);
    char *cn = custom_hsm_get_common_name(h);
    char *reg = hsm_client_get_registration_name(h);
    assert_string_equal(cn, "conformance-device-1");
    assert_string_equal(reg, "device-01");
    free(cn);
    free(reg);
    custom_hsm_destroy(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tables_are_complete),
        cmocka_unit_test(init_is_reference_counted),
        cmocka_unit_test(no_identity_gives_null),
        cmocka_unit_test(x509_identity_as_the_sdk_uses_it),
        cmocka_unit_test(symmetric_identity_and_sas),
        cmocka_unit_test(symmetric_override_is_per_handle),
        cmocka_unit_test(group_key_derivation),
        cmocka_unit_test(bad_arguments_never_crash),
        cmocka_unit_test(handles_on_several_threads),
        cmocka_unit_test(seed_names),
    };
    return cmocka_run_group_tests(tests, suite_setup, suite_teardown);
}
