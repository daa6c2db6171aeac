/*
 * The administration API (include/provhsm/provhsm.h): what the factory line and the
 * provhsm tool call to put identities into the store and to use them the SDK's way.
 * Writes go to the software store; reads for SAS tokens go through the SDK's own tables
 * so that the tool exercises exactly what the SDK will.
 *
 * Identity safety: a key generated for a CSR waits in its own entry until its
 * certificate is imported, so a device keeps its working identity meanwhile; it is
 * replaced only on request (`replace`), and a refusal says which request is pending.
 * Every operation that writes holds the store's write lock from before its first read
 * to its last write (provhsm_store_lock), so that two of them, in two processes, never
 * interleave: an import that removes the pending key it used cannot remove the one a
 * concurrent generate has just written.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "backend.h"
#include "encoding.h"
#include "front.h"
#include "hsm_client_data.h"
#include "hwkey.h"
#include "identity.h"
#include "keyref.h"
#include "log.h"
#include "provider/provider.h"
#include "sas.h"
#include "secmem.h"
#include "store.h"
#include "x509util.h"

#define MOD "admin"

/*
 * What the pending key was generated for, in an entry of its own next to it (so that
 * the identity record format stays as it is): "PHR1", the creation time in seconds since
 * the epoch (8 bytes, big-endian), then the common name (1..64 bytes, no NUL).
 */
#define ENTRY_PENDING_REQUEST "x509-pending-request"
#define REQUEST_MAGIC         "PHR1"
#define REQUEST_HDR_LEN       12u
#define CN_MAX                64u

/*
 * The configuration is about 25 KB: it lives on the heap so that the admin API, like the
 * SDK tables, runs on a small thread stack. *out is NULL unless the result is PROVHSM_OK.
 */
static provhsm_err config_load(provhsm_config **out)
{
    *out = NULL;
    provhsm_config *cfg = malloc(sizeof(*cfg));
    if (cfg == NULL) {
        PH_ERR(MOD, "out of memory");
        return PROVHSM_E_NOMEM;
    }
    provhsm_err err = provhsm_front_config(cfg);
    if (err != PROVHSM_OK) {
        free(cfg);
        return err;
    }
    *out = cfg;
    return PROVHSM_OK;
}

/* A configuration holds paths and names, no secret: a plain free. NULL is ignored. */
static void config_free(provhsm_config *cfg)
{
    free(cfg);
}

/*
 * Opens the store for an attestation served by `backend`, and takes its write lock:
 * every caller writes.
 */
static provhsm_err open_software_store(const char *attestation, const char *backend,
                                       const provhsm_config *cfg, provhsm_store **st)
{
    const provhsm_backend *be = provhsm_backend_find(backend);
    /* a hardware backend keeps X.509 chains and key references in the store too */
    int stored_x509 = strcmp(attestation, "x509") == 0 && be != NULL && be->key_generate != NULL;
    if (strcmp(backend, "software") != 0 && !stored_x509) {
        PH_ERR(MOD,
               "%s identities are configured for backend '%s'; the store holds only "
               "software identities",
               attestation, backend);
        return PROVHSM_E_UNSUPPORTED;
    }
    provhsm_err err = provhsm_store_open(cfg, st);
    if (err == PROVHSM_E_NOT_FOUND)
        PH_ERR(MOD, "no store at %s (create it with provhsm init)", cfg->store_dir);
    if (err == PROVHSM_OK)
        err = provhsm_store_lock(*st);
    if (err != PROVHSM_OK) {
        provhsm_store_close(*st);
        *st = NULL;
    }
    return err;
}

/* Records the common name and creation time of the request the pending key is for. */
static provhsm_err save_pending_request(provhsm_store *st, const char *cn)
{
    uint8_t rec[REQUEST_HDR_LEN + CN_MAX];
    size_t cn_len = strlen(cn);
    uint64_t now = (uint64_t)time(NULL);

    memcpy(rec, REQUEST_MAGIC, 4);
    for (int i = 0; i < 8; i++)
        rec[4 + i] = (uint8_t)(now >> (56 - 8 * i));
    memcpy(rec + REQUEST_HDR_LEN, cn, cn_len);
    return provhsm_store_put(st, ENTRY_PENDING_REQUEST, rec, REQUEST_HDR_LEN + cn_len);
}

/* Reads a request record: its CN (control characters as '?') and creation time. */
static int parse_pending_request(const uint8_t *rec, size_t len, char *cn, uint64_t *made)
{
    if (len <= REQUEST_HDR_LEN || len > REQUEST_HDR_LEN + CN_MAX ||
        memcmp(rec, REQUEST_MAGIC, 4) != 0)
        return 0;
    *made = 0;
    for (int i = 0; i < 8; i++)
        *made = *made << 8 | rec[4 + i];
    size_t cn_len = len - REQUEST_HDR_LEN;
    for (size_t i = 0; i < cn_len; i++) {
        uint8_t c = rec[REQUEST_HDR_LEN + i];
        cn[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    cn[cn_len] = '\0';
    return 1;
}

static void format_utc(uint64_t seconds, char *out, size_t outlen)
{
    time_t t = (time_t)seconds;
    struct tm tm;
    if ((uint64_t)t != seconds || gmtime_r(&t, &tm) == NULL ||
        strftime(out, outlen, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
        snprintf(out, outlen, "at an unreadable time");
}

/*
 * "CN=<cn>, made <date> UTC" for the pending request, for a message. A store written
 * before the request was recorded, or an unreadable record, gives a plain "(its name
 * and date were not recorded)".
 */
static void describe_pending_request(provhsm_store *st, char *out, size_t outlen)
{
    uint8_t *rec = NULL;
    size_t len = 0;
    char cn[CN_MAX + 1];
    uint64_t made = 0;

    snprintf(out, outlen, "(its name and date were not recorded)");
    if (provhsm_store_get(st, ENTRY_PENDING_REQUEST, &rec, &len) != PROVHSM_OK)
        return;
    if (parse_pending_request(rec, len, cn, &made)) {
        char when[40];
        format_utc(made, when, sizeof(when));
        snprintf(out, outlen, "CN=%s, made %s", cn, when);
    }
    provhsm_secure_free(rec);
}

/* Removes the pending key and its request record; a missing record is fine. */
static provhsm_err remove_pending(provhsm_store *st)
{
    provhsm_err err = provhsm_store_remove(st, PROVHSM_ENTRY_X509_PENDING);
    if (err != PROVHSM_OK)
        return err;
    err = provhsm_store_remove(st, ENTRY_PENDING_REQUEST);
    return err == PROVHSM_E_NOT_FOUND ? PROVHSM_OK : err;
}

provhsm_err provhsm_store_init(void)
{
    provhsm_config *cfg = NULL;
    provhsm_err err = config_load(&cfg);
    if (err != PROVHSM_OK)
        return err;
    err = provhsm_store_create(cfg);
    if (err == PROVHSM_OK)
        PH_INFO(MOD, "created store %s", cfg->store_dir);
    config_free(cfg);
    return err;
}

static const char *key_type_name(provhsm_key_type type)
{
    switch (type) {
    case PROVHSM_KEY_EC_P256:
        return "EC P-256";
    case PROVHSM_KEY_RSA_2048:
        return "RSA-2048";
    case PROVHSM_KEY_RSA_3072:
        return "RSA-3072";
    case PROVHSM_KEY_RSA_4096:
        return "RSA-4096";
    case PROVHSM_KEY_EC_P384:
        return "EC P-384";
    }
    return "?";
}

/* The backend configured for X.509 when it keeps keys in hardware, else NULL (software). */
static const provhsm_backend *hardware_x509_backend(const provhsm_config *cfg)
{
    const provhsm_backend *be = provhsm_backend_find(cfg->x509_backend);
    return be != NULL && be->key_generate != NULL ? be : NULL;
}

/* A key made in hardware and not yet stored: removed again when a later step fails. */
typedef struct new_hardware_key {
    const provhsm_backend *backend;
    provhsm_keyref ref;
    provhsm_hwkey *held; /* open, so the provider finds it before the store knows it */
} new_hardware_key;

static void new_hardware_key_drop(const provhsm_config *cfg, new_hardware_key *k, int destroy,
                                  const char *secret)
{
    provhsm_hwkey_release(k->held);
    k->held = NULL;
    if (destroy && k->ref.locator != NULL && k->backend->key_destroy != NULL &&
        k->backend->key_destroy(cfg, &k->ref, secret) != PROVHSM_OK)
        PH_WARN(MOD, "the new %s key %s could not be removed again", k->ref.backend,
                k->ref.locator);
    provhsm_keyref_clear(&k->ref);
}

/*
 * Makes the key in the device and an EVP_PKEY for it through the provider: id->key_pem
 * becomes the key reference, id->key_secret what the backend needs to use the key.
 */
static provhsm_err generate_hardware_key(const provhsm_config *cfg, provhsm_key_type type,
                                         int replace, new_hardware_key *k,
                                         provhsm_x509_identity *id, EVP_PKEY **key)
{
    char *pem = NULL;
    provhsm_err err = k->backend->key_generate(cfg, type, replace, &k->ref, &id->key_secret);
    if (err != PROVHSM_OK)
        return err; /* the backend said why */
    err = provhsm_keyref_to_pem(&k->ref, &pem);
    if (err == PROVHSM_OK && (id->key_pem = provhsm_secure_strdup(pem)) == NULL)
        err = PROVHSM_E_NOMEM;
    if (err == PROVHSM_OK)
        err = provhsm_hwkey_register(&k->ref, id->key_secret, &k->held);
    if (err == PROVHSM_OK)
        err = provhsm_provider_key_from_pem(pem, key);
    free(pem);
    return err;
}

provhsm_err provhsm_x509_generate(const char *common_name, provhsm_key_type type, int days,
                                  int replace, char **pem_out)
{
    provhsm_config *cfg = NULL;
    provhsm_store *st = NULL;
    EVP_PKEY *key = NULL;
    provhsm_x509_identity id = {0};
    new_hardware_key hw = {0};
    char *pem = NULL;
    provhsm_err err;

    if (common_name == NULL || *common_name == '\0' || strlen(common_name) > 64 || days < 0 ||
        days > 36500 || pem_out == NULL) {
        PH_ERR(MOD, "x509 generate: need a common name of 1..64 characters and 0..36500 days");
        return PROVHSM_E_INVALID_ARG;
    }
    err = config_load(&cfg);
    if (err == PROVHSM_OK)
        err = open_software_store("x509", cfg->x509_backend, cfg, &st);
    if (err != PROVHSM_OK)
        goto out;
    if (days > 0 && !replace && provhsm_store_has(st, PROVHSM_ENTRY_X509)) {
        PH_ERR(MOD, "an X.509 identity exists already; replacing it needs --force");
        err = PROVHSM_E_EXISTS;
        goto out;
    }
    if (days == 0 && !replace && provhsm_store_has(st, PROVHSM_ENTRY_X509_PENDING)) {
        char pending[160];
        describe_pending_request(st, pending, sizeof(pending));
        PH_ERR(MOD,
               "a certificate request is pending: %s; its key waits for the CA-signed "
               "certificate (provhsm x509 import). A new request would replace that key, "
               "and the certificate for it would then match nothing: replacing it needs --force",
               pending);
        err = PROVHSM_E_EXISTS;
        goto out;
    }
    hw.backend = hardware_x509_backend(cfg);
    if (hw.backend != NULL) {
        err = generate_hardware_key(cfg, type, replace, &hw, &id, &key);
    } else {
        err = provhsm_x509_generate_key(type, &key);
        if (err == PROVHSM_OK)
            err = provhsm_x509_key_to_pem(key, &id.key_pem);
    }
    if (err != PROVHSM_OK)
        goto out;
    if (days > 0) {
        err = provhsm_x509_self_signed(key, common_name, days, &pem);
        if (err != PROVHSM_OK)
            goto out;
        id.chain_pem = strdup(pem);
        if (id.chain_pem == NULL) {
            err = PROVHSM_E_NOMEM;
            goto out;
        }
        err = provhsm_identity_x509_save(st, PROVHSM_ENTRY_X509, &id);
    } else {
        err = provhsm_x509_csr(key, common_name, &pem);
        if (err == PROVHSM_OK)
            err = provhsm_identity_x509_save(st, PROVHSM_ENTRY_X509_PENDING, &id);
        /* the key is what matters; without the record a refusal says less */
        if (err == PROVHSM_OK && save_pending_request(st, common_name) != PROVHSM_OK)
            PH_WARN(MOD,
                    "the request for CN=%s was made, but its name and date were not "
                    "recorded",
                    common_name);
    }
    if (err != PROVHSM_OK)
        goto out;
    PH_INFO(MOD, "generated a %s key for CN=%s (%s)%s%s", key_type_name(type), common_name,
            days > 0 ? "self-signed certificate" : "certificate request",
            hw.backend != NULL ? " in " : "", hw.backend != NULL ? hw.ref.locator : "");
    *pem_out = pem;
    pem = NULL;
out:
    EVP_PKEY_free(key); /* before the hardware key it holds is released */
    if (hw.backend != NULL)
        new_hardware_key_drop(cfg, &hw, err != PROVHSM_OK, id.key_secret);
    free(pem);
    provhsm_identity_x509_clear(&id);
    provhsm_store_close(st);
    config_free(cfg);
    return err;
}

/* Finds the stored key (pending first, then current) that matches the leaf. */
static provhsm_err find_matching_stored_key(provhsm_store *st, X509 *leaf,
                                            provhsm_x509_identity *found, int *from_pending)
{
    static const char *const entries[] = {PROVHSM_ENTRY_X509_PENDING, PROVHSM_ENTRY_X509};
    for (int i = 0; i < 2; i++) {
        provhsm_x509_identity id = {0};
        provhsm_err err = provhsm_identity_x509_load(st, entries[i], &id);
        if (err == PROVHSM_E_NOT_FOUND)
            continue;
        if (err != PROVHSM_OK)
            return err;
        if (provhsm_x509_stored_key_matches(id.key_pem, leaf) == PROVHSM_OK) {
            found->key_pem = id.key_pem; /* a PKCS#8 key or a key reference */
            found->key_secret = id.key_secret;
            id.key_pem = NULL;
            id.key_secret = NULL;
            *from_pending = i == 0;
            provhsm_identity_x509_clear(&id);
            return PROVHSM_OK;
        }
        provhsm_identity_x509_clear(&id);
    }
    PH_ERR(MOD, "the certificate does not match any key in the store (generate one with "
                "provhsm x509 generate --csr, or import the key with --key)");
    return PROVHSM_E_MISMATCH;
}

provhsm_err provhsm_x509_import(const char *chain_pem, const char *key_pem, int *expired_out)
{
    provhsm_config *cfg = NULL;
    provhsm_store *st = NULL;
    STACK_OF(X509) *chain = NULL;
    EVP_PKEY *key = NULL;
    provhsm_x509_identity id = {0};
    provhsm_cert_info info;
    char *cn = NULL;
    int from_pending = 0;
    provhsm_err err;

    if (chain_pem == NULL)
        return PROVHSM_E_INVALID_ARG;
    err = provhsm_x509_parse_chain(chain_pem, &chain);
    if (err != PROVHSM_OK)
        goto out;
    X509 *leaf = sk_X509_value(chain, 0);
    err = provhsm_x509_common_name(leaf, &cn);
    if (err == PROVHSM_OK)
        err = provhsm_x509_check_chain_order(chain);
    if (err == PROVHSM_OK)
        err = provhsm_x509_describe(leaf, &info);
    if (err != PROVHSM_OK)
        goto out;
    if (info.expired)
        PH_WARN(MOD, "the device certificate expired on %s", info.not_after);

    err = config_load(&cfg);
    if (err == PROVHSM_OK)
        err = open_software_store("x509", cfg->x509_backend, cfg, &st);
    if (err != PROVHSM_OK)
        goto out;
    if (key_pem != NULL) {
        err = provhsm_x509_key_from_pem(key_pem, &key);
        if (err == PROVHSM_OK)
            err = provhsm_x509_key_matches(key, leaf);
        if (err == PROVHSM_E_MISMATCH)
            PH_ERR(MOD, "the private key does not belong to the certificate");
        if (err == PROVHSM_OK)
            err = provhsm_x509_key_to_pem(key, &id.key_pem); /* stored as PKCS#8 */
    } else {
        err = find_matching_stored_key(st, leaf, &id, &from_pending);
    }
    if (err == PROVHSM_OK)
        err = provhsm_x509_chain_to_pem(chain, &id.chain_pem);
    if (err == PROVHSM_OK)
        err = provhsm_identity_x509_save(st, PROVHSM_ENTRY_X509, &id);
    if (err != PROVHSM_OK)
        goto out;
    if (from_pending && remove_pending(st) != PROVHSM_OK)
        PH_WARN(MOD, "imported, but could not remove the pending key entry");
    PH_INFO(MOD, "imported X.509 identity CN=%s (%d certificate(s))", cn, sk_X509_num(chain));
    if (expired_out != NULL)
        *expired_out = info.expired;
out:
    free(cn);
    provhsm_identity_x509_clear(&id);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
    provhsm_store_close(st);
    config_free(cfg);
    return err;
}

/* Parses and checks a chain for an identity: CN present, leaf first. *cn_out malloc'd. */
static provhsm_err checked_chain(const char *chain_pem, STACK_OF(X509) **chain, char **cn_out)
{
    provhsm_err err = provhsm_x509_parse_chain(chain_pem, chain);
    if (err == PROVHSM_OK)
        err = provhsm_x509_common_name(sk_X509_value(*chain, 0), cn_out);
    if (err == PROVHSM_OK)
        err = provhsm_x509_check_chain_order(*chain);
    return err;
}

/*
 * Proves an adopted key can be used as configured (device reachable, authorisation or
 * PIN right, public key as the reference says): one signature over a fixed digest.
 */
static provhsm_err check_adopted_key_signs(const provhsm_keyref *ref, const char *secret)
{
    provhsm_hwkey *key = NULL;
    uint8_t digest[32], rs[PROVHSM_HWKEY_SIG_MAX];
    size_t rs_len = sizeof(rs);
    memset(digest, 0x5a, sizeof(digest));
    provhsm_err err = provhsm_hwkey_register(ref, secret, &key);
    if (err == PROVHSM_OK)
        err = provhsm_hwkey_sign(key, digest, sizeof(digest), rs, &rs_len);
    provhsm_hwkey_release(key);
    return err;
}

/* The chain the device holds for the adopted key, when none was given. */
static provhsm_err chain_from_device(const provhsm_backend *be, const provhsm_config *cfg,
                                     const provhsm_keyref *ref, STACK_OF(X509) **chain,
                                     char **cn_out)
{
    char *pem = NULL;
    provhsm_err err = be->key_certificates(cfg, ref, &pem); /* logs why */
    if (err == PROVHSM_OK)
        err = checked_chain(pem, chain, cn_out);
    free(pem);
    return err;
}

provhsm_err provhsm_x509_adopt(const char *locator, const char *chain_pem, int replace)
{
    provhsm_config *cfg = NULL;
    provhsm_store *st = NULL;
    STACK_OF(X509) *chain = NULL;
    provhsm_x509_identity id = {0};
    provhsm_keyref ref = {0};
    char *cn = NULL, *ref_pem = NULL;
    const provhsm_backend *be = NULL;

    if (locator == NULL || *locator == '\0')
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = chain_pem != NULL ? checked_chain(chain_pem, &chain, &cn) : PROVHSM_OK;
    if (err == PROVHSM_OK)
        err = config_load(&cfg);
    if (err != PROVHSM_OK)
        goto out;
    be = hardware_x509_backend(cfg);
    if (be == NULL || be->key_adopt == NULL) {
        PH_ERR(MOD, "adopting a key needs [x509] backend = tpm or pkcs11 (now: %s)",
               cfg->x509_backend);
        err = PROVHSM_E_UNSUPPORTED;
        goto out;
    }
    if (chain_pem == NULL && be->key_certificates == NULL) {
        PH_ERR(MOD,
               "the %s backend cannot read the key's certificate from the device: give "
               "the certificate chain (x509 adopt --cert)",
               be->name);
        err = PROVHSM_E_UNSUPPORTED;
        goto out;
    }
    err = open_software_store("x509", cfg->x509_backend, cfg, &st);
    if (err != PROVHSM_OK)
        goto out;
    if (!replace && provhsm_store_has(st, PROVHSM_ENTRY_X509)) {
        PH_ERR(MOD, "an X.509 identity exists already; replacing it needs --force");
        err = PROVHSM_E_EXISTS;
        goto out;
    }
    err = be->key_adopt(cfg, locator, &ref, &id.key_secret); /* logs why */
    if (err == PROVHSM_OK && chain == NULL)
        err = chain_from_device(be, cfg, &ref, &chain, &cn);
    if (err == PROVHSM_OK)
        err = provhsm_keyref_to_pem(&ref, &ref_pem);
    if (err != PROVHSM_OK)
        goto out;
    if (provhsm_x509_keyref_matches(&ref, sk_X509_value(chain, 0)) != PROVHSM_OK) {
        PH_ERR(MOD, "the certificate CN=%s is not for the key %s", cn, ref.locator);
        err = PROVHSM_E_MISMATCH;
        goto out;
    }
    err = check_adopted_key_signs(&ref, id.key_secret);
    if (err == PROVHSM_OK && (id.key_pem = provhsm_secure_strdup(ref_pem)) == NULL)
        err = PROVHSM_E_NOMEM;
    if (err == PROVHSM_OK)
        err = provhsm_x509_chain_to_pem(chain, &id.chain_pem);
    if (err == PROVHSM_OK)
        err = provhsm_identity_x509_save(st, PROVHSM_ENTRY_X509, &id);
    if (err == PROVHSM_OK)
        PH_INFO(MOD, "adopted the %s key %s as X.509 identity CN=%s", ref.backend, ref.locator, cn);
out:
    free(ref_pem);
    free(cn);
    provhsm_keyref_clear(&ref);
    provhsm_identity_x509_clear(&id);
    sk_X509_pop_free(chain, X509_free);
    provhsm_store_close(st);
    config_free(cfg);
    return err;
}

static char *dup_line(const char *text)
{
    char *copy = strdup(text);
    if (copy == NULL)
        PH_ERR(MOD, "out of memory");
    return copy;
}

provhsm_err provhsm_x509_key_location(char **line_out)
{
    provhsm_config *cfg = NULL;
    provhsm_store *st = NULL;
    provhsm_x509_identity id = {0};
    provhsm_keyref ref = {0};
    char fallback[PROVHSM_KEYREF_LOCATOR_MAX + 64];

    if (line_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = config_load(&cfg);
    if (err == PROVHSM_OK)
        err = provhsm_store_open(cfg, &st);
    if (err == PROVHSM_OK) {
        err = provhsm_identity_x509_load(st, PROVHSM_ENTRY_X509, &id);
        if (err == PROVHSM_E_NOT_FOUND)
            err = provhsm_identity_x509_load(st, PROVHSM_ENTRY_X509_PENDING, &id);
    }
    if (err != PROVHSM_OK)
        goto out;
    err = provhsm_keyref_from_pem(id.key_pem, strlen(id.key_pem), &ref);
    if (err == PROVHSM_E_MISMATCH) {
        err = (*line_out = dup_line("software: in the encrypted store")) != NULL ? PROVHSM_OK
                                                                                 : PROVHSM_E_NOMEM;
        goto out;
    }
    if (err != PROVHSM_OK)
        goto out;
    const provhsm_backend *be = provhsm_backend_find(ref.backend);
    if (be != NULL && be->key_describe != NULL &&
        be->key_describe(cfg, &ref, line_out) == PROVHSM_OK)
        goto out;
    snprintf(fallback, sizeof(fallback), "%s: %s", ref.backend, ref.locator);
    err = (*line_out = dup_line(fallback)) != NULL ? PROVHSM_OK : PROVHSM_E_NOMEM;
out:
    provhsm_keyref_clear(&ref);
    provhsm_identity_x509_clear(&id);
    provhsm_store_close(st);
    config_free(cfg);
    return err;
}

provhsm_err provhsm_symmetric_set(const char *registration_id, const char *key_b64)
{
    provhsm_config *cfg = NULL;
    provhsm_store *st = NULL;
    provhsm_err err = provhsm_identity_check_registration_id(registration_id);
    if (err == PROVHSM_OK)
        err = provhsm_identity_check_symmetric_key(key_b64);
    if (err == PROVHSM_OK)
        err = config_load(&cfg);
    if (err == PROVHSM_OK)
        err = open_software_store("symmetric", cfg->symmetric_backend, cfg, &st);
    if (err == PROVHSM_OK) {
        const provhsm_symmetric_identity id = {(char *)registration_id, (char *)key_b64};
        err = provhsm_identity_symmetric_save(st, &id);
    }
    provhsm_store_close(st);
    config_free(cfg);
    return err;
}

provhsm_err provhsm_symmetric_derive(const char *registration_id, const char *group_key_b64,
                                     char **device_key_out)
{
    uint8_t mac[32];
    if (device_key_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = provhsm_identity_check_registration_id(registration_id);
    if (err == PROVHSM_OK)
        err = provhsm_identity_check_symmetric_key(group_key_b64);
    if (err == PROVHSM_OK)
        err = provhsm_sas_hmac_b64key(group_key_b64, (const uint8_t *)registration_id,
                                      strlen(registration_id), mac);
    if (err != PROVHSM_OK)
        return err;
    char *key = provhsm_base64_encode(mac, sizeof(mac));
    provhsm_wipe(mac, sizeof(mac));
    if (key == NULL)
        return PROVHSM_E_NOMEM;
    *device_key_out = key;
    return PROVHSM_OK;
}

/* The front returns a failure's provhsm_err as its non-zero int (hsm_front.c). */
static provhsm_err front_error(int rc)
{
    return rc > 0 && rc < (int)PROVHSM_E__COUNT ? (provhsm_err)rc : PROVHSM_E_CRYPTO;
}

/* Signs through the key table exactly as the SDK's prov_auth layer does. */
static provhsm_err sign_symmetric(const char *payload, uint8_t **sig, size_t *sig_len)
{
    const HSM_CLIENT_KEY_INTERFACE *t = hsm_client_key_interface();
    provhsm_err err = PROVHSM_E_NOT_FOUND;
    char *key = NULL;
    uint8_t *mac = NULL;
    HSM_CLIENT_HANDLE h = t->hsm_client_key_create();
    if (h == NULL)
        return PROVHSM_E_NOT_FOUND;
    int rc = t->hsm_client_set_symm_key_info(h, NULL, NULL);
    if (rc != 0) {
        err = front_error(rc);
        goto out;
    }
    key = t->hsm_client_get_symm_key(h);
    if (key == NULL)
        goto out;
    mac = malloc(32);
    if (mac == NULL) {
        err = PROVHSM_E_NOMEM;
        goto out;
    }
    err = provhsm_sas_hmac_b64key(key, (const uint8_t *)payload, strlen(payload), mac);
    if (err != PROVHSM_OK)
        goto out;
    *sig = mac;
    *sig_len = 32;
    mac = NULL;
out:
    provhsm_free_wiped(mac, 32);
    provhsm_free_wiped_string(key);
    t->hsm_client_key_destroy(h);
    return err;
}

static provhsm_err sign_tpm(const char *payload, uint8_t **sig, size_t *sig_len)
{
    const HSM_CLIENT_TPM_INTERFACE *t = hsm_client_tpm_interface();
    HSM_CLIENT_HANDLE h = t->hsm_client_tpm_create();
    if (h == NULL)
        return PROVHSM_E_NO_DEVICE;
    int rc = t->hsm_client_sign_with_identity(h, (const unsigned char *)payload, strlen(payload),
                                              sig, sig_len);
    t->hsm_client_tpm_destroy(h);
    return rc == 0 ? PROVHSM_OK : front_error(rc);
}

provhsm_err provhsm_sas_token(const char *attestation, const char *scope, uint64_t expiry,
                              const char *key_name, char **token_out)
{
    char *encoded = NULL, *payload = NULL;
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    provhsm_err err;

    if (attestation == NULL || scope == NULL || *scope == '\0' || key_name == NULL ||
        *key_name == '\0' || token_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    int symmetric = strcmp(attestation, "symmetric") == 0;
    if (!symmetric && strcmp(attestation, "tpm") != 0) {
        PH_ERR(MOD, "SAS tokens are for symmetric or tpm attestation, not '%s'", attestation);
        return PROVHSM_E_INVALID_ARG;
    }
    encoded = provhsm_url_encode(scope);
    if (encoded == NULL)
        return PROVHSM_E_NOMEM;
    err = provhsm_sas_string_to_sign(encoded, expiry, &payload);
    if (err == PROVHSM_OK)
        err =
            symmetric ? sign_symmetric(payload, &sig, &sig_len) : sign_tpm(payload, &sig, &sig_len);
    if (err == PROVHSM_OK)
        err = provhsm_sas_format(encoded, sig, sig_len, expiry, key_name, token_out);
    provhsm_free_wiped(sig, sig_len);
    free(payload);
    free(encoded);
    return err;
}

provhsm_err provhsm_identity_remove(const char *attestation)
{
    provhsm_config *cfg = NULL;
    provhsm_store *st = NULL;
    const char *entry;
    const char *backend;

    if (attestation == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = config_load(&cfg);
    if (err != PROVHSM_OK)
        return err;
    if (strcmp(attestation, "x509") == 0) {
        entry = PROVHSM_ENTRY_X509;
        backend = cfg->x509_backend;
    } else if (strcmp(attestation, "symmetric") == 0) {
        entry = PROVHSM_ENTRY_SYMMETRIC;
        backend = cfg->symmetric_backend;
    } else {
        PH_ERR(MOD, "identity remove: attestation must be x509 or symmetric");
        err = PROVHSM_E_INVALID_ARG;
        goto out;
    }
    err = open_software_store(attestation, backend, cfg, &st);
    if (err != PROVHSM_OK)
        goto out;
    /* for X.509, a key still waiting for its certificate goes too */
    int pending =
        strcmp(attestation, "x509") == 0 && provhsm_store_has(st, PROVHSM_ENTRY_X509_PENDING);
    if (pending)
        err = remove_pending(st);
    if (err == PROVHSM_OK && (!pending || provhsm_store_has(st, entry)))
        err = provhsm_store_remove(st, entry);
out:
    provhsm_store_close(st);
    config_free(cfg);
    return err;
}

const char *provhsm_backend_name(const char *attestation)
{
    provhsm_config *cfg = NULL;
    const char *name, *result = NULL;
    if (attestation == NULL || config_load(&cfg) != PROVHSM_OK)
        return NULL;
    if (strcmp(attestation, "x509") == 0)
        name = cfg->x509_backend;
    else if (strcmp(attestation, "symmetric") == 0)
        name = cfg->symmetric_backend;
    else if (strcmp(attestation, "tpm") == 0)
        name = cfg->tpm_configured ? cfg->tpm_backend : NULL;
    else
        goto out;
    if (name == NULL) {
        result = "none";
        goto out;
    }
    /* the descriptor's name is static; the config copy is not */
    const provhsm_backend *be = provhsm_backend_find(name);
    result = be != NULL ? be->name : "unavailable";
out:
    config_free(cfg);
    return result;
}

#ifndef PROVHSM_WITH_TPM
provhsm_err provhsm_tpm_clear_identity(void)
{
    PH_ERR(MOD, "this library was built without TPM support");
    return PROVHSM_E_UNSUPPORTED;
}
#endif
