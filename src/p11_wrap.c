/*
 * PKCS#11 through p11-kit (p11_wrap.h). Every call into a module goes through CALL(),
 * which counts it; every failing CK_RV is logged by name once, by the function that
 * decides what it means.
 *
 * Static state: a list of loaded modules (one entry per configured path; "" is the set
 * of modules registered with p11-kit) and a list of tokens (one per module and token
 * identity), both under registry_lock and kept until provhsm_p11_shutdown(). Each token
 * has its own mutex, held for every operation on its session; the registry lock is
 * never taken while a token's mutex is held.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/objects.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>

#include "log.h"
#include "p11_wrap.h"
#include "safefile.h"
#include "secmem.h"

#define MOD "pkcs11"

#define PIN_FILE_MAX   256 /* bytes read from a PIN file */
#define MAX_SLOTS      256
#define PIN_HASH_BYTES 32

static atomic_uint_fast64_t calls_total;
static atomic_uint_fast64_t sessions_opened_total;
static atomic_uint_fast64_t logins_total;

/* Calls a module function and counts it. */
#define CALL(fl, fn, ...) (atomic_fetch_add(&calls_total, 1), (fl)->fn(__VA_ARGS__))

typedef struct p11_module {
    struct p11_module *next;
    char path[PROVHSM_PATH_MAX]; /* as configured ("" = every module registered with p11-kit) */
    CK_FUNCTION_LIST **list;     /* NULL-terminated, initialised */
} p11_module;

struct provhsm_p11_token {
    struct provhsm_p11_token *next;
    p11_module *module;
    CK_FUNCTION_LIST *fl; /* the module of `module` that holds the token */
    CK_SLOT_ID slot;
    CK_TOKEN_INFO info; /* as found: label, manufacturer, model, serial name the token */
    char label[33];     /* info.label without its padding, for messages */
    char pin_file[PROVHSM_PATH_MAX];
    char pin_env[PROVHSM_NAME_MAX];

    pthread_mutex_t lock; /* everything below */
    CK_SESSION_HANDLE session;
    int have_session;
    unsigned long generation; /* bumped with every new session: keys find their handle again */
    int pin_refused;          /* refused_pin holds the hash of a PIN the token refused */
    uint8_t refused_pin[PIN_HASH_BYTES];
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static p11_module *modules;
static provhsm_p11_token *tokens;

/* ---- return values ------------------------------------------------------------------ */

typedef struct rv_name {
    CK_RV rv;
    const char *name;
} rv_name;

#define RV(x)                                                                                      \
    {                                                                                              \
        x, #x                                                                                      \
    }
static const rv_name rv_names[] = {
    RV(CKR_OK),
    RV(CKR_CANCEL),
    RV(CKR_HOST_MEMORY),
    RV(CKR_SLOT_ID_INVALID),
    RV(CKR_GENERAL_ERROR),
    RV(CKR_FUNCTION_FAILED),
    RV(CKR_ARGUMENTS_BAD),
    RV(CKR_NEED_TO_CREATE_THREADS),
    RV(CKR_CANT_LOCK),
    RV(CKR_ATTRIBUTE_READ_ONLY),
    RV(CKR_ATTRIBUTE_SENSITIVE),
    RV(CKR_ATTRIBUTE_TYPE_INVALID),
    RV(CKR_ATTRIBUTE_VALUE_INVALID),
    RV(CKR_ACTION_PROHIBITED),
    RV(CKR_DATA_INVALID),
    RV(CKR_DATA_LEN_RANGE),
    RV(CKR_DEVICE_ERROR),
    RV(CKR_DEVICE_MEMORY),
    RV(CKR_DEVICE_REMOVED),
    RV(CKR_FUNCTION_CANCELED),
    RV(CKR_FUNCTION_NOT_SUPPORTED),
    RV(CKR_KEY_HANDLE_INVALID),
    RV(CKR_KEY_SIZE_RANGE),
    RV(CKR_KEY_TYPE_INCONSISTENT),
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED),
    RV(CKR_MECHANISM_INVALID),
    RV(CKR_MECHANISM_PARAM_INVALID),
    RV(CKR_OBJECT_HANDLE_INVALID),
    RV(CKR_OPERATION_ACTIVE),
    RV(CKR_OPERATION_NOT_INITIALIZED),
    RV(CKR_PIN_INCORRECT),
    RV(CKR_PIN_INVALID),
    RV(CKR_PIN_LEN_RANGE),
    RV(CKR_PIN_EXPIRED),
    RV(CKR_PIN_LOCKED),
    RV(CKR_SESSION_CLOSED),
    RV(CKR_SESSION_COUNT),
    RV(CKR_SESSION_HANDLE_INVALID),
    RV(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
    RV(CKR_SESSION_READ_ONLY),
    RV(CKR_SESSION_EXISTS),
    RV(CKR_SESSION_READ_ONLY_EXISTS),
    RV(CKR_SESSION_READ_WRITE_SO_EXISTS),
    RV(CKR_SIGNATURE_INVALID),
    RV(CKR_SIGNATURE_LEN_RANGE),
    RV(CKR_TEMPLATE_INCOMPLETE),
    RV(CKR_TEMPLATE_INCONSISTENT),
    RV(CKR_TOKEN_NOT_PRESENT),
    RV(CKR_TOKEN_NOT_RECOGNIZED),
    RV(CKR_TOKEN_WRITE_PROTECTED),
    RV(CKR_USER_ALREADY_LOGGED_IN),
    RV(CKR_USER_NOT_LOGGED_IN),
    RV(CKR_USER_PIN_NOT_INITIALIZED),
    RV(CKR_USER_TYPE_INVALID),
    RV(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
    RV(CKR_USER_TOO_MANY_TYPES),
    RV(CKR_RANDOM_NO_RNG),
    RV(CKR_DOMAIN_PARAMS_INVALID),
    RV(CKR_CURVE_NOT_SUPPORTED),
    RV(CKR_BUFFER_TOO_SMALL),
    RV(CKR_INFORMATION_SENSITIVE),
    RV(CKR_CRYPTOKI_NOT_INITIALIZED),
    RV(CKR_CRYPTOKI_ALREADY_INITIALIZED),
    RV(CKR_MUTEX_BAD),
    RV(CKR_MUTEX_NOT_LOCKED),
    RV(CKR_FUNCTION_REJECTED),
};
#undef RV

const char *provhsm_p11_rv_name(unsigned long rv, char *buf, size_t len)
{
    for (size_t i = 0; i < sizeof(rv_names) / sizeof(rv_names[0]); i++)
        if (rv_names[i].rv == rv)
            return rv_names[i].name;
    snprintf(buf, len, "CKR_0x%08lx", rv);
    return buf;
}

/* Logs "<call> failed on token <label>: <CKR_NAME> (<p11-kit's explanation>)". */
static void log_rv(const provhsm_p11_token *tok, const char *call, CK_RV rv)
{
    char buf[24];
    PH_ERR(MOD, "%s failed on token \"%s\": %s (%s)", call, tok != NULL ? tok->label : "?",
           provhsm_p11_rv_name(rv, buf, sizeof(buf)), p11_kit_strerror(rv));
}

/* The session is gone but the token may still be there: drop it and open another. */
static int session_lost(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
           rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_USER_NOT_LOGGED_IN;
}

static int handle_lost(CK_RV rv)
{
    return rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID;
}

/* What a failing CK_RV means for the caller. */
static provhsm_err rv_to_err(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
        return PROVHSM_OK;
    case CKR_HOST_MEMORY:
    case CKR_DEVICE_MEMORY:
        return PROVHSM_E_NOMEM;
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
    case CKR_USER_PIN_NOT_INITIALIZED:
        return PROVHSM_E_WRONG_KEY;
    case CKR_KEY_HANDLE_INVALID:
    case CKR_OBJECT_HANDLE_INVALID:
        return PROVHSM_E_NOT_FOUND;
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_FUNCTION_NOT_SUPPORTED:
    case CKR_CURVE_NOT_SUPPORTED:
    case CKR_DOMAIN_PARAMS_INVALID:
    case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_TEMPLATE_INCONSISTENT:
    case CKR_ATTRIBUTE_VALUE_INVALID:
        return PROVHSM_E_UNSUPPORTED;
    case CKR_TOKEN_WRITE_PROTECTED:
    case CKR_SESSION_READ_ONLY:
    case CKR_USER_NOT_LOGGED_IN:
        return PROVHSM_E_PERMISSION;
    default:
        return PROVHSM_E_NO_DEVICE;
    }
}

/* ---- modules ------------------------------------------------------------------------ */

/* C_Initialize with OS locking and no callbacks: the module uses its own threads' primitives. */
static int module_init(CK_FUNCTION_LIST *fl, const char *name)
{
    CK_C_INITIALIZE_ARGS args = {0};
    args.flags = CKF_OS_LOCKING_OK;
    CK_RV rv = CALL(fl, C_Initialize, &args);
    if (rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
        return 1;
    char buf[24];
    PH_ERR(MOD, "C_Initialize of the PKCS#11 module %s failed: %s (%s)", name,
           provhsm_p11_rv_name(rv, buf, sizeof(buf)), p11_kit_strerror(rv));
    return 0;
}

/* The module at `path`, in a list of one. */
static CK_FUNCTION_LIST **load_one(const char *path)
{
    CK_FUNCTION_LIST **list = calloc(2, sizeof(*list));
    if (list == NULL)
        return NULL;
    list[0] = p11_kit_module_load(path, 0);
    if (list[0] == NULL) {
        const char *why = p11_kit_message();
        PH_ERR(MOD, "cannot load the PKCS#11 module %s: %s", path,
               why != NULL ? why : "p11-kit gave no reason");
    } else if (!module_init(list[0], path)) {
        p11_kit_module_release(list[0]);
        list[0] = NULL;
    }
    if (list[0] == NULL) {
        free(list);
        return NULL;
    }
    return list;
}

/*
 * Every module registered with p11-kit (what its proxy module offers), those that
 * initialise; a module that fails is left out with a log line.
 */
static CK_FUNCTION_LIST **load_registered(void)
{
    CK_FUNCTION_LIST **list = p11_kit_modules_load(NULL, 0);
    if (list == NULL) {
        const char *why = p11_kit_message();
        PH_ERR(MOD, "cannot load the PKCS#11 modules registered with p11-kit: %s",
               why != NULL ? why : "p11-kit gave no reason");
        return NULL;
    }
    size_t kept = 0;
    for (size_t i = 0; list[i] != NULL; i++) {
        char *name = p11_kit_module_get_name(list[i]);
        if (module_init(list[i], name != NULL ? name : "(unnamed)"))
            list[kept++] = list[i];
        else
            p11_kit_module_release(list[i]);
        free(name);
    }
    list[kept] = NULL;
    if (kept == 0) {
        PH_ERR(MOD, "no PKCS#11 module is registered with p11-kit: set [pkcs11] module to "
                    "the token's module");
        p11_kit_modules_release(list);
        return NULL;
    }
    return list;
}

static void modules_finalize(CK_FUNCTION_LIST **list)
{
    for (size_t i = 0; list[i] != NULL; i++) {
        (void)CALL(list[i], C_Finalize, NULL);
        p11_kit_module_release(list[i]);
    }
    free(list);
}

/* The module(s) for `path`, loaded and initialised on first use (registry lock held). */
static provhsm_err module_get(const char *path, p11_module **out)
{
    for (p11_module *m = modules; m != NULL; m = m->next)
        if (strcmp(m->path, path) == 0) {
            *out = m;
            return PROVHSM_OK;
        }
    CK_FUNCTION_LIST **list = path[0] != '\0' ? load_one(path) : load_registered();
    if (list == NULL)
        return PROVHSM_E_NO_DEVICE;
    p11_module *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        modules_finalize(list);
        return PROVHSM_E_NOMEM;
    }
    snprintf(m->path, sizeof(m->path), "%s", path);
    m->list = list;
    m->next = modules;
    modules = m;
    *out = m;
    return PROVHSM_OK;
}

/* ---- tokens ------------------------------------------------------------------------- */

static void copy_padded(char *dst, size_t dstlen, const unsigned char *src, size_t srclen)
{
    size_t n = p11_kit_space_strlen(src, srclen);
    if (n >= dstlen)
        n = dstlen - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void provhsm_p11_token_describe(const provhsm_p11_token *tok, char *buf, size_t len)
{
    char manufacturer[33], model[17];
    copy_padded(manufacturer, sizeof(manufacturer), tok->info.manufacturerID,
                sizeof(tok->info.manufacturerID));
    copy_padded(model, sizeof(model), tok->info.model, sizeof(tok->info.model));
    snprintf(buf, len, "%s (%s%s%s)", tok->label, manufacturer,
             manufacturer[0] != '\0' && model[0] != '\0' ? " " : "", model);
}

/* 1 when two token infos name the same token. */
static int same_token(const CK_TOKEN_INFO *a, const CK_TOKEN_INFO *b)
{
    return memcmp(a->label, b->label, sizeof(a->label)) == 0 &&
           memcmp(a->manufacturerID, b->manufacturerID, sizeof(a->manufacturerID)) == 0 &&
           memcmp(a->model, b->model, sizeof(a->model)) == 0 &&
           memcmp(a->serialNumber, b->serialNumber, sizeof(a->serialNumber)) == 0;
}

/* The slots with a token present (malloc'd list). */
static provhsm_err slot_list(CK_FUNCTION_LIST *fl, CK_SLOT_ID **out, CK_ULONG *count)
{
    CK_ULONG n = 0;
    CK_RV rv = CALL(fl, C_GetSlotList, CK_TRUE, NULL, &n);
    if (rv == CKR_OK && n > MAX_SLOTS)
        n = MAX_SLOTS;
    CK_SLOT_ID *slots = calloc(n > 0 ? n : 1, sizeof(*slots));
    if (slots == NULL)
        return PROVHSM_E_NOMEM;
    if (rv == CKR_OK && n > 0)
        rv = CALL(fl, C_GetSlotList, CK_TRUE, slots, &n);
    if (rv != CKR_OK) {
        log_rv(NULL, "C_GetSlotList", rv);
        free(slots);
        return rv_to_err(rv);
    }
    *out = slots;
    *count = n;
    return PROVHSM_OK;
}

/* 1 when every URI in `uris` (NULL entries skipped) selects this module and token. */
static int token_matches(P11KitUri *const uris[2], CK_INFO *module, const CK_TOKEN_INFO *info)
{
    for (int u = 0; u < 2; u++)
        if (uris[u] != NULL &&
            (!p11_kit_uri_match_token_info(uris[u], info) ||
             (module != NULL && !p11_kit_uri_match_module_info(uris[u], module))))
            return 0;
    return 1;
}

typedef struct token_choice {
    CK_FUNCTION_LIST *fl;
    CK_SLOT_ID slot;
    CK_TOKEN_INFO info;
    int found;
} token_choice;

/* Counts the initialised tokens of one module that the URIs select; keeps the first. */
static provhsm_err scan_module(CK_FUNCTION_LIST *fl, P11KitUri *const uris[2], token_choice *c)
{
    CK_INFO module_info;
    int have_info = CALL(fl, C_GetInfo, &module_info) == CKR_OK;
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0;
    provhsm_err err = slot_list(fl, &slots, &n);
    if (err != PROVHSM_OK)
        return err;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO info;
        if (CALL(fl, C_GetTokenInfo, slots[i], &info) != CKR_OK ||
            !(info.flags & CKF_TOKEN_INITIALIZED) ||
            !token_matches(uris, have_info ? &module_info : NULL, &info))
            continue;
        if (c->found++ == 0) {
            c->fl = fl;
            c->slot = slots[i];
            c->info = info;
        }
    }
    free(slots);
    return PROVHSM_OK;
}

/*
 * The one initialised token that every URI in `uris` selects, among the module's (or the
 * registered modules') tokens. PROVHSM_E_NO_DEVICE when none does, PROVHSM_E_CONFIG when
 * several do; logged.
 */
static provhsm_err select_token(const p11_module *m, P11KitUri *const uris[2], const char *shown,
                                token_choice *c)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; m->list[i] != NULL; i++) {
        provhsm_err err = scan_module(m->list[i], uris, c);
        if (err != PROVHSM_OK && m->list[1] == NULL)
            return err; /* with several modules, one failing does not hide the others */
    }
    if (c->found == 0) {
        PH_ERR(MOD, "token not present: no initialised token matches %s", shown);
        return PROVHSM_E_NO_DEVICE;
    }
    if (c->found > 1) {
        PH_ERR(MOD, "%d tokens match %s: name one with token= or serial= in [pkcs11] token",
               c->found, shown);
        return PROVHSM_E_CONFIG;
    }
    return PROVHSM_OK;
}

static provhsm_err parse_uri(const char *text, const char *what, P11KitUri **out)
{
    P11KitUri *uri = p11_kit_uri_new();
    if (uri == NULL)
        return PROVHSM_E_NOMEM;
    int rc = p11_kit_uri_parse(text, P11_KIT_URI_FOR_ANY, uri);
    if (rc != P11_KIT_URI_OK) {
        PH_ERR(MOD, "%s \"%.200s\" is not a PKCS#11 URI: %s", what, text, p11_kit_uri_message(rc));
        p11_kit_uri_free(uri);
        return PROVHSM_E_CONFIG;
    }
    *out = uri;
    return PROVHSM_OK;
}

/* The token for this module and token identity (registry lock held), created if new. */
static provhsm_err token_entry(p11_module *m, const token_choice *c, provhsm_p11_token **out)
{
    for (provhsm_p11_token *t = tokens; t != NULL; t = t->next)
        if (t->module == m && t->fl == c->fl && same_token(&t->info, &c->info)) {
            *out = t;
            return PROVHSM_OK;
        }
    provhsm_p11_token *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return PROVHSM_E_NOMEM;
    if (pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t);
        return PROVHSM_E_NOMEM;
    }
    t->module = m;
    t->fl = c->fl;
    t->slot = c->slot;
    t->info = c->info;
    const CK_TOKEN_INFO *info = &c->info;
    copy_padded(t->label, sizeof(t->label), info->label, sizeof(info->label));
    t->next = tokens;
    tokens = t;
    *out = t;
    return PROVHSM_OK;
}

/* ---- the PIN and the session (token lock held) -------------------------------------- */

/* The PIN from the environment variable pin_env, in secure memory. */
static provhsm_err pin_from_env(const provhsm_p11_token *t, uint8_t **out, size_t *len_out)
{
    const char *env = t->pin_env[0] != '\0' ? getenv(t->pin_env) : NULL;
    if (env == NULL || *env == '\0')
        return PROVHSM_E_NOT_FOUND;
    uint8_t *pin = (uint8_t *)provhsm_secure_strdup(env);
    if (pin == NULL)
        return PROVHSM_E_NOMEM;
    *out = pin;
    *len_out = strlen(env);
    return PROVHSM_OK;
}

/*
 * The PIN in secure memory: the contents of pin_file when one is configured (one
 * trailing line ending dropped; owner and mode checked like the store's passphrase file),
 * else the environment variable pin_env. PROVHSM_E_NOT_FOUND, not logged, when neither
 * gives one.
 */
static provhsm_err read_pin(const provhsm_p11_token *t, uint8_t **out, size_t *len_out)
{
    if (t->pin_file[0] == '\0')
        return pin_from_env(t, out, len_out);
    const provhsm_file_ref f = {AT_FDCWD, t->pin_file, t->pin_file, "PIN file", NULL, 0};
    uint8_t *buf = NULL;
    size_t len = 0;
    provhsm_err err = provhsm_safefile_read(&f, PROVHSM_FILE_SECRET, PIN_FILE_MAX, &buf, &len);
    if (err == PROVHSM_E_NOT_FOUND) {
        PH_ERR(MOD, "[pkcs11] pin_file %s does not exist", t->pin_file);
        return PROVHSM_E_CONFIG;
    }
    if (err != PROVHSM_OK)
        return err;
    if (len > 0 && buf[len - 1] == '\n')
        buf[--len] = 0;
    if (len > 0 && buf[len - 1] == '\r')
        buf[--len] = 0;
    if (len == 0) {
        PH_ERR(MOD, "[pkcs11] pin_file %s is empty", t->pin_file);
        provhsm_secure_free(buf);
        return PROVHSM_E_CONFIG;
    }
    *out = buf;
    *len_out = len;
    return PROVHSM_OK;
}

static int pin_hash(const uint8_t *pin, size_t len, uint8_t hash[PIN_HASH_BYTES])
{
    unsigned int n = 0;
    return EVP_Digest(pin, len, hash, &n, EVP_sha256(), NULL) == 1 && n == PIN_HASH_BYTES;
}

static provhsm_err login_with(provhsm_p11_token *t, const uint8_t *pin, size_t len)
{
    uint8_t hash[PIN_HASH_BYTES];
    if (!pin_hash(pin, len, hash)) {
        provhsm_wipe(hash, sizeof(hash)); /* a digest that failed half way may hold some */
        return PROVHSM_E_CRYPTO;
    }
    if (t->pin_refused && CRYPTO_memcmp(hash, t->refused_pin, sizeof(hash)) == 0) {
        PH_ERR(MOD,
               "wrong PIN for token \"%s\": the token refused this PIN before and it is not "
               "sent again (tokens lock after a few wrong PINs); correct %s%s",
               t->label, t->pin_file[0] != '\0' ? "[pkcs11] pin_file " : "$",
               t->pin_file[0] != '\0' ? t->pin_file : t->pin_env);
        provhsm_wipe(hash, sizeof(hash));
        return PROVHSM_E_WRONG_KEY;
    }
    atomic_fetch_add(&logins_total, 1);
    CK_RV rv = CALL(t->fl, C_Login, t->session, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)len);
    provhsm_err err = PROVHSM_OK;
    if (rv == CKR_PIN_INCORRECT) {
        memcpy(t->refused_pin, hash, sizeof(hash));
        t->pin_refused = 1;
        PH_ERR(MOD, "wrong PIN for token \"%s\" (CKR_PIN_INCORRECT): not retried", t->label);
        err = PROVHSM_E_WRONG_KEY;
    } else if (rv == CKR_PIN_LOCKED) {
        PH_ERR(MOD,
               "the user PIN of token \"%s\" is locked (CKR_PIN_LOCKED): the token's "
               "security officer must unlock it",
               t->label);
        err = PROVHSM_E_WRONG_KEY;
    } else if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        log_rv(t, "C_Login", rv);
        err = rv_to_err(rv);
    }
    provhsm_wipe(hash, sizeof(hash));
    return err;
}

static provhsm_err login(provhsm_p11_token *t)
{
    if (!(t->info.flags & CKF_LOGIN_REQUIRED))
        return PROVHSM_OK;
    uint8_t *pin = NULL;
    size_t len = 0;
    provhsm_err err = read_pin(t, &pin, &len);
    if (err == PROVHSM_E_NOT_FOUND && (t->info.flags & CKF_PROTECTED_AUTHENTICATION_PATH)) {
        /* the PIN is entered on the device itself */
        atomic_fetch_add(&logins_total, 1);
        CK_RV rv = CALL(t->fl, C_Login, t->session, CKU_USER, NULL, 0);
        if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN)
            return PROVHSM_OK;
        log_rv(t, "C_Login", rv);
        return rv_to_err(rv);
    }
    if (err == PROVHSM_E_NOT_FOUND) {
        PH_ERR(MOD, "token \"%s\" needs a PIN: set $%s or [pkcs11] pin_file", t->label, t->pin_env);
        return PROVHSM_E_CONFIG;
    }
    if (err != PROVHSM_OK)
        return err;
    err = login_with(t, pin, len);
    provhsm_secure_free(pin);
    return err;
}

static void session_drop(provhsm_p11_token *t)
{
    if (!t->have_session)
        return;
    (void)CALL(t->fl, C_CloseSession, t->session);
    t->have_session = 0;
}

/* Finds the token again (it may be in another slot after being put back). */
static provhsm_err slot_refind(provhsm_p11_token *t)
{
    CK_FUNCTION_LIST *fl = t->fl;
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0;
    provhsm_err err = slot_list(fl, &slots, &n);
    if (err != PROVHSM_OK)
        return err;
    err = PROVHSM_E_NO_DEVICE;
    for (CK_ULONG i = 0; i < n && err != PROVHSM_OK; i++) {
        CK_TOKEN_INFO info;
        if (CALL(fl, C_GetTokenInfo, slots[i], &info) == CKR_OK && same_token(&info, &t->info)) {
            t->slot = slots[i];
            err = PROVHSM_OK;
        }
    }
    free(slots);
    if (err != PROVHSM_OK)
        PH_ERR(MOD, "token not present: token \"%s\" is no longer in any slot", t->label);
    return err;
}

static CK_RV open_session(provhsm_p11_token *t)
{
    CK_FUNCTION_LIST *fl = t->fl;
    atomic_fetch_add(&sessions_opened_total, 1);
    CK_RV rv = CALL(fl, C_OpenSession, t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                    &t->session);
    if (rv == CKR_TOKEN_WRITE_PROTECTED) { /* signing needs no write access */
        atomic_fetch_add(&sessions_opened_total, 1);
        rv = CALL(fl, C_OpenSession, t->slot, CKF_SERIAL_SESSION, NULL, NULL, &t->session);
    }
    return rv;
}

/* A logged-in session, opened if there is none. */
static provhsm_err session_ensure(provhsm_p11_token *t)
{
    if (t->have_session)
        return PROVHSM_OK;
    CK_RV rv = open_session(t);
    if (rv == CKR_SLOT_ID_INVALID || rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_REMOVED) {
        if (slot_refind(t) != PROVHSM_OK)
            return PROVHSM_E_NO_DEVICE;
        rv = open_session(t);
    }
    if (rv != CKR_OK) {
        log_rv(t, "C_OpenSession", rv);
        if (rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_REMOVED)
            PH_ERR(MOD, "token not present: \"%s\"", t->label);
        return rv_to_err(rv);
    }
    t->have_session = 1;
    t->generation++;
    provhsm_err err = login(t);
    if (err != PROVHSM_OK)
        session_drop(t);
    return err;
}

provhsm_err provhsm_p11_token_get(const provhsm_config *cfg, const char *object_uri,
                                  provhsm_p11_token **out)
{
    if (cfg == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    P11KitUri *uris[2] = {NULL, NULL};
    provhsm_err err = parse_uri(cfg->pkcs11_token, "[pkcs11] token", &uris[0]);
    if (err == PROVHSM_OK && object_uri != NULL)
        err = parse_uri(object_uri, "key URI", &uris[1]);
    if (err != PROVHSM_OK) {
        p11_kit_uri_free(uris[0]);
        return err;
    }
    char shown[1100];
    snprintf(shown, sizeof(shown), "%.300s%s%.300s in module %.400s", cfg->pkcs11_token,
             object_uri != NULL ? " and " : "", object_uri != NULL ? object_uri : "",
             cfg->pkcs11_module[0] != '\0' ? cfg->pkcs11_module : "(every module p11-kit knows)");

    provhsm_p11_token *t = NULL;
    pthread_mutex_lock(&registry_lock);
    p11_module *m = NULL;
    token_choice choice;
    err = module_get(cfg->pkcs11_module, &m);
    if (err == PROVHSM_OK)
        err = select_token(m, uris, shown, &choice);
    if (err == PROVHSM_OK)
        err = token_entry(m, &choice, &t);
    pthread_mutex_unlock(&registry_lock);
    p11_kit_uri_free(uris[0]);
    p11_kit_uri_free(uris[1]);
    if (err != PROVHSM_OK)
        return err;

    pthread_mutex_lock(&t->lock);
    t->slot = choice.slot;
    /* where the PIN is read from at the next login: the configuration of the latest caller */
    snprintf(t->pin_file, sizeof(t->pin_file), "%s", cfg->pkcs11_pin_file);
    snprintf(t->pin_env, sizeof(t->pin_env), "%s", cfg->pkcs11_pin_env);
    err = session_ensure(t);
    pthread_mutex_unlock(&t->lock);
    if (err == PROVHSM_OK)
        *out = t;
    return err;
}

/* ---- running an operation on the session -------------------------------------------- */

/*
 * An operation on the token's session. It returns the CK_RV of the call that failed
 * (naming it in *call) without logging it, or CKR_OK; *err carries a failure that is not
 * a CK_RV (nothing found, bad data), already logged.
 */
typedef CK_RV (*p11_op)(provhsm_p11_token *t, void *arg, const char **call, provhsm_err *err);

/*
 * Runs op under the token's lock on a logged-in session. When the session was lost (the
 * token closed it, was removed, logged out), the session is dropped and op runs once more
 * on a new one. The failing call's CK_RV is logged here.
 */
static provhsm_err run(provhsm_p11_token *t, p11_op op, void *arg)
{
    provhsm_err err = PROVHSM_OK;
    pthread_mutex_lock(&t->lock);
    for (int attempt = 0; attempt < 2; attempt++) {
        err = session_ensure(t);
        if (err != PROVHSM_OK)
            break;
        const char *call = "?";
        provhsm_err op_err = PROVHSM_OK;
        CK_RV rv = op(t, arg, &call, &op_err);
        if (rv == CKR_OK) {
            err = op_err;
            break;
        }
        if (session_lost(rv) && attempt == 0) {
            char buf[24];
            PH_WARN(MOD, "%s on token \"%s\": %s; opening a new session", call, t->label,
                    provhsm_p11_rv_name(rv, buf, sizeof(buf)));
            session_drop(t);
            continue;
        }
        log_rv(t, call, rv);
        if (session_lost(rv)) {
            session_drop(t);
            if (rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_REMOVED)
                PH_ERR(MOD, "token not present: \"%s\"", t->label);
        }
        err = rv_to_err(rv);
        break;
    }
    pthread_mutex_unlock(&t->lock);
    return err;
}

/* ---- objects ------------------------------------------------------------------------ */

/* Up to `max` objects that match the template; *count how many. */
static CK_RV find(provhsm_p11_token *t, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *found,
                  CK_ULONG max, CK_ULONG *count, const char **call)
{
    CK_FUNCTION_LIST *fl = t->fl;
    *count = 0;
    CK_RV rv = CALL(fl, C_FindObjectsInit, t->session, tmpl, n);
    if (rv != CKR_OK) {
        *call = "C_FindObjectsInit";
        return rv;
    }
    rv = CALL(fl, C_FindObjects, t->session, found, max, count);
    CK_RV final = CALL(fl, C_FindObjectsFinal, t->session);
    if (rv != CKR_OK) {
        *call = "C_FindObjects";
        return rv;
    }
    if (final != CKR_OK)
        *call = "C_FindObjectsFinal";
    return final;
}

/* Template for the objects of class `cls` with the name's CKA_ID and CKA_LABEL. */
static CK_ULONG name_template(const provhsm_p11_keyname *name, CK_OBJECT_CLASS *cls,
                              CK_ATTRIBUTE tmpl[3])
{
    CK_ULONG n = 0;
    tmpl[n++] = (CK_ATTRIBUTE){CKA_CLASS, cls, sizeof(*cls)};
    if (name->id_len > 0)
        tmpl[n++] = (CK_ATTRIBUTE){CKA_ID, (void *)name->id, name->id_len};
    if (name->has_label)
        tmpl[n++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)name->label, strlen(name->label)};
    return n;
}

static void name_describe(const provhsm_p11_keyname *name, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    if (name->has_label)
        used = (size_t)snprintf(buf, len, "object \"%s\"%s", name->label,
                                name->id_len > 0 ? ", " : "");
    if (name->id_len > 0 && used < len) {
        used += (size_t)snprintf(buf + used, len - used, "id ");
        for (size_t i = 0; i < name->id_len && used + 3 <= len; i++)
            used += (size_t)snprintf(buf + used, len - used, "%02x", name->id[i]);
    }
}

/*
 * 1 while the token's slot still holds it, initialised: a module may keep a session open
 * on a token whose objects are gone (SoftHSM2 with its token directory deleted).
 */
static int token_present(provhsm_p11_token *t)
{
    CK_TOKEN_INFO info;
    return CALL(t->fl, C_GetTokenInfo, t->slot, &info) == CKR_OK &&
           (info.flags & CKF_TOKEN_INITIALIZED) && same_token(&info, &t->info);
}

/* 1 when the token wants a login and the session has lost it (someone logged out). */
static int logged_out(provhsm_p11_token *t)
{
    CK_SESSION_INFO info;
    if (!(t->info.flags & CKF_LOGIN_REQUIRED) ||
        CALL(t->fl, C_GetSessionInfo, t->session, &info) != CKR_OK)
        return 0;
    return info.state == CKS_RO_PUBLIC_SESSION || info.state == CKS_RW_PUBLIC_SESSION;
}

/*
 * The one private key `name` selects: CKR_OK with *err PROVHSM_E_NOT_FOUND (logged
 * unless quiet) when there is none, PROVHSM_E_NO_DEVICE (logged) when the token itself
 * is gone, PROVHSM_E_INVALID_ARG when there are several.
 */
static CK_RV find_private(provhsm_p11_token *t, const provhsm_p11_keyname *name, int quiet,
                          CK_OBJECT_HANDLE *out, const char **call, provhsm_err *err)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl[3];
    CK_ULONG n = name_template(name, &cls, tmpl);
    CK_OBJECT_HANDLE found[2];
    CK_ULONG count = 0;
    CK_RV rv = find(t, tmpl, n, found, 2, &count, call);
    if (rv != CKR_OK)
        return rv;
    char what[PROVHSM_P11_LABEL_MAX + 2 * PROVHSM_P11_ID_MAX + 32];
    name_describe(name, what, sizeof(what));
    if (count == 0 && logged_out(t)) {
        /* private objects are invisible to a session that is no longer logged in */
        *call = "C_FindObjects (the session is no longer logged in)";
        return CKR_USER_NOT_LOGGED_IN;
    }
    if (count == 0 && !token_present(t)) {
        PH_ERR(MOD, "token not present: token \"%s\" is gone (looking for %s)", t->label, what);
        *err = PROVHSM_E_NO_DEVICE;
    } else if (count == 0) {
        if (!quiet)
            PH_ERR(MOD, "no private key with %s on token \"%s\" (deleted from the token?)", what,
                   t->label);
        *err = PROVHSM_E_NOT_FOUND;
    } else if (count > 1) {
        PH_ERR(MOD, "several private keys with %s on token \"%s\": name one by id", what, t->label);
        *err = PROVHSM_E_INVALID_ARG;
    } else {
        *out = found[0];
    }
    return CKR_OK;
}

/* A variable-length attribute, malloc'd (two calls: size, then value). */
static CK_RV get_var_attr(provhsm_p11_token *t, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
                          uint8_t **out, size_t *len_out)
{
    CK_FUNCTION_LIST *fl = t->fl;
    CK_ATTRIBUTE a = {type, NULL, 0};
    CK_RV rv = CALL(fl, C_GetAttributeValue, t->session, obj, &a, 1);
    if (rv != CKR_OK)
        return rv;
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen > 65536)
        return CKR_ATTRIBUTE_TYPE_INVALID;
    uint8_t *buf = malloc(a.ulValueLen > 0 ? a.ulValueLen : 1);
    if (buf == NULL)
        return CKR_HOST_MEMORY;
    a.pValue = buf;
    rv = CALL(fl, C_GetAttributeValue, t->session, obj, &a, 1);
    if (rv != CKR_OK) {
        free(buf);
        return rv;
    }
    *out = buf;
    *len_out = a.ulValueLen;
    return CKR_OK;
}

/* A bool attribute the token does not report counts as the unsafe value. */
static int bool_attr(const CK_ATTRIBUTE *a, const CK_BBOOL *v, int unknown)
{
    return a->ulValueLen == sizeof(CK_BBOOL) ? *v == CK_TRUE : unknown;
}

static CK_RV read_private_facts(provhsm_p11_token *t, CK_OBJECT_HANDLE obj,
                                provhsm_p11_key_facts *f, const char **call)
{
    CK_KEY_TYPE type = (CK_KEY_TYPE)-1;
    CK_BBOOL sens = 0, extr = 1, asens = 0, nextr = 0, sign = 0;
    unsigned char id[PROVHSM_P11_ID_MAX], label[PROVHSM_P11_LABEL_MAX - 1];
    CK_ATTRIBUTE a[] = {
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_SENSITIVE, &sens, sizeof(sens)},
        {CKA_EXTRACTABLE, &extr, sizeof(extr)},
        {CKA_ALWAYS_SENSITIVE, &asens, sizeof(asens)},
        {CKA_NEVER_EXTRACTABLE, &nextr, sizeof(nextr)},
        {CKA_SIGN, &sign, sizeof(sign)},
        {CKA_ID, id, sizeof(id)},
        {CKA_LABEL, label, sizeof(label)},
    };
    CK_RV rv = CALL(t->fl, C_GetAttributeValue, t->session, obj, a, sizeof(a) / sizeof(a[0]));
    /* these two say only that some attribute is missing or too long: each is checked */
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_BUFFER_TOO_SMALL &&
        rv != CKR_ATTRIBUTE_SENSITIVE) {
        *call = "C_GetAttributeValue";
        return rv;
    }
    f->key_type = a[0].ulValueLen == sizeof(type) ? type : (unsigned long)-1;
    f->sensitive = bool_attr(&a[1], &sens, 0);
    f->extractable = bool_attr(&a[2], &extr, 1);
    f->always_sensitive = bool_attr(&a[3], &asens, 0);
    f->never_extractable = bool_attr(&a[4], &nextr, 0);
    f->can_sign = bool_attr(&a[5], &sign, 0);
    f->id_len = a[6].ulValueLen <= sizeof(id) ? a[6].ulValueLen : 0;
    memcpy(f->id, id, f->id_len);
    size_t ll = a[7].ulValueLen <= sizeof(label) ? a[7].ulValueLen : 0;
    memcpy(f->label, label, ll);
    f->label[ll] = '\0';
    return CKR_OK;
}

/* The public half: a public key object with the private key's id, else a certificate. */
static CK_RV read_public_facts(provhsm_p11_token *t, const provhsm_p11_keyname *name,
                               provhsm_p11_key_facts *f, const char **call, provhsm_err *err)
{
    provhsm_p11_keyname by = *name;
    if (f->id_len > 0) { /* the id is what ties a key pair together */
        memcpy(by.id, f->id, f->id_len);
        by.id_len = f->id_len;
        by.has_label = 0;
    }
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_ATTRIBUTE tmpl[3];
    CK_ULONG n = name_template(&by, &cls, tmpl);
    CK_OBJECT_HANDLE obj;
    CK_ULONG count = 0;
    CK_RV rv = find(t, tmpl, n, &obj, 1, &count, call);
    if (rv != CKR_OK)
        return rv;
    if (count == 1) {
        rv = get_var_attr(t, obj, CKA_EC_PARAMS, &f->ec_params, &f->ec_params_len);
        if (rv == CKR_OK)
            rv = get_var_attr(t, obj, CKA_EC_POINT, &f->ec_point, &f->ec_point_len);
        if (rv != CKR_OK)
            *call = "C_GetAttributeValue (public key)";
        return rv;
    }
    cls = CKO_CERTIFICATE;
    n = name_template(&by, &cls, tmpl);
    rv = find(t, tmpl, n, &obj, 1, &count, call);
    if (rv != CKR_OK)
        return rv;
    if (count == 1) {
        rv = get_var_attr(t, obj, CKA_VALUE, &f->cert_der, &f->cert_der_len);
        if (rv != CKR_OK)
            *call = "C_GetAttributeValue (certificate)";
        return rv;
    }
    char what[PROVHSM_P11_LABEL_MAX + 2 * PROVHSM_P11_ID_MAX + 32];
    name_describe(&by, what, sizeof(what));
    PH_ERR(MOD,
           "token \"%s\" has no public key and no certificate with %s: the public key "
           "cannot be read",
           t->label, what);
    *err = PROVHSM_E_NOT_FOUND;
    return CKR_OK;
}

typedef struct facts_arg {
    const provhsm_p11_keyname *name;
    provhsm_p11_key_facts *out;
} facts_arg;

/* What the token says about the private key `obj` (which `name` selected) and its public half. */
static CK_RV read_key_facts(provhsm_p11_token *t, CK_OBJECT_HANDLE obj,
                            const provhsm_p11_keyname *name, provhsm_p11_key_facts *f,
                            const char **call, provhsm_err *err)
{
    CK_RV rv = read_private_facts(t, obj, f, call);
    if (rv != CKR_OK || f->key_type != CKK_EC)
        return rv; /* the caller refuses other key types without their public half */
    return read_public_facts(t, name, f, call, err);
}

static CK_RV facts_op(provhsm_p11_token *t, void *p, const char **call, provhsm_err *err)
{
    facts_arg *a = p;
    provhsm_p11_key_facts_clear(a->out);
    CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
    CK_RV rv = find_private(t, a->name, 0, &obj, call, err);
    if (rv != CKR_OK || *err != PROVHSM_OK)
        return rv;
    return read_key_facts(t, obj, a->name, a->out, call, err);
}

void provhsm_p11_key_facts_clear(provhsm_p11_key_facts *f)
{
    if (f == NULL)
        return;
    free(f->ec_params);
    free(f->ec_point);
    free(f->cert_der);
    memset(f, 0, sizeof(*f));
}

provhsm_err provhsm_p11_key_facts_get(provhsm_p11_token *token, const provhsm_p11_keyname *name,
                                      provhsm_p11_key_facts *out)
{
    if (token == NULL || name == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    facts_arg a = {name, out};
    provhsm_err err = run(token, facts_op, &a);
    if (err != PROVHSM_OK)
        provhsm_p11_key_facts_clear(out);
    return err;
}

/* ---- certificates ------------------------------------------------------------------- */

typedef struct certs_arg {
    provhsm_p11_cert *certs;
    size_t count;
} certs_arg;

static void certs_release(certs_arg *a)
{
    provhsm_p11_certs_free(a->certs, a->count);
    a->certs = NULL;
    a->count = 0;
}

/* CKA_ID of one certificate; none (or one too long to keep) leaves id_len 0. */
static CK_RV read_cert_id(provhsm_p11_token *t, CK_OBJECT_HANDLE obj, provhsm_p11_cert *c)
{
    CK_ATTRIBUTE a = {CKA_ID, c->id, sizeof(c->id)};
    CK_RV rv = CALL(t->fl, C_GetAttributeValue, t->session, obj, &a, 1);
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_BUFFER_TOO_SMALL)
        return CKR_OK;
    if (rv == CKR_OK && a.ulValueLen <= sizeof(c->id))
        c->id_len = a.ulValueLen;
    return rv;
}

static CK_RV certs_op(provhsm_p11_token *t, void *p, const char **call, provhsm_err *err)
{
    (void)err;
    certs_arg *a = p;
    certs_release(a); /* a second run, on a new session, starts again */
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE type = CKC_X_509;
    CK_ATTRIBUTE tmpl[2] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_CERTIFICATE_TYPE, &type, sizeof(type)}};
    CK_OBJECT_HANDLE found[PROVHSM_P11_CERTS_MAX];
    CK_ULONG count = 0;
    CK_RV rv = find(t, tmpl, 2, found, PROVHSM_P11_CERTS_MAX, &count, call);
    if (rv != CKR_OK || count == 0)
        return rv;
    if (count == PROVHSM_P11_CERTS_MAX)
        PH_WARN(MOD, "token \"%s\" holds %d certificates or more: only those are looked at",
                t->label, PROVHSM_P11_CERTS_MAX);
    a->certs = calloc(count, sizeof(*a->certs));
    if (a->certs == NULL)
        return CKR_HOST_MEMORY;
    a->count = count;
    for (CK_ULONG i = 0; i < count && rv == CKR_OK; i++) {
        provhsm_p11_cert *c = &a->certs[i];
        rv = get_var_attr(t, found[i], CKA_VALUE, &c->der, &c->der_len);
        if (rv == CKR_OK)
            rv = read_cert_id(t, found[i], c);
        if (rv != CKR_OK)
            *call = "C_GetAttributeValue (certificate)";
    }
    return rv;
}

void provhsm_p11_certs_free(provhsm_p11_cert *certs, size_t count)
{
    if (certs == NULL)
        return;
    for (size_t i = 0; i < count; i++)
        free(certs[i].der);
    free(certs);
}

provhsm_err provhsm_p11_certificates(provhsm_p11_token *token, provhsm_p11_cert **certs_out,
                                     size_t *count_out)
{
    if (token == NULL || certs_out == NULL || count_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    certs_arg a = {NULL, 0};
    provhsm_err err = run(token, certs_op, &a);
    if (err != PROVHSM_OK) {
        certs_release(&a);
        return err;
    }
    *certs_out = a.certs;
    *count_out = a.count;
    return PROVHSM_OK;
}

/* ---- generation --------------------------------------------------------------------- */

typedef struct gen_arg {
    const provhsm_p11_keyname *name;
    const uint8_t *params; /* DER of the curve's OID */
    size_t params_len;
} gen_arg;

static CK_RV generate_op(provhsm_p11_token *t, void *p, const char **call, provhsm_err *err)
{
    (void)err;
    gen_arg *a = p;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_OBJECT_CLASS pub_cls = CKO_PUBLIC_KEY, priv_cls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE ec = CKK_EC;
    void *id = (void *)a->name->id, *label = (void *)a->name->label;
    CK_ULONG id_len = a->name->id_len, label_len = strlen(a->name->label);
    CK_ATTRIBUTE pub[] = {
        {CKA_CLASS, &pub_cls, sizeof(pub_cls)},
        {CKA_KEY_TYPE, &ec, sizeof(ec)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_VERIFY, &yes, sizeof(yes)},
        {CKA_EC_PARAMS, (void *)a->params, a->params_len},
        {CKA_ID, id, id_len},
        {CKA_LABEL, label, label_len},
    };
    CK_ATTRIBUTE priv[] = {
        {CKA_CLASS, &priv_cls, sizeof(priv_cls)},
        {CKA_KEY_TYPE, &ec, sizeof(ec)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_SIGN, &yes, sizeof(yes)},
        {CKA_DERIVE, &no, sizeof(no)},
        {CKA_ID, id, id_len},
        {CKA_LABEL, label, label_len},
    };
    CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub_obj, priv_obj;
    CK_RV rv = CALL(t->fl, C_GenerateKeyPair, t->session, &mech, pub, sizeof(pub) / sizeof(pub[0]),
                    priv, sizeof(priv) / sizeof(priv[0]), &pub_obj, &priv_obj);
    if (rv != CKR_OK)
        *call = "C_GenerateKeyPair (EC)";
    return rv;
}

provhsm_err provhsm_p11_generate_ec(provhsm_p11_token *token, int curve_bits,
                                    const provhsm_p11_keyname *name)
{
    if (token == NULL || name == NULL || (curve_bits != 256 && curve_bits != 384) ||
        name->id_len == 0 || !name->has_label)
        return PROVHSM_E_INVALID_ARG;
    int nid = curve_bits == 256 ? NID_X9_62_prime256v1 : NID_secp384r1;
    unsigned char *params = NULL;
    int params_len = i2d_ASN1_OBJECT(OBJ_nid2obj(nid), &params);
    if (params_len <= 0) {
        provhsm_log_openssl(MOD, "i2d_ASN1_OBJECT");
        return PROVHSM_E_CRYPTO;
    }
    gen_arg a = {name, params, (size_t)params_len};
    provhsm_err err = run(token, generate_op, &a);
    OPENSSL_free(params);
    return err;
}

/* ---- opening and signing ------------------------------------------------------------ */

/* The key's handle for the current session (found again after a new session). */
static CK_RV key_handle(provhsm_p11_token *t, provhsm_p11_key *key, int force, const char **call,
                        provhsm_err *err)
{
    if (!force && key->generation == t->generation)
        return CKR_OK;
    CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
    CK_RV rv = find_private(t, &key->name, 0, &obj, call, err);
    if (rv == CKR_OK && *err == PROVHSM_OK) {
        key->handle = obj;
        key->generation = t->generation;
    }
    return rv;
}

typedef struct open_arg {
    provhsm_p11_key *key;
    provhsm_p11_key_facts *facts;
} open_arg;

/* Looks the key up now, whatever handle an earlier session gave it, and reads its facts. */
static CK_RV open_op(provhsm_p11_token *t, void *p, const char **call, provhsm_err *err)
{
    open_arg *a = p;
    provhsm_p11_key_facts_clear(a->facts);
    CK_RV rv = key_handle(t, a->key, 1, call, err);
    if (rv != CKR_OK || *err != PROVHSM_OK)
        return rv;
    return read_key_facts(t, a->key->handle, &a->key->name, a->facts, call, err);
}

provhsm_err provhsm_p11_key_open(provhsm_p11_token *token, const provhsm_p11_keyname *name,
                                 int curve_bits, provhsm_p11_key *key,
                                 provhsm_p11_key_facts *facts_out)
{
    if (token == NULL || name == NULL || key == NULL || facts_out == NULL ||
        (curve_bits != 256 && curve_bits != 384))
        return PROVHSM_E_INVALID_ARG;
    memset(facts_out, 0, sizeof(*facts_out));
    provhsm_p11_key k = {token, *name, CK_INVALID_HANDLE, 0, curve_bits};
    open_arg a = {&k, facts_out};
    provhsm_err err = run(token, open_op, &a);
    if (err != PROVHSM_OK) {
        provhsm_p11_key_facts_clear(facts_out);
        return err;
    }
    *key = k;
    return PROVHSM_OK;
}

typedef struct sign_arg {
    provhsm_p11_key *key;
    const uint8_t *digest;
    size_t digest_len;
    uint8_t *rs;
    size_t rs_len; /* in: expected size; out: used */
} sign_arg;

static CK_RV sign_op(provhsm_p11_token *t, void *p, const char **call, provhsm_err *err)
{
    sign_arg *a = p;
    CK_FUNCTION_LIST *fl = t->fl;
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    CK_RV rv = key_handle(t, a->key, 0, call, err);
    if (rv != CKR_OK || *err != PROVHSM_OK)
        return rv;
    rv = CALL(fl, C_SignInit, t->session, &mech, a->key->handle);
    if (handle_lost(rv)) { /* the object may have been stored again under a new handle */
        rv = key_handle(t, a->key, 1, call, err);
        if (rv != CKR_OK || *err != PROVHSM_OK)
            return rv;
        rv = CALL(fl, C_SignInit, t->session, &mech, a->key->handle);
    }
    if (rv != CKR_OK) {
        *call = "C_SignInit (CKM_ECDSA)";
        return rv;
    }
    CK_ULONG len = a->rs_len;
    rv = CALL(fl, C_Sign, t->session, (CK_BYTE_PTR)a->digest, a->digest_len, a->rs, &len);
    if (rv != CKR_OK) {
        *call = "C_Sign";
        return rv;
    }
    if (len != a->rs_len) {
        PH_ERR(MOD, "token \"%s\" returned a %lu-byte ECDSA signature, expected %zu", t->label,
               (unsigned long)len, a->rs_len);
        *err = PROVHSM_E_CRYPTO;
    }
    return CKR_OK;
}

provhsm_err provhsm_p11_sign(provhsm_p11_key *key, const uint8_t *digest, size_t digest_len,
                             uint8_t *rs, size_t *rs_len)
{
    if (key == NULL || key->token == NULL || digest == NULL || digest_len == 0 || rs == NULL ||
        rs_len == NULL)
        return PROVHSM_E_INVALID_ARG;
    size_t need = 2 * (size_t)(key->curve_bits / 8);
    if (*rs_len < need)
        return PROVHSM_E_INVALID_ARG;
    sign_arg a = {key, digest, digest_len, rs, need};
    provhsm_err err = run(key->token, sign_op, &a);
    if (err == PROVHSM_OK)
        *rs_len = need;
    return err;
}

/* ---- destruction -------------------------------------------------------------------- */

static CK_RV destroy_op(provhsm_p11_token *t, void *p, const char **call, provhsm_err *err)
{
    const provhsm_p11_keyname *name = p;
    CK_FUNCTION_LIST *fl = t->fl;
    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
    CK_RV rv = find_private(t, name, 1, &priv, call, err);
    if (rv != CKR_OK || *err != PROVHSM_OK)
        return rv;
    provhsm_p11_key_facts f = {0};
    rv = read_private_facts(t, priv, &f, call);
    if (rv != CKR_OK)
        return rv;
    /* the public key of the pair only: a certificate with the same id stays */
    if (f.id_len > 0) {
        CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
        CK_ATTRIBUTE tmpl[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, f.id, f.id_len}};
        CK_OBJECT_HANDLE pub[4];
        CK_ULONG count = 0;
        rv = find(t, tmpl, 2, pub, 4, &count, call);
        for (CK_ULONG i = 0; rv == CKR_OK && i < count; i++) {
            rv = CALL(fl, C_DestroyObject, t->session, pub[i]);
            *call = "C_DestroyObject (public key)";
        }
        if (rv != CKR_OK)
            return rv;
    }
    rv = CALL(fl, C_DestroyObject, t->session, priv);
    *call = "C_DestroyObject (private key)";
    return rv;
}

provhsm_err provhsm_p11_destroy_key(provhsm_p11_token *token, const provhsm_p11_keyname *name)
{
    if (token == NULL || name == NULL)
        return PROVHSM_E_INVALID_ARG;
    return run(token, destroy_op, (void *)name);
}

/* ---- URIs --------------------------------------------------------------------------- */

provhsm_err provhsm_p11_parse_key_uri(const char *text, provhsm_p11_keyname *out)
{
    if (text == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    P11KitUri *uri = NULL;
    provhsm_err err = parse_uri(text, "key URI", &uri);
    if (err != PROVHSM_OK)
        return err;
    provhsm_p11_keyname name = {0};
    CK_ATTRIBUTE *cls = p11_kit_uri_get_attribute(uri, CKA_CLASS);
    CK_ATTRIBUTE *id = p11_kit_uri_get_attribute(uri, CKA_ID);
    CK_ATTRIBUTE *label = p11_kit_uri_get_attribute(uri, CKA_LABEL);
    if (cls != NULL && (cls->ulValueLen != sizeof(CK_OBJECT_CLASS) ||
                        *(CK_OBJECT_CLASS *)cls->pValue != CKO_PRIVATE_KEY)) {
        PH_ERR(MOD, "key URI \"%.200s\" names another type of object: use type=private", text);
        err = PROVHSM_E_CONFIG;
    } else if ((id == NULL || id->ulValueLen == 0) && label == NULL) {
        PH_ERR(MOD, "key URI \"%.200s\" names no object: add id= or object=", text);
        err = PROVHSM_E_CONFIG;
    } else if ((id != NULL && id->ulValueLen > sizeof(name.id)) ||
               (label != NULL && label->ulValueLen >= sizeof(name.label))) {
        PH_ERR(MOD, "key URI \"%.200s\": id or object too long", text);
        err = PROVHSM_E_CONFIG;
    } else if (label != NULL && label->ulValueLen > 0 &&
               memchr(label->pValue, '\0', label->ulValueLen) != NULL) {
        /* the label is kept as a C string: object=a%00b would quietly select "a" */
        PH_ERR(MOD, "key URI \"%.200s\": object holds a NUL byte (%%00)", text);
        err = PROVHSM_E_CONFIG;
    } else {
        if (id != NULL) {
            memcpy(name.id, id->pValue, id->ulValueLen);
            name.id_len = id->ulValueLen;
        }
        if (label != NULL) {
            memcpy(name.label, label->pValue, label->ulValueLen);
            name.label[label->ulValueLen] = '\0';
            name.has_label = 1;
        }
        *out = name;
    }
    p11_kit_uri_free(uri);
    return err;
}

provhsm_err provhsm_p11_key_uri(const provhsm_p11_token *token, const provhsm_p11_keyname *name,
                                char **uri_out)
{
    if (token == NULL || name == NULL || uri_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    P11KitUri *uri = p11_kit_uri_new();
    if (uri == NULL)
        return PROVHSM_E_NOMEM;
    CK_TOKEN_INFO *ti = p11_kit_uri_get_token_info(uri);
    memcpy(ti->label, token->info.label, sizeof(ti->label));
    memcpy(ti->manufacturerID, token->info.manufacturerID, sizeof(ti->manufacturerID));
    memcpy(ti->model, token->info.model, sizeof(ti->model));
    memcpy(ti->serialNumber, token->info.serialNumber, sizeof(ti->serialNumber));
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE attrs[3];
    CK_ULONG n = name_template(name, &cls, attrs);
    char *text = NULL;
    int rc = p11_kit_uri_set_attributes(uri, attrs, n);
    if (rc == P11_KIT_URI_OK)
        rc = p11_kit_uri_format(uri, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, &text);
    p11_kit_uri_free(uri);
    if (rc != P11_KIT_URI_OK) {
        PH_ERR(MOD, "cannot format the key's URI: %s", p11_kit_uri_message(rc));
        return PROVHSM_E_NOMEM;
    }
    *uri_out = text;
    return PROVHSM_OK;
}

/* ---- counters and shutdown ---------------------------------------------------------- */

uint64_t provhsm_p11_calls_total(void)
{
    return (uint64_t)atomic_load(&calls_total);
}

uint64_t provhsm_p11_sessions_opened_total(void)
{
    return (uint64_t)atomic_load(&sessions_opened_total);
}

uint64_t provhsm_p11_logins_total(void)
{
    return (uint64_t)atomic_load(&logins_total);
}

void provhsm_p11_shutdown(void)
{
    pthread_mutex_lock(&registry_lock);
    while (tokens != NULL) {
        provhsm_p11_token *t = tokens;
        tokens = t->next;
        pthread_mutex_lock(&t->lock);
        session_drop(t);
        pthread_mutex_unlock(&t->lock);
        pthread_mutex_destroy(&t->lock);
        provhsm_wipe(t->refused_pin, sizeof(t->refused_pin));
        free(t);
    }
    while (modules != NULL) {
        p11_module *m = modules;
        modules = m->next;
        modules_finalize(m->list);
        free(m);
    }
    pthread_mutex_unlock(&registry_lock);
}
