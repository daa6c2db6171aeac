/*
 * The SDK-facing front: the only file that knows the SDK's three tables.
 *
 * Every table slot is a trampoline that checks its handle (magic number and kind),
 * then dispatches to the backend configured for that attestation type. The SDK rejects
 * a table with a NULL member, so every slot is filled; an operation a backend does not
 * serve fails with a log line instead of crashing. provhsm_err is mapped to the SDK's
 * 0/non-zero and pointer/NULL conventions here and nowhere else.
 *
 * The per-operation names of the SDK's custom-HSM document (custom_hsm_*,
 * hsm_client_sign_with_identity, ...) are real functions here. custom_hsm_create()
 * makes a "universal" handle that opens, on first use, the identity each call needs;
 * the same functions also accept the handles the tables create.
 *
 * Process-wide state: the explicit configuration path and the init reference count,
 * both under one mutex. Configuration is read again at every create so that a changed
 * file or environment takes effect without restarting the process.
 *
 * The configuration struct is about 25 KB: it lives on the heap, never on the stack, so
 * that create works on the small thread stacks of embedded applications (16 KB).
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "front.h"
#include "identity.h"
#include "hsm_client_data.h"
#include "log.h"
#include "provider/provider.h"
#include "secmem.h"

#define MOD "front"

/* The seed document's names; declared here because the SDK's header does not. */
HSM_CLIENT_HANDLE custom_hsm_create(void);
void custom_hsm_destroy(HSM_CLIENT_HANDLE handle);
char *custom_hsm_get_certificate(HSM_CLIENT_HANDLE handle);
char *custom_hsm_get_alias_key(HSM_CLIENT_HANDLE handle);
char *custom_hsm_get_common_name(HSM_CLIENT_HANDLE handle);
int custom_hsm_get_endorsement_key(HSM_CLIENT_HANDLE handle, unsigned char **key, size_t *key_len);
int custom_hsm_get_storage_root_key(HSM_CLIENT_HANDLE handle, unsigned char **key, size_t *key_len);
int custom_hsm_import_key(HSM_CLIENT_HANDLE handle, const unsigned char *key, size_t key_len);
int hsm_client_sign_with_identity(HSM_CLIENT_HANDLE handle, const unsigned char *data,
                                  size_t data_len, unsigned char **signed_value,
                                  size_t *signed_len);
char *hsm_client_get_symmetric_key(HSM_CLIENT_HANDLE handle);
char *hsm_client_get_registration_name(HSM_CLIENT_HANDLE handle);

/* ---- process-wide state ------------------------------------------------ */

static pthread_mutex_t front_lock = PTHREAD_MUTEX_INITIALIZER;
static char *explicit_config_path; /* provhsm_config_use_file(), or NULL */
static unsigned init_count;

provhsm_err provhsm_front_config(provhsm_config *out)
{
    char *path = NULL;
    if (out == NULL)
        return PROVHSM_E_INVALID_ARG;
    pthread_mutex_lock(&front_lock);
    int copy_failed = explicit_config_path != NULL && (path = strdup(explicit_config_path)) == NULL;
    pthread_mutex_unlock(&front_lock);
    if (copy_failed)
        return PROVHSM_E_NOMEM;

    provhsm_err err = provhsm_config_load(out, path);
    free(path);
    /* also when unset (-1): a level removed from the file must stop applying */
    if (err == PROVHSM_OK)
        provhsm_log_set_config_level((provhsm_log_level)out->log_level);
    return err;
}

/* A configuration on the heap (see the opening comment); NULL when memory is short. */
static provhsm_config *config_new(void)
{
    provhsm_config *cfg = malloc(sizeof(*cfg));
    if (cfg == NULL)
        PH_ERR(MOD, "out of memory for the configuration");
    return cfg;
}

provhsm_err provhsm_config_use_file(const char *path)
{
    char *copy = NULL;
    if (path != NULL) {
        provhsm_config *probe = config_new();
        if (probe == NULL)
            return PROVHSM_E_NOMEM;
        provhsm_err err = provhsm_config_load(probe, path);
        free(probe); /* holds no secret: paths and names only */
        if (err != PROVHSM_OK)
            return err;
        copy = strdup(path);
        if (copy == NULL)
            return PROVHSM_E_NOMEM;
    }
    pthread_mutex_lock(&front_lock);
    free(explicit_config_path);
    explicit_config_path = copy;
    pthread_mutex_unlock(&front_lock);
    return PROVHSM_OK;
}

provhsm_err provhsm_config_store_dir(char **dir_out)
{
    if (dir_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_config *cfg = config_new();
    if (cfg == NULL)
        return PROVHSM_E_NOMEM;
    provhsm_err err = provhsm_front_config(cfg);
    if (err == PROVHSM_OK) {
        char *copy = strdup(cfg->store_dir);
        if (copy != NULL)
            *dir_out = copy;
        else
            err = PROVHSM_E_NOMEM;
    }
    free(cfg);
    return err;
}

/*
 * The backends whose global_init/global_deinit run. The test build lets a unit test put a
 * mock in their place (provhsm_backend_test_override) so that it can count the calls.
 */
static const provhsm_backend *global_backend(size_t i)
{
#ifdef PROVHSM_TEST_HOOKS
    if (provhsm_backend_test_override != NULL)
        return i == 0 ? provhsm_backend_test_override : NULL;
#endif
    return provhsm_backends[i];
}

/* Reference-counted: the SDK's initialize_hsm_system runs once per security layer. */
static int front_init(void)
{
    provhsm_err err = PROVHSM_OK;
    pthread_mutex_lock(&front_lock);
    if (init_count == 0) {
        for (size_t i = 0; global_backend(i) != NULL && err == PROVHSM_OK; i++)
            if (global_backend(i)->global_init != NULL)
                err = global_backend(i)->global_init();
    }
    if (err == PROVHSM_OK)
        init_count++;
    pthread_mutex_unlock(&front_lock);
    if (err != PROVHSM_OK)
        PH_ERR(MOD, "initialisation failed: %s", provhsm_strerror(err));
    return err == PROVHSM_OK ? 0 : (int)err;
}

static void front_deinit(void)
{
    pthread_mutex_lock(&front_lock);
    if (init_count == 0) {
        pthread_mutex_unlock(&front_lock);
        PH_WARN(MOD, "deinit called more often than init; ignored");
        return;
    }
    if (--init_count == 0) {
        for (size_t i = 0; global_backend(i) != NULL; i++)
            if (global_backend(i)->global_deinit != NULL)
                global_backend(i)->global_deinit();
    }
    pthread_mutex_unlock(&front_lock);
}

/*
 * The X.509 table also loads provhsm's OpenSSL provider into the default library
 * context: the SDK's TLS layer decodes the alias key with PEM_read_bio_PrivateKey there,
 * and a key that stays in hardware is a PEM only the provider understands. The provider
 * keeps its own count, so the SDK's unbalanced init/deinit cannot unload it under a
 * live connection any more than it can the tables.
 */
int hsm_client_x509_init(void)
{
    int rc = front_init();
    if (rc != 0)
        return rc;
    provhsm_err err = provhsm_provider_load();
    if (err != PROVHSM_OK) {
        PH_ERR(MOD, "the OpenSSL provider for hardware keys could not be loaded: %s",
               provhsm_strerror(err));
        front_deinit();
        return (int)err;
    }
    return 0;
}

void hsm_client_x509_deinit(void)
{
    provhsm_provider_unload();
    front_deinit();
}

int hsm_client_tpm_init(void)
{
    return front_init();
}

void hsm_client_tpm_deinit(void)
{
    front_deinit();
}

/* ---- handles ------------------------------------------------------------ */

#define MAGIC_X509      0x70683578u /* "ph5x" */
#define MAGIC_SYMMETRIC 0x7068736bu /* "phsk" */
#define MAGIC_TPM       0x70687470u /* "phtp" */
#define MAGIC_UNIVERSAL 0x70687576u /* "phuv" */
#define MAGIC_DEAD      0xdeadf00du

static const uint32_t kind_magic[3] = {MAGIC_X509, MAGIC_SYMMETRIC, MAGIC_TPM};
static const char *const kind_name[3] = {"x509", "symmetric", "tpm"};

typedef struct front_handle {
    uint32_t magic; /* first in every handle type */
    provhsm_kind kind;
    const provhsm_backend *backend;
    void *state;
    pthread_mutex_t lock; /* one call at a time per handle */
} front_handle;

typedef struct universal_handle {
    uint32_t magic;
    pthread_mutex_t lock;
    front_handle *sub[3]; /* opened on first use */
} universal_handle;

static const char *backend_name_for(const provhsm_config *cfg, provhsm_kind kind)
{
    switch (kind) {
    case PROVHSM_KIND_X509:
        return cfg->x509_backend;
    case PROVHSM_KIND_SYMMETRIC:
        return cfg->symmetric_backend;
    case PROVHSM_KIND_TPM:
        return cfg->tpm_backend;
    }
    return "";
}

static const provhsm_backend *choose_backend(const provhsm_config *cfg, provhsm_kind kind)
{
    const char *name = backend_name_for(cfg, kind);
    const provhsm_backend *be = provhsm_backend_find(name);
    if (be == NULL) {
        PH_ERR(MOD, "%s: backend '%s' (%s) is not built into this library", kind_name[kind], name,
               cfg->source);
        return NULL;
    }
    if ((be->caps & (1u << kind)) == 0) {
        PH_ERR(MOD, "%s: backend '%s' cannot serve %s attestation", kind_name[kind], name,
               kind_name[kind]);
        return NULL;
    }
    return be;
}

/* A new handle's backend state from the configuration; NULL (logged) on failure. */
static front_handle *handle_open_with(const provhsm_config *cfg, provhsm_kind kind)
{
    if (kind == PROVHSM_KIND_TPM && !cfg->tpm_configured) {
        PH_ERR(MOD, "TPM attestation needs a [tpm] configuration (see docs/configuration.md) "
                    "or PROVHSM_TCTI");
        return NULL;
    }
    const provhsm_backend *be = choose_backend(cfg, kind);
    if (be == NULL)
        return NULL;
    front_handle *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    provhsm_err err = be->open(cfg, kind, &h->state);
    if (err != PROVHSM_OK) {
        PH_ERR(MOD, "%s: cannot open the identity (backend %s): %s", kind_name[kind], be->name,
               provhsm_strerror(err));
        free(h);
        return NULL;
    }
    pthread_mutex_init(&h->lock, NULL);
    h->magic = kind_magic[kind];
    h->kind = kind;
    h->backend = be;
    return h;
}

static front_handle *handle_open(provhsm_kind kind)
{
    front_handle *h = NULL;
    provhsm_config *cfg = config_new();
    if (cfg == NULL)
        return NULL;
    if (provhsm_front_config(cfg) == PROVHSM_OK)
        h = handle_open_with(cfg, kind);
    else
        PH_ERR(MOD, "%s: cannot create a handle: configuration is invalid", kind_name[kind]);
    free(cfg); /* holds no secret: paths and names only */
    return h;
}

static void handle_close(front_handle *h)
{
    if (h == NULL)
        return;
    h->backend->close(h->state);
    pthread_mutex_destroy(&h->lock);
    h->magic = MAGIC_DEAD;
    free(h);
}

/* The per-kind handle behind `handle`, opening a universal handle's part on first use. */
static front_handle *resolve(HSM_CLIENT_HANDLE handle, provhsm_kind kind)
{
    if (handle == NULL) {
        PH_ERR(MOD, "%s: NULL handle", kind_name[kind]);
        return NULL;
    }
    uint32_t magic = *(const uint32_t *)handle;
    if (magic == kind_magic[kind])
        return handle;
    if (magic != MAGIC_UNIVERSAL) {
        PH_ERR(MOD, "%s: handle is invalid, destroyed, or from another table", kind_name[kind]);
        return NULL;
    }
    universal_handle *u = handle;
    pthread_mutex_lock(&u->lock);
    if (u->sub[kind] == NULL)
        u->sub[kind] = handle_open(kind);
    front_handle *h = u->sub[kind];
    pthread_mutex_unlock(&u->lock);
    return h;
}

static HSM_CLIENT_HANDLE create_x509(void)
{
    return handle_open(PROVHSM_KIND_X509);
}

static HSM_CLIENT_HANDLE create_symmetric(void)
{
    return handle_open(PROVHSM_KIND_SYMMETRIC);
}

static HSM_CLIENT_HANDLE create_tpm(void)
{
    return handle_open(PROVHSM_KIND_TPM);
}

HSM_CLIENT_HANDLE custom_hsm_create(void)
{
    universal_handle *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    pthread_mutex_init(&u->lock, NULL);
    u->magic = MAGIC_UNIVERSAL;
    return u;
}

void custom_hsm_destroy(HSM_CLIENT_HANDLE handle)
{
    if (handle == NULL)
        return;
    uint32_t magic = *(const uint32_t *)handle;
    if (magic == MAGIC_UNIVERSAL) {
        universal_handle *u = handle;
        for (int k = 0; k < 3; k++)
            handle_close(u->sub[k]);
        pthread_mutex_destroy(&u->lock);
        u->magic = MAGIC_DEAD;
        free(u);
        return;
    }
    for (int k = 0; k < 3; k++) {
        if (magic == kind_magic[k]) {
            handle_close(handle);
            return;
        }
    }
    PH_ERR(MOD, "destroy: handle is invalid or already destroyed; ignored");
}

/* ---- dispatch ------------------------------------------------------------ */

/* Looks up the slot; an absent slot means the backend does not serve this operation. */
#define SLOT_OR_FAIL(h, slot, what)                                                                \
    do {                                                                                           \
        if ((h)->backend->slot == NULL) {                                                          \
            PH_ERR(MOD, "%s: backend %s does not support %s", kind_name[(h)->kind],                \
                   (h)->backend->name, what);                                                      \
            err = PROVHSM_E_UNSUPPORTED;                                                           \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

/* The string getters of the X.509 and key tables. */
typedef enum string_op {
    GET_CERTIFICATE,
    GET_ALIAS_KEY,
    GET_COMMON_NAME,
    GET_SYMMETRIC_KEY,
    GET_REGISTRATION_ID
} string_op;

static char *get_string(HSM_CLIENT_HANDLE handle, provhsm_kind kind, string_op which)
{
    char *result = NULL;
    provhsm_err err = PROVHSM_OK;
    front_handle *h = resolve(handle, kind);
    if (h == NULL)
        return NULL;
    pthread_mutex_lock(&h->lock);
    switch (which) {
    case GET_CERTIFICATE:
        SLOT_OR_FAIL(h, x509_certificate, "get_certificate");
        err = h->backend->x509_certificate(h->state, &result);
        break;
    case GET_ALIAS_KEY:
        SLOT_OR_FAIL(h, x509_alias_key, "get_alias_key");
        err = h->backend->x509_alias_key(h->state, &result);
        break;
    case GET_COMMON_NAME:
        SLOT_OR_FAIL(h, x509_common_name, "get_common_name");
        err = h->backend->x509_common_name(h->state, &result);
        break;
    case GET_SYMMETRIC_KEY:
        SLOT_OR_FAIL(h, symmetric_key, "get_symmetric_key");
        err = h->backend->symmetric_key(h->state, &result);
        break;
    case GET_REGISTRATION_ID:
        SLOT_OR_FAIL(h, registration_id, "get_registration_name");
        err = h->backend->registration_id(h->state, &result);
        break;
    }
out:
    pthread_mutex_unlock(&h->lock);
    return err == PROVHSM_OK ? result : NULL;
}

char *custom_hsm_get_certificate(HSM_CLIENT_HANDLE handle)
{
    return get_string(handle, PROVHSM_KIND_X509, GET_CERTIFICATE);
}

char *custom_hsm_get_alias_key(HSM_CLIENT_HANDLE handle)
{
    return get_string(handle, PROVHSM_KIND_X509, GET_ALIAS_KEY);
}

char *custom_hsm_get_common_name(HSM_CLIENT_HANDLE handle)
{
    return get_string(handle, PROVHSM_KIND_X509, GET_COMMON_NAME);
}

char *hsm_client_get_symmetric_key(HSM_CLIENT_HANDLE handle)
{
    return get_string(handle, PROVHSM_KIND_SYMMETRIC, GET_SYMMETRIC_KEY);
}

char *hsm_client_get_registration_name(HSM_CLIENT_HANDLE handle)
{
    return get_string(handle, PROVHSM_KIND_SYMMETRIC, GET_REGISTRATION_ID);
}

/*
 * The SDK calls this right after create with what the application passed to
 * prov_dev_set_symmetric_key_info: both NULL keeps the stored identity (which must then
 * exist), both set replaces it for this handle only, anything else is an error.
 */
static int set_symmetric_key_info(HSM_CLIENT_HANDLE handle, const char *registration_name,
                                  const char *symmetric_key)
{
    provhsm_err err = PROVHSM_OK;
    front_handle *h = resolve(handle, PROVHSM_KIND_SYMMETRIC);
    if (h == NULL)
        return PROVHSM_E_BAD_HANDLE;
    if ((registration_name == NULL) != (symmetric_key == NULL)) {
        PH_ERR(MOD, "set_symmetric_key_info: registration id and key must both be set or "
                    "both be NULL");
        return PROVHSM_E_INVALID_ARG;
    }
    pthread_mutex_lock(&h->lock);
    if (registration_name == NULL) {
        char *id = NULL;
        SLOT_OR_FAIL(h, registration_id, "get_registration_name");
        err = h->backend->registration_id(h->state, &id);
        free(id);
        goto out;
    }
    SLOT_OR_FAIL(h, symmetric_override, "set_symmetric_key_info");
    err = provhsm_identity_check_registration_id(registration_name);
    if (err == PROVHSM_OK)
        err = provhsm_identity_check_symmetric_key(symmetric_key);
    if (err == PROVHSM_OK)
        err = h->backend->symmetric_override(h->state, registration_name, symmetric_key);
out:
    pthread_mutex_unlock(&h->lock);
    return err == PROVHSM_OK ? 0 : (int)err;
}

typedef enum { TPM_EK, TPM_SRK } tpm_public;

static int get_tpm_public(HSM_CLIENT_HANDLE handle, tpm_public which, unsigned char **key,
                          size_t *key_len)
{
    provhsm_err err = PROVHSM_OK;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (key == NULL || key_len == NULL) {
        PH_ERR(MOD, "tpm: NULL output argument");
        return PROVHSM_E_INVALID_ARG;
    }
    front_handle *h = resolve(handle, PROVHSM_KIND_TPM);
    if (h == NULL)
        return PROVHSM_E_BAD_HANDLE;
    pthread_mutex_lock(&h->lock);
    if (which == TPM_EK) {
        SLOT_OR_FAIL(h, tpm_endorsement_key, "get_endorsement_key");
        err = h->backend->tpm_endorsement_key(h->state, &buf, &len);
    } else {
        SLOT_OR_FAIL(h, tpm_storage_root_key, "get_storage_root_key");
        err = h->backend->tpm_storage_root_key(h->state, &buf, &len);
    }
out:
    pthread_mutex_unlock(&h->lock);
    if (err != PROVHSM_OK)
        return (int)err;
    *key = buf;
    *key_len = len;
    return 0;
}

int custom_hsm_get_endorsement_key(HSM_CLIENT_HANDLE handle, unsigned char **key, size_t *key_len)
{
    return get_tpm_public(handle, TPM_EK, key, key_len);
}

int custom_hsm_get_storage_root_key(HSM_CLIENT_HANDLE handle, unsigned char **key, size_t *key_len)
{
    return get_tpm_public(handle, TPM_SRK, key, key_len);
}

int custom_hsm_import_key(HSM_CLIENT_HANDLE handle, const unsigned char *key, size_t key_len)
{
    provhsm_err err = PROVHSM_OK;
    if (key == NULL || key_len == 0) {
        PH_ERR(MOD, "activate_identity_key: empty activation blob");
        return PROVHSM_E_INVALID_ARG;
    }
    front_handle *h = resolve(handle, PROVHSM_KIND_TPM);
    if (h == NULL)
        return PROVHSM_E_BAD_HANDLE;
    pthread_mutex_lock(&h->lock);
    SLOT_OR_FAIL(h, tpm_activate, "activate_identity_key");
    err = h->backend->tpm_activate(h->state, key, key_len);
out:
    pthread_mutex_unlock(&h->lock);
    return err == PROVHSM_OK ? 0 : (int)err;
}

int hsm_client_sign_with_identity(HSM_CLIENT_HANDLE handle, const unsigned char *data,
                                  size_t data_len, unsigned char **signed_value, size_t *signed_len)
{
    provhsm_err err = PROVHSM_OK;
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    if (data == NULL || data_len == 0 || signed_value == NULL || signed_len == NULL) {
        PH_ERR(MOD, "sign_with_identity: NULL or empty argument");
        return PROVHSM_E_INVALID_ARG;
    }
    front_handle *h = resolve(handle, PROVHSM_KIND_TPM);
    if (h == NULL)
        return PROVHSM_E_BAD_HANDLE;
    pthread_mutex_lock(&h->lock);
    SLOT_OR_FAIL(h, tpm_sign, "sign_with_identity");
    err = h->backend->tpm_sign(h->state, data, data_len, &sig, &sig_len);
out:
    pthread_mutex_unlock(&h->lock);
    if (err != PROVHSM_OK)
        return (int)err;
    *signed_value = sig;
    *signed_len = sig_len;
    return 0;
}

/* ---- the three tables ------------------------------------------------------ */

static const HSM_CLIENT_X509_INTERFACE x509_table = {
    .hsm_client_x509_create = create_x509,
    .hsm_client_x509_destroy = custom_hsm_destroy,
    .hsm_client_get_cert = custom_hsm_get_certificate,
    .hsm_client_get_key = custom_hsm_get_alias_key,
    .hsm_client_get_common_name = custom_hsm_get_common_name,
};

static const HSM_CLIENT_KEY_INTERFACE key_table = {
    .hsm_client_key_create = create_symmetric,
    .hsm_client_key_destroy = custom_hsm_destroy,
    .hsm_client_get_symm_key = hsm_client_get_symmetric_key,
    .hsm_client_get_registration_name = hsm_client_get_registration_name,
    .hsm_client_set_symm_key_info = set_symmetric_key_info,
};

static const HSM_CLIENT_TPM_INTERFACE tpm_table = {
    .hsm_client_tpm_create = create_tpm,
    .hsm_client_tpm_destroy = custom_hsm_destroy,
    .hsm_client_activate_identity_key = custom_hsm_import_key,
    .hsm_client_get_ek = custom_hsm_get_endorsement_key,
    .hsm_client_get_srk = custom_hsm_get_storage_root_key,
    .hsm_client_sign_with_identity = hsm_client_sign_with_identity,
};

/*
 * The SDK calls by position. With -DPROVHSM_SDK_DIR these are checked against the SDK's
 * own header: a reordered, renamed, added or retyped member fails the build.
 */
#define SLOT_AT(type, member, index)                                                               \
    _Static_assert(offsetof(type, member) == (index) * sizeof(void (*)(void)),                     \
                   #type "." #member " is not slot " #index)
SLOT_AT(HSM_CLIENT_X509_INTERFACE, hsm_client_x509_create, 0);
SLOT_AT(HSM_CLIENT_X509_INTERFACE, hsm_client_x509_destroy, 1);
SLOT_AT(HSM_CLIENT_X509_INTERFACE, hsm_client_get_cert, 2);
SLOT_AT(HSM_CLIENT_X509_INTERFACE, hsm_client_get_key, 3);
SLOT_AT(HSM_CLIENT_X509_INTERFACE, hsm_client_get_common_name, 4);
SLOT_AT(HSM_CLIENT_KEY_INTERFACE, hsm_client_key_create, 0);
SLOT_AT(HSM_CLIENT_KEY_INTERFACE, hsm_client_key_destroy, 1);
SLOT_AT(HSM_CLIENT_KEY_INTERFACE, hsm_client_get_symm_key, 2);
SLOT_AT(HSM_CLIENT_KEY_INTERFACE, hsm_client_get_registration_name, 3);
SLOT_AT(HSM_CLIENT_KEY_INTERFACE, hsm_client_set_symm_key_info, 4);
SLOT_AT(HSM_CLIENT_TPM_INTERFACE, hsm_client_tpm_create, 0);
SLOT_AT(HSM_CLIENT_TPM_INTERFACE, hsm_client_tpm_destroy, 1);
SLOT_AT(HSM_CLIENT_TPM_INTERFACE, hsm_client_activate_identity_key, 2);
SLOT_AT(HSM_CLIENT_TPM_INTERFACE, hsm_client_get_ek, 3);
SLOT_AT(HSM_CLIENT_TPM_INTERFACE, hsm_client_get_srk, 4);
SLOT_AT(HSM_CLIENT_TPM_INTERFACE, hsm_client_sign_with_identity, 5);
_Static_assert(sizeof(HSM_CLIENT_X509_INTERFACE) == 5 * sizeof(void (*)(void)), "x509 table");
_Static_assert(sizeof(HSM_CLIENT_KEY_INTERFACE) == 5 * sizeof(void (*)(void)), "key table");
_Static_assert(sizeof(HSM_CLIENT_TPM_INTERFACE) == 6 * sizeof(void (*)(void)), "tpm table");

const HSM_CLIENT_X509_INTERFACE *hsm_client_x509_interface(void)
{
    return &x509_table;
}

const HSM_CLIENT_KEY_INTERFACE *hsm_client_key_interface(void)
{
    return &key_table;
}

const HSM_CLIENT_TPM_INTERFACE *hsm_client_tpm_interface(void)
{
    return &tpm_table;
}
