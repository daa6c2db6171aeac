/*
 * The one wrapper around tpm2-tss: the TCTI loader, ESAPI and libtss2-mu. Called only by
 * backend_tpm.c and store.c (the store key sealed to the TPM: create, load, unseal, PCR
 * policy), and by the integration tests and benchmarks, which count commands and inject
 * faults here. It owns three things:
 *
 *  - A counting proxy TCTI placed between ESAPI and the loaded TCTI: every command is
 *    counted at the transport (per connection and process-wide), and a test hook can
 *    answer chosen commands with a TPM error without sending them.
 *  - The call discipline: every ESAPI command runs as _Async + _Finish, retried a few
 *    times with a short sleep while the TPM says RETRY / YIELDED / TESTING (ESAPI's own
 *    resubmission gives up without waiting), with one TPM2_Startup if the TPM was never
 *    started. Running the two halves ourselves also keeps ESAPI's synchronous wrappers
 *    from printing an ERROR line for every TPM error (the _Finish half still prints a
 *    WARNING at tpm2-tss's default log level, TSS2_LOG); we log each failure once,
 *    decoded with Tss2_RC_Decode(). Persistent keys are looked up with GetCapability,
 *    which an empty handle does not make fail, so an unprovisioned device logs nothing.
 *  - Error mapping: failures below the TPM (TCTI, lost connection) are
 *    PROVHSM_E_NO_DEVICE and mark the connection lost, since ESAPI refuses every later
 *    command on that context; what the TPM refuses is PROVHSM_E_TPM.
 *
 * Static state: the process-wide command counter (an atomic) and, in the test build, the
 * armed faults (under their own mutex).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include "log.h"
#include "secmem.h"
#include "tpm_esys.h"

#define MOD "tpm"

#define TPM_ATTEMPTS      5  /* runs of one command while the TPM asks for a retry */
#define TPM_RETRY_BASE_MS 20 /* sleep before retry n: n * this */
#define PROXY_MAGIC       0x70726f7668736d31ull /* "provhsm1" */
#define RESPONSE_HDR_LEN  10                    /* tag, size, response code */
#define HANDLES_PER_QUERY 64

/* The proxy TCTI: ESAPI sees `common` (first member), we forward to `inner`. */
typedef struct proxy_tcti {
    TSS2_TCTI_CONTEXT_COMMON_V2 common;
    TSS2_TCTI_CONTEXT *inner;
    struct provhsm_tpm *owner;
    int fake_pending; /* the last transmit was swallowed: answer with fake_rc */
    TSS2_RC fake_rc;
} proxy_tcti;

struct provhsm_tpm {
    proxy_tcti proxy;
    TSS2_TCTI_CONTEXT *inner; /* from Tss2_TctiLdr_Initialize */
    ESYS_CONTEXT *esys;
    uint64_t commands;
    uint32_t input_buffer; /* TPM2_PT_INPUT_BUFFER, 0 until read */
    int lost;
    int last_failure_transient; /* the last failure logged by fail() was a TPM warning */
    int last_failure_auth;      /* ... was a refused authorisation (AUTH_FAIL, BAD_AUTH) */
    int startup_tried;
#ifdef PROVHSM_TEST_HOOKS
    int counted; /* in open_connections */
#endif
    char tcti[512]; /* for log lines */
};

static atomic_uint_fast64_t commands_total;
#ifdef PROVHSM_TEST_HOOKS
static atomic_uint open_connections; /* tests check that the backend shares one */
/* Armed faults: after `skip` matching commands, the next `left` matching ones are faked. */
static pthread_mutex_t fault_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    uint64_t skip, left;
    uint32_t command_code; /* 0 matches every command */
    uint32_t rc;
} fault;

/* 1 when the command `cc` is to be answered with *rc_out instead of being sent. */
static int fault_due(uint32_t cc, TSS2_RC *rc_out)
{
    int due = 0;
    pthread_mutex_lock(&fault_lock);
    if (fault.left > 0 && (fault.command_code == 0 || fault.command_code == cc)) {
        if (fault.skip > 0) {
            fault.skip--;
        } else {
            fault.left--;
            *rc_out = fault.rc;
            due = 1;
        }
    }
    pthread_mutex_unlock(&fault_lock);
    return due;
}

/* Called before each command is sent (provhsm_tpm_test_before_command). */
static void (*before_command)(uint32_t cc, void *ctx);
static void *before_command_ctx;

static void run_before_command(uint32_t cc)
{
    pthread_mutex_lock(&fault_lock);
    void (*fn)(uint32_t, void *) = before_command;
    void *ctx = before_command_ctx;
    pthread_mutex_unlock(&fault_lock);
    if (fn != NULL)
        fn(cc, ctx);
}
#endif

/* ---- the proxy TCTI ------------------------------------------------------------- */

static TSS2_RC proxy_transmit(TSS2_TCTI_CONTEXT *ctx, size_t size, const uint8_t *command)
{
    proxy_tcti *p = (proxy_tcti *)ctx;
    uint32_t cc = 0;
    size_t off = 6;
    atomic_fetch_add(&commands_total, 1);
    p->owner->commands++;
    if (size < RESPONSE_HDR_LEN ||
        Tss2_MU_UINT32_Unmarshal(command, size, &off, &cc) != TSS2_RC_SUCCESS)
        cc = 0;
    if (provhsm_log_enabled(PROVHSM_LOG_DEBUG))
        PH_DEBUG(MOD, "command 0x%03x (%zu bytes)", (unsigned)cc, size);

#ifdef PROVHSM_TEST_HOOKS
    run_before_command(cc);
    if (fault_due(cc, &p->fake_rc)) {
        p->fake_pending = 1;
        return TSS2_RC_SUCCESS;
    }
#endif
    return Tss2_Tcti_Transmit(p->inner, size, command);
}

static TSS2_RC proxy_receive(TSS2_TCTI_CONTEXT *ctx, size_t *size, uint8_t *response,
                             int32_t timeout)
{
    proxy_tcti *p = (proxy_tcti *)ctx;
    if (!p->fake_pending) {
        TSS2_RC rc = Tss2_Tcti_Receive(p->inner, size, response, timeout);
        if (rc == TSS2_RC_SUCCESS && response != NULL && size != NULL &&
            *size >= RESPONSE_HDR_LEN && provhsm_log_enabled(PROVHSM_LOG_DEBUG)) {
            uint32_t code = 0;
            size_t off = 6;
            if (Tss2_MU_UINT32_Unmarshal(response, *size, &off, &code) == TSS2_RC_SUCCESS &&
                code != TPM2_RC_SUCCESS)
                PH_DEBUG(MOD, "response 0x%03x", (unsigned)code);
        }
        return rc;
    }

    if (size == NULL)
        return TSS2_TCTI_RC_BAD_REFERENCE;
    if (response == NULL) {
        *size = RESPONSE_HDR_LEN;
        return TSS2_RC_SUCCESS;
    }
    if (*size < RESPONSE_HDR_LEN) {
        *size = RESPONSE_HDR_LEN;
        return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
    }
    size_t off = 0;
    TSS2_RC rc = Tss2_MU_TPM2_ST_Marshal(TPM2_ST_NO_SESSIONS, response, *size, &off);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_UINT32_Marshal(RESPONSE_HDR_LEN, response, *size, &off);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_UINT32_Marshal(p->fake_rc, response, *size, &off);
    *size = RESPONSE_HDR_LEN;
    p->fake_pending = 0;
    return rc;
}

static void proxy_finalize(TSS2_TCTI_CONTEXT *ctx)
{
    (void)ctx; /* the inner TCTI is finalised by provhsm_tpm_disconnect() */
}

static TSS2_RC proxy_cancel(TSS2_TCTI_CONTEXT *ctx)
{
    return Tss2_Tcti_Cancel(((proxy_tcti *)ctx)->inner);
}

static TSS2_RC proxy_get_poll_handles(TSS2_TCTI_CONTEXT *ctx, TSS2_TCTI_POLL_HANDLE *handles,
                                      size_t *num_handles)
{
    return Tss2_Tcti_GetPollHandles(((proxy_tcti *)ctx)->inner, handles, num_handles);
}

static TSS2_RC proxy_set_locality(TSS2_TCTI_CONTEXT *ctx, uint8_t locality)
{
    return Tss2_Tcti_SetLocality(((proxy_tcti *)ctx)->inner, locality);
}

static TSS2_RC proxy_make_sticky(TSS2_TCTI_CONTEXT *ctx, TPM2_HANDLE *handle, uint8_t sticky)
{
    return Tss2_Tcti_MakeSticky(((proxy_tcti *)ctx)->inner, handle, sticky);
}

/* ---- response codes ----------------------------------------------------------------- */

/* The TPM's own response code, also when a resource manager relayed it; else 0. */
static TSS2_RC tpm_code(TSS2_RC rc)
{
    TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
    if (layer == TSS2_TPM_RC_LAYER || layer == TSS2_RESMGR_TPM_RC_LAYER)
        return rc & ~TSS2_RC_LAYER_MASK;
    return 0;
}

/*
 * The error of a format-one TPM response code (TPM2_RC_VALUE, TPM2_RC_HANDLE, ...) with
 * the handle, session or parameter number dropped; 0 for any other code.
 */
static TSS2_RC fmt1_error(TSS2_RC rc)
{
    TSS2_RC code = tpm_code(rc);
    return (code & TPM2_RC_FMT1) != 0 ? code & (TPM2_RC_FMT1 | 0x3f) : 0;
}

/* TPM_RC_HANDLE for any handle position: nothing is loaded at that handle. */
static int rc_is_missing_handle(TSS2_RC rc)
{
    return fmt1_error(rc) == TPM2_RC_HANDLE;
}

static int rc_is_try_again(TSS2_RC rc)
{
    return (rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER &&
           (rc & 0xffff) == TSS2_BASE_RC_TRY_AGAIN;
}

static provhsm_err map_rc(provhsm_tpm *tpm, TSS2_RC rc)
{
    TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
    TSS2_RC base = rc & 0xffff;
    if (tpm_code(rc) != 0)
        return PROVHSM_E_TPM;
    if (layer == TSS2_TCTI_RC_LAYER || base == TSS2_BASE_RC_IO_ERROR ||
        base == TSS2_BASE_RC_NO_CONNECTION) {
        tpm->lost = 1;
        return PROVHSM_E_NO_DEVICE;
    }
    if (base == TSS2_BASE_RC_MEMORY)
        return PROVHSM_E_NOMEM;
    /* ESAPI refuses every command after an internal error: treat the context as gone */
    if (base == TSS2_BASE_RC_BAD_SEQUENCE)
        tpm->lost = 1;
    return PROVHSM_E_TPM;
}

/* A TPM warning (format zero, TPM_RC_WARN): the TPM could not do it now, not "never". */
static int rc_is_tpm_warning(TSS2_RC rc)
{
    TSS2_RC code = tpm_code(rc);
    return (code & TPM2_RC_FMT1) == 0 && (code & TPM2_RC_WARN) == TPM2_RC_WARN;
}

/* Logs a failed call once and maps it. */
static provhsm_err fail(provhsm_tpm *tpm, TSS2_RC rc, const char *what)
{
    provhsm_err err = map_rc(tpm, rc);
    TSS2_RC error = fmt1_error(rc);
    tpm->last_failure_transient = rc_is_tpm_warning(rc);
    tpm->last_failure_auth = error == TPM2_RC_AUTH_FAIL || error == TPM2_RC_BAD_AUTH;
    if (err == PROVHSM_E_NO_DEVICE)
        PH_ERR(MOD, "%s: the TPM cannot be reached through \"%s\": %s (0x%08x)", what, tpm->tcti,
               Tss2_RC_Decode(rc), (unsigned)rc);
    else
        PH_ERR(MOD, "%s failed: %s (0x%08x)", what, Tss2_RC_Decode(rc), (unsigned)rc);
    return err;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/*
 * Decides whether the command that returned rc runs again. A TPM that was never started
 * (a simulator without startup flags) gets one TPM2_Startup(CLEAR) per connection.
 */
static int should_retry(provhsm_tpm *tpm, TSS2_RC rc, unsigned *attempt)
{
    TSS2_RC code = tpm_code(rc);
    if (code == TPM2_RC_INITIALIZE && !tpm->startup_tried) {
        tpm->startup_tried = 1;
        TSS2_RC src = Esys_Startup_Async(tpm->esys, TPM2_SU_CLEAR);
        if (src == TSS2_RC_SUCCESS) {
            do
                src = Esys_Startup_Finish(tpm->esys);
            while (rc_is_try_again(src));
        }
        PH_INFO(MOD, "the TPM was not started; TPM2_Startup(CLEAR): %s", Tss2_RC_Decode(src));
        return src == TSS2_RC_SUCCESS;
    }
    if (code != TPM2_RC_RETRY && code != TPM2_RC_YIELDED && code != TPM2_RC_TESTING)
        return 0;
    if (++*attempt >= TPM_ATTEMPTS)
        return 0;
    PH_DEBUG(MOD, "the TPM asked for a retry (%s); attempt %u", Tss2_RC_Decode(rc), *attempt + 1);
    sleep_ms(TPM_RETRY_BASE_MS * *attempt);
    return 1;
}

/*
 * Runs one ESAPI command: the _Async half, then the _Finish half until it stops asking
 * to be called again, the whole retried per should_retry().
 */
#define TPM_RUN(tpm, rc, async_call, finish_call)                                                  \
    do {                                                                                           \
        unsigned attempt_ = 0;                                                                     \
        do {                                                                                       \
            (rc) = (async_call);                                                                   \
            if ((rc) == TSS2_RC_SUCCESS) {                                                         \
                do                                                                                 \
                    (rc) = (finish_call);                                                          \
                while (rc_is_try_again(rc));                                                       \
            }                                                                                      \
        } while (should_retry((tpm), (rc), &attempt_));                                            \
    } while (0)

/* Refuses to use a context ESAPI has given up on. */
#define TPM_REQUIRE_LIVE(tpm, what)                                                                \
    do {                                                                                           \
        if ((tpm)->lost) {                                                                         \
            PH_ERR(MOD, "%s: the TPM connection was lost", (what));                                \
            return PROVHSM_E_NO_DEVICE;                                                            \
        }                                                                                          \
    } while (0)

/* One TPM2_GetCapability: up to `count` values of `capability` from `property` on. */
static provhsm_err get_capability(provhsm_tpm *tpm, TPM2_CAP capability, UINT32 property,
                                  UINT32 count, TPMI_YES_NO *more, TPMS_CAPABILITY_DATA **data,
                                  const char *what)
{
    TSS2_RC rc;
    TPM_RUN(tpm, rc,
            Esys_GetCapability_Async(tpm->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                     capability, property, count),
            Esys_GetCapability_Finish(tpm->esys, more, data));
    return rc == TSS2_RC_SUCCESS ? PROVHSM_OK : fail(tpm, rc, what);
}

/* ---- connection --------------------------------------------------------------------- */

provhsm_err provhsm_tpm_connect(const char *tcti, provhsm_tpm **out)
{
    provhsm_err err = PROVHSM_OK;
    provhsm_tpm *tpm = NULL;
    const char *conf = (tcti != NULL && tcti[0] != '\0') ? tcti : NULL;
    TSS2_RC rc;

    if (out == NULL)
        return PROVHSM_E_INVALID_ARG;
    tpm = calloc(1, sizeof(*tpm));
    if (tpm == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    snprintf(tpm->tcti, sizeof(tpm->tcti), "%s", conf != NULL ? conf : "(default)");
    rc = Tss2_TctiLdr_Initialize(conf, &tpm->inner);
    if (rc != TSS2_RC_SUCCESS) {
        PH_ERR(MOD, "cannot open TCTI \"%s\": %s (0x%08x)", conf != NULL ? conf : "(default)",
               Tss2_RC_Decode(rc), (unsigned)rc);
        tpm->inner = NULL;
        err = PROVHSM_E_NO_DEVICE;
        goto cleanup;
    }

    proxy_tcti *p = &tpm->proxy;
    p->common.v1.magic = PROXY_MAGIC;
    p->common.v1.version = 2;
    p->common.v1.transmit = proxy_transmit;
    p->common.v1.receive = proxy_receive;
    p->common.v1.finalize = proxy_finalize;
    p->common.v1.cancel = proxy_cancel;
    p->common.v1.getPollHandles = proxy_get_poll_handles;
    p->common.v1.setLocality = proxy_set_locality;
    p->common.makeSticky = proxy_make_sticky;
    p->inner = tpm->inner;
    p->owner = tpm;

    rc = Esys_Initialize(&tpm->esys, (TSS2_TCTI_CONTEXT *)&p->common, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        PH_ERR(MOD, "cannot initialise ESAPI on \"%s\": %s (0x%08x)",
               conf != NULL ? conf : "(default)", Tss2_RC_Decode(rc), (unsigned)rc);
        tpm->esys = NULL;
        err = (rc & 0xffff) == TSS2_BASE_RC_MEMORY ? PROVHSM_E_NOMEM : PROVHSM_E_NO_DEVICE;
        goto cleanup;
    }
    /* _Finish blocks until the response is there rather than polling */
    rc = Esys_SetTimeout(tpm->esys, TSS2_TCTI_TIMEOUT_BLOCK);
    if (rc != TSS2_RC_SUCCESS) {
        err = fail(tpm, rc, "Esys_SetTimeout");
        goto cleanup;
    }
    PH_DEBUG(MOD, "connected through TCTI \"%s\"", conf != NULL ? conf : "(default)");
#ifdef PROVHSM_TEST_HOOKS
    atomic_fetch_add(&open_connections, 1);
    tpm->counted = 1;
#endif
    *out = tpm;
    tpm = NULL;

cleanup:
    provhsm_tpm_disconnect(tpm);
    return err;
}

void provhsm_tpm_disconnect(provhsm_tpm *tpm)
{
    if (tpm == NULL)
        return;
#ifdef PROVHSM_TEST_HOOKS
    if (tpm->counted)
        atomic_fetch_sub(&open_connections, 1);
#endif
    if (tpm->esys != NULL)
        Esys_Finalize(&tpm->esys);
    if (tpm->inner != NULL)
        Tss2_TctiLdr_Finalize(&tpm->inner);
    free(tpm);
}

int provhsm_tpm_lost(const provhsm_tpm *tpm)
{
    return tpm == NULL || tpm->lost;
}

uint64_t provhsm_tpm_commands(const provhsm_tpm *tpm)
{
    return tpm != NULL ? tpm->commands : 0;
}

uint64_t provhsm_tpm_commands_total(void)
{
    return (uint64_t)atomic_load(&commands_total);
}

int provhsm_tpm_last_failure_auth(const provhsm_tpm *tpm)
{
    return tpm != NULL && !tpm->lost && tpm->last_failure_auth;
}

int provhsm_tpm_last_failure_transient(const provhsm_tpm *tpm)
{
    return tpm != NULL && !tpm->lost && tpm->last_failure_transient;
}

#ifdef PROVHSM_TEST_HOOKS
void provhsm_tpm_test_fail_commands(uint64_t nth, uint64_t count, uint32_t command_code,
                                    uint32_t tpm_rc)
{
    pthread_mutex_lock(&fault_lock);
    fault.skip = nth > 0 ? nth - 1 : 0;
    fault.left = nth > 0 ? count : 0;
    fault.command_code = command_code;
    fault.rc = tpm_rc;
    pthread_mutex_unlock(&fault_lock);
}

void provhsm_tpm_test_fail_command(uint64_t nth, uint32_t tpm_rc)
{
    provhsm_tpm_test_fail_commands(nth, 1, 0, tpm_rc);
}

void provhsm_tpm_test_before_command(void (*fn)(uint32_t command_code, void *ctx), void *ctx)
{
    pthread_mutex_lock(&fault_lock);
    before_command = fn;
    before_command_ctx = ctx;
    pthread_mutex_unlock(&fault_lock);
}

unsigned provhsm_tpm_test_open_connections(void)
{
    return atomic_load(&open_connections);
}
#endif

/* ---- objects ------------------------------------------------------------------------ */

/*
 * ESAPI names a persistent object by an ESYS_TR, which it normally makes with
 * Esys_TR_FromTPMPublic (a ReadPublic whose result it keeps but does not hand out, and
 * which logs an ERROR line when the handle is empty). To get both the ESYS_TR and the
 * public area from one ReadPublic, we build ESYS_TRs with Esys_TR_Deserialize from the
 * documented serialized form that Esys_TR_Serialize writes (and tpm2-tools and FAPI keep
 * on disk): TPM handle (UINT32), TPM2B_NAME, resource type (UINT32), and for a key
 * (type 1) its TPM2B_PUBLIC. A first one, with an empty name and no public area (type
 * 0), only addresses the handle for ReadPublic. The result is checked against the name
 * the TPM returned; if anything about this does not hold, we fall back to ESAPI's own
 * way at the cost of one more command.
 */
#define IESYS_RSRC_NONE 0u
#define IESYS_RSRC_KEY  1u

static TSS2_RC tr_deserialize(provhsm_tpm *tpm, TPM2_HANDLE handle, const TPM2B_NAME *name,
                              const TPM2B_PUBLIC *pub, ESYS_TR *tr_out)
{
    static const TPM2B_NAME no_name = {.size = 0};
    uint8_t buf[4 + sizeof(TPM2B_NAME) + 4 + sizeof(TPM2B_PUBLIC)];
    size_t off = 0;
    TSS2_RC rc = Tss2_MU_TPM2_HANDLE_Marshal(handle, buf, sizeof(buf), &off);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_NAME_Marshal(name != NULL ? name : &no_name, buf, sizeof(buf), &off);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_UINT32_Marshal(pub != NULL ? IESYS_RSRC_KEY : IESYS_RSRC_NONE, buf,
                                    sizeof(buf), &off);
    if (rc == TSS2_RC_SUCCESS && pub != NULL)
        rc = Tss2_MU_TPM2B_PUBLIC_Marshal(pub, buf, sizeof(buf), &off);
    if (rc == TSS2_RC_SUCCESS)
        rc = Esys_TR_Deserialize(tpm->esys, buf, off, tr_out);
    return rc;
}

/* 1 when tr addresses `handle` and carries `name`. */
static int tr_matches(provhsm_tpm *tpm, ESYS_TR tr, TPM2_HANDLE handle, const TPM2B_NAME *name)
{
    TPM2_HANDLE h = 0;
    TPM2B_NAME *got = NULL;
    int ok = Esys_TR_GetTpmHandle(tpm->esys, tr, &h) == TSS2_RC_SUCCESS && h == handle &&
             Esys_TR_GetName(tpm->esys, tr, &got) == TSS2_RC_SUCCESS && got != NULL &&
             got->size == name->size && memcmp(got->name, name->name, name->size) == 0;
    Esys_Free(got);
    return ok;
}

/* ESAPI's own way: Esys_TR_FromTPMPublic, then ReadPublic for the public area. */
static provhsm_err read_public_esys(provhsm_tpm *tpm, TPM2_HANDLE handle, ESYS_TR *tr_out,
                                    TPM2B_PUBLIC **pub_out)
{
    provhsm_err err = PROVHSM_OK;
    ESYS_TR tr = ESYS_TR_NONE;
    TPM2B_PUBLIC *pub = NULL;
    TSS2_RC rc;

    TPM_RUN(
        tpm, rc,
        Esys_TR_FromTPMPublic_Async(tpm->esys, handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE),
        Esys_TR_FromTPMPublic_Finish(tpm->esys, &tr));
    if (rc_is_missing_handle(rc)) {
        PH_DEBUG(MOD, "nothing at handle 0x%08x", (unsigned)handle);
        err = PROVHSM_E_NOT_FOUND;
        goto cleanup;
    }
    if (rc != TSS2_RC_SUCCESS) {
        tr = ESYS_TR_NONE;
        err = fail(tpm, rc, "ReadPublic");
        goto cleanup;
    }
    if (pub_out != NULL) {
        TPM_RUN(tpm, rc,
                Esys_ReadPublic_Async(tpm->esys, tr, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE),
                Esys_ReadPublic_Finish(tpm->esys, &pub, NULL, NULL));
        if (rc != TSS2_RC_SUCCESS) {
            err = fail(tpm, rc, "ReadPublic");
            goto cleanup;
        }
        *pub_out = pub;
        pub = NULL;
    }
    *tr_out = tr;
    tr = ESYS_TR_NONE;

cleanup:
    provhsm_tpm_forget(tpm, &tr);
    Esys_Free(pub);
    return err;
}

provhsm_err provhsm_tpm_read_public(provhsm_tpm *tpm, TPM2_HANDLE handle, ESYS_TR *tr_out,
                                    TPM2B_PUBLIC **pub_out)
{
    provhsm_err err = PROVHSM_OK;
    ESYS_TR probe = ESYS_TR_NONE, tr = ESYS_TR_NONE;
    TPM2B_PUBLIC *pub = NULL;
    TPM2B_NAME *name = NULL;
    TSS2_RC rc;

    if (tpm == NULL || tr_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "ReadPublic");

    if (tr_deserialize(tpm, handle, NULL, NULL, &probe) != TSS2_RC_SUCCESS) {
        PH_DEBUG(MOD, "Esys_TR_Deserialize refused a handle; using Esys_TR_FromTPMPublic");
        return read_public_esys(tpm, handle, tr_out, pub_out);
    }
    TPM_RUN(tpm, rc,
            Esys_ReadPublic_Async(tpm->esys, probe, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE),
            Esys_ReadPublic_Finish(tpm->esys, &pub, &name, NULL));
    provhsm_tpm_forget(tpm, &probe);
    if (rc_is_missing_handle(rc)) {
        PH_DEBUG(MOD, "nothing at handle 0x%08x", (unsigned)handle);
        err = PROVHSM_E_NOT_FOUND;
        goto cleanup;
    }
    if (rc != TSS2_RC_SUCCESS) {
        err = fail(tpm, rc, "ReadPublic");
        goto cleanup;
    }
    if (tr_deserialize(tpm, handle, name, pub, &tr) != TSS2_RC_SUCCESS ||
        !tr_matches(tpm, tr, handle, name)) {
        PH_DEBUG(MOD, "Esys_TR_Deserialize did not give the expected object; using "
                      "Esys_TR_FromTPMPublic");
        provhsm_tpm_forget(tpm, &tr);
        Esys_Free(pub);
        pub = NULL;
        err = read_public_esys(tpm, handle, &tr, pub_out != NULL ? &pub : NULL);
        if (err != PROVHSM_OK)
            goto cleanup;
    }
    if (pub_out != NULL) {
        *pub_out = pub;
        pub = NULL;
    }
    *tr_out = tr;
    tr = ESYS_TR_NONE;

cleanup:
    provhsm_tpm_forget(tpm, &tr);
    Esys_Free(pub);
    Esys_Free(name);
    return err;
}

provhsm_err provhsm_tpm_persistent_present(provhsm_tpm *tpm, const TPM2_HANDLE *handles, size_t n,
                                           int *present)
{
    TPM2_HANDLE lowest = UINT32_MAX, highest = 0;
    TPMI_YES_NO more = TPM2_YES;

    if (tpm == NULL || handles == NULL || present == NULL || n == 0)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "GetCapability");
    for (size_t i = 0; i < n; i++) {
        present[i] = 0;
        lowest = handles[i] < lowest ? handles[i] : lowest;
        highest = handles[i] > highest ? handles[i] : highest;
    }
    /* the TPM lists the persistent handles in use from `next` on, in order */
    TPM2_HANDLE next = lowest;
    while (more == TPM2_YES && next <= highest) {
        TPMS_CAPABILITY_DATA *data = NULL;
        provhsm_err err = get_capability(tpm, TPM2_CAP_HANDLES, next, HANDLES_PER_QUERY, &more,
                                         &data, "GetCapability(TPM2_CAP_HANDLES)");
        if (err != PROVHSM_OK)
            return err;
        const TPML_HANDLE *listed = &data->data.handles;
        for (uint32_t j = 0; j < listed->count; j++)
            for (size_t i = 0; i < n; i++)
                present[i] |= listed->handle[j] == handles[i];
        if (listed->count == 0 || listed->handle[listed->count - 1] >= highest)
            more = TPM2_NO;
        else
            next = listed->handle[listed->count - 1] + 1;
        Esys_Free(data);
    }
    for (size_t i = 0; i < n; i++)
        PH_DEBUG(MOD, "persistent handle 0x%08x: %s", (unsigned)handles[i],
                 present[i] ? "in use" : "empty");
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_persistent_handle(provhsm_tpm *tpm, TPM2_HANDLE handle, ESYS_TR *tr_out)
{
    ESYS_TR tr = ESYS_TR_NONE;
    if (tpm == NULL || tr_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "ReadPublic");
    if (tr_deserialize(tpm, handle, NULL, NULL, &tr) != TSS2_RC_SUCCESS) {
        PH_DEBUG(MOD, "Esys_TR_Deserialize refused a handle; using Esys_TR_FromTPMPublic");
        return read_public_esys(tpm, handle, tr_out, NULL);
    }
    *tr_out = tr;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_persistent_object(provhsm_tpm *tpm, TPM2_HANDLE handle,
                                          const TPM2B_PUBLIC *pub, ESYS_TR *tr_out)
{
    uint8_t marshaled[sizeof(TPMT_PUBLIC)];
    size_t len = 0;
    unsigned int digest_len = 0;
    TPM2B_NAME name = {.size = 0};
    ESYS_TR tr = ESYS_TR_NONE;

    if (tpm == NULL || pub == NULL || tr_out == NULL || pub->publicArea.nameAlg != TPM2_ALG_SHA256)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "ReadPublic");
    /* Name = nameAlg || SHA-256(TPMT_PUBLIC) */
    if (Tss2_MU_TPMT_PUBLIC_Marshal(&pub->publicArea, marshaled, sizeof(marshaled), &len) !=
        TSS2_RC_SUCCESS)
        return PROVHSM_E_INVALID_ARG;
    name.name[0] = (uint8_t)(TPM2_ALG_SHA256 >> 8);
    name.name[1] = (uint8_t)TPM2_ALG_SHA256;
    if (EVP_Digest(marshaled, len, name.name + 2, &digest_len, EVP_sha256(), NULL) != 1)
        return PROVHSM_E_CRYPTO;
    name.size = (UINT16)(2 + digest_len);
    if (tr_deserialize(tpm, handle, &name, pub, &tr) != TSS2_RC_SUCCESS) {
        PH_DEBUG(MOD, "Esys_TR_Deserialize refused a handle; using Esys_TR_FromTPMPublic");
        return read_public_esys(tpm, handle, tr_out, NULL);
    }
    *tr_out = tr;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_find_persistent(provhsm_tpm *tpm, TPM2_HANDLE handle, ESYS_TR *tr_out)
{
    int present = 0;
    if (tpm == NULL || tr_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = provhsm_tpm_persistent_present(tpm, &handle, 1, &present);
    if (err != PROVHSM_OK)
        return err;
    if (!present)
        return PROVHSM_E_NOT_FOUND;
    return provhsm_tpm_persistent_handle(tpm, handle, tr_out);
}

provhsm_err provhsm_tpm_marshal_public(const TPM2B_PUBLIC *pub, uint8_t **out, size_t *len_out)
{
    uint8_t buf[sizeof(TPM2B_PUBLIC)];
    size_t off = 0;
    if (pub == NULL || out == NULL || len_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Marshal(pub, buf, sizeof(buf), &off);
    if (rc != TSS2_RC_SUCCESS) {
        PH_ERR(MOD, "cannot marshal a public area: %s (0x%08x)", Tss2_RC_Decode(rc), (unsigned)rc);
        return PROVHSM_E_TPM;
    }
    uint8_t *copy = malloc(off);
    if (copy == NULL)
        return PROVHSM_E_NOMEM;
    memcpy(copy, buf, off);
    *out = copy;
    *len_out = off;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_set_hierarchy_auth(provhsm_tpm *tpm, ESYS_TR hierarchy,
                                           const TPM2B_AUTH *auth)
{
    static const TPM2B_AUTH empty; /* all zero: overwrites the whole earlier value */
    if (tpm == NULL)
        return PROVHSM_E_INVALID_ARG;
    TSS2_RC rc = Esys_TR_SetAuth(tpm->esys, hierarchy, auth != NULL ? auth : &empty);
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "Esys_TR_SetAuth");
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_create_primary(provhsm_tpm *tpm, ESYS_TR hierarchy,
                                       const TPM2B_PUBLIC *tmpl, ESYS_TR *tr_out,
                                       TPM2B_PUBLIC **pub_out)
{
    static const TPM2B_SENSITIVE_CREATE no_sensitive = {.size = 0};
    static const TPM2B_DATA no_outside_info = {.size = 0};
    static const TPML_PCR_SELECTION no_pcrs = {.count = 0};
    ESYS_TR tr = ESYS_TR_NONE;
    TPM2B_PUBLIC *pub = NULL;
    TPM2B_CREATION_DATA *creation_data = NULL;
    TPM2B_DIGEST *creation_hash = NULL;
    TPMT_TK_CREATION *ticket = NULL;
    TSS2_RC rc;

    if (tpm == NULL || tmpl == NULL || tr_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "CreatePrimary");
    TPM_RUN(
        tpm, rc,
        Esys_CreatePrimary_Async(tpm->esys, hierarchy, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                 &no_sensitive, tmpl, &no_outside_info, &no_pcrs),
        Esys_CreatePrimary_Finish(tpm->esys, &tr, &pub, &creation_data, &creation_hash, &ticket));
    Esys_Free(creation_data);
    Esys_Free(creation_hash);
    Esys_Free(ticket);
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "CreatePrimary");
    *tr_out = tr;
    if (pub_out != NULL)
        *pub_out = pub;
    else
        Esys_Free(pub);
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_persist(provhsm_tpm *tpm, ESYS_TR object, TPM2_HANDLE handle,
                                ESYS_TR *persistent_out)
{
    ESYS_TR tr = ESYS_TR_NONE;
    TSS2_RC rc;
    if (tpm == NULL || persistent_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "EvictControl");
    TPM_RUN(tpm, rc,
            Esys_EvictControl_Async(tpm->esys, ESYS_TR_RH_OWNER, object, ESYS_TR_PASSWORD,
                                    ESYS_TR_NONE, ESYS_TR_NONE, handle),
            Esys_EvictControl_Finish(tpm->esys, &tr));
    if (tpm_code(rc) == TPM2_RC_NV_DEFINED) {
        PH_DEBUG(MOD, "persistent handle 0x%08x is taken", (unsigned)handle);
        return PROVHSM_E_EXISTS;
    }
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "EvictControl (persist)");
    *persistent_out = tr;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_evict(provhsm_tpm *tpm, ESYS_TR *persistent)
{
    ESYS_TR none = ESYS_TR_NONE;
    TPM2_HANDLE handle = 0;
    TSS2_RC rc;
    if (tpm == NULL || persistent == NULL || *persistent == ESYS_TR_NONE)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "EvictControl");
    rc = Esys_TR_GetTpmHandle(tpm->esys, *persistent, &handle);
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "Esys_TR_GetTpmHandle");
    TPM_RUN(tpm, rc,
            Esys_EvictControl_Async(tpm->esys, ESYS_TR_RH_OWNER, *persistent, ESYS_TR_PASSWORD,
                                    ESYS_TR_NONE, ESYS_TR_NONE, handle),
            Esys_EvictControl_Finish(tpm->esys, &none));
    if (rc_is_missing_handle(rc)) {
        PH_DEBUG(MOD, "nothing to evict at 0x%08x", (unsigned)handle);
        provhsm_tpm_forget(tpm, persistent);
        return PROVHSM_E_NOT_FOUND;
    }
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "EvictControl (evict)");
    provhsm_tpm_forget(tpm, persistent);
    return PROVHSM_OK;
}

void provhsm_tpm_flush(provhsm_tpm *tpm, ESYS_TR *tr)
{
    TSS2_RC rc;
    if (tpm == NULL || tr == NULL || *tr == ESYS_TR_NONE)
        return;
    if (tpm->lost) {
        provhsm_tpm_forget(tpm, tr);
        return;
    }
    TPM_RUN(tpm, rc, Esys_FlushContext_Async(tpm->esys, *tr), Esys_FlushContext_Finish(tpm->esys));
    if (rc == TSS2_RC_SUCCESS) {
        *tr = ESYS_TR_NONE; /* ESAPI released the handle */
        return;
    }
    (void)fail(tpm, rc, "FlushContext");
    provhsm_tpm_forget(tpm, tr);
}

void provhsm_tpm_forget(provhsm_tpm *tpm, ESYS_TR *tr)
{
    if (tpm == NULL || tr == NULL || *tr == ESYS_TR_NONE)
        return;
    (void)Esys_TR_Close(tpm->esys, tr);
    *tr = ESYS_TR_NONE;
}

/*
 * Makes a policy session single use (the TPM flushes it after the command it authorises
 * succeeds) and hands it to the caller; on failure it stays in *session for the caller's
 * cleanup to flush.
 */
static provhsm_err hand_over_single_use(provhsm_tpm *tpm, ESYS_TR *session, ESYS_TR *session_out)
{
    TSS2_RC rc = Esys_TRSess_SetAttributes(tpm->esys, *session, 0, TPMA_SESSION_CONTINUESESSION);
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "Esys_TRSess_SetAttributes");
    *session_out = *session;
    *session = ESYS_TR_NONE;
    return PROVHSM_OK;
}

/* ---- credential activation and import ------------------------------------------------ */

provhsm_err provhsm_tpm_ek_policy_session(provhsm_tpm *tpm, ESYS_TR *session_out)
{
    static const TPMT_SYM_DEF no_symmetric = {.algorithm = TPM2_ALG_NULL};
    provhsm_err err = PROVHSM_OK;
    ESYS_TR session = ESYS_TR_NONE;
    TPM2B_TIMEOUT *timeout = NULL;
    TPMT_TK_AUTH *ticket = NULL;
    TSS2_RC rc;

    if (tpm == NULL || session_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "StartAuthSession");
    TPM_RUN(tpm, rc,
            Esys_StartAuthSession_Async(tpm->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                        ESYS_TR_NONE, ESYS_TR_NONE, NULL, TPM2_SE_POLICY,
                                        &no_symmetric, TPM2_ALG_SHA256),
            Esys_StartAuthSession_Finish(tpm->esys, &session));
    if (rc != TSS2_RC_SUCCESS) {
        session = ESYS_TR_NONE;
        err = fail(tpm, rc, "StartAuthSession");
        goto cleanup;
    }
    TPM_RUN(tpm, rc,
            Esys_PolicySecret_Async(tpm->esys, ESYS_TR_RH_ENDORSEMENT, session, ESYS_TR_PASSWORD,
                                    ESYS_TR_NONE, ESYS_TR_NONE, NULL, NULL, NULL, 0),
            Esys_PolicySecret_Finish(tpm->esys, &timeout, &ticket));
    if (rc != TSS2_RC_SUCCESS) {
        err = fail(tpm, rc, "PolicySecret(TPM_RH_ENDORSEMENT)");
        goto cleanup;
    }
    err = hand_over_single_use(tpm, &session, session_out);

cleanup:
    provhsm_tpm_flush(tpm, &session);
    Esys_Free(timeout);
    Esys_Free(ticket);
    return err;
}

/*
 * What ActivateCredential answers when the credential cannot be opened with this EK (its
 * seed does not decrypt: TPM_RC_VALUE or TPM_RC_SIZE on the secret, or a TPM failure
 * code some TPMs return for a failed RSA decryption) or when its integrity check against
 * the SRK's Name fails (TPM_RC_INTEGRITY on the credential). tpm2-tss renders some of
 * these as "a TPM failure", which reads as broken hardware.
 */
static int rc_is_foreign_credential(TSS2_RC rc)
{
    TSS2_RC code = tpm_code(rc);
    if (code == TPM2_RC_FAILURE)
        return 1;
    if ((code & TPM2_RC_P) == 0)
        return 0;
    TSS2_RC error = fmt1_error(rc);
    return error == TPM2_RC_VALUE || error == TPM2_RC_SIZE || error == TPM2_RC_INTEGRITY ||
           error == TPM2_RC_KEY || error == TPM2_RC_ECC_POINT;
}

provhsm_err provhsm_tpm_activate_credential(provhsm_tpm *tpm, ESYS_TR activate, ESYS_TR key,
                                            ESYS_TR *session,
                                            const TPM2B_ID_OBJECT *credential_blob,
                                            const TPM2B_ENCRYPTED_SECRET *secret,
                                            TPM2B_DIGEST **cred_out)
{
    TPM2B_DIGEST *cred = NULL;
    TSS2_RC rc;

    if (tpm == NULL || session == NULL || credential_blob == NULL || secret == NULL ||
        cred_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "ActivateCredential");
    TPM_RUN(tpm, rc,
            Esys_ActivateCredential_Async(tpm->esys, activate, key, ESYS_TR_PASSWORD, *session,
                                          ESYS_TR_NONE, credential_blob, secret),
            Esys_ActivateCredential_Finish(tpm->esys, &cred));
    if (rc != TSS2_RC_SUCCESS && rc_is_foreign_credential(rc)) {
        tpm->last_failure_transient = 0;
        PH_ERR(MOD,
               "ActivateCredential: the activation blob was not made for this TPM's endorsement "
               "key, or is corrupt (TPM code 0x%03x: %s)",
               (unsigned)tpm_code(rc), Tss2_RC_Decode(rc));
        return PROVHSM_E_TPM;
    }
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "ActivateCredential");
    /* the session had continueSession clear: the TPM has flushed it */
    provhsm_tpm_forget(tpm, session);

    TPM2B_DIGEST *secure = provhsm_secure_alloc(sizeof(*secure));
    if (secure != NULL)
        memcpy(secure, cred, sizeof(*secure));
    provhsm_wipe(cred, sizeof(*cred));
    Esys_Free(cred);
    if (secure == NULL)
        return PROVHSM_E_NOMEM;
    *cred_out = secure;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_import(provhsm_tpm *tpm, ESYS_TR parent, const TPM2B_DATA *encryption_key,
                               const TPM2B_PUBLIC *object_public, const TPM2B_PRIVATE *duplicate,
                               const TPM2B_ENCRYPTED_SECRET *in_sym_seed,
                               const TPMT_SYM_DEF_OBJECT *symmetric, TPM2B_PRIVATE **private_out)
{
    TPM2B_PRIVATE *priv = NULL;
    TSS2_RC rc;
    if (tpm == NULL || object_public == NULL || duplicate == NULL || in_sym_seed == NULL ||
        symmetric == NULL || private_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "Import");
    TPM_RUN(tpm, rc,
            Esys_Import_Async(tpm->esys, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                              encryption_key, object_public, duplicate, in_sym_seed, symmetric),
            Esys_Import_Finish(tpm->esys, &priv));
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "Import");
    *private_out = priv;
    return PROVHSM_OK;
}

/* One TPM2_Load under the parent's empty password; the caller reads the answer code. */
static TSS2_RC run_load(provhsm_tpm *tpm, ESYS_TR parent, const TPM2B_PRIVATE *in_private,
                        const TPM2B_PUBLIC *in_public, ESYS_TR *tr)
{
    TSS2_RC rc;
    TPM_RUN(tpm, rc,
            Esys_Load_Async(tpm->esys, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                            in_private, in_public),
            Esys_Load_Finish(tpm->esys, tr));
    return rc;
}

provhsm_err provhsm_tpm_load(provhsm_tpm *tpm, ESYS_TR parent, const TPM2B_PRIVATE *in_private,
                             const TPM2B_PUBLIC *in_public, ESYS_TR *tr_out)
{
    ESYS_TR tr = ESYS_TR_NONE;
    if (tpm == NULL || in_private == NULL || in_public == NULL || tr_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "Load");
    TSS2_RC rc = run_load(tpm, parent, in_private, in_public, &tr);
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "Load");
    *tr_out = tr;
    return PROVHSM_OK;
}

/* ---- HMAC ------------------------------------------------------------------------------ */

/* TPM2_PT_INPUT_BUFFER, read once per connection. */
static provhsm_err input_buffer(provhsm_tpm *tpm, uint32_t *out)
{
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA *data = NULL;

    if (tpm->input_buffer == 0) {
        provhsm_err err = get_capability(tpm, TPM2_CAP_TPM_PROPERTIES, TPM2_PT_INPUT_BUFFER, 1,
                                         &more, &data, "GetCapability(TPM2_PT_INPUT_BUFFER)");
        if (err != PROVHSM_OK)
            return err;
        const TPML_TAGGED_TPM_PROPERTY *props = &data->data.tpmProperties;
        if (props->count >= 1 && props->tpmProperty[0].property == TPM2_PT_INPUT_BUFFER &&
            props->tpmProperty[0].value > 0)
            tpm->input_buffer = props->tpmProperty[0].value;
        Esys_Free(data);
        if (tpm->input_buffer == 0) {
            PH_ERR(MOD, "the TPM does not report TPM2_PT_INPUT_BUFFER");
            return PROVHSM_E_TPM;
        }
        PH_DEBUG(MOD, "TPM input buffer: %u bytes", (unsigned)tpm->input_buffer);
    }
    *out = tpm->input_buffer;
    return PROVHSM_OK;
}

/* The HMAC key is not there (evicted since we looked): the caller says what that means. */
static int missing_key(TSS2_RC rc)
{
    if (!rc_is_missing_handle(rc))
        return 0;
    PH_DEBUG(MOD, "no object at the HMAC key's handle");
    return 1;
}

static provhsm_err hmac_sequence(provhsm_tpm *tpm, ESYS_TR key, const uint8_t *data, size_t len,
                                 TPM2B_DIGEST **mac_out)
{
    static const TPM2B_AUTH no_auth = {.size = 0};
    provhsm_err err = PROVHSM_OK;
    ESYS_TR seq = ESYS_TR_NONE;
    TPM2B_MAX_BUFFER chunk;
    TPM2B_DIGEST *mac = NULL;
    TPMT_TK_HASHCHECK *validation = NULL;
    uint32_t max = 0;
    TSS2_RC rc;

    err = input_buffer(tpm, &max);
    if (err != PROVHSM_OK)
        goto cleanup;
    if (max > sizeof(chunk.buffer))
        max = sizeof(chunk.buffer);

    TPM_RUN(tpm, rc,
            Esys_HMAC_Start_Async(tpm->esys, key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                  &no_auth, TPM2_ALG_SHA256),
            Esys_HMAC_Start_Finish(tpm->esys, &seq));
    if (rc != TSS2_RC_SUCCESS) {
        seq = ESYS_TR_NONE;
        err = missing_key(rc) ? PROVHSM_E_NOT_FOUND : fail(tpm, rc, "HMAC_Start");
        goto cleanup;
    }
    /* every chunk but the last through SequenceUpdate; the last one completes it */
    while (len > max) {
        chunk.size = (UINT16)max;
        memcpy(chunk.buffer, data, max);
        TPM_RUN(tpm, rc,
                Esys_SequenceUpdate_Async(tpm->esys, seq, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                          ESYS_TR_NONE, &chunk),
                Esys_SequenceUpdate_Finish(tpm->esys));
        if (rc != TSS2_RC_SUCCESS) {
            err = fail(tpm, rc, "SequenceUpdate");
            goto cleanup;
        }
        data += max;
        len -= max;
    }
    chunk.size = (UINT16)len;
    memcpy(chunk.buffer, data, len);
    TPM_RUN(tpm, rc,
            Esys_SequenceComplete_Async(tpm->esys, seq, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                        ESYS_TR_NONE, &chunk, ESYS_TR_RH_NULL),
            Esys_SequenceComplete_Finish(tpm->esys, &mac, &validation));
    if (rc != TSS2_RC_SUCCESS) {
        err = fail(tpm, rc, "SequenceComplete");
        goto cleanup;
    }
    seq = ESYS_TR_NONE; /* completed: the TPM and ESAPI released it */
    *mac_out = mac;
    mac = NULL;

cleanup:
    provhsm_tpm_flush(tpm, &seq);
    Esys_Free(mac);
    Esys_Free(validation);
    return err;
}

provhsm_err provhsm_tpm_hmac_sha256(provhsm_tpm *tpm, ESYS_TR key, const uint8_t *data, size_t len,
                                    uint8_t **mac_out, size_t *mac_len_out)
{
    provhsm_err err = PROVHSM_OK;
    TPM2B_MAX_BUFFER *buf = NULL;
    TPM2B_DIGEST *mac = NULL;
    uint8_t *out = NULL;
    TSS2_RC rc;

    if (tpm == NULL || (data == NULL && len > 0) || mac_out == NULL || mac_len_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "HMAC");

    /*
     * One TPM2_HMAC when the data fits a TPM2B_MAX_BUFFER and the TPM's input buffer.
     * The input buffer is read only when a sequence needs it, or when a TPM refuses the
     * single command as too large (every TPM we know takes at least 1024 bytes).
     */
    int single = len <= sizeof(buf->buffer) && (tpm->input_buffer == 0 || len <= tpm->input_buffer);
    if (single) {
        buf = malloc(sizeof(*buf));
        if (buf == NULL) {
            err = PROVHSM_E_NOMEM;
            goto cleanup;
        }
        buf->size = (UINT16)len;
        if (len > 0)
            memcpy(buf->buffer, data, len);
        TPM_RUN(tpm, rc,
                Esys_HMAC_Async(tpm->esys, key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, buf,
                                TPM2_ALG_SHA256),
                Esys_HMAC_Finish(tpm->esys, &mac));
        uint32_t max = 0;
        if (fmt1_error(rc) == TPM2_RC_SIZE || tpm_code(rc) == TPM2_RC_COMMAND_SIZE) {
            err = input_buffer(tpm, &max);
            if (err != PROVHSM_OK)
                goto cleanup;
            if (len > max) {
                PH_DEBUG(MOD, "%zu bytes exceed the TPM's input buffer; using a sequence", len);
                single = 0;
            }
        }
        if (single && rc != TSS2_RC_SUCCESS) {
            err = missing_key(rc) ? PROVHSM_E_NOT_FOUND : fail(tpm, rc, "HMAC");
            goto cleanup;
        }
    }
    if (!single) {
        err = hmac_sequence(tpm, key, data, len, &mac);
        if (err != PROVHSM_OK)
            goto cleanup;
    }
    if (mac->size != 32) {
        PH_ERR(MOD, "HMAC-SHA256 returned %u bytes", (unsigned)mac->size);
        err = PROVHSM_E_TPM;
        goto cleanup;
    }
    out = malloc(mac->size);
    if (out == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    memcpy(out, mac->buffer, mac->size);
    *mac_out = out;
    *mac_len_out = mac->size;

cleanup:
    free(buf);
    Esys_Free(mac);
    return err;
}

/* ---- ECDSA signing keys ------------------------------------------------------------------- */

provhsm_err provhsm_tpm_has_curve(provhsm_tpm *tpm, TPM2_ECC_CURVE curve, int *has_out)
{
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA *data = NULL;

    if (tpm == NULL || has_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "GetCapability");
    /* the TPM lists its curves in order from `curve` on: the first one says it all */
    provhsm_err err = get_capability(tpm, TPM2_CAP_ECC_CURVES, curve, 1, &more, &data,
                                     "GetCapability(TPM2_CAP_ECC_CURVES)");
    if (err != PROVHSM_OK)
        return err;
    const TPML_ECC_CURVE *curves = &data->data.eccCurves;
    *has_out = curves->count >= 1 && curves->eccCurves[0] == curve;
    Esys_Free(data);
    return PROVHSM_OK;
}

static void ec_signing_template(TPM2B_PUBLIC *t, TPM2_ECC_CURVE curve)
{
    memset(t, 0, sizeof(*t));
    TPMT_PUBLIC *p = &t->publicArea;
    p->type = TPM2_ALG_ECC;
    p->nameAlg = TPM2_ALG_SHA256;
    p->objectAttributes = PROVHSM_TPM_X509_KEY_ATTRIBUTES;
    p->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
    p->parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
    p->parameters.eccDetail.curveID = curve;
    p->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
}

/*
 * TPM2_Create of `tmpl` under `parent` (password session). The sensitive part holds the
 * authorisation value `auth` and the data `data` (`len` bytes), either NULL for none; it
 * is built in secure memory and wiped after the call. The creation data, which nothing
 * here uses, is dropped. `what` names the object in the error.
 */
static provhsm_err create_object(provhsm_tpm *tpm, ESYS_TR parent, const TPM2B_PUBLIC *tmpl,
                                 const TPM2B_AUTH *auth, const uint8_t *data, size_t len,
                                 const char *what, TPM2B_PRIVATE **private_out,
                                 TPM2B_PUBLIC **public_out)
{
    static const TPM2B_DATA no_outside_info = {.size = 0};
    static const TPML_PCR_SELECTION no_pcrs = {.count = 0};
    TPM2B_PRIVATE *priv = NULL;
    TPM2B_PUBLIC *pub = NULL;
    TPM2B_CREATION_DATA *creation_data = NULL;
    TPM2B_DIGEST *creation_hash = NULL;
    TPMT_TK_CREATION *ticket = NULL;
    TSS2_RC rc;

    TPM_REQUIRE_LIVE(tpm, "Create");
    TPM2B_SENSITIVE_CREATE *sensitive = provhsm_secure_alloc(sizeof(*sensitive));
    if (sensitive == NULL)
        return PROVHSM_E_NOMEM;
    if (auth != NULL)
        sensitive->sensitive.userAuth = *auth;
    if (data != NULL) {
        sensitive->sensitive.data.size = (UINT16)len;
        memcpy(sensitive->sensitive.data.buffer, data, len);
    }
    TPM_RUN(tpm, rc,
            Esys_Create_Async(tpm->esys, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                              sensitive, tmpl, &no_outside_info, &no_pcrs),
            Esys_Create_Finish(tpm->esys, &priv, &pub, &creation_data, &creation_hash, &ticket));
    provhsm_secure_free(sensitive);
    Esys_Free(creation_data);
    Esys_Free(creation_hash);
    Esys_Free(ticket);
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, what);
    *private_out = priv;
    *public_out = pub;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_create_ec_signing_key(provhsm_tpm *tpm, ESYS_TR parent,
                                              TPM2_ECC_CURVE curve, const TPM2B_AUTH *auth,
                                              TPM2B_PRIVATE **private_out,
                                              TPM2B_PUBLIC **public_out)
{
    TPM2B_PUBLIC tmpl;

    if (tpm == NULL || auth == NULL || auth->size > sizeof(auth->buffer) || private_out == NULL ||
        public_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    ec_signing_template(&tmpl, curve);
    return create_object(tpm, parent, &tmpl, auth, NULL, 0, "Create (EC signing key)", private_out,
                         public_out);
}

provhsm_err provhsm_tpm_set_object_auth(provhsm_tpm *tpm, ESYS_TR object, const TPM2B_AUTH *auth)
{
    return provhsm_tpm_set_hierarchy_auth(tpm, object, auth); /* the same ESAPI call */
}

size_t provhsm_tpm_ec_half_size(const TPMT_PUBLIC *pub)
{
    if (pub == NULL || pub->type != TPM2_ALG_ECC)
        return 0;
    switch (pub->parameters.eccDetail.curveID) {
    case TPM2_ECC_NIST_P256:
        return 32;
    case TPM2_ECC_NIST_P384:
        return 48;
    default:
        return 0;
    }
}

static TPMI_ALG_HASH hash_for_digest(size_t digest_len)
{
    switch (digest_len) {
    case 20:
        return TPM2_ALG_SHA1;
    case 32:
        return TPM2_ALG_SHA256;
    case 48:
        return TPM2_ALG_SHA384;
    case 64:
        return TPM2_ALG_SHA512;
    default:
        return TPM2_ALG_NULL;
    }
}

/* One half of the signature, left-padded with zeros to `half` bytes. */
static int put_half(const TPM2B_ECC_PARAMETER *v, size_t half, uint8_t *out)
{
    const uint8_t *p = v->buffer;
    size_t n = v->size;
    while (n > half && *p == 0) { /* a leading zero byte beyond the curve size carries nothing */
        p++;
        n--;
    }
    if (n > half)
        return -1;
    memset(out, 0, half - n);
    memcpy(out + (half - n), p, n);
    return 0;
}

provhsm_err provhsm_tpm_ecdsa_sign(provhsm_tpm *tpm, ESYS_TR key, const TPMT_PUBLIC *key_public,
                                   const uint8_t *digest, size_t digest_len, uint8_t *rs,
                                   size_t *rs_len)
{
    static const TPMT_TK_HASHCHECK no_ticket = {
        .tag = TPM2_ST_HASHCHECK, .hierarchy = TPM2_RH_NULL, .digest = {.size = 0}};
    TPM2B_DIGEST in = {.size = 0};
    TPMT_SIG_SCHEME scheme;
    TPMT_SIGNATURE *sig = NULL;
    provhsm_err err = PROVHSM_OK;
    TSS2_RC rc;

    size_t half = provhsm_tpm_ec_half_size(key_public);
    if (tpm == NULL || digest == NULL || rs == NULL || rs_len == NULL || half == 0)
        return PROVHSM_E_INVALID_ARG;
    memset(&scheme, 0, sizeof(scheme));
    scheme.scheme = TPM2_ALG_ECDSA;
    scheme.details.ecdsa.hashAlg = hash_for_digest(digest_len);
    if (scheme.details.ecdsa.hashAlg == TPM2_ALG_NULL || digest_len > sizeof(in.buffer)) {
        PH_ERR(MOD, "ECDSA: a digest of %zu bytes is none of SHA-1, SHA-256, SHA-384, SHA-512",
               digest_len);
        return PROVHSM_E_INVALID_ARG;
    }
    const TPMT_ECC_SCHEME *own = &key_public->parameters.eccDetail.scheme;
    if (own->scheme != TPM2_ALG_NULL &&
        (own->scheme != TPM2_ALG_ECDSA ||
         own->details.ecdsa.hashAlg != scheme.details.ecdsa.hashAlg)) {
        PH_ERR(MOD,
               "ECDSA: the key allows only scheme 0x%04x with hash 0x%04x, not a %zu-byte digest",
               (unsigned)own->scheme, (unsigned)own->details.ecdsa.hashAlg, digest_len);
        return PROVHSM_E_UNSUPPORTED;
    }
    if (*rs_len < 2 * half)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "Sign");
    in.size = (UINT16)digest_len;
    memcpy(in.buffer, digest, digest_len);
    TPM_RUN(tpm, rc,
            Esys_Sign_Async(tpm->esys, key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &in,
                            &scheme, &no_ticket),
            Esys_Sign_Finish(tpm->esys, &sig));
    if (rc_is_missing_handle(rc)) {
        PH_DEBUG(MOD, "Sign: no object at the key's handle");
        return PROVHSM_E_NOT_FOUND;
    }
    if (rc != TSS2_RC_SUCCESS) {
        err = fail(tpm, rc, "Sign (ECDSA)");
        if (tpm->last_failure_auth)
            PH_ERR(MOD, "Sign (ECDSA): the TPM refused the key's authorisation value: the "
                        "secret kept with the identity is not this key's");
        return err;
    }
    if (sig->sigAlg != TPM2_ALG_ECDSA ||
        put_half(&sig->signature.ecdsa.signatureR, half, rs) != 0 ||
        put_half(&sig->signature.ecdsa.signatureS, half, rs + half) != 0) {
        PH_ERR(MOD, "Sign (ECDSA): the TPM returned a signature of another form (0x%04x)",
               (unsigned)sig->sigAlg);
        err = PROVHSM_E_TPM;
    } else {
        *rs_len = 2 * half;
    }
    Esys_Free(sig);
    return err;
}

provhsm_err provhsm_tpm_ec_public_to_spki(const TPMT_PUBLIC *pub, uint8_t **der_out,
                                          size_t *len_out)
{
    provhsm_err err = PROVHSM_E_CRYPTO;
    uint8_t point[1 + 2 * 48];
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;
    unsigned char *der = NULL;

    if (pub == NULL || der_out == NULL || len_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    size_t half = provhsm_tpm_ec_half_size(pub);
    if (half == 0) {
        PH_ERR(MOD, "the key is not an EC key on P-256 or P-384 (type 0x%04x, curve 0x%04x)",
               (unsigned)pub->type,
               pub->type == TPM2_ALG_ECC ? (unsigned)pub->parameters.eccDetail.curveID : 0u);
        return PROVHSM_E_UNSUPPORTED;
    }
    /* the uncompressed point: 04 | x | y, each coordinate at the curve's size */
    point[0] = 0x04;
    if (put_half(&pub->unique.ecc.x, half, point + 1) != 0 ||
        put_half(&pub->unique.ecc.y, half, point + 1 + half) != 0) {
        PH_ERR(MOD, "the key's public point is larger than its curve");
        return PROVHSM_E_CORRUPT;
    }
    const char *group = half == 32 ? SN_X9_62_prime256v1 : SN_secp384r1;
    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL ||
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * half) != 1 ||
        (params = OSSL_PARAM_BLD_to_param(bld)) == NULL)
        goto cleanup;
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        PH_ERR(MOD, "OpenSSL refused the key's public point (not on the curve?)");
        goto cleanup;
    }
    int len = i2d_PUBKEY(pkey, &der);
    if (len <= 0)
        goto cleanup;
    uint8_t *copy = malloc((size_t)len);
    if (copy == NULL) {
        err = PROVHSM_E_NOMEM;
        goto cleanup;
    }
    memcpy(copy, der, (size_t)len);
    *der_out = copy;
    *len_out = (size_t)len;
    err = PROVHSM_OK;

cleanup:
    if (err == PROVHSM_E_CRYPTO)
        PH_ERR(MOD, "cannot encode the key's public half as a SubjectPublicKeyInfo");
    OPENSSL_free(der);
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return err;
}

/* ---- inspection ---------------------------------------------------------------------------- */

#ifdef PROVHSM_TEST_HOOKS
provhsm_err provhsm_tpm_count_handles(provhsm_tpm *tpm, TPM2_HANDLE first, uint32_t *count_out)
{
    uint32_t count = 0;
    TPM2_HANDLE next = first;
    TPMI_YES_NO more = TPM2_YES;

    if (tpm == NULL || count_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "GetCapability");
    while (more == TPM2_YES) {
        TPMS_CAPABILITY_DATA *data = NULL;
        provhsm_err err = get_capability(tpm, TPM2_CAP_HANDLES, next, HANDLES_PER_QUERY, &more,
                                         &data, "GetCapability(TPM2_CAP_HANDLES)");
        if (err != PROVHSM_OK)
            return err;
        const TPML_HANDLE *h = &data->data.handles;
        for (uint32_t i = 0; i < h->count; i++)
            if ((h->handle[i] >> TPM2_HR_SHIFT) == (first >> TPM2_HR_SHIFT))
                count++;
        if (h->count == 0)
            more = TPM2_NO;
        else
            next = h->handle[h->count - 1] + 1;
        Esys_Free(data);
    }
    *count_out = count;
    return PROVHSM_OK;
}
#endif

/* ---- sealed data ------------------------------------------------------------------------ */

/* The attributes of the sealed data objects made here, and the only ones a blob may carry. */
#define SEALED_ATTRIBUTES (TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_NODA)
#define SEALED_MAX        128 /* MAX_SYM_DATA */

static void sealed_template(TPM2B_PUBLIC *t, const TPM2B_DIGEST *policy)
{
    memset(t, 0, sizeof(*t));
    TPMT_PUBLIC *p = &t->publicArea;
    p->type = TPM2_ALG_KEYEDHASH;
    p->nameAlg = TPM2_ALG_SHA256;
    p->objectAttributes = SEALED_ATTRIBUTES;
    if (policy != NULL && policy->size > 0)
        p->authPolicy = *policy;
    else
        p->objectAttributes |= TPMA_OBJECT_USERWITHAUTH;
    p->parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
}

provhsm_err provhsm_tpm_create_sealed(provhsm_tpm *tpm, ESYS_TR parent, const uint8_t *data,
                                      size_t len, const TPM2B_DIGEST *policy,
                                      TPM2B_PRIVATE **private_out, TPM2B_PUBLIC **public_out)
{
    TPM2B_PUBLIC tmpl;

    if (tpm == NULL || data == NULL || len == 0 || len > SEALED_MAX || private_out == NULL ||
        public_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    sealed_template(&tmpl, policy);
    return create_object(tpm, parent, &tmpl, NULL, data, len, "Create (sealed data object)",
                         private_out, public_out);
}

/* What Load answers for a private area whose integrity key (the parent's seed) differs. */
static int rc_is_foreign_private(TSS2_RC rc)
{
    TSS2_RC error = fmt1_error(rc);
    return error == TPM2_RC_INTEGRITY || error == TPM2_RC_SIZE || error == TPM2_RC_VALUE ||
           error == TPM2_RC_KEY_SIZE || error == TPM2_RC_SENSITIVE;
}

provhsm_err provhsm_tpm_load_sealed(provhsm_tpm *tpm, ESYS_TR parent,
                                    const TPM2B_PRIVATE *in_private, const TPM2B_PUBLIC *in_public,
                                    ESYS_TR *tr_out)
{
    ESYS_TR tr = ESYS_TR_NONE;
    if (tpm == NULL || in_private == NULL || in_public == NULL || tr_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "Load");
    TSS2_RC rc = run_load(tpm, parent, in_private, in_public, &tr);
    if (rc != TSS2_RC_SUCCESS && rc_is_foreign_private(rc)) {
        tpm->last_failure_transient = 0;
        PH_DEBUG(MOD, "Load of a sealed object: TPM code 0x%03x (%s)", (unsigned)tpm_code(rc),
                 Tss2_RC_Decode(rc));
        return PROVHSM_E_WRONG_KEY;
    }
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "Load (sealed data object)");
    *tr_out = tr;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_unseal(provhsm_tpm *tpm, ESYS_TR item, ESYS_TR *session, uint8_t *out,
                               size_t size, size_t *len_out)
{
    TPM2B_SENSITIVE_DATA *data = NULL;
    ESYS_TR auth;
    TSS2_RC rc;

    if (tpm == NULL || session == NULL || out == NULL || len_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "Unseal");
    auth = *session == ESYS_TR_NONE ? ESYS_TR_PASSWORD : *session;
    TPM_RUN(tpm, rc, Esys_Unseal_Async(tpm->esys, item, auth, ESYS_TR_NONE, ESYS_TR_NONE),
            Esys_Unseal_Finish(tpm->esys, &data));
    if (rc != TSS2_RC_SUCCESS) {
        if (fmt1_error(rc) == TPM2_RC_POLICY_FAIL) {
            tpm->last_failure_transient = 0;
            return PROVHSM_E_WRONG_KEY;
        }
        /* nothing at the handle (a persistent handle on another TPM): the caller says so */
        if (rc_is_missing_handle(rc)) {
            tpm->last_failure_transient = 0;
            PH_DEBUG(MOD, "Unseal: TPM code 0x%03x (%s)", (unsigned)tpm_code(rc),
                     Tss2_RC_Decode(rc));
            return PROVHSM_E_NOT_FOUND;
        }
        return fail(tpm, rc, "Unseal");
    }
    if (auth != ESYS_TR_PASSWORD)
        provhsm_tpm_forget(tpm, session); /* continueSession was clear: flushed by the TPM */
    /* one copy of the secret: from ESAPI's answer, wiped at once, to the caller's memory */
    if (data->size == size)
        memcpy(out, data->buffer, size);
    *len_out = data->size;
    provhsm_wipe(data, sizeof(*data));
    Esys_Free(data);
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_pcr_policy_session(provhsm_tpm *tpm, const TPML_PCR_SELECTION *pcrs,
                                           int trial, ESYS_TR *session_out)
{
    static const TPM2B_DIGEST current_values = {.size = 0};
    return provhsm_tpm_pcr_policy_session_to(tpm, pcrs, &current_values, trial, session_out);
}

provhsm_err provhsm_tpm_pcr_policy_session_to(provhsm_tpm *tpm, const TPML_PCR_SELECTION *pcrs,
                                              const TPM2B_DIGEST *pcr_digest, int trial,
                                              ESYS_TR *session_out)
{
    static const TPMT_SYM_DEF no_symmetric = {.algorithm = TPM2_ALG_NULL};
    provhsm_err err = PROVHSM_OK;
    ESYS_TR session = ESYS_TR_NONE;
    TSS2_RC rc;

    if (tpm == NULL || pcrs == NULL || pcr_digest == NULL || session_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    /* a policy session compares a given digest with the PCRs as they are, which is not
       what a digest of future values is for: only a trial session takes one as given */
    if (pcr_digest->size != 0 && (!trial || pcr_digest->size != TPM2_SHA256_DIGEST_SIZE))
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "StartAuthSession");
    TPM_RUN(tpm, rc,
            Esys_StartAuthSession_Async(
                tpm->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                NULL, trial ? TPM2_SE_TRIAL : TPM2_SE_POLICY, &no_symmetric, TPM2_ALG_SHA256),
            Esys_StartAuthSession_Finish(tpm->esys, &session));
    if (rc != TSS2_RC_SUCCESS) {
        session = ESYS_TR_NONE;
        return fail(tpm, rc, "StartAuthSession");
    }
    /* an empty digest: the TPM takes the PCRs' values as they are now */
    TPM_RUN(tpm, rc,
            Esys_PolicyPCR_Async(tpm->esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                 pcr_digest, pcrs),
            Esys_PolicyPCR_Finish(tpm->esys));
    if (rc != TSS2_RC_SUCCESS) {
        err = fail(tpm, rc, "PolicyPCR");
        goto cleanup;
    }
    err = hand_over_single_use(tpm, &session, session_out);
cleanup:
    provhsm_tpm_flush(tpm, &session);
    return err;
}

/* A branch list PolicyOR takes: 2 to 8 SHA-256 digests (the sessions here are SHA-256). */
static int policy_branches_fit(const TPML_DIGEST *branches)
{
    if (branches->count < 2 || branches->count > 8)
        return 0;
    for (UINT32 i = 0; i < branches->count; i++)
        if (branches->digests[i].size != TPM2_SHA256_DIGEST_SIZE)
            return 0;
    return 1;
}

provhsm_err provhsm_tpm_policy_or(provhsm_tpm *tpm, ESYS_TR session, const TPML_DIGEST *branches)
{
    TSS2_RC rc;
    if (tpm == NULL || branches == NULL || !policy_branches_fit(branches))
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "PolicyOR");
    TPM_RUN(
        tpm, rc,
        Esys_PolicyOR_Async(tpm->esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, branches),
        Esys_PolicyOR_Finish(tpm->esys));
    if (rc != TSS2_RC_SUCCESS) {
        TSS2_RC code = tpm_code(rc);
        /* the session's digest is none of the branches: for the caller to explain */
        if (fmt1_error(rc) == TPM2_RC_VALUE) {
            tpm->last_failure_transient = 0;
            PH_DEBUG(MOD, "PolicyOR: TPM code 0x%03x (%s)", (unsigned)code, Tss2_RC_Decode(rc));
            return PROVHSM_E_WRONG_KEY;
        }
        return fail(tpm, rc, "PolicyOR");
    }
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_policy_or_digest(const TPML_DIGEST *branches, TPM2B_DIGEST *digest_out)
{
    static const uint8_t zero_digest[TPM2_SHA256_DIGEST_SIZE] = {0};
    uint8_t cc[sizeof(TPM2_CC)];
    size_t cc_len = 0;
    unsigned int len = 0;
    if (branches == NULL || digest_out == NULL || !policy_branches_fit(branches))
        return PROVHSM_E_INVALID_ARG;
    if (Tss2_MU_TPM2_CC_Marshal(TPM2_CC_PolicyOR, cc, sizeof(cc), &cc_len) != TSS2_RC_SUCCESS)
        return PROVHSM_E_INVALID_ARG;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(md, zero_digest, sizeof(zero_digest)) == 1 &&
             EVP_DigestUpdate(md, cc, cc_len) == 1;
    for (UINT32 i = 0; ok && i < branches->count; i++)
        ok = EVP_DigestUpdate(md, branches->digests[i].buffer, branches->digests[i].size) == 1;
    ok = ok && EVP_DigestFinal_ex(md, digest_out->buffer, &len) == 1;
    EVP_MD_CTX_free(md);
    if (!ok)
        return PROVHSM_E_CRYPTO;
    digest_out->size = (UINT16)len;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_policy_digest(provhsm_tpm *tpm, ESYS_TR session, TPM2B_DIGEST *digest_out)
{
    TPM2B_DIGEST *digest = NULL;
    TSS2_RC rc;
    if (tpm == NULL || digest_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "PolicyGetDigest");
    TPM_RUN(
        tpm, rc,
        Esys_PolicyGetDigest_Async(tpm->esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE),
        Esys_PolicyGetDigest_Finish(tpm->esys, &digest));
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "PolicyGetDigest");
    *digest_out = *digest;
    Esys_Free(digest);
    return PROVHSM_OK;
}

/* Copies the values of one PCR_Read answer into values[] by PCR number; clears them in *left. */
static provhsm_err take_pcr_values(const TPML_PCR_SELECTION *read, const TPML_DIGEST *digests,
                                   TPMI_ALG_HASH bank, uint32_t *left, TPM2B_DIGEST values[24])
{
    uint32_t next = 0;
    if (read->count == 0) /* the TPM has nothing more of that bank: not allocated there */
        return PROVHSM_E_NOT_FOUND;
    if (read->count != 1 || read->pcrSelections[0].hash != bank)
        return PROVHSM_E_TPM;
    const TPMS_PCR_SELECTION *s = &read->pcrSelections[0];
    /* what a TPM answers for a bank it has not allocated: the bank, no PCR, no value */
    uint32_t selected = 0;
    for (unsigned i = 0; i < s->sizeofSelect && i < sizeof(s->pcrSelect); i++)
        selected |= s->pcrSelect[i];
    if (selected == 0 && digests->count == 0)
        return PROVHSM_E_NOT_FOUND;
    for (unsigned pcr = 0; pcr < 24 && pcr / 8 < s->sizeofSelect; pcr++) {
        if (!(s->pcrSelect[pcr / 8] & (1u << (pcr % 8))))
            continue;
        /* only what was asked, each once, one digest per selected PCR */
        if (!(*left & (1ul << pcr)) || next >= digests->count)
            return PROVHSM_E_TPM;
        values[pcr] = digests->digests[next++];
        *left &= ~(1ul << pcr);
    }
    return next == digests->count && next > 0 ? PROVHSM_OK : PROVHSM_E_TPM;
}

provhsm_err provhsm_tpm_pcrs_unallocated(provhsm_tpm *tpm, TPMI_ALG_HASH bank, uint32_t mask,
                                         uint32_t *missing_out)
{
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA *data = NULL;

    if (tpm == NULL || missing_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "GetCapability");
    provhsm_err err =
        get_capability(tpm, TPM2_CAP_PCRS, 0, 1, &more, &data, "GetCapability(TPM2_CAP_PCRS)");
    if (err != PROVHSM_OK)
        return err;
    /* every bank the TPM implements, each with the PCRs allocated in it (maybe none) */
    uint32_t allocated = 0;
    const TPML_PCR_SELECTION *banks = &data->data.assignedPCR;
    for (UINT32 b = 0; b < banks->count && b < TPM2_NUM_PCR_BANKS; b++) {
        const TPMS_PCR_SELECTION *s = &banks->pcrSelections[b];
        if (s->hash != bank)
            continue;
        for (unsigned i = 0; i < s->sizeofSelect && i < sizeof(s->pcrSelect) && i < 4; i++)
            allocated |= (uint32_t)s->pcrSelect[i] << (8 * i);
    }
    Esys_Free(data);
    *missing_out = mask & ~allocated;
    return PROVHSM_OK;
}

/*
 * One pass of PCR_Read commands over `mask` (one answer carries at most 8 values, so more
 * PCRs take more commands). *changed_out: 1 when the TPM's PCR update counter moved between
 * two of them, i.e. a PCR was extended meanwhile and the values may not belong together.
 */
static provhsm_err pcr_read_pass(provhsm_tpm *tpm, TPMI_ALG_HASH bank, uint32_t mask,
                                 TPM2B_DIGEST values[24], int *changed_out)
{
    uint32_t left = mask, first_counter = 0;
    *changed_out = 0;
    for (int round = 0; left != 0; round++) {
        TPML_PCR_SELECTION ask = {.count = 1};
        TPML_PCR_SELECTION *read = NULL;
        TPML_DIGEST *digests = NULL;
        UINT32 update_counter = 0;
        TSS2_RC rc;
        ask.pcrSelections[0].hash = bank;
        ask.pcrSelections[0].sizeofSelect = 3;
        for (unsigned i = 0; i < 3; i++)
            ask.pcrSelections[0].pcrSelect[i] = (uint8_t)(left >> (8 * i));
        TPM_REQUIRE_LIVE(tpm, "PCR_Read");
        TPM_RUN(tpm, rc,
                Esys_PCR_Read_Async(tpm->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &ask),
                Esys_PCR_Read_Finish(tpm->esys, &update_counter, &read, &digests));
        if (rc != TSS2_RC_SUCCESS)
            return fail(tpm, rc, "PCR_Read");
        provhsm_err err = take_pcr_values(read, digests, bank, &left, values);
        Esys_Free(read);
        Esys_Free(digests);
        if (err != PROVHSM_OK) {
            PH_ERR(MOD, "PCR_Read: the TPM %s of bank 0x%04x (PCRs 0x%06lx still unread)",
                   err == PROVHSM_E_NOT_FOUND ? "has no values (the bank is not allocated)"
                                              : "answered other PCRs than asked",
                   (unsigned)bank, (unsigned long)left);
            return err;
        }
        if (round == 0)
            first_counter = update_counter;
        else if (update_counter != first_counter)
            *changed_out = 1;
    }
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_pcr_read(provhsm_tpm *tpm, TPMI_ALG_HASH bank, uint32_t mask,
                                 TPM2B_DIGEST values[24])
{
    if (tpm == NULL || values == NULL || (mask & ~0xffffffu) != 0)
        return PROVHSM_E_INVALID_ARG;
    for (int attempt = 0; attempt < 3; attempt++) {
        int changed = 0;
        provhsm_err err = pcr_read_pass(tpm, bank, mask, values, &changed);
        if (err != PROVHSM_OK || !changed)
            return err;
    }
    PH_ERR(MOD, "PCR_Read: the PCRs kept changing while they were read (3 attempts)");
    return PROVHSM_E_TPM;
}

provhsm_err provhsm_tpm_pcr_extend_sha256(provhsm_tpm *tpm, unsigned pcr, const uint8_t digest[32])
{
    TPML_DIGEST_VALUES values = {.count = 1};
    TSS2_RC rc;
    if (tpm == NULL || digest == NULL || pcr > 23)
        return PROVHSM_E_INVALID_ARG;
    TPM_REQUIRE_LIVE(tpm, "PCR_Extend");
    values.digests[0].hashAlg = TPM2_ALG_SHA256;
    memcpy(values.digests[0].digest.sha256, digest, 32);
    TPM_RUN(tpm, rc,
            Esys_PCR_Extend_Async(tpm->esys, ESYS_TR_PCR0 + pcr, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                  ESYS_TR_NONE, &values),
            Esys_PCR_Extend_Finish(tpm->esys));
    if (rc != TSS2_RC_SUCCESS)
        return fail(tpm, rc, "PCR_Extend");
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_marshal_object(const TPM2B_PUBLIC *pub, const TPM2B_PRIVATE *priv,
                                       uint8_t *buf, size_t size, size_t *offset)
{
    if (pub == NULL || buf == NULL || offset == NULL)
        return PROVHSM_E_INVALID_ARG;
    size_t off = *offset;
    TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Marshal(pub, buf, size, &off);
    if (rc == TSS2_RC_SUCCESS && priv != NULL)
        rc = Tss2_MU_TPM2B_PRIVATE_Marshal(priv, buf, size, &off);
    if (rc != TSS2_RC_SUCCESS) {
        PH_ERR(MOD, "cannot marshal a sealed object: %s", Tss2_RC_Decode(rc));
        return PROVHSM_E_INVALID_ARG;
    }
    *offset = off;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_unmarshal_sealed_object(const uint8_t *buf, size_t size, size_t *offset,
                                                const char *what, TPM2B_PUBLIC *pub,
                                                TPM2B_PRIVATE *priv)
{
    if (buf == NULL || offset == NULL || what == NULL || pub == NULL)
        return PROVHSM_E_INVALID_ARG;
    size_t off = *offset;
    memset(pub, 0, sizeof(*pub));
    if (priv != NULL)
        memset(priv, 0, sizeof(*priv));
    if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(buf, size, &off, pub) != TSS2_RC_SUCCESS ||
        (priv != NULL &&
         Tss2_MU_TPM2B_PRIVATE_Unmarshal(buf, size, &off, priv) != TSS2_RC_SUCCESS)) {
        PH_ERR(MOD, "%s: the sealed object is truncated or malformed", what);
        return PROVHSM_E_CORRUPT;
    }
    const TPMT_PUBLIC *p = &pub->publicArea;
    TPMA_OBJECT attrs = p->objectAttributes & ~TPMA_OBJECT_USERWITHAUTH;
    int has_policy = p->authPolicy.size > 0;
    int user_with_auth = (p->objectAttributes & TPMA_OBJECT_USERWITHAUTH) != 0;
    if (p->type != TPM2_ALG_KEYEDHASH || p->nameAlg != TPM2_ALG_SHA256 ||
        attrs != SEALED_ATTRIBUTES || has_policy == user_with_auth ||
        p->parameters.keyedHashDetail.scheme.scheme != TPM2_ALG_NULL ||
        (priv != NULL && priv->size == 0)) {
        PH_ERR(MOD,
               "%s: not a sealed data object as provhsm makes them (type 0x%04x, attributes "
               "0x%08x)",
               what, (unsigned)p->type, (unsigned)p->objectAttributes);
        return PROVHSM_E_CORRUPT;
    }
    *offset = off;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_marshal_pcrs(const TPML_PCR_SELECTION *pcrs, uint8_t *buf, size_t size,
                                     size_t *offset)
{
    if (pcrs == NULL || buf == NULL || offset == NULL)
        return PROVHSM_E_INVALID_ARG;
    size_t off = *offset;
    TSS2_RC rc = Tss2_MU_TPML_PCR_SELECTION_Marshal(pcrs, buf, size, &off);
    if (rc != TSS2_RC_SUCCESS) {
        PH_ERR(MOD, "cannot marshal a PCR selection: %s", Tss2_RC_Decode(rc));
        return PROVHSM_E_INVALID_ARG;
    }
    *offset = off;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_unmarshal_pcrs(const uint8_t *buf, size_t size, size_t *offset,
                                       const char *what, TPML_PCR_SELECTION *pcrs)
{
    if (buf == NULL || offset == NULL || what == NULL || pcrs == NULL)
        return PROVHSM_E_INVALID_ARG;
    size_t off = *offset;
    memset(pcrs, 0, sizeof(*pcrs));
    if (Tss2_MU_TPML_PCR_SELECTION_Unmarshal(buf, size, &off, pcrs) != TSS2_RC_SUCCESS) {
        PH_ERR(MOD, "%s: the PCR selection is truncated or malformed", what);
        return PROVHSM_E_CORRUPT;
    }
    for (UINT32 i = 0; i < pcrs->count; i++) {
        if (pcrs->pcrSelections[i].sizeofSelect != 3) {
            PH_ERR(MOD, "%s: a PCR selection of %u bytes (3 expected)", what,
                   (unsigned)pcrs->pcrSelections[i].sizeofSelect);
            return PROVHSM_E_CORRUPT;
        }
    }
    *offset = off;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_marshal_digests(const TPML_DIGEST *digests, uint8_t *buf, size_t size,
                                        size_t *offset)
{
    if (digests == NULL || buf == NULL || offset == NULL)
        return PROVHSM_E_INVALID_ARG;
    size_t off = *offset;
    TSS2_RC rc = Tss2_MU_TPML_DIGEST_Marshal(digests, buf, size, &off);
    if (rc != TSS2_RC_SUCCESS) {
        PH_ERR(MOD, "cannot marshal a digest list: %s", Tss2_RC_Decode(rc));
        return PROVHSM_E_INVALID_ARG;
    }
    *offset = off;
    return PROVHSM_OK;
}

provhsm_err provhsm_tpm_unmarshal_digests(const uint8_t *buf, size_t size, size_t *offset,
                                          const char *what, TPML_DIGEST *digests)
{
    if (buf == NULL || offset == NULL || what == NULL || digests == NULL)
        return PROVHSM_E_INVALID_ARG;
    size_t off = *offset;
    memset(digests, 0, sizeof(*digests));
    if (Tss2_MU_TPML_DIGEST_Unmarshal(buf, size, &off, digests) != TSS2_RC_SUCCESS) {
        PH_ERR(MOD, "%s: the digest list is truncated or malformed", what);
        return PROVHSM_E_CORRUPT;
    }
    *offset = off;
    return PROVHSM_OK;
}
