/*
 * The TPM 2.0 backend: the SDK's TPM table (endorsement key, storage root key, identity
 * key activation, HMAC signing) on a TPM reached through tpm2-tss. Every TPM command
 * goes through tpm_esys.c; this file holds what the commands mean for provisioning:
 * the key templates, the well-known handles, the activation sequence and its cleanup.
 * Called by the front (hsm_front.c) through provhsm_backend_tpm, and by the admin API
 * through provhsm_tpm_clear_identity().
 *
 * One state per SDK handle, each with its own TCTI and ESAPI context. open() learns
 * which of EK, SRK and identity key exist from one GetCapability and reads the EK and SRK
 * (ReadPublic): three commands on a provisioned TPM, none of them failing for an absent
 * key. It keeps the EK and SRK public areas: the get_* calls send nothing and a signature
 * is one TPM2_HMAC. A missing EK or SRK is created from the templates below and
 * persisted. If the connection to the TPM is lost, the next call reconnects.
 *
 * Static state: one mutex per TCTI string, never freed. A TPM without a resource manager
 * has room for only a few transient objects and sessions, and replacing a persistent key
 * takes several commands; so everything that holds a transient object or a session
 * across commands (activation, key creation, HMAC sequences) or changes a persistent
 * handle runs under that mutex. Single-command operations (HMAC, ReadPublic) do not.
 * With the raw device (device:/dev/tpm0) only one state can be open at a time; the
 * kernel's resource manager (/dev/tpmrm0, the default) has no such limit, and neither
 * has swtpm, whose TCTI opens a connection per command.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "front.h"
#include "log.h"
#include "safefile.h"
#include "secmem.h"
#include "tpm_blob.h"
#include "tpm_esys.h"

#define MOD "tpm"

#define AUTH_FILE_MAX 512 /* bytes read from an authorisation file */

/* The TCG EK Credential Profile's policy: PolicySecret(TPM_RH_ENDORSEMENT). */
static const uint8_t ek_policy[32] = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};

/* What one connection knows: replaced as a whole when the backend reconnects. */
typedef struct tpm_link {
    provhsm_tpm *tpm;
    ESYS_TR ek, srk, identity; /* identity: ESYS_TR_NONE while there is none */
    uint8_t *ek_pub, *srk_pub; /* marshaled TPM2B_PUBLIC, malloc */
    size_t ek_pub_len, srk_pub_len;
} tpm_link;

typedef struct tpm_state {
    provhsm_config *cfg;   /* a copy: tcti, handles, where the authorisations are */
    pthread_mutex_t *lock; /* the one for cfg->tcti */
    tpm_link *link;
} tpm_state;

/* ---- per-TCTI locks --------------------------------------------------------------- */

typedef struct tcti_lock {
    struct tcti_lock *next;
    pthread_mutex_t mutex;
    char tcti[sizeof(((provhsm_config *)0)->tcti)];
} tcti_lock;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static tcti_lock *registry;

pthread_mutex_t *provhsm_tpm_lock_for(const char *tcti)
{
    pthread_mutex_t *found = NULL;
    pthread_mutex_lock(&registry_lock);
    for (tcti_lock *l = registry; l != NULL && found == NULL; l = l->next)
        if (strcmp(l->tcti, tcti) == 0)
            found = &l->mutex;
    if (found == NULL) {
        tcti_lock *l = calloc(1, sizeof(*l));
        if (l != NULL && pthread_mutex_init(&l->mutex, NULL) == 0) {
            snprintf(l->tcti, sizeof(l->tcti), "%s", tcti);
            l->next = registry;
            registry = l;
            found = &l->mutex;
        } else {
            free(l);
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return found;
}

/* ---- authorisation values ------------------------------------------------------------- */

/*
 * Reads one hierarchy's authorisation from its file or environment variable into
 * secure memory; the empty value when neither is configured.
 */
static provhsm_err load_auth(const char *file, const char *env, const char *what, TPM2B_AUTH **out)
{
    provhsm_err err = PROVHSM_OK;
    TPM2B_AUTH *auth = provhsm_secure_alloc(sizeof(*auth));
    char *text = NULL;

    if (auth == NULL)
        return PROVHSM_E_NOMEM;
    if (file[0] != '\0') {
        /* the same rules and the same code as the store's secret files (safefile.h) */
        char label[64];
        uint8_t *bytes = NULL;
        size_t n = 0;
        snprintf(label, sizeof(label), "%s authorisation file", what);
        const provhsm_file_ref f = {AT_FDCWD, file, file, label, NULL, 0};
        err = provhsm_safefile_read(&f, PROVHSM_FILE_SECRET, AUTH_FILE_MAX, &bytes, &n);
        if (err == PROVHSM_E_NOT_FOUND)
            PH_ERR(MOD, "%s %s does not exist", label, file);
        if (err != PROVHSM_OK)
            goto cleanup;
        text = (char *)bytes;
        err = provhsm_tpm_auth_parse(text, n, file, auth);
    } else if (env[0] != '\0') {
        const char *value = getenv(env);
        if (value == NULL) {
            PH_ERR(MOD, "%s authorisation: environment variable %s is not set", what, env);
            err = PROVHSM_E_CONFIG;
            goto cleanup;
        }
        err = provhsm_tpm_auth_parse(value, strlen(value), env, auth);
    }
    if (err != PROVHSM_OK)
        goto cleanup;
    *out = auth;
    auth = NULL;

cleanup:
    provhsm_secure_free(text);
    provhsm_secure_free(auth);
    return err;
}

/* Loads the hierarchy's configured authorisation into the connection. */
static provhsm_err use_auth(const tpm_state *st, provhsm_tpm *tpm, ESYS_TR hierarchy)
{
    TPM2B_AUTH *auth = NULL;
    int owner = hierarchy == ESYS_TR_RH_OWNER;
    provhsm_err err = load_auth(owner ? st->cfg->owner_auth_file : st->cfg->endorsement_auth_file,
                                owner ? st->cfg->owner_auth_env : st->cfg->endorsement_auth_env,
                                owner ? "owner" : "endorsement", &auth);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_set_hierarchy_auth(tpm, hierarchy, auth);
    provhsm_secure_free(auth);
    return err;
}

provhsm_err provhsm_tpm_use_owner_auth(const provhsm_config *cfg, provhsm_tpm *tpm)
{
    tpm_state st = {.cfg = (provhsm_config *)cfg, .lock = NULL, .link = NULL};
    return use_auth(&st, tpm, ESYS_TR_RH_OWNER);
}

/* Overwrites both hierarchies' authorisations inside ESAPI (cannot fail for them). */
static void drop_auth(provhsm_tpm *tpm)
{
    if (provhsm_tpm_set_hierarchy_auth(tpm, ESYS_TR_RH_OWNER, NULL) != PROVHSM_OK ||
        provhsm_tpm_set_hierarchy_auth(tpm, ESYS_TR_RH_ENDORSEMENT, NULL) != PROVHSM_OK)
        PH_WARN(MOD, "could not clear a hierarchy authorisation inside ESAPI");
}

/* ---- templates ------------------------------------------------------------------------ */

static void rsa_storage_template(TPM2B_PUBLIC *t, TPMA_OBJECT attributes)
{
    memset(t, 0, sizeof(*t));
    TPMT_PUBLIC *p = &t->publicArea;
    p->type = TPM2_ALG_RSA;
    p->nameAlg = TPM2_ALG_SHA256;
    p->objectAttributes = attributes;
    p->parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
    p->parameters.rsaDetail.symmetric.keyBits.aes = 128;
    p->parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
    p->parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
    p->parameters.rsaDetail.keyBits = 2048;
    p->parameters.rsaDetail.exponent = 0;
}

/* TCG EK Credential Profile, RSA 2048 template: the key the EK certificate is for. */
static void ek_template(TPM2B_PUBLIC *t)
{
    rsa_storage_template(t, TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_ADMINWITHPOLICY |
                                TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT);
    t->publicArea.authPolicy.size = sizeof(ek_policy);
    memcpy(t->publicArea.authPolicy.buffer, ek_policy, sizeof(ek_policy));
    t->publicArea.unique.rsa.size = 256; /* 256 zero bytes, as the profile says */
}

/* The SDK's storage root key (sdk-contract.md, "Well-known TPM handles and templates"). */
static void srk_template(TPM2B_PUBLIC *t)
{
    rsa_storage_template(t, TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT);
}

/* ---- connection ------------------------------------------------------------------------ */

static void link_free(tpm_link *link)
{
    if (link == NULL)
        return;
    provhsm_tpm_disconnect(link->tpm); /* releases the ESYS_TRs with the context */
    free(link->ek_pub);
    free(link->srk_pub);
    free(link);
}

/*
 * Creates a primary key in `hierarchy` and persists it at `handle`: CreatePrimary,
 * EvictControl, FlushContext. Runs under the TCTI lock; if another user of the TPM
 * persisted one since we looked (EvictControl finds the handle taken), that one is used.
 */
static provhsm_err create_persistent_primary(const tpm_state *st, provhsm_tpm *tpm,
                                             ESYS_TR hierarchy, const TPM2B_PUBLIC *tmpl,
                                             TPM2_HANDLE handle, const char *what, ESYS_TR *tr_out,
                                             TPM2B_PUBLIC **pub_out)
{
    provhsm_err err = PROVHSM_OK;
    ESYS_TR transient = ESYS_TR_NONE, persistent = ESYS_TR_NONE;
    TPM2B_PUBLIC *pub = NULL;

    pthread_mutex_lock(st->lock);
    PH_INFO(MOD, "no %s at 0x%08x: creating one", what, (unsigned)handle);
    err = use_auth(st, tpm, hierarchy);
    if (err == PROVHSM_OK)
        err = use_auth(st, tpm, ESYS_TR_RH_OWNER);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_create_primary(tpm, hierarchy, tmpl, &transient, &pub);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_persist(tpm, transient, handle, &persistent);
    if (err == PROVHSM_E_EXISTS) {
        PH_INFO(MOD, "another user of the TPM made the %s at 0x%08x meanwhile: using it", what,
                (unsigned)handle);
        Esys_Free(pub);
        pub = NULL;
        err = provhsm_tpm_read_public(tpm, handle, &persistent, &pub);
    } else if (err == PROVHSM_OK) {
        PH_INFO(MOD, "created the %s and made it persistent at 0x%08x", what, (unsigned)handle);
    }

    provhsm_tpm_flush(tpm, &transient);
    drop_auth(tpm);
    pthread_mutex_unlock(st->lock);
    if (err == PROVHSM_OK) {
        *tr_out = persistent;
        *pub_out = pub;
    } else {
        provhsm_tpm_forget(tpm, &persistent);
        Esys_Free(pub);
    }
    return err;
}

provhsm_err provhsm_tpm_create_srk(const provhsm_config *cfg, provhsm_tpm *tpm)
{
    tpm_state st = {
        .cfg = (provhsm_config *)cfg, .lock = provhsm_tpm_lock_for(cfg->tcti), .link = NULL};
    ESYS_TR srk = ESYS_TR_NONE;
    TPM2B_PUBLIC tmpl, *pub = NULL;

    if (st.lock == NULL)
        return PROVHSM_E_NOMEM;
    srk_template(&tmpl);
    provhsm_err err = create_persistent_primary(&st, tpm, ESYS_TR_RH_OWNER, &tmpl, cfg->srk_handle,
                                                "storage root key", &srk, &pub);
    Esys_Free(pub);
    provhsm_tpm_forget(tpm, &srk);
    return err;
}

/*
 * The key at `handle` (`present`: GetCapability listed it), created from `tmpl` when
 * absent; its public area marshaled. One ReadPublic when present, no probe when absent.
 */
static provhsm_err ensure_key(const tpm_state *st, provhsm_tpm *tpm, ESYS_TR hierarchy,
                              const TPM2B_PUBLIC *tmpl, TPM2_HANDLE handle, int present,
                              const char *what, ESYS_TR *tr_out, uint8_t **pub_out,
                              size_t *pub_len_out)
{
    ESYS_TR tr = ESYS_TR_NONE;
    TPM2B_PUBLIC *pub = NULL;
    provhsm_err err = PROVHSM_E_NOT_FOUND;
    if (present)
        err = provhsm_tpm_read_public(tpm, handle, &tr, &pub); /* NOT_FOUND: evicted since */
    if (err == PROVHSM_E_NOT_FOUND)
        err = create_persistent_primary(st, tpm, hierarchy, tmpl, handle, what, &tr, &pub);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_marshal_public(pub, pub_out, pub_len_out);
    Esys_Free(pub);
    if (err != PROVHSM_OK) {
        provhsm_tpm_forget(tpm, &tr);
        return err;
    }
    *tr_out = tr;
    return PROVHSM_OK;
}

/*
 * Connects, learns which of EK, SRK and identity key exist from one GetCapability (no
 * command that fails for an absent key, so tpm2-tss prints nothing), reads the EK and
 * SRK or makes them, and addresses the identity key if there is one.
 */
static provhsm_err link_open(const tpm_state *st, tpm_link **out)
{
    provhsm_err err = PROVHSM_OK;
    TPM2B_PUBLIC tmpl;
    const TPM2_HANDLE handles[3] = {st->cfg->ek_handle, st->cfg->srk_handle,
                                    st->cfg->identity_handle};
    int present[3] = {0, 0, 0};
    tpm_link *link = calloc(1, sizeof(*link));

    if (link == NULL)
        return PROVHSM_E_NOMEM;
    link->ek = link->srk = link->identity = ESYS_TR_NONE;
    err = provhsm_tpm_connect(st->cfg->tcti, &link->tpm);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_persistent_present(link->tpm, handles, 3, present);
    if (err != PROVHSM_OK)
        goto cleanup;

    ek_template(&tmpl);
    err = ensure_key(st, link->tpm, ESYS_TR_RH_ENDORSEMENT, &tmpl, handles[0], present[0],
                     "endorsement key", &link->ek, &link->ek_pub, &link->ek_pub_len);
    if (err != PROVHSM_OK)
        goto cleanup;
    srk_template(&tmpl);
    err = ensure_key(st, link->tpm, ESYS_TR_RH_OWNER, &tmpl, handles[1], present[1],
                     "storage root key", &link->srk, &link->srk_pub, &link->srk_pub_len);
    if (err != PROVHSM_OK)
        goto cleanup;
    if (present[2])
        err = provhsm_tpm_persistent_handle(link->tpm, handles[2], &link->identity);
    else
        PH_DEBUG(MOD, "no identity key at 0x%08x yet", (unsigned)handles[2]);
    if (err != PROVHSM_OK)
        goto cleanup;
    *out = link;
    link = NULL;

cleanup:
    link_free(link);
    return err;
}

/* After a lost connection: a fresh connection and fresh handles, or an error. */
static provhsm_err ensure_connected(tpm_state *st)
{
    tpm_link *fresh = NULL;
    if (!provhsm_tpm_lost(st->link->tpm))
        return PROVHSM_OK;
    PH_INFO(MOD, "reconnecting to the TPM through \"%s\"", st->cfg->tcti);
    provhsm_err err = link_open(st, &fresh);
    if (err != PROVHSM_OK)
        return err;
    link_free(st->link);
    st->link = fresh;
    return PROVHSM_OK;
}

/* ---- the backend slots ---------------------------------------------------------------- */

static void tpm_close(void *p)
{
    tpm_state *st = p;
    if (st == NULL)
        return;
    link_free(st->link);
    free(st->cfg);
    free(st);
}

static provhsm_err tpm_open(const provhsm_config *cfg, provhsm_kind kind, void **state)
{
    provhsm_err err = PROVHSM_OK;
    tpm_state *st = NULL;

    if (cfg == NULL || state == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (kind != PROVHSM_KIND_TPM) {
        PH_ERR(MOD, "the tpm backend serves only TPM attestation");
        return PROVHSM_E_UNSUPPORTED;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL || (st->cfg = malloc(sizeof(*st->cfg))) == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    memcpy(st->cfg, cfg, sizeof(*cfg));
    st->lock = provhsm_tpm_lock_for(cfg->tcti);
    if (st->lock == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    err = link_open(st, &st->link); /* logs why it failed */
    if (err != PROVHSM_OK)
        goto cleanup;
    *state = st;
    st = NULL;

cleanup:
    tpm_close(st);
    return err;
}

static provhsm_err copy_bytes(const uint8_t *src, size_t len, uint8_t **out, size_t *len_out)
{
    if (out == NULL || len_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    uint8_t *copy = malloc(len);
    if (copy == NULL)
        return PROVHSM_E_NOMEM;
    memcpy(copy, src, len);
    *out = copy;
    *len_out = len;
    return PROVHSM_OK;
}

static provhsm_err tpm_endorsement_key(void *p, uint8_t **out, size_t *len_out)
{
    tpm_state *st = p;
    if (st == NULL)
        return PROVHSM_E_INVALID_ARG;
    return copy_bytes(st->link->ek_pub, st->link->ek_pub_len, out, len_out);
}

static provhsm_err tpm_storage_root_key(void *p, uint8_t **out, size_t *len_out)
{
    tpm_state *st = p;
    if (st == NULL)
        return PROVHSM_E_INVALID_ARG;
    return copy_bytes(st->link->srk_pub, st->link->srk_pub_len, out, len_out);
}

/*
 * Before a working key is evicted, the new one must have signed: a key the blob parser
 * accepts can still be unusable (an authorisation value we do not know, an attribute the
 * TPM reads differently), and evicting first would leave the device with no key at all.
 */
static provhsm_err check_new_key_signs(provhsm_tpm *tpm, ESYS_TR loaded)
{
    static const uint8_t probe[] = "provhsm identity key check";
    uint8_t *mac = NULL;
    size_t mac_len = 0;
    provhsm_err err =
        provhsm_tpm_hmac_sha256(tpm, loaded, probe, sizeof(probe) - 1, &mac, &mac_len);
    free(mac);
    if (err != PROVHSM_OK) {
        PH_ERR(MOD, "activation: the new identity key cannot sign; the previous one stays");
        return err == PROVHSM_E_NOT_FOUND ? PROVHSM_E_TPM : err;
    }
    return PROVHSM_OK;
}

/*
 * EvictControl of the new key, once more after a TPM warning (NV rate limit, memory):
 * by now the old key is gone, so giving up at the first transient refusal would leave
 * the device without an identity key.
 */
static provhsm_err persist_identity(provhsm_tpm *tpm, ESYS_TR loaded, TPM2_HANDLE handle,
                                    ESYS_TR *persistent_out)
{
    static const struct timespec pause = {.tv_sec = 0, .tv_nsec = 100 * 1000000L};
    provhsm_err err = provhsm_tpm_persist(tpm, loaded, handle, persistent_out);
    if (err == PROVHSM_E_TPM && provhsm_tpm_last_failure_transient(tpm)) {
        PH_WARN(MOD, "persisting the identity key at 0x%08x: the TPM is busy; trying once more",
                (unsigned)handle);
        nanosleep(&pause, NULL);
        err = provhsm_tpm_persist(tpm, loaded, handle, persistent_out);
    }
    return err;
}

/*
 * Replaces the persistent identity key with the transient `loaded` one. A TPM cannot
 * overwrite a persistent handle, so the old key is evicted first; the new one was loaded
 * and has signed before that, so a blob the TPM refuses, or a key that cannot sign,
 * never costs the old key. With no old key there is nothing to protect and no trial.
 */
static provhsm_err replace_identity(tpm_state *st, ESYS_TR loaded)
{
    tpm_link *link = st->link;
    TPM2_HANDLE handle = st->cfg->identity_handle;
    ESYS_TR fresh = ESYS_TR_NONE;
    provhsm_err err = PROVHSM_OK;
    int tried = 0;

    if (link->identity != ESYS_TR_NONE) {
        err = check_new_key_signs(link->tpm, loaded);
        tried = 1;
        if (err == PROVHSM_OK)
            err = provhsm_tpm_evict(link->tpm, &link->identity);
        if (err == PROVHSM_E_NOT_FOUND)
            err = PROVHSM_OK; /* someone else removed it */
        if (err != PROVHSM_OK)
            return err;
    }
    err = persist_identity(link->tpm, loaded, handle, &fresh);
    if (err == PROVHSM_E_EXISTS) {
        /* another state or process put a key there since we looked */
        err = tried ? PROVHSM_OK : check_new_key_signs(link->tpm, loaded);
        if (err == PROVHSM_OK)
            err = provhsm_tpm_find_persistent(link->tpm, handle, &link->identity);
        if (err == PROVHSM_OK)
            err = provhsm_tpm_evict(link->tpm, &link->identity);
        if (err == PROVHSM_OK)
            err = persist_identity(link->tpm, loaded, handle, &fresh);
    }
    if (err != PROVHSM_OK) {
        PH_ERR(MOD, "cannot make the identity key persistent at 0x%08x", (unsigned)handle);
        return err;
    }
    link->identity = fresh;
    return PROVHSM_OK;
}

static provhsm_err tpm_activate(void *p, const uint8_t *blob_bytes, size_t len)
{
    static const TPMT_SYM_DEF_OBJECT aes128cfb = {
        .algorithm = TPM2_ALG_AES, .keyBits.aes = 128, .mode.aes = TPM2_ALG_CFB};
    tpm_state *st = p;
    provhsm_err err = PROVHSM_OK;
    provhsm_activation_blob *blob = NULL;
    ESYS_TR session = ESYS_TR_NONE, loaded = ESYS_TR_NONE;
    TPM2B_DIGEST *cred = NULL;
    TPM2B_DATA *wrap_key = NULL;
    TPM2B_PRIVATE *priv = NULL;
    int locked = 0;

    if (st == NULL || blob_bytes == NULL)
        return PROVHSM_E_INVALID_ARG;
    blob = malloc(sizeof(*blob));
    if (blob == NULL)
        return PROVHSM_E_NOMEM;
    /* a malformed blob is refused here, before any TPM command */
    err = provhsm_tpm_blob_parse(blob_bytes, len, blob);
    if (err != PROVHSM_OK)
        goto cleanup;
    err = ensure_connected(st);
    if (err != PROVHSM_OK)
        goto cleanup;
    provhsm_tpm *tpm = st->link->tpm;

    pthread_mutex_lock(st->lock);
    locked = 1;
    err = use_auth(st, tpm, ESYS_TR_RH_ENDORSEMENT);
    if (err != PROVHSM_OK)
        goto cleanup;
    err = provhsm_tpm_ek_policy_session(tpm, &session);
    if (err != PROVHSM_OK)
        goto cleanup;
    err = provhsm_tpm_activate_credential(tpm, st->link->srk, st->link->ek, &session,
                                          &blob->credential_blob, &blob->secret, &cred);
    if (err != PROVHSM_OK)
        goto cleanup;

    /* the credential is the inner wrapper key of the duplicate */
    wrap_key = provhsm_secure_alloc(sizeof(*wrap_key));
    if (wrap_key == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    if (cred->size == 0 || cred->size > sizeof(wrap_key->buffer)) {
        PH_ERR(MOD, "activation: the credential has %u bytes", (unsigned)cred->size);
        err = PROVHSM_E_CORRUPT;
        goto cleanup;
    }
    wrap_key->size = cred->size;
    memcpy(wrap_key->buffer, cred->buffer, cred->size);
    provhsm_secure_free(cred); /* one copy of the key, in the type Import takes */
    cred = NULL;

    err = provhsm_tpm_import(tpm, st->link->srk, wrap_key, &blob->object_public, &blob->duplicate,
                             &blob->in_sym_seed, &aes128cfb, &priv);
    if (err != PROVHSM_OK)
        goto cleanup;
    err = provhsm_tpm_load(tpm, st->link->srk, priv, &blob->object_public, &loaded);
    if (err != PROVHSM_OK)
        goto cleanup;
    err = use_auth(st, tpm, ESYS_TR_RH_OWNER);
    if (err != PROVHSM_OK)
        goto cleanup;
    err = replace_identity(st, loaded);
    if (err != PROVHSM_OK)
        goto cleanup;
    PH_INFO(MOD, "identity key activated at 0x%08x", (unsigned)st->cfg->identity_handle);

cleanup:
    if (locked) {
        /* the link may have been lost on the way, but it is still the same link */
        provhsm_tpm_flush(st->link->tpm, &loaded);
        provhsm_tpm_flush(st->link->tpm, &session);
        drop_auth(st->link->tpm);
        pthread_mutex_unlock(st->lock);
    }
    provhsm_secure_free(cred);
    provhsm_secure_free(wrap_key);
    Esys_Free(priv);
    free(blob);
    return err;
}

static provhsm_err tpm_sign(void *p, const uint8_t *data, size_t len, uint8_t **sig_out,
                            size_t *sig_len_out)
{
    tpm_state *st = p;
    provhsm_err err = PROVHSM_OK;
    int locked = 0;

    if (st == NULL || (data == NULL && len > 0) || sig_out == NULL || sig_len_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    err = ensure_connected(st);
    if (err != PROVHSM_OK)
        return err;
    tpm_link *link = st->link;

    if (link->identity == ESYS_TR_NONE) {
        /* another handle may have activated one since this state was opened */
        err = provhsm_tpm_find_persistent(link->tpm, st->cfg->identity_handle, &link->identity);
        if (err == PROVHSM_E_NOT_FOUND) {
            link->identity = ESYS_TR_NONE;
            PH_ERR(MOD, "no identity key at 0x%08x; activate first",
                   (unsigned)st->cfg->identity_handle);
        }
        if (err != PROVHSM_OK)
            return err;
    }
    /* an HMAC sequence holds a transient object across commands */
    if (len > sizeof(((TPM2B_MAX_BUFFER *)0)->buffer)) {
        pthread_mutex_lock(st->lock);
        locked = 1;
    }
    err = provhsm_tpm_hmac_sha256(link->tpm, link->identity, data, len, sig_out, sig_len_out);
    if (locked)
        pthread_mutex_unlock(st->lock);
    if (err == PROVHSM_E_NOT_FOUND) {
        provhsm_tpm_forget(link->tpm, &link->identity);
        PH_ERR(MOD, "no identity key at 0x%08x; activate first",
               (unsigned)st->cfg->identity_handle);
    }
    return err;
}

/* ---- the admin call ---------------------------------------------------------------------- */

provhsm_err provhsm_tpm_clear_identity(void)
{
    provhsm_err err = PROVHSM_OK;
    tpm_state st = {0};
    provhsm_tpm *tpm = NULL;
    ESYS_TR identity = ESYS_TR_NONE;
    int locked = 0;

    st.cfg = malloc(sizeof(*st.cfg));
    if (st.cfg == NULL)
        return PROVHSM_E_NOMEM;
    err = provhsm_front_config(st.cfg);
    if (err != PROVHSM_OK)
        goto cleanup;
    st.lock = provhsm_tpm_lock_for(st.cfg->tcti);
    if (st.lock == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    err = provhsm_tpm_connect(st.cfg->tcti, &tpm);
    if (err != PROVHSM_OK)
        goto cleanup;
    pthread_mutex_lock(st.lock);
    locked = 1;
    err = provhsm_tpm_find_persistent(tpm, st.cfg->identity_handle, &identity);
    if (err == PROVHSM_E_NOT_FOUND)
        PH_INFO(MOD, "no identity key at 0x%08x to clear", (unsigned)st.cfg->identity_handle);
    if (err == PROVHSM_OK)
        err = use_auth(&st, tpm, ESYS_TR_RH_OWNER);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_evict(tpm, &identity);
    if (err == PROVHSM_OK)
        PH_INFO(MOD, "identity key at 0x%08x evicted", (unsigned)st.cfg->identity_handle);

cleanup:
    if (tpm != NULL)
        drop_auth(tpm);
    if (locked)
        pthread_mutex_unlock(st.lock);
    provhsm_tpm_disconnect(tpm);
    free(st.cfg);
    return err;
}

const provhsm_backend provhsm_backend_tpm = {
    .name = "tpm",
    .caps = PROVHSM_CAP_TPM,
    .open = tpm_open,
    .close = tpm_close,
    .tpm_endorsement_key = tpm_endorsement_key,
    .tpm_storage_root_key = tpm_storage_root_key,
    .tpm_activate = tpm_activate,
    .tpm_sign = tpm_sign,
};
