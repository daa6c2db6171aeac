/*
 * The TPM 2.0 backend: the SDK's TPM table (endorsement key, storage root key, identity
 * key activation, HMAC signing) and X.509 device keys (an EC key that never leaves the
 * TPM: key_generate, key_adopt, key_open, key_sign, ...; the X.509 table itself is served
 * from the store, x509_stored.h) on a TPM reached through tpm2-tss. Every TPM command
 * goes through tpm_esys.c; this file holds what the commands mean: the key templates, the
 * well-known handles, the activation sequence and its cleanup. Called by the front
 * (hsm_front.c) through provhsm_backend_tpm, by hwkey.c (the OpenSSL provider's keys) and
 * the admin API through the key_* slots, and by provhsm_tpm_clear_identity().
 *
 * One TPM table state per SDK handle. open() learns which of EK, SRK and identity key
 * exist from one GetCapability and reads the EK and SRK (ReadPublic): three commands on a
 * provisioned TPM, none of them failing for an absent key. It keeps the EK and SRK public
 * areas: the get_* calls send nothing and a signature is one TPM2_HMAC. A missing EK or
 * SRK is created from the templates below and persisted. An X.509 key signs with one
 * TPM2_Sign on its persistent handle.
 *
 * Static state: one site per TCTI string, never freed: a mutex and the one connection
 * (TCTI and ESAPI context) that every state, open key and admin call of the process, and
 * the store's sealed key (provhsm_tpm_enter), uses for that TPM, opened with the first
 * user and closed with the last. swtpm, the reference
 * simulator and a bare /dev/tpm0 serve one client at a time, and a TPM without a resource
 * manager has room for only a few transient objects and sessions, so every TPM command of
 * this backend runs under the site's mutex (and everything that holds a transient object
 * or a session across commands finishes before releasing it). If the connection is lost,
 * the next call of any user reconnects, and each user rebuilds its ESYS handles.
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
#include <openssl/rand.h>

#include "backend.h"
#include "front.h"
#include "log.h"
#include "safefile.h"
#include "secmem.h"
#include "tpm_blob.h"
#include "tpm_esys.h"
#include "x509_stored.h"

#define MOD "tpm"

#define AUTH_FILE_MAX 512 /* bytes read from an authorisation file */

/* The TCG EK Credential Profile's policy: PolicySecret(TPM_RH_ENDORSEMENT). */
static const uint8_t ek_policy[32] = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa};

/*
 * What a state knows of the TPM on one connection: replaced as a whole after a reconnect.
 * The connection is the site's shared one (not owned); the ESYS handles are valid while
 * the site's connection is still number `generation`.
 */
typedef struct tpm_link {
    provhsm_tpm *tpm;
    uint64_t generation;
    ESYS_TR ek, srk, identity; /* identity: ESYS_TR_NONE while there is none */
    uint8_t *ek_pub, *srk_pub; /* marshaled TPM2B_PUBLIC, malloc */
    size_t ek_pub_len, srk_pub_len;
} tpm_link;

struct tcti_site;

typedef struct tpm_state {
    void *x509;             /* an X.509 handle's state (x509_stored.h); then nothing below */
    provhsm_config *cfg;    /* a copy: tcti, handles, where the authorisations are */
    pthread_mutex_t *lock;  /* the one for cfg->tcti (the site's) */
    struct tcti_site *site; /* its shared connection; NULL outside a TPM handle's state */
    tpm_link *link;
} tpm_state;

/* ---- one site per TCTI: its lock and the one connection the process uses ------------ */

/*
 * Everything the process knows about the TPM behind one TCTI string. `shared` is the one
 * connection of the TPM table's states, the X.509 device keys and the admin calls on them:
 * swtpm, the reference simulator and a bare /dev/tpm0 serve one client at a time, and
 * without a resource manager a TPM has room for three transient objects. It and
 * `generation` are used only under `mutex`, so every TPM command of the backend runs
 * under it.
 */
typedef struct tcti_site {
    struct tcti_site *next;
    pthread_mutex_t mutex;
    char tcti[sizeof(((provhsm_config *)0)->tcti)];
    provhsm_tpm *shared; /* NULL while no state or key is open and no admin call runs */
    uint64_t generation; /* counts the shared connections made: ESYS_TRs of older ones are void */
    unsigned users;      /* open TPM states and X.509 keys */
} tcti_site;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static tcti_site *registry;

static tcti_site *site_for(const char *tcti)
{
    tcti_site *found = NULL;
    pthread_mutex_lock(&registry_lock);
    for (tcti_site *l = registry; l != NULL && found == NULL; l = l->next)
        if (strcmp(l->tcti, tcti) == 0)
            found = l;
    if (found == NULL) {
        tcti_site *l = calloc(1, sizeof(*l));
        if (l != NULL && pthread_mutex_init(&l->mutex, NULL) == 0) {
            snprintf(l->tcti, sizeof(l->tcti), "%s", tcti);
            l->next = registry;
            registry = l;
            found = l;
        } else {
            free(l);
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return found;
}

/* The site's shared connection; a new one when there is none or it was lost. Under the lock. */
static provhsm_err site_connect(tcti_site *site, provhsm_tpm **tpm_out)
{
    if (site->shared != NULL && !provhsm_tpm_lost(site->shared)) {
        *tpm_out = site->shared;
        return PROVHSM_OK;
    }
    if (site->shared != NULL)
        PH_INFO(MOD, "reconnecting to the TPM through \"%s\"", site->tcti);
    provhsm_tpm_disconnect(site->shared);
    site->shared = NULL;
    provhsm_tpm *fresh = NULL;
    provhsm_err err = provhsm_tpm_connect(site->tcti, &fresh); /* logs why */
    if (err != PROVHSM_OK)
        return err;
    site->shared = fresh;
    site->generation++;
    *tpm_out = fresh;
    return PROVHSM_OK;
}

/* Lets the device go once no state or key uses it (an admin call's connection). Under the lock. */
static void site_idle(tcti_site *site)
{
    if (site->users > 0)
        return;
    provhsm_tpm_disconnect(site->shared);
    site->shared = NULL;
}

/* The site for cfg->tcti, locked and connected; on failure nothing is held. */
static provhsm_err site_enter(const provhsm_config *cfg, tcti_site **site_out, provhsm_tpm **tpm)
{
    tcti_site *site = site_for(cfg->tcti);
    if (site == NULL)
        return PROVHSM_E_NOMEM;
    pthread_mutex_lock(&site->mutex);
    provhsm_err err = site_connect(site, tpm);
    if (err != PROVHSM_OK) {
        site_idle(site);
        pthread_mutex_unlock(&site->mutex);
        return err;
    }
    *site_out = site;
    return PROVHSM_OK;
}

static void site_leave(tcti_site *site)
{
    site_idle(site);
    pthread_mutex_unlock(&site->mutex);
}

/* The store's sealed key uses the same connection, so a one-client TPM serves both. */
provhsm_err provhsm_tpm_enter(const provhsm_config *cfg, provhsm_tpm_site **site, provhsm_tpm **tpm)
{
    if (cfg == NULL || site == NULL || tpm == NULL)
        return PROVHSM_E_INVALID_ARG;
    return site_enter(cfg, site, tpm);
}

void provhsm_tpm_leave(provhsm_tpm_site *site)
{
    if (site != NULL)
        site_leave(site);
}

void provhsm_tpm_leave_releasing(provhsm_tpm_site *site, ESYS_TR *object)
{
    if (site == NULL)
        return;
    if (site->users == 0 && provhsm_tcti_releases_on_close(site->tcti))
        provhsm_tpm_forget(site->shared, object); /* site_leave closes the connection */
    else
        provhsm_tpm_flush(site->shared, object);
    site_leave(site);
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
static provhsm_err use_auth(const provhsm_config *cfg, provhsm_tpm *tpm, ESYS_TR hierarchy)
{
    TPM2B_AUTH *auth = NULL;
    int owner = hierarchy == ESYS_TR_RH_OWNER;
    provhsm_err err = load_auth(owner ? cfg->owner_auth_file : cfg->endorsement_auth_file,
                                owner ? cfg->owner_auth_env : cfg->endorsement_auth_env,
                                owner ? "owner" : "endorsement", &auth);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_set_hierarchy_auth(tpm, hierarchy, auth);
    provhsm_secure_free(auth);
    return err;
}

provhsm_err provhsm_tpm_use_owner_auth(const provhsm_config *cfg, provhsm_tpm *tpm)
{
    return use_auth(cfg, tpm, ESYS_TR_RH_OWNER);
}

void provhsm_tpm_drop_owner_auth(provhsm_tpm *tpm)
{
    if (tpm != NULL && provhsm_tpm_set_hierarchy_auth(tpm, ESYS_TR_RH_OWNER, NULL) != PROVHSM_OK)
        PH_WARN(MOD, "could not clear the owner authorisation inside ESAPI");
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

/* Frees a link; its ESYS handles are released when its connection is still the site's. */
static void link_free(tpm_link *link, const tcti_site *site)
{
    if (link == NULL)
        return;
    if (site != NULL && site->shared == link->tpm && site->generation == link->generation) {
        provhsm_tpm_forget(link->tpm, &link->ek);
        provhsm_tpm_forget(link->tpm, &link->srk);
        provhsm_tpm_forget(link->tpm, &link->identity);
    }
    free(link->ek_pub);
    free(link->srk_pub);
    free(link);
}

/*
 * Creates a primary key in `hierarchy` and persists it at `handle`: CreatePrimary,
 * EvictControl, FlushContext. The caller holds the TCTI lock; if another user of the TPM
 * persisted one since we looked (EvictControl finds the handle taken), that one is used.
 */
static provhsm_err persistent_primary_locked(const provhsm_config *cfg, provhsm_tpm *tpm,
                                             ESYS_TR hierarchy, const TPM2B_PUBLIC *tmpl,
                                             TPM2_HANDLE handle, const char *what, ESYS_TR *tr_out,
                                             TPM2B_PUBLIC **pub_out)
{
    provhsm_err err = PROVHSM_OK;
    ESYS_TR transient = ESYS_TR_NONE, persistent = ESYS_TR_NONE;
    TPM2B_PUBLIC *pub = NULL;

    PH_INFO(MOD, "no %s at 0x%08x: creating one", what, (unsigned)handle);
    err = use_auth(cfg, tpm, hierarchy);
    if (err == PROVHSM_OK)
        err = use_auth(cfg, tpm, ESYS_TR_RH_OWNER);
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
    if (err == PROVHSM_OK) {
        *tr_out = persistent;
        *pub_out = pub;
    } else {
        provhsm_tpm_forget(tpm, &persistent);
        Esys_Free(pub);
    }
    return err;
}

/* The SRK made and persisted at [tpm] srk_handle, the caller holding the site. */
static provhsm_err make_srk(const provhsm_config *cfg, provhsm_tpm *tpm, ESYS_TR *srk_out)
{
    TPM2B_PUBLIC tmpl, *pub = NULL;
    srk_template(&tmpl);
    provhsm_err err = persistent_primary_locked(cfg, tpm, ESYS_TR_RH_OWNER, &tmpl, cfg->srk_handle,
                                                "storage root key", srk_out, &pub);
    Esys_Free(pub);
    return err;
}

provhsm_err provhsm_tpm_create_srk(const provhsm_config *cfg, provhsm_tpm *tpm)
{
    /* the caller entered the site (provhsm_tpm_enter): its lock is held already */
    ESYS_TR srk = ESYS_TR_NONE;
    provhsm_err err = make_srk(cfg, tpm, &srk);
    provhsm_tpm_forget(tpm, &srk);
    return err;
}

/*
 * The key at `handle` (`present`: GetCapability listed it), created from `tmpl` when
 * absent; its public area marshaled. One ReadPublic when present, no probe when absent.
 */
static provhsm_err ensure_key(const provhsm_config *cfg, provhsm_tpm *tpm, ESYS_TR hierarchy,
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
        err = persistent_primary_locked(cfg, tpm, hierarchy, tmpl, handle, what, &tr, &pub);
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
 * On the site's connection (the caller holds the site): learns which of EK, SRK and
 * identity key exist from one GetCapability (no command that fails for an absent key, so
 * tpm2-tss prints nothing), reads the EK and SRK or makes them, and addresses the
 * identity key if there is one.
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
    err = site_connect(st->site, &link->tpm);
    link->generation = st->site->generation;
    if (err == PROVHSM_OK)
        err = provhsm_tpm_persistent_present(link->tpm, handles, 3, present);
    if (err != PROVHSM_OK)
        goto cleanup;

    ek_template(&tmpl);
    err = ensure_key(st->cfg, link->tpm, ESYS_TR_RH_ENDORSEMENT, &tmpl, handles[0], present[0],
                     "endorsement key", &link->ek, &link->ek_pub, &link->ek_pub_len);
    if (err != PROVHSM_OK)
        goto cleanup;
    srk_template(&tmpl);
    err = ensure_key(st->cfg, link->tpm, ESYS_TR_RH_OWNER, &tmpl, handles[1], present[1],
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
    link_free(link, st->site);
    return err;
}

/*
 * Under the site's lock: the state's link on the site's current connection. After a lost
 * connection (here or by another user of the site) the site reconnects and the link is
 * made again; on failure the old one stays, so the cached EK and SRK are still served.
 */
static provhsm_err ensure_connected(tpm_state *st)
{
    provhsm_tpm *tpm = NULL;
    tpm_link *fresh = NULL;
    provhsm_err err = site_connect(st->site, &tpm);
    if (err != PROVHSM_OK)
        return err;
    if (st->link->tpm == tpm && st->link->generation == st->site->generation)
        return PROVHSM_OK;
    err = link_open(st, &fresh);
    if (err != PROVHSM_OK)
        return err;
    link_free(st->link, st->site);
    st->link = fresh;
    return PROVHSM_OK;
}

/* ---- the backend slots ---------------------------------------------------------------- */

static void tpm_close(void *p)
{
    tpm_state *st = p;
    if (st == NULL)
        return;
    provhsm_x509_stored_close(st->x509);
    if (st->link != NULL) {
        pthread_mutex_lock(&st->site->mutex);
        link_free(st->link, st->site);
        st->site->users--;
        site_leave(st->site);
    }
    free(st->cfg);
    free(st);
}

/*
 * X.509 handles: the chain and the key reference come from the store as for a software
 * identity (x509_stored.h); the key itself is opened when the SDK's TLS layer decodes the
 * reference (hwkey.c, the provider), so this sends no TPM command.
 */
static provhsm_err open_x509(const provhsm_config *cfg, void **state)
{
    tpm_state *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return PROVHSM_E_NOMEM;
    provhsm_err err = provhsm_x509_stored_open(cfg, &st->x509); /* logs why */
    if (err != PROVHSM_OK) {
        free(st);
        return err;
    }
    *state = st;
    return PROVHSM_OK;
}

static provhsm_err tpm_x509_certificate(void *p, char **pem_out)
{
    tpm_state *st = p;
    return st != NULL ? provhsm_x509_stored_certificate(st->x509, pem_out) : PROVHSM_E_INVALID_ARG;
}

static provhsm_err tpm_x509_alias_key(void *p, char **pem_out)
{
    tpm_state *st = p;
    return st != NULL ? provhsm_x509_stored_alias_key(st->x509, pem_out) : PROVHSM_E_INVALID_ARG;
}

static provhsm_err tpm_x509_common_name(void *p, char **cn_out)
{
    tpm_state *st = p;
    return st != NULL ? provhsm_x509_stored_common_name(st->x509, cn_out) : PROVHSM_E_INVALID_ARG;
}

static provhsm_err tpm_open(const provhsm_config *cfg, provhsm_kind kind, void **state)
{
    provhsm_err err = PROVHSM_OK;
    tpm_state *st = NULL;

    if (cfg == NULL || state == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (kind == PROVHSM_KIND_X509)
        return open_x509(cfg, state);
    if (kind != PROVHSM_KIND_TPM) {
        PH_ERR(MOD, "the tpm backend serves TPM and X.509 attestation only");
        return PROVHSM_E_UNSUPPORTED;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL || (st->cfg = malloc(sizeof(*st->cfg))) == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    memcpy(st->cfg, cfg, sizeof(*cfg));
    st->site = site_for(cfg->tcti);
    if (st->site == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    st->lock = &st->site->mutex;
    pthread_mutex_lock(st->lock);
    err = link_open(st, &st->link); /* logs why it failed */
    if (err == PROVHSM_OK)
        st->site->users++;
    site_leave(st->site);
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
    provhsm_tpm *tpm = NULL; /* set once the link is on a live connection */
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
    pthread_mutex_lock(st->lock);
    locked = 1;
    err = ensure_connected(st);
    if (err != PROVHSM_OK)
        goto cleanup;
    tpm = st->link->tpm;

    err = use_auth(st->cfg, tpm, ESYS_TR_RH_ENDORSEMENT);
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
    err = use_auth(st->cfg, tpm, ESYS_TR_RH_OWNER);
    if (err != PROVHSM_OK)
        goto cleanup;
    err = replace_identity(st, loaded);
    if (err != PROVHSM_OK)
        goto cleanup;
    PH_INFO(MOD, "identity key activated at 0x%08x", (unsigned)st->cfg->identity_handle);

cleanup:
    if (tpm != NULL) {
        /* the connection may have been lost on the way, but it is still allocated */
        provhsm_tpm_flush(tpm, &loaded);
        provhsm_tpm_flush(tpm, &session);
        drop_auth(tpm);
    }
    if (locked)
        pthread_mutex_unlock(st->lock);
    provhsm_secure_free(cred);
    provhsm_secure_free(wrap_key);
    Esys_Free(priv);
    free(blob);
    return err;
}

/* The identity key's HMAC under the site's lock: one TPM2_HMAC in the steady state. */
static provhsm_err hmac_locked(tpm_state *st, const uint8_t *data, size_t len, uint8_t **sig_out,
                               size_t *sig_len_out)
{
    provhsm_err err = ensure_connected(st);
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
    err = provhsm_tpm_hmac_sha256(link->tpm, link->identity, data, len, sig_out, sig_len_out);
    if (err == PROVHSM_E_NOT_FOUND) {
        provhsm_tpm_forget(link->tpm, &link->identity);
        PH_ERR(MOD, "no identity key at 0x%08x; activate first",
               (unsigned)st->cfg->identity_handle);
    }
    return err;
}

static provhsm_err tpm_sign(void *p, const uint8_t *data, size_t len, uint8_t **sig_out,
                            size_t *sig_len_out)
{
    tpm_state *st = p;

    if (st == NULL || (data == NULL && len > 0) || sig_out == NULL || sig_len_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    /* the connection is the site's: one thread at a time on it */
    pthread_mutex_lock(st->lock);
    provhsm_err err = hmac_locked(st, data, len, sig_out, sig_len_out);
    pthread_mutex_unlock(st->lock);
    return err;
}

/* ---- X.509 device keys -------------------------------------------------------------------- */

/*
 * A key made by key_generate (or adopted) sits at a persistent handle, so signing is one
 * TPM2_Sign with a password session: no parent to load, no transient object, no session
 * to start. Every open key of a TCTI signs on the site's one shared connection, under its
 * mutex; a key keeps its public area so that, after a reconnect, its ESYS handle is
 * rebuilt without a command.
 *
 * The key's secret (backend.h) is its authorisation value as text, read by
 * provhsm_tpm_auth_parse() the way tpm2-tools reads one: "hex:" and 64 hex digits for the
 * 32 random bytes key_generate makes; a tool's password as it was typed; NULL or "" for
 * the empty value (an adopted key made without one).
 */
#define X509_AUTH_BYTES 32
#define LOCATOR_LEN     11 /* "0x81000110" and the NUL */

typedef struct tpm_x509_key {
    tcti_site *site;
    TPM2_HANDLE handle;
    TPM2B_PUBLIC pub; /* as read at open */
    TPM2B_AUTH *auth; /* secure memory */
    ESYS_TR tr;       /* on the site's shared connection number `generation` */
    uint64_t generation;
} tpm_x509_key;

static const char *const rsa_refusal =
    "RSA keys are refused for X.509 in the TPM: the SDK's TLS layer copies an RSA private key "
    "into a legacy RSA object that holds only the public half of a key kept in hardware, so its "
    "TLS handshakes would fail; use an EC P-256 key";

/* "0x81000110": a persistent handle, as locators and the configuration write them. */
static provhsm_err parse_locator(const char *locator, TPM2_HANDLE *out)
{
    unsigned long value = 0;
    char *end = NULL;
    if (locator == NULL || strncmp(locator, "0x", 2) != 0 || strlen(locator) != LOCATOR_LEN - 1 ||
        strspn(locator + 2, "0123456789abcdefABCDEF") != LOCATOR_LEN - 3) {
        PH_ERR(MOD, "\"%.40s\" is not a TPM persistent handle (0x81xxxxxx)",
               locator != NULL ? locator : "(null)");
        return PROVHSM_E_INVALID_ARG;
    }
    value = strtoul(locator + 2, &end, 16);
    if (value < 0x81000000ul || value > 0x81fffffful) {
        PH_ERR(MOD, "%s is not in the TPM's persistent range (0x81000000-0x81ffffff)", locator);
        return PROVHSM_E_INVALID_ARG;
    }
    *out = (TPM2_HANDLE)value;
    return PROVHSM_OK;
}

/* The X.509 key's handle must be its own: evicting or replacing it must touch nothing else. */
static provhsm_err check_x509_handle(const provhsm_config *cfg)
{
    const struct {
        uint32_t handle;
        const char *name;
    } others[] = {{cfg->ek_handle, "ek_handle"},
                  {cfg->srk_handle, "srk_handle"},
                  {cfg->identity_handle, "identity_handle"},
                  {cfg->sealed_key_handle, "[store] sealed_key_handle"}};
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        if (others[i].handle != 0 && others[i].handle == cfg->x509_key_handle) {
            PH_ERR(MOD,
                   "[tpm] x509_key_handle 0x%08x is also %s: give the X.509 key a handle of "
                   "its own",
                   (unsigned)cfg->x509_key_handle, others[i].name);
            return PROVHSM_E_CONFIG;
        }
    }
    return PROVHSM_OK;
}

/*
 * What provhsm signs with: an EC signing key on P-256 or P-384, not restricted (TPM2_Sign
 * of a restricted key needs a ticket for each digest), usable with its authorisation value
 * (userWithAuth), with no scheme or ECDSA. `what` starts the log line.
 */
static provhsm_err check_signing_key(const TPMT_PUBLIC *p, const char *what)
{
    const char *why = NULL;
    TPMA_OBJECT a = p->objectAttributes;
    if (p->type == TPM2_ALG_RSA) {
        PH_ERR(MOD, "%s: %s", what, rsa_refusal);
        return PROVHSM_E_UNSUPPORTED;
    }
    if (p->type != TPM2_ALG_ECC)
        why = "it is not an EC key";
    else if (provhsm_tpm_ec_half_size(p) == 0)
        why = "its curve is neither P-256 nor P-384";
    else if ((a & TPMA_OBJECT_SIGN_ENCRYPT) == 0)
        why = "it is not a signing key";
    else if ((a & TPMA_OBJECT_RESTRICTED) != 0)
        why = "it is a restricted signing key (it signs only data the TPM made)";
    else if ((a & TPMA_OBJECT_USERWITHAUTH) == 0)
        why = "it signs only under a policy (userWithAuth is clear)";
    else if (p->parameters.eccDetail.scheme.scheme != TPM2_ALG_NULL &&
             p->parameters.eccDetail.scheme.scheme != TPM2_ALG_ECDSA)
        why = "its signing scheme is not ECDSA";
    if (why == NULL)
        return PROVHSM_OK;
    PH_ERR(MOD, "%s: %s", what, why);
    return PROVHSM_E_UNSUPPORTED;
}

static const char *curve_name(const TPMT_PUBLIC *p)
{
    return provhsm_tpm_ec_half_size(p) == 48 ? "P-384" : "P-256";
}

/* The reference for the key at `handle` with public area `pub`. */
static provhsm_err make_ref(TPM2_HANDLE handle, const TPMT_PUBLIC *pub, provhsm_keyref *ref_out)
{
    char locator[LOCATOR_LEN];
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    snprintf(locator, sizeof(locator), "0x%08x", (unsigned)handle);
    provhsm_err err = provhsm_tpm_ec_public_to_spki(pub, &spki, &spki_len);
    if (err == PROVHSM_OK)
        err = provhsm_keyref_make("tpm", locator, spki, spki_len, ref_out);
    free(spki);
    return err;
}

/* 1 when `pub` is the public key `ref` carries. */
static int ref_matches(const provhsm_keyref *ref, const TPMT_PUBLIC *pub)
{
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    int same = provhsm_tpm_ec_public_to_spki(pub, &spki, &spki_len) == PROVHSM_OK &&
               spki_len == ref->spki_len && memcmp(spki, ref->spki, spki_len) == 0;
    free(spki);
    return same;
}

/* The key's secret text: "hex:" and the value's hex digits, in secure memory. */
static provhsm_err secret_from_auth(const TPM2B_AUTH *auth, char **out)
{
    static const char digits[] = "0123456789abcdef";
    char *text = provhsm_secure_alloc(4 + 2 * (size_t)auth->size + 1);
    if (text == NULL)
        return PROVHSM_E_NOMEM;
    memcpy(text, "hex:", 4);
    for (size_t i = 0; i < auth->size; i++) {
        text[4 + 2 * i] = digits[auth->buffer[i] >> 4];
        text[4 + 2 * i + 1] = digits[auth->buffer[i] & 15];
    }
    text[4 + 2 * (size_t)auth->size] = '\0';
    *out = text;
    return PROVHSM_OK;
}

/* The authorisation value a secret stands for (the empty one for NULL or ""). */
static provhsm_err auth_from_secret(const char *secret, TPM2B_AUTH **out)
{
    TPM2B_AUTH *auth = provhsm_secure_alloc(sizeof(*auth));
    if (auth == NULL)
        return PROVHSM_E_NOMEM;
    if (secret != NULL && secret[0] != '\0' &&
        provhsm_tpm_auth_parse(secret, strlen(secret), "the X.509 key's stored secret", auth) !=
            PROVHSM_OK) {
        provhsm_secure_free(auth);
        return PROVHSM_E_CORRUPT;
    }
    *out = auth;
    return PROVHSM_OK;
}

/* Makes sure the SRK is there (created under the owner authorisation when absent). */
static provhsm_err srk_for_create(const provhsm_config *cfg, provhsm_tpm *tpm, int present,
                                  ESYS_TR *srk_out)
{
    if (present)
        return provhsm_tpm_persistent_handle(tpm, cfg->srk_handle, srk_out);
    return make_srk(cfg, tpm, srk_out);
}

/*
 * Removes the key at the X.509 handle that a new one replaces. Called once the new key is
 * loaded: a TPM that refuses to create or load one never costs the old key.
 */
static provhsm_err evict_replaced(provhsm_tpm *tpm, TPM2_HANDLE handle)
{
    ESYS_TR old = ESYS_TR_NONE;
    provhsm_err err = provhsm_tpm_persistent_handle(tpm, handle, &old);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_evict(tpm, &old);
    provhsm_tpm_forget(tpm, &old);
    if (err == PROVHSM_E_NOT_FOUND)
        return PROVHSM_OK; /* someone else removed it meanwhile */
    if (err == PROVHSM_OK)
        PH_INFO(MOD, "evicted the key at 0x%08x that the new one replaces", (unsigned)handle);
    return err;
}

/*
 * Create under the SRK, Load, (evict the replaced key), EvictControl, FlushContext; the
 * caller holds the site. *pub_out is ESAPI-allocated.
 */
static provhsm_err generate_locked(const provhsm_config *cfg, provhsm_tpm *tpm,
                                   TPM2_ECC_CURVE curve, int replace, const TPM2B_AUTH *auth,
                                   TPM2B_PUBLIC **pub_out)
{
    const TPM2_HANDLE handles[2] = {cfg->srk_handle, cfg->x509_key_handle};
    int present[2] = {0, 0}, has_curve = 0;
    ESYS_TR srk = ESYS_TR_NONE, loaded = ESYS_TR_NONE, persistent = ESYS_TR_NONE;
    TPM2B_PRIVATE *priv = NULL;
    TPM2B_PUBLIC *pub = NULL;

    provhsm_err err = provhsm_tpm_persistent_present(tpm, handles, 2, present);
    if (err != PROVHSM_OK)
        return err;
    if (present[1] && !replace) {
        PH_ERR(MOD,
               "TPM persistent handle 0x%08x already holds a key; it stays. Replace it "
               "explicitly, or set [tpm] x509_key_handle to a free handle",
               (unsigned)handles[1]);
        return PROVHSM_E_EXISTS;
    }
    if (curve != TPM2_ECC_NIST_P256) {
        err = provhsm_tpm_has_curve(tpm, curve, &has_curve);
        if (err == PROVHSM_OK && !has_curve) {
            PH_ERR(MOD, "this TPM has no P-384 curve; use an EC P-256 key");
            err = PROVHSM_E_UNSUPPORTED;
        }
        if (err != PROVHSM_OK)
            return err;
    }
    err = srk_for_create(cfg, tpm, present[0], &srk);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_create_ec_signing_key(tpm, srk, curve, auth, &priv, &pub);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_load(tpm, srk, priv, pub, &loaded);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_use_owner_auth(cfg, tpm);
    if (err == PROVHSM_OK && present[1])
        err = evict_replaced(tpm, handles[1]);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_persist(tpm, loaded, handles[1], &persistent);
    if (err == PROVHSM_E_EXISTS)
        PH_ERR(MOD, "another user of the TPM put a key at 0x%08x meanwhile; it stays",
               (unsigned)handles[1]);
    if (err == PROVHSM_OK)
        PH_INFO(MOD, "made an EC %s signing key at TPM persistent handle 0x%08x",
                curve == TPM2_ECC_NIST_P384 ? "P-384" : "P-256", (unsigned)handles[1]);

    provhsm_tpm_flush(tpm, &loaded);
    provhsm_tpm_forget(tpm, &persistent);
    provhsm_tpm_forget(tpm, &srk);
    drop_auth(tpm);
    Esys_Free(priv);
    if (err == PROVHSM_OK)
        *pub_out = pub;
    else
        Esys_Free(pub);
    return err;
}

static provhsm_err tpm_key_generate(const provhsm_config *cfg, provhsm_key_type type, int replace,
                                    provhsm_keyref *ref_out, char **secret_out)
{
    TPM2_ECC_CURVE curve = TPM2_ECC_NIST_P256;
    TPM2B_AUTH *auth = NULL;
    TPM2B_PUBLIC *pub = NULL;
    tcti_site *site = NULL;
    provhsm_tpm *tpm = NULL;
    char *secret = NULL;

    if (cfg == NULL || ref_out == NULL || secret_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    switch (type) {
    case PROVHSM_KEY_EC_P256:
        break;
    case PROVHSM_KEY_EC_P384:
        curve = TPM2_ECC_NIST_P384;
        break;
    case PROVHSM_KEY_RSA_2048:
    case PROVHSM_KEY_RSA_3072:
    case PROVHSM_KEY_RSA_4096:
        PH_ERR(MOD, "%s", rsa_refusal);
        return PROVHSM_E_UNSUPPORTED;
    default:
        PH_ERR(MOD, "unknown key type %d", (int)type);
        return PROVHSM_E_INVALID_ARG;
    }
    provhsm_err err = check_x509_handle(cfg);
    if (err != PROVHSM_OK)
        return err;
    auth = provhsm_secure_alloc(sizeof(*auth));
    if (auth == NULL)
        return PROVHSM_E_NOMEM;
    /* the value that keeps other users of this TPM from signing with the device's key */
    if (RAND_priv_bytes(auth->buffer, X509_AUTH_BYTES) != 1) {
        PH_ERR(MOD, "no random bytes for the key's authorisation value");
        err = PROVHSM_E_CRYPTO;
        goto cleanup;
    }
    auth->size = X509_AUTH_BYTES;
    err = site_enter(cfg, &site, &tpm);
    if (err != PROVHSM_OK)
        goto cleanup;
    err = generate_locked(cfg, tpm, curve, replace, auth, &pub);
    site_leave(site);
    if (err == PROVHSM_OK)
        err = secret_from_auth(auth, &secret);
    if (err == PROVHSM_OK)
        err = make_ref(cfg->x509_key_handle, &pub->publicArea, ref_out);
    if (err != PROVHSM_OK)
        goto cleanup;
    *secret_out = secret;
    secret = NULL;

cleanup:
    provhsm_secure_free(secret);
    provhsm_secure_free(auth);
    Esys_Free(pub);
    return err;
}

/* ReadPublic of the key at `handle` on the site's connection; logs an empty handle. */
static provhsm_err read_key(provhsm_tpm *tpm, TPM2_HANDLE handle, ESYS_TR *tr_out,
                            TPM2B_PUBLIC **pub_out)
{
    ESYS_TR tr = ESYS_TR_NONE;
    provhsm_err err = provhsm_tpm_read_public(tpm, handle, &tr, pub_out);
    if (err == PROVHSM_E_NOT_FOUND)
        PH_ERR(MOD, "no key at TPM persistent handle 0x%08x", (unsigned)handle);
    if (tr_out != NULL)
        *tr_out = tr;
    else
        provhsm_tpm_forget(tpm, &tr);
    return err;
}

static provhsm_err tpm_key_adopt(const provhsm_config *cfg, const char *locator,
                                 provhsm_keyref *ref_out, char **secret_out)
{
    TPM2_HANDLE handle = 0;
    TPM2B_PUBLIC *pub = NULL;
    tcti_site *site = NULL;
    provhsm_tpm *tpm = NULL;
    char what[64];

    if (cfg == NULL || ref_out == NULL || secret_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = parse_locator(locator, &handle);
    if (err != PROVHSM_OK)
        return err;
    err = site_enter(cfg, &site, &tpm);
    if (err != PROVHSM_OK)
        return err;
    err = read_key(tpm, handle, NULL, &pub);
    site_leave(site);
    if (err != PROVHSM_OK)
        return err;
    snprintf(what, sizeof(what), "the key at 0x%08x cannot be adopted", (unsigned)handle);
    err = check_signing_key(&pub->publicArea, what);
    if (err == PROVHSM_OK && (pub->publicArea.objectAttributes & TPMA_OBJECT_FIXEDTPM) == 0)
        PH_WARN(MOD,
                "the key at 0x%08x is not fixedTPM: its parent's owner may duplicate it out of "
                "this TPM",
                (unsigned)handle);
    if (err == PROVHSM_OK)
        err = make_ref(handle, &pub->publicArea, ref_out);
    if (err == PROVHSM_OK)
        *secret_out = NULL; /* a key made elsewhere: the empty value unless told otherwise */
    Esys_Free(pub);
    return err;
}

/* The key's ESYS handle on the site's current connection (rebuilt after a reconnect). */
static provhsm_err bind_key(tpm_x509_key *k, provhsm_tpm **tpm_out)
{
    provhsm_tpm *tpm = NULL;
    provhsm_err err = site_connect(k->site, &tpm);
    if (err != PROVHSM_OK)
        return err;
    if (k->generation != k->site->generation) {
        k->tr = ESYS_TR_NONE; /* it belonged to a connection that is gone */
        err = provhsm_tpm_persistent_object(tpm, k->handle, &k->pub, &k->tr);
        if (err == PROVHSM_E_INVALID_ARG) /* not a SHA-256 name: ask the TPM */
            err = provhsm_tpm_read_public(tpm, k->handle, &k->tr, NULL);
        if (err == PROVHSM_OK)
            err = provhsm_tpm_set_object_auth(tpm, k->tr, k->auth);
        if (err != PROVHSM_OK) {
            provhsm_tpm_forget(tpm, &k->tr);
            return err;
        }
        k->generation = k->site->generation;
    }
    *tpm_out = tpm;
    return PROVHSM_OK;
}

static void key_free(tpm_x509_key *k)
{
    if (k == NULL)
        return;
    provhsm_secure_free(k->auth);
    free(k);
}

static provhsm_err tpm_key_open(const provhsm_config *cfg, const provhsm_keyref *ref,
                                const char *secret, void **key_out)
{
    TPM2B_PUBLIC *pub = NULL;
    provhsm_tpm *tpm = NULL;
    tpm_x509_key *k = NULL;
    char what[64];

    if (cfg == NULL || ref == NULL || key_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (strcmp(ref->backend, "tpm") != 0) {
        PH_ERR(MOD, "the key reference is for backend \"%s\", not tpm", ref->backend);
        return PROVHSM_E_INVALID_ARG;
    }
    k = calloc(1, sizeof(*k));
    if (k == NULL)
        return PROVHSM_E_NOMEM;
    k->tr = ESYS_TR_NONE;
    provhsm_err err = parse_locator(ref->locator, &k->handle);
    if (err == PROVHSM_OK)
        err = auth_from_secret(secret, &k->auth);
    if (err == PROVHSM_OK)
        err = site_enter(cfg, &k->site, &tpm);
    if (err != PROVHSM_OK) {
        key_free(k);
        return err;
    }
    /* one ReadPublic: the key must still be the one the reference names */
    err = read_key(tpm, k->handle, &k->tr, &pub);
    snprintf(what, sizeof(what), "the key at 0x%08x", (unsigned)k->handle);
    if (err == PROVHSM_OK)
        err = check_signing_key(&pub->publicArea, what);
    if (err == PROVHSM_OK && !ref_matches(ref, &pub->publicArea)) {
        PH_ERR(MOD,
               "the key at TPM persistent handle 0x%08x is not the identity's key (another "
               "public key)",
               (unsigned)k->handle);
        err = PROVHSM_E_MISMATCH;
    }
    if (err == PROVHSM_OK)
        err = provhsm_tpm_set_object_auth(tpm, k->tr, k->auth);
    if (err == PROVHSM_OK) {
        k->pub = *pub;
        k->generation = k->site->generation;
        k->site->users++;
    } else {
        provhsm_tpm_forget(tpm, &k->tr);
    }
    site_leave(k->site);
    Esys_Free(pub);
    if (err != PROVHSM_OK) {
        key_free(k);
        return err;
    }
    *key_out = k;
    return PROVHSM_OK;
}

/* One TPM2_Sign under the site's lock; after a lost connection, one more on a new one. */
static provhsm_err tpm_key_sign(void *p, const uint8_t *digest, size_t digest_len, uint8_t *rs,
                                size_t *rs_len)
{
    tpm_x509_key *k = p;
    provhsm_tpm *tpm = NULL;
    provhsm_err err = PROVHSM_E_NO_DEVICE;

    if (k == NULL || digest == NULL || rs == NULL || rs_len == NULL)
        return PROVHSM_E_INVALID_ARG;
    pthread_mutex_lock(&k->site->mutex);
    for (int attempt = 0; attempt < 2 && err == PROVHSM_E_NO_DEVICE; attempt++) {
        err = bind_key(k, &tpm);
        if (err == PROVHSM_OK)
            err = provhsm_tpm_ecdsa_sign(tpm, k->tr, &k->pub.publicArea, digest, digest_len, rs,
                                         rs_len);
    }
    pthread_mutex_unlock(&k->site->mutex);
    if (err == PROVHSM_E_NOT_FOUND)
        PH_ERR(MOD, "no key at TPM persistent handle 0x%08x any more: it was evicted",
               (unsigned)k->handle);
    return err;
}

static void tpm_key_close(void *p)
{
    tpm_x509_key *k = p;
    if (k == NULL)
        return;
    pthread_mutex_lock(&k->site->mutex);
    if (k->site->shared != NULL && k->generation == k->site->generation) {
        /* overwrite the value inside ESAPI before the handle goes */
        if (provhsm_tpm_set_object_auth(k->site->shared, k->tr, NULL) != PROVHSM_OK)
            PH_WARN(MOD, "could not clear the X.509 key's authorisation inside ESAPI");
        provhsm_tpm_forget(k->site->shared, &k->tr);
    }
    k->site->users--;
    site_idle(k->site);
    pthread_mutex_unlock(&k->site->mutex);
    key_free(k);
}

static provhsm_err tpm_key_destroy(const provhsm_config *cfg, const provhsm_keyref *ref,
                                   const char *secret)
{
    TPM2_HANDLE handle = 0;
    TPM2B_PUBLIC *pub = NULL;
    ESYS_TR tr = ESYS_TR_NONE;
    tcti_site *site = NULL;
    provhsm_tpm *tpm = NULL;

    (void)secret; /* EvictControl is authorised by the owner, not by the key */
    if (cfg == NULL || ref == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = parse_locator(ref->locator, &handle);
    if (err != PROVHSM_OK)
        return err;
    err = site_enter(cfg, &site, &tpm);
    if (err != PROVHSM_OK)
        return err;
    err = provhsm_tpm_read_public(tpm, handle, &tr, &pub);
    if (err == PROVHSM_E_NOT_FOUND)
        PH_INFO(MOD, "no key at TPM persistent handle 0x%08x: nothing to remove", (unsigned)handle);
    if (err == PROVHSM_OK && !ref_matches(ref, &pub->publicArea)) {
        PH_ERR(MOD, "TPM persistent handle 0x%08x holds another key than this one; it stays",
               (unsigned)handle);
        err = PROVHSM_E_MISMATCH;
    }
    if (err == PROVHSM_OK)
        err = provhsm_tpm_use_owner_auth(cfg, tpm);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_evict(tpm, &tr);
    if (err == PROVHSM_OK)
        PH_INFO(MOD, "evicted the X.509 key at TPM persistent handle 0x%08x", (unsigned)handle);
    provhsm_tpm_forget(tpm, &tr);
    drop_auth(tpm);
    site_leave(site);
    Esys_Free(pub);
    return err;
}

static provhsm_err tpm_key_describe(const provhsm_config *cfg, const provhsm_keyref *ref,
                                    char **line_out)
{
    TPM2_HANDLE handle = 0;
    TPM2B_PUBLIC *pub = NULL;
    tcti_site *site = NULL;
    provhsm_tpm *tpm = NULL;
    char line[256];

    if (cfg == NULL || ref == NULL || line_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = parse_locator(ref->locator, &handle);
    if (err != PROVHSM_OK)
        return err;
    const char *curve = ref->curve_bits == 384 ? "P-384" : "P-256";
    err = site_enter(cfg, &site, &tpm);
    if (err == PROVHSM_OK) {
        ESYS_TR tr = ESYS_TR_NONE;
        err = provhsm_tpm_read_public(tpm, handle, &tr, &pub);
        provhsm_tpm_forget(tpm, &tr);
        site_leave(site);
    }
    if (err == PROVHSM_OK && !ref_matches(ref, &pub->publicArea))
        snprintf(line, sizeof(line),
                 "TPM persistent handle 0x%08x, EC %s: the TPM holds another key there",
                 (unsigned)handle, curve);
    else if (err == PROVHSM_OK && (pub->publicArea.objectAttributes & TPMA_OBJECT_FIXEDTPM) != 0)
        snprintf(line, sizeof(line),
                 "TPM persistent handle 0x%08x, EC %s, fixedTPM: cannot leave this TPM",
                 (unsigned)handle, curve_name(&pub->publicArea));
    else if (err == PROVHSM_OK)
        snprintf(line, sizeof(line),
                 "TPM persistent handle 0x%08x, EC %s, not fixedTPM: its parent's owner may "
                 "duplicate it out of this TPM",
                 (unsigned)handle, curve_name(&pub->publicArea));
    else if (err == PROVHSM_E_NOT_FOUND)
        snprintf(line, sizeof(line), "TPM persistent handle 0x%08x, EC %s: no key there now",
                 (unsigned)handle, curve);
    else
        snprintf(line, sizeof(line),
                 "TPM persistent handle 0x%08x, EC %s (the TPM cannot be reached: not checked)",
                 (unsigned)handle, curve);
    Esys_Free(pub);
    *line_out = strdup(line);
    return *line_out != NULL ? PROVHSM_OK : PROVHSM_E_NOMEM;
}

/* ---- the admin call ---------------------------------------------------------------------- */

provhsm_err provhsm_tpm_clear_identity(void)
{
    provhsm_err err = PROVHSM_OK;
    provhsm_config *cfg = NULL;
    tcti_site *site = NULL;
    provhsm_tpm *tpm = NULL;
    ESYS_TR identity = ESYS_TR_NONE;

    cfg = malloc(sizeof(*cfg));
    if (cfg == NULL)
        return PROVHSM_E_NOMEM;
    err = provhsm_front_config(cfg);
    if (err == PROVHSM_OK)
        err = site_enter(cfg, &site, &tpm); /* the process's connection to this TPM */
    if (err != PROVHSM_OK)
        goto cleanup;
    err = provhsm_tpm_find_persistent(tpm, cfg->identity_handle, &identity);
    if (err == PROVHSM_E_NOT_FOUND)
        PH_INFO(MOD, "no identity key at 0x%08x to clear", (unsigned)cfg->identity_handle);
    if (err == PROVHSM_OK)
        err = use_auth(cfg, tpm, ESYS_TR_RH_OWNER);
    if (err == PROVHSM_OK)
        err = provhsm_tpm_evict(tpm, &identity);
    if (err == PROVHSM_OK)
        PH_INFO(MOD, "identity key at 0x%08x evicted", (unsigned)cfg->identity_handle);
    provhsm_tpm_forget(tpm, &identity);
    drop_auth(tpm);
    site_leave(site);

cleanup:
    free(cfg);
    return err;
}

const provhsm_backend provhsm_backend_tpm = {
    .name = "tpm",
    .caps = PROVHSM_CAP_TPM | PROVHSM_CAP_X509,
    .open = tpm_open,
    .close = tpm_close,
    .x509_certificate = tpm_x509_certificate,
    .x509_alias_key = tpm_x509_alias_key,
    .x509_common_name = tpm_x509_common_name,
    .tpm_endorsement_key = tpm_endorsement_key,
    .tpm_storage_root_key = tpm_storage_root_key,
    .tpm_activate = tpm_activate,
    .tpm_sign = tpm_sign,
    .key_generate = tpm_key_generate,
    .key_adopt = tpm_key_adopt,
    .key_open = tpm_key_open,
    .key_sign = tpm_key_sign,
    .key_close = tpm_key_close,
    .key_destroy = tpm_key_destroy,
    .key_describe = tpm_key_describe,
};
