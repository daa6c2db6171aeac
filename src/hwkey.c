/*
 * The process's open hardware keys (see hwkey.h): a short list, one entry per key
 * reference, each with a count of holders. Opening is slow (configuration, store,
 * device), so it runs outside the list's lock; when two threads open the same key at
 * once, the second one's copy is closed and the first one's shared.
 *
 * Why the secret comes from the store and not from the PEM: the PEM goes to the SDK as a
 * plain string, which it neither wipes nor keeps private. The TPM key's authorisation
 * value stays in the encrypted store, so a process that can talk to the TPM but cannot
 * read the store cannot sign with the device's key.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "front.h"
#include "hwkey.h"
#include "identity.h"
#include "log.h"
#include "secmem.h"
#include "store.h"

#define MOD "hwkey"

struct provhsm_hwkey {
    struct provhsm_hwkey *next;
    provhsm_keyref ref;
    const provhsm_backend *backend;
    void *key; /* the backend's open key */
    unsigned holders;
};

static pthread_mutex_t keys_lock = PTHREAD_MUTEX_INITIALIZER;
static provhsm_hwkey *keys;

static provhsm_err keyref_copy(const provhsm_keyref *src, provhsm_keyref *dst)
{
    return provhsm_keyref_make(src->backend, src->locator, src->spki, src->spki_len, dst);
}

static const provhsm_backend *hardware_backend(const provhsm_keyref *ref)
{
    const provhsm_backend *be = provhsm_backend_find(ref->backend);
    if (be == NULL) {
        PH_ERR(MOD, "the key is held by backend \"%s\", which this build does not have",
               ref->backend);
        return NULL;
    }
    if (be->key_open == NULL || be->key_sign == NULL || be->key_close == NULL) {
        PH_ERR(MOD, "backend \"%s\" holds no hardware keys", ref->backend);
        return NULL;
    }
    return be;
}

/* The stored secret of the identity (or pending request) whose key is `ref`. */
static provhsm_err secret_in_entry(provhsm_store *st, const char *entry, const provhsm_keyref *ref,
                                   char **secret_out)
{
    provhsm_x509_identity id = {0};
    provhsm_keyref stored = {0};
    provhsm_err err = provhsm_identity_x509_load(st, entry, &id);
    if (err != PROVHSM_OK)
        return err;
    err = provhsm_keyref_from_pem(id.key_pem, strlen(id.key_pem), &stored);
    if (err == PROVHSM_OK && !provhsm_keyref_equal(&stored, ref))
        err = PROVHSM_E_MISMATCH;
    if (err == PROVHSM_OK) {
        *secret_out = id.key_secret; /* secure memory, or NULL */
        id.key_secret = NULL;
    } else {
        err = PROVHSM_E_NOT_FOUND;
    }
    provhsm_keyref_clear(&stored);
    provhsm_identity_x509_clear(&id);
    return err;
}

static provhsm_err stored_secret(const provhsm_config *cfg, const provhsm_keyref *ref,
                                 char **secret_out)
{
    provhsm_store *st = NULL;
    provhsm_err err = provhsm_store_open(cfg, &st);
    if (err == PROVHSM_E_NOT_FOUND) {
        PH_ERR(MOD, "no store at %s: the key %s belongs to no identity here", cfg->store_dir,
               ref->locator);
        return err;
    }
    if (err != PROVHSM_OK)
        return err;
    err = secret_in_entry(st, PROVHSM_ENTRY_X509, ref, secret_out);
    if (err == PROVHSM_E_NOT_FOUND)
        err = secret_in_entry(st, PROVHSM_ENTRY_X509_PENDING, ref, secret_out);
    provhsm_store_close(st);
    if (err == PROVHSM_E_NOT_FOUND)
        PH_ERR(MOD, "no X.509 identity in the store at %s uses the %s key %s", cfg->store_dir,
               ref->backend, ref->locator);
    return err;
}

/* A new, unlisted entry with the key open. `secret` NULL: take it from the store. */
static provhsm_err open_entry(const provhsm_keyref *ref, const char *secret, int from_store,
                              provhsm_hwkey **out)
{
    provhsm_err err = PROVHSM_E_NOMEM;
    char *stored = NULL;
    provhsm_config *cfg = malloc(sizeof(*cfg));
    provhsm_hwkey *k = calloc(1, sizeof(*k));

    if (cfg == NULL || k == NULL)
        goto out;
    err = provhsm_front_config(cfg); /* as the tables and the admin API: --config included */
    if (err != PROVHSM_OK)
        goto out;
    err = PROVHSM_E_UNSUPPORTED;
    if ((k->backend = hardware_backend(ref)) == NULL)
        goto out;
    if (from_store) {
        err = stored_secret(cfg, ref, &stored);
        if (err != PROVHSM_OK)
            goto out;
        secret = stored;
    }
    err = keyref_copy(ref, &k->ref);
    if (err == PROVHSM_OK)
        err = k->backend->key_open(cfg, ref, secret, &k->key); /* logs why */
    if (err != PROVHSM_OK)
        goto out;
    k->holders = 1;
    *out = k;
    k = NULL;
out:
    provhsm_secure_free(stored);
    if (k != NULL)
        provhsm_keyref_clear(&k->ref);
    free(k);
    free(cfg);
    return err;
}

static provhsm_hwkey *find_listed(const provhsm_keyref *ref)
{
    for (provhsm_hwkey *k = keys; k != NULL; k = k->next)
        if (provhsm_keyref_equal(&k->ref, ref))
            return k;
    return NULL;
}

static void close_entry(provhsm_hwkey *k)
{
    k->backend->key_close(k->key);
    provhsm_keyref_clear(&k->ref);
    free(k);
}

/*
 * Lists a freshly opened key, or, when another thread listed the same key meanwhile,
 * closes the fresh one and shares the listed one.
 */
static provhsm_hwkey *list_or_share(provhsm_hwkey *fresh)
{
    pthread_mutex_lock(&keys_lock);
    provhsm_hwkey *listed = find_listed(&fresh->ref);
    if (listed != NULL) {
        listed->holders++;
    } else {
        fresh->next = keys;
        keys = fresh;
    }
    pthread_mutex_unlock(&keys_lock);
    if (listed == NULL)
        return fresh;
    close_entry(fresh);
    return listed;
}

static provhsm_err acquire(const provhsm_keyref *ref, const char *secret, int from_store,
                           provhsm_hwkey **out)
{
    provhsm_hwkey *k = NULL;
    if (ref == NULL || out == NULL || ref->locator == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (from_store) {
        pthread_mutex_lock(&keys_lock);
        k = find_listed(ref);
        if (k != NULL)
            k->holders++;
        pthread_mutex_unlock(&keys_lock);
        if (k != NULL) {
            *out = k;
            return PROVHSM_OK;
        }
    }
    provhsm_err err = open_entry(ref, secret, from_store, &k);
    if (err != PROVHSM_OK)
        return err;
    *out = list_or_share(k);
    return PROVHSM_OK;
}

provhsm_err provhsm_hwkey_acquire(const provhsm_keyref *ref, provhsm_hwkey **out)
{
    return acquire(ref, NULL, 1, out);
}

provhsm_err provhsm_hwkey_register(const provhsm_keyref *ref, const char *secret,
                                   provhsm_hwkey **out)
{
    return acquire(ref, secret, 0, out);
}

void provhsm_hwkey_release(provhsm_hwkey *key)
{
    if (key == NULL)
        return;
    pthread_mutex_lock(&keys_lock);
    int last = --key->holders == 0;
    if (last) {
        for (provhsm_hwkey **p = &keys; *p != NULL; p = &(*p)->next)
            if (*p == key) {
                *p = key->next;
                break;
            }
    }
    pthread_mutex_unlock(&keys_lock);
    if (last)
        close_entry(key);
}

const provhsm_keyref *provhsm_hwkey_ref(const provhsm_hwkey *key)
{
    return key != NULL ? &key->ref : NULL;
}

provhsm_err provhsm_hwkey_sign(provhsm_hwkey *key, const uint8_t *digest, size_t digest_len,
                               uint8_t *rs, size_t *rs_len)
{
    if (key == NULL || digest == NULL || rs == NULL || rs_len == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (digest_len != 20 && digest_len != 32 && digest_len != 48 && digest_len != 64) {
        PH_ERR(MOD, "a digest of %zu bytes cannot be signed (20, 32, 48 or 64 expected)",
               digest_len);
        return PROVHSM_E_INVALID_ARG;
    }
    provhsm_err err = key->backend->key_sign(key->key, digest, digest_len, rs, rs_len);
    if (err != PROVHSM_OK)
        PH_ERR(MOD, "signing with the %s key %s failed: %s", key->ref.backend, key->ref.locator,
               provhsm_strerror(err));
    return err;
}
