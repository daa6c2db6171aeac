/*
 * sdk_walkthrough: calls provhsm's three tables in the order and manner the Azure IoT C SDK
 * does (custom-HSM build), and prints what the SDK would get, never the secrets themselves:
 * X.509 (certificate, alias key, common name), symmetric key (registration name, key, and
 * a SAS token built the SDK's way: HMAC-SHA256 over "<url-encoded scope>\n<expiry>" with the
 * base64-decoded key), and TPM (EK, SRK, the registration id, and a signature when an
 * identity key has been activated). The SAS token is also asked from
 * provhsm_sas_token() and the two must agree.
 *
 * It defines initialize_hsm_system / deinitialize_hsm_system itself, as the SDK's
 * hsm_client_data.c does. The configuration comes from the environment (PROVHSM_CONFIG,
 * PROVHSM_STORE, ...). Run by scripts/demo.sh; usage: sdk_walkthrough [ID_SCOPE].
 * Exit status: 0 when everything configured behaved, 1 otherwise.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "hsm_client_data.h"
#include "provhsm/provhsm.h"

static int problems;

int initialize_hsm_system(void)
{
    if (hsm_client_x509_init() != 0)
        return 1;
    if (hsm_client_tpm_init() != 0) {
        hsm_client_x509_deinit();
        return 1;
    }
    return 0;
}

void deinitialize_hsm_system(void)
{
    hsm_client_tpm_deinit();
    hsm_client_x509_deinit();
}

static void problem(const char *what)
{
    printf("  PROBLEM: %s\n", what);
    problems++;
}

/* The SDK's URL encoding (azure-c-shared-utility URL_Encode): letters, digits and
 * "!()*-._" stay; other bytes below 0x80 become %xx (lower-case hex); bytes from 0x80 are
 * taken as Latin-1 and written as their two UTF-8 bytes, each %xx. Returns malloc'd text. */
static char *sdk_url_encode(const char *text)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = strlen(text);
    char *out = malloc(n * 6 + 1);
    if (out == NULL)
        return NULL;
    char *o = out;
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++) {
        unsigned c = *p;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            strchr("!()*-._", (int)c) != NULL) {
            *o++ = (char)c;
        } else if (c < 0x80) {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 0xf];
        } else {
            unsigned lead = 0xc0 | (c >> 6), cont = 0x80 | (c & 0x3f);
            *o++ = '%';
            *o++ = hex[lead >> 4];
            *o++ = hex[lead & 0xf];
            *o++ = '%';
            *o++ = hex[cont >> 4];
            *o++ = hex[cont & 0xf];
        }
    }
    *o = '\0';
    return out;
}

/* Base64 decode into a malloc'd buffer; the caller wipes it. */
static unsigned char *b64_decode(const char *b64, size_t *len_out)
{
    size_t n = strlen(b64);
    if (n == 0 || n % 4 != 0 || n > INT32_MAX)
        return NULL;
    unsigned char *buf = malloc(n / 4 * 3 + 1);
    if (buf == NULL)
        return NULL;
    int len = EVP_DecodeBlock(buf, (const unsigned char *)b64, (int)n);
    if (len < 0) {
        free(buf);
        return NULL;
    }
    /* EVP_DecodeBlock counts the padding as zero bytes */
    size_t pad = (b64[n - 1] == '=') + (b64[n - 2] == '=');
    *len_out = (size_t)len - pad;
    return buf;
}

static char *b64_encode(const unsigned char *data, size_t len)
{
    char *out = malloc((len + 2) / 3 * 4 + 1);
    if (out != NULL)
        EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

/* "SharedAccessSignature sr=..&sig=..&se=..&skn=.." computed here from the key string. */
static char *sdk_sas_token(const char *key_b64, const char *scope, uint64_t expiry,
                           const char *key_name)
{
    char *token = NULL, *enc_scope = NULL, *payload = NULL, *sig_b64 = NULL, *enc_sig = NULL;
    unsigned char *key = NULL, mac[EVP_MAX_MD_SIZE];
    size_t key_len = 0, mac_len = 0;

    enc_scope = sdk_url_encode(scope);
    key = b64_decode(key_b64, &key_len);
    if (enc_scope == NULL || key == NULL)
        goto done;
    size_t plen = strlen(enc_scope) + 32;
    payload = malloc(plen);
    if (payload == NULL)
        goto done;
    snprintf(payload, plen, "%s\n%llu", enc_scope, (unsigned long long)expiry);
    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len, (const unsigned char *)payload,
                  strlen(payload), mac, sizeof(mac), &mac_len) == NULL)
        goto done;
    sig_b64 = b64_encode(mac, mac_len);
    enc_sig = sig_b64 != NULL ? sdk_url_encode(sig_b64) : NULL;
    if (enc_sig == NULL)
        goto done;
    size_t tlen = strlen(enc_scope) + strlen(enc_sig) + strlen(key_name) + 96;
    token = malloc(tlen);
    if (token != NULL)
        snprintf(token, tlen, "SharedAccessSignature sr=%s&sig=%s&se=%llu&skn=%s", enc_scope,
                 enc_sig, (unsigned long long)expiry, key_name);
done:
    if (key != NULL) {
        OPENSSL_cleanse(key, key_len);
        free(key);
    }
    OPENSSL_cleanse(mac, sizeof(mac));
    free(enc_scope);
    free(payload);
    free(sig_b64);
    free(enc_sig);
    return token;
}

/* Describes a SAS token without its signature: the token is a credential until it expires. */
static void describe_token(const char *label, const char *token)
{
    const char *sr = strstr(token, "sr="), *se = strstr(token, "&se=");
    const char *sig = strstr(token, "&sig=");
    int sr_len = 0;
    if (sr != NULL && sig != NULL && sig > sr)
        sr_len = (int)(sig - sr - 3);
    printf("  %s: %zu chars, sr=%.*s, sig=<hidden>, %s\n", label, strlen(token), sr_len,
           sr != NULL ? sr + 3 : "", se != NULL ? se + 1 : "(no se)");
}

static void describe_certificate(const char *pem, const char *alias_pem)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    X509 *leaf = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    int chain = leaf != NULL ? 1 : 0;
    X509 *more;
    while (bio != NULL && (more = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        chain++;
        X509_free(more);
    }
    BIO_free(bio);
    if (leaf == NULL) {
        problem("the certificate does not parse as PEM");
        return;
    }
    char subject[256];
    X509_NAME_oneline(X509_get_subject_name(leaf), subject, sizeof(subject));
    BIO *out = BIO_new(BIO_s_mem());
    char not_after[64] = "?";
    if (out != NULL && ASN1_TIME_print(out, X509_get0_notAfter(leaf)) == 1) {
        int n = BIO_read(out, not_after, (int)sizeof(not_after) - 1);
        not_after[n > 0 ? n : 0] = '\0';
    }
    BIO_free(out);
    printf("  certificate: %zu bytes of PEM, %d certificate(s), subject %s, valid until %s\n",
           strlen(pem), chain, subject, not_after);

    BIO *kbio = BIO_new_mem_buf(alias_pem, -1);
    EVP_PKEY *key = kbio != NULL ? PEM_read_bio_PrivateKey(kbio, NULL, NULL, NULL) : NULL;
    BIO_free(kbio);
    if (key == NULL) {
        problem("the alias key does not parse as a PEM private key");
    } else {
        printf("  alias key: %zu bytes of PEM, type %s, %d bits, %s the certificate\n",
               strlen(alias_pem), EVP_PKEY_get0_type_name(key), EVP_PKEY_get_bits(key),
               X509_check_private_key(leaf, key) == 1 ? "matches" : "DOES NOT MATCH");
        if (X509_check_private_key(leaf, key) != 1)
            problem("alias key and certificate do not belong together");
        EVP_PKEY_free(key);
    }
    X509_free(leaf);
}

static void walk_x509(void)
{
    const HSM_CLIENT_X509_INTERFACE *t = hsm_client_x509_interface();
    printf("X.509 (SECURE_DEVICE_TYPE_X509)\n");
    HSM_CLIENT_HANDLE h = t->hsm_client_x509_create();
    if (h == NULL) {
        printf("  create: NULL (no X.509 identity in the store; see the log above)\n");
        problem("no X.509 identity");
        return;
    }
    printf("  create: handle\n");
    char *cert = t->hsm_client_get_cert(h);
    char *alias = t->hsm_client_get_key(h);
    char *cn = t->hsm_client_get_common_name(h);
    printf("  common name (registration id): %s\n", cn != NULL ? cn : "(NULL)");
    if (cert == NULL || alias == NULL || cn == NULL)
        problem("a get_* call returned NULL");
    else
        describe_certificate(cert, alias);
    free(cert);
    provhsm_free_secret(alias);
    free(cn);
    t->hsm_client_x509_destroy(h);
    printf("  destroy: done\n");
}

static void walk_symmetric(const char *id_scope)
{
    const HSM_CLIENT_KEY_INTERFACE *t = hsm_client_key_interface();
    printf("Symmetric key (SECURE_DEVICE_TYPE_SYMMETRIC_KEY)\n");
    HSM_CLIENT_HANDLE h = t->hsm_client_key_create();
    if (h == NULL) {
        printf("  create: NULL (no symmetric key in the store; see the log above)\n");
        problem("no symmetric-key identity");
        return;
    }
    printf("  create: handle\n");
    /* what the SDK does when the application called no prov_dev_set_symmetric_key_info */
    int rc = t->hsm_client_set_symm_key_info(h, NULL, NULL);
    printf("  set_symmetric_key_info(NULL, NULL): %d\n", rc);
    if (rc != 0)
        problem("set_symmetric_key_info(NULL, NULL) failed: the SDK would abort provisioning");
    char *name = t->hsm_client_get_registration_name(h);
    char *key = t->hsm_client_get_symm_key(h);
    printf("  registration name: %s\n", name != NULL ? name : "(NULL)");
    size_t key_len = 0;
    unsigned char *raw = key != NULL ? b64_decode(key, &key_len) : NULL;
    if (raw == NULL) {
        problem("the symmetric key is missing or not base64");
    } else {
        printf("  symmetric key: %zu chars of base64, %zu bytes decoded\n", strlen(key), key_len);
        OPENSSL_cleanse(raw, key_len);
        free(raw);
    }

    if (name != NULL && key != NULL) {
        char scope[512];
        snprintf(scope, sizeof(scope), "%s/registrations/%s", id_scope, name);
        uint64_t expiry = (uint64_t)time(NULL) + 3600;
        char *mine = sdk_sas_token(key, scope, expiry, "registration");
        char *theirs = NULL;
        provhsm_err err = provhsm_sas_token("symmetric", scope, expiry, "registration", &theirs);
        printf("  SAS token for scope %s, expiry now+3600s:\n", scope);
        if (mine == NULL) {
            problem("could not compute the SAS token here");
        } else {
            describe_token("computed the SDK's way", mine);
        }
        if (err != PROVHSM_OK) {
            printf("  provhsm_sas_token: %s\n", provhsm_strerror(err));
            problem("provhsm_sas_token failed");
        } else {
            describe_token("provhsm_sas_token     ", theirs);
            int same = mine != NULL && strcmp(mine, theirs) == 0;
            printf("  the two tokens are %s\n", same ? "identical" : "DIFFERENT");
            if (!same)
                problem("provhsm_sas_token differs from the SDK's computation");
        }
        provhsm_free_secret(mine);
        provhsm_free_secret(theirs);
    }
    free(name);
    provhsm_free_secret(key);
    t->hsm_client_key_destroy(h);
    printf("  destroy: done\n");
}

/* The SDK's TPM registration id: lowercase base32 of SHA-256(EK bytes), no padding. */
static void registration_id_from_ek(const unsigned char *ek, size_t len, char out[53])
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
    unsigned char digest[32];
    unsigned int bits = 0, acc = 0;
    size_t n = 0;
    EVP_Digest(ek, len, digest, NULL, EVP_sha256(), NULL);
    for (size_t i = 0; i < sizeof(digest); i++) {
        acc = (acc << 8) | digest[i];
        bits += 8;
        while (bits >= 5) {
            out[n++] = alphabet[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0)
        out[n++] = alphabet[(acc << (5 - bits)) & 31];
    out[n] = '\0';
}

static void walk_tpm(const char *id_scope)
{
    const HSM_CLIENT_TPM_INTERFACE *t = hsm_client_tpm_interface();
    printf("TPM (SECURE_DEVICE_TYPE_TPM)\n");
    HSM_CLIENT_HANDLE h = t->hsm_client_tpm_create();
    if (h == NULL) {
        printf("  create: NULL: no TPM is configured (set PROVHSM_TCTI or a [tpm] section);\n"
               "  the SDK would stop here with an error, which is expected on this setup\n");
        return;
    }
    printf("  create: handle\n");
    unsigned char *ek = NULL, *srk = NULL, *sig = NULL;
    size_t ek_len = 0, srk_len = 0, sig_len = 0;
    char regid[53] = "";
    if (t->hsm_client_get_ek(h, &ek, &ek_len) == 0) {
        registration_id_from_ek(ek, ek_len, regid);
        printf("  endorsement key: %zu bytes (TPM2B_PUBLIC); registration id %s\n", ek_len, regid);
    } else {
        problem("get_endorsement_key failed");
    }
    if (t->hsm_client_get_srk(h, &srk, &srk_len) == 0)
        printf("  storage root key: %zu bytes (TPM2B_PUBLIC)\n", srk_len);
    else
        problem("get_storage_root_key failed");

    /* the SAS string the SDK signs after activation: "<url-encoded scope>\n<expiry>" */
    char scope[160], payload[256];
    snprintf(scope, sizeof(scope), "%s/registrations/%s", id_scope, regid);
    char *encoded = sdk_url_encode(scope);
    snprintf(payload, sizeof(payload), "%s\n%llu", encoded != NULL ? encoded : "",
             (unsigned long long)time(NULL) + 3600);
    if (t->hsm_client_sign_with_identity(h, (const unsigned char *)payload, strlen(payload), &sig,
                                         &sig_len) == 0)
        printf("  sign_with_identity: %zu-byte HMAC-SHA256 from the identity key in the TPM\n",
               sig_len);
    else
        printf("  sign_with_identity: no identity key yet (the service's activation blob\n"
               "  brings it; see 'provhsm tpm activate')\n");
    free(encoded);
    free(ek);
    free(srk);
    free(sig);
    t->hsm_client_tpm_destroy(h);
    printf("  destroy: done\n");
}

int main(int argc, char **argv)
{
    const char *id_scope = argc > 1 ? argv[1] : "0ne00000000";
    printf("provhsm %s: the SDK's view of this device\n", provhsm_version());
    if (initialize_hsm_system() != 0) {
        printf("initialize_hsm_system failed\n");
        return 1;
    }
    walk_x509();
    walk_symmetric(id_scope);
    walk_tpm(id_scope);
    deinitialize_hsm_system();
    printf("%s\n", problems == 0 ? "walkthrough: all configured identities behaved"
                                 : "walkthrough: problems found (see above)");
    return problems == 0 ? 0 : 1;
}
