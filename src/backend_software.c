/*
 * The software backend: X.509 and symmetric-key identities from the encrypted store.
 *
 * open() does all the work (store open, decrypt, parse, key/certificate check) so that
 * the get_* calls the SDK makes on its hot path are plain copies. The store is closed
 * again before open() returns: its key lives only as long as the decryption needs it.
 * The state keeps the alias key PEM and the symmetric key in secure memory.
 *
 * A symmetric state may be empty (no stored identity): the SDK creates the handle
 * before it passes the application's registration id and key, and those are enough.
 * It keeps the store's path so that, when the application passes nothing either, the
 * one error line the user sees says what is missing and where it was looked for.
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "identity.h"
#include "log.h"
#include "secmem.h"
#include "store.h"
#include "x509_stored.h"
#include "x509util.h"

#define MOD "software"

typedef struct sw_state {
    /* X.509 */
    char *chain_pem;   /* malloc */
    char *alias_key;   /* secure */
    char *common_name; /* malloc */
    /* symmetric */
    char *registration_id; /* malloc, NULL when no identity */
    char *symmetric_key;   /* secure */
    char *store_dir;       /* malloc: where the symmetric identity was looked for */
    int store_missing;     /* no store at store_dir */
} sw_state;

static char *dup_plain(const char *s)
{
    size_t n = strlen(s) + 1;
    char *copy = malloc(n);
    if (copy != NULL)
        memcpy(copy, s, n);
    return copy;
}

static provhsm_err copy_out(const char *value, const char *what, char **out)
{
    if (value == NULL) {
        PH_ERR(MOD, "no %s in this identity", what);
        return PROVHSM_E_NOT_FOUND;
    }
    char *copy = dup_plain(value);
    if (copy == NULL)
        return PROVHSM_E_NOMEM;
    *out = copy;
    return PROVHSM_OK;
}

static void sw_close(void *p)
{
    sw_state *st = p;
    if (st == NULL)
        return;
    free(st->chain_pem);
    provhsm_secure_free(st->alias_key);
    free(st->common_name);
    free(st->registration_id);
    provhsm_secure_free(st->symmetric_key);
    free(st->store_dir);
    free(st);
}

/* Checks the stored pair again: a store edited by hand must not hand the SDK a wrong key. */
static provhsm_err x509_validate(const provhsm_x509_identity *id, char **cn_out)
{
    STACK_OF(X509) *chain = NULL;
    provhsm_err err = provhsm_x509_parse_chain(id->chain_pem, &chain);
    if (err != PROVHSM_OK)
        goto out;
    X509 *leaf = sk_X509_value(chain, 0);
    err = provhsm_x509_stored_key_matches(id->key_pem, leaf);
    if (err != PROVHSM_OK) {
        PH_ERR(MOD, "stored private key does not match the stored certificate");
        goto out;
    }
    err = provhsm_x509_common_name(leaf, cn_out);
out:
    sk_X509_pop_free(chain, X509_free);
    return err;
}

static provhsm_err open_x509(provhsm_store *store, sw_state *st)
{
    provhsm_x509_identity id = {0};
    provhsm_err err = provhsm_identity_x509_load(store, PROVHSM_ENTRY_X509, &id);
    if (err == PROVHSM_E_NOT_FOUND) {
        if (provhsm_store_has(store, PROVHSM_ENTRY_X509_PENDING))
            PH_ERR(MOD, "an X.509 key was generated for a CSR but no certificate was imported "
                        "yet (provhsm x509 import --cert CHAIN.pem)");
        else
            PH_ERR(MOD, "no X.509 identity in the store (provhsm x509 generate or "
                        "provhsm x509 import)");
        return err;
    }
    if (err != PROVHSM_OK)
        return err;
    if (id.chain_pem == NULL) {
        PH_ERR(MOD, "stored X.509 identity has no certificate");
        err = PROVHSM_E_CORRUPT;
        goto out;
    }
    err = x509_validate(&id, &st->common_name);
    if (err != PROVHSM_OK)
        goto out;
    st->chain_pem = id.chain_pem;
    st->alias_key = id.key_pem;
    id.chain_pem = NULL;
    id.key_pem = NULL;
out:
    provhsm_identity_x509_clear(&id);
    return err;
}

static provhsm_err open_symmetric(provhsm_store *store, sw_state *st)
{
    provhsm_symmetric_identity id = {0};
    provhsm_err err = provhsm_identity_symmetric_load(store, &id);
    if (err == PROVHSM_E_NOT_FOUND) {
        PH_INFO(MOD, "no stored symmetric identity; the application must set one");
        return PROVHSM_OK;
    }
    if (err != PROVHSM_OK)
        return err;
    st->registration_id = id.registration_id;
    st->symmetric_key = id.key_b64;
    return PROVHSM_OK;
}

static provhsm_err sw_open(const provhsm_config *cfg, provhsm_kind kind, void **state)
{
    provhsm_store *store = NULL;
    sw_state *st = NULL;
    provhsm_err err;

    if (kind != PROVHSM_KIND_X509 && kind != PROVHSM_KIND_SYMMETRIC)
        return PROVHSM_E_UNSUPPORTED;
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        return PROVHSM_E_NOMEM;
    if (kind == PROVHSM_KIND_SYMMETRIC && (st->store_dir = dup_plain(cfg->store_dir)) == NULL) {
        free(st);
        return PROVHSM_E_NOMEM;
    }

    err = provhsm_store_open(cfg, &store);
    if (err == PROVHSM_E_NOT_FOUND && kind == PROVHSM_KIND_SYMMETRIC) {
        PH_INFO(MOD, "no store at %s; the application must set the symmetric identity",
                cfg->store_dir);
        st->store_missing = 1;
        err = PROVHSM_OK;
        goto out;
    }
    if (err == PROVHSM_E_NOT_FOUND)
        PH_ERR(MOD, "no store at %s (create it with provhsm init)", cfg->store_dir);
    if (err != PROVHSM_OK)
        goto out;
    err = kind == PROVHSM_KIND_X509 ? open_x509(store, st) : open_symmetric(store, st);
out:
    provhsm_store_close(store);
    if (err != PROVHSM_OK) {
        sw_close(st);
        return err;
    }
    *state = st;
    return PROVHSM_OK;
}

provhsm_err provhsm_x509_stored_open(const provhsm_config *cfg, void **state)
{
    if (cfg == NULL || state == NULL)
        return PROVHSM_E_INVALID_ARG;
    return sw_open(cfg, PROVHSM_KIND_X509, state);
}

void provhsm_x509_stored_close(void *state)
{
    sw_close(state);
}

static provhsm_err sw_certificate(void *p, char **out)
{
    return copy_out(((sw_state *)p)->chain_pem, "certificate", out);
}

static provhsm_err sw_alias_key(void *p, char **out)
{
    return copy_out(((sw_state *)p)->alias_key, "private key", out);
}

static provhsm_err sw_common_name(void *p, char **out)
{
    return copy_out(((sw_state *)p)->common_name, "common name", out);
}

provhsm_err provhsm_x509_stored_certificate(void *state, char **pem_out)
{
    return sw_certificate(state, pem_out);
}

provhsm_err provhsm_x509_stored_alias_key(void *state, char **pem_out)
{
    return sw_alias_key(state, pem_out);
}

provhsm_err provhsm_x509_stored_common_name(void *state, char **cn_out)
{
    return sw_common_name(state, cn_out);
}

/*
 * Neither the store nor the application gave a symmetric identity: one error-level line
 * (the default level shows nothing else) says which item is missing, where it was looked
 * for, and how to provide it.
 */
static provhsm_err report_missing_symmetric(const sw_state *st, const char *item)
{
    if (st->store_missing)
        PH_ERR(MOD,
               "no %s: there is no store at %s (create it with provhsm init, then provhsm "
               "symmetric set), and the application set none with "
               "prov_dev_set_symmetric_key_info",
               item, st->store_dir);
    else
        PH_ERR(MOD,
               "no %s: the store at %s holds no symmetric identity (provhsm symmetric set), "
               "and the application set none with prov_dev_set_symmetric_key_info",
               item, st->store_dir);
    return PROVHSM_E_NOT_FOUND;
}

static provhsm_err sw_symmetric_key(void *p, char **out)
{
    sw_state *st = p;
    if (st->symmetric_key == NULL)
        return report_missing_symmetric(st, "symmetric key");
    return copy_out(st->symmetric_key, "symmetric key", out);
}

static provhsm_err sw_registration_id(void *p, char **out)
{
    sw_state *st = p;
    if (st->registration_id == NULL)
        return report_missing_symmetric(st, "registration id");
    return copy_out(st->registration_id, "registration id", out);
}

static provhsm_err sw_symmetric_override(void *p, const char *registration_id, const char *key)
{
    sw_state *st = p;
    char *id_copy = dup_plain(registration_id);
    char *key_copy = provhsm_secure_strdup(key);
    if (id_copy == NULL || key_copy == NULL) {
        free(id_copy);
        provhsm_secure_free(key_copy);
        return PROVHSM_E_NOMEM;
    }
    free(st->registration_id);
    provhsm_secure_free(st->symmetric_key);
    st->registration_id = id_copy;
    st->symmetric_key = key_copy;
    return PROVHSM_OK;
}

const provhsm_backend provhsm_backend_software = {
    .name = "software",
    .caps = PROVHSM_CAP_X509 | PROVHSM_CAP_SYMMETRIC,
    .open = sw_open,
    .close = sw_close,
    .x509_certificate = sw_certificate,
    .x509_alias_key = sw_alias_key,
    .x509_common_name = sw_common_name,
    .symmetric_key = sw_symmetric_key,
    .registration_id = sw_registration_id,
    .symmetric_override = sw_symmetric_override,
};
