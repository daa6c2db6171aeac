/*
 * The one wrapper around tpm2-tss (ESAPI, SAPI, TCTI loader): a connection to a TPM and
 * one function per TPM operation the TPM backend needs. Each function retries what the
 * TPM asks to be retried (TPM_RC_RETRY / YIELDED / TESTING, a few times with a short
 * sleep), logs a failure once with Tss2_RC_Decode(), and maps it to provhsm_err:
 * an unreachable TPM (TCTI failure) is PROVHSM_E_NO_DEVICE, anything the TPM refuses is
 * PROVHSM_E_TPM, a handle with nothing behind it is PROVHSM_E_NOT_FOUND where noted.
 *
 * Every command goes through a counting proxy TCTI, so callers and benchmarks can see
 * how many TPM commands an operation cost. The proxy is also where tests inject faults.
 *
 * A connection is used by one thread at a time; different connections may be used at
 * once. Callers: backend_tpm.c, store.c (the store key sealed to the TPM), the
 * integration tests and the TPM benchmarks.
 */
#ifndef PROVHSM_TPM_ESYS_H
#define PROVHSM_TPM_ESYS_H

#include <stddef.h>
#include <pthread.h>
#include <stdint.h>
#include <tss2/tss2_esys.h>

#include "config.h"
#include "provhsm/provhsm.h"

typedef struct provhsm_tpm provhsm_tpm;

/*
 * Loads the TCTI named by `tcti` ("device:/dev/tpmrm0", "swtpm:host=...,port=...", ...;
 * NULL or "" lets the TCTI loader choose) and makes an ESYS context on it. Sends no TPM
 * command. PROVHSM_E_NO_DEVICE when the TCTI cannot be loaded or initialised.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_connect(const char *tcti, provhsm_tpm **out);

/* Releases the ESYS context and the TCTI. NULL is fine. Sends no TPM command. */
void provhsm_tpm_disconnect(provhsm_tpm *tpm);

/*
 * 1 once a command failed below the TPM (connection lost, TCTI error): the ESYS context
 * cannot be used again, and the caller should reconnect.
 */
int provhsm_tpm_lost(const provhsm_tpm *tpm);

/* TPM commands sent through this connection, and through all connections of the process. */
uint64_t provhsm_tpm_commands(const provhsm_tpm *tpm);
uint64_t provhsm_tpm_commands_total(void);

/*
 * 1 when the last failure this connection reported was a TPM warning (TPM_RC_WARN: out of
 * memory or handles, NV rate limit, retry, ...), i.e. the same command may work a moment
 * later; 0 otherwise, and for a lost connection.
 */
int provhsm_tpm_last_failure_transient(const provhsm_tpm *tpm);

/* 1 when the last failure this connection reported was an authorisation the TPM refused
 * (TPM_RC_AUTH_FAIL or TPM_RC_BAD_AUTH: a wrong hierarchy or object authorisation). */
int provhsm_tpm_last_failure_auth(const provhsm_tpm *tpm);

#ifdef PROVHSM_TEST_HOOKS
/*
 * Test hooks (built only into the test copy of the library, never the installed archive).
 * provhsm_tpm_test_fail_commands: of the TPM commands from now on with command code
 * `command_code` (0: every command), counted process-wide, the nth (1 = the next one) and
 * the count - 1 after it are not sent; each caller receives a response carrying `tpm_rc`
 * instead, as if the TPM had refused it. ESAPI resubmits some codes by itself (RETRY,
 * YIELDED, TESTING), and each resubmission is a command here too. nth == 0 or count == 0
 * disarms; arming replaces what was armed before.
 * provhsm_tpm_test_fail_command(nth, rc) is (nth, 1, 0, rc). For failure-path tests only.
 */
void provhsm_tpm_test_fail_commands(uint64_t nth, uint64_t count, uint32_t command_code,
                                    uint32_t tpm_rc);
void provhsm_tpm_test_fail_command(uint64_t nth, uint32_t tpm_rc);

/*
 * provhsm_tpm_test_before_command: `fn` (NULL: none) is called with the command code before
 * each command of the process is sent, on the sending thread, e.g. to change the TPM's
 * state from another connection between two commands. Commands `fn` sends itself reach
 * it too.
 */
void provhsm_tpm_test_before_command(void (*fn)(uint32_t command_code, void *ctx), void *ctx);

/* Connections (provhsm_tpm_connect) of the process not yet disconnected. */
unsigned provhsm_tpm_test_open_connections(void);
#endif

/*
 * The process's one connection to the TPM behind cfg->tcti: the one the TPM backend's
 * table states, X.509 keys and admin calls share (swtpm, the simulator and a bare
 * /dev/tpm0 serve one client at a time). provhsm_tpm_enter() takes the TCTI's lock and
 * connects (again, when the connection was lost; the backend's users then rebuild their
 * ESYS handles); on failure nothing is held. Until provhsm_tpm_leave() the caller alone
 * sends commands on *tpm, and it releases there everything it made (ESYS handles,
 * transient objects, sessions, hierarchy authorisations): the connection outlives it.
 * Leave unlocks, and disconnects when no state or key of the backend uses the TPM. The
 * lock is not recursive: enter never while holding it, nor while the backend does.
 * Defined in backend_tpm.c, used by the store's sealed key.
 */
typedef struct tcti_site provhsm_tpm_site;
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_enter(const provhsm_config *cfg, provhsm_tpm_site **site,
                                                 provhsm_tpm **tpm);
void provhsm_tpm_leave(provhsm_tpm_site *site);

/*
 * provhsm_tpm_leave(), releasing first the transient object *object made on the
 * connection (*object becomes ESYS_TR_NONE). When the connection closes here and goes
 * through a resource manager (provhsm_tcti_releases_on_close), closing it releases the
 * object and no FlushContext is sent. Otherwise (a TPM without one, or a connection the
 * backend's users keep open) the object is flushed: it would hold one of the TPM's,
 * or the connection's, few object slots.
 */
void provhsm_tpm_leave_releasing(provhsm_tpm_site *site, ESYS_TR *object);

/*
 * Loads the owner authorisation configured in [tpm] (owner_auth_file / owner_auth_env)
 * into the connection, as the TPM backend does before EvictControl. Defined in
 * backend_tpm.c. provhsm_tpm_drop_owner_auth() overwrites it again.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_use_owner_auth(const provhsm_config *cfg,
                                                          provhsm_tpm *tpm);

/*
 * Overwrites the owner authorisation inside ESAPI with the empty value: the shared
 * connection outlives the command that needed it. NULL does nothing; a failure is logged.
 */
void provhsm_tpm_drop_owner_auth(provhsm_tpm *tpm);

/*
 * Creates the storage root key from the TPM backend's template and persists it at
 * cfg->srk_handle under the owner authorisation of [tpm] (CreatePrimary, EvictControl,
 * FlushContext), as the backend does on a TPM that has none; one another user of the TPM
 * persisted meanwhile is kept. On the connection of provhsm_tpm_enter(): the caller
 * holds the TCTI's lock, and this takes it no more. Defined in backend_tpm.c; used by
 * the store to seal its key on a fresh TPM.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_create_srk(const provhsm_config *cfg, provhsm_tpm *tpm);

/* ---- objects ------------------------------------------------------------------ */

/*
 * Looks up the object at `handle` (persistent or transient): one ReadPublic. *tr_out is
 * an ESYS handle for it (release with provhsm_tpm_forget()); *pub_out (optional,
 * malloc'd, free()) its public area. PROVHSM_E_NOT_FOUND, logged only at debug level,
 * when nothing is there.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_read_public(provhsm_tpm *tpm, TPM2_HANDLE handle,
                                                       ESYS_TR *tr_out, TPM2B_PUBLIC **pub_out);

/*
 * Which of the `n` persistent handles are in use (present[i] 1 or 0), without a command
 * that fails for an empty handle: one GetCapability(TPM2_CAP_HANDLES) from the lowest of
 * them (another only when the TPM lists fewer handles at once than lie between them).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_persistent_present(provhsm_tpm *tpm,
                                                              const TPM2_HANDLE *handles, size_t n,
                                                              int *present);

/*
 * An ESYS handle for a persistent `handle` known to be in use, for commands authorised by
 * password (HMAC, EvictControl); it carries no name or public area. No TPM command
 * (one ReadPublic only if ESAPI refuses the serialized form).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_persistent_handle(provhsm_tpm *tpm, TPM2_HANDLE handle,
                                                             ESYS_TR *tr_out);

/*
 * Looks for a persistent object at `handle` without reading it: one GetCapability.
 * *tr_out addresses the handle for commands authorised by password (HMAC, EvictControl);
 * it carries no name or public area. PROVHSM_E_NOT_FOUND, logged only at debug level,
 * when nothing is there.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_find_persistent(provhsm_tpm *tpm, TPM2_HANDLE handle,
                                                           ESYS_TR *tr_out);

/*
 * An ESYS handle for the persistent object at `handle` whose public area is `pub` (as
 * stored by the caller): it carries the object's Name, computed here, so that it serves
 * policy and HMAC sessions too. No TPM command (one ReadPublic only if ESAPI refuses the
 * serialized form). A wrong `pub` makes the next command with the handle fail.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_persistent_object(provhsm_tpm *tpm, TPM2_HANDLE handle,
                                                             const TPM2B_PUBLIC *pub,
                                                             ESYS_TR *tr_out);

/* The marshaled TPM2B_PUBLIC (2-byte size prefix, big-endian), malloc'd. */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_marshal_public(const TPM2B_PUBLIC *pub, uint8_t **out,
                                                          size_t *len_out);

/*
 * Sets the authorisation value used for a hierarchy (ESYS_TR_RH_OWNER,
 * ESYS_TR_RH_ENDORSEMENT) on this connection; NULL sets the empty value and overwrites
 * the earlier one inside ESYS. Sends no command.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_set_hierarchy_auth(provhsm_tpm *tpm, ESYS_TR hierarchy,
                                                              const TPM2B_AUTH *auth);

/* CreatePrimary under `hierarchy` with `tmpl`; a transient object and its public area. */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_create_primary(provhsm_tpm *tpm, ESYS_TR hierarchy,
                                                          const TPM2B_PUBLIC *tmpl, ESYS_TR *tr_out,
                                                          TPM2B_PUBLIC **pub_out);

/*
 * EvictControl (owner authorisation): makes the transient `object` persistent at
 * `handle`; *persistent_out is its ESYS handle. PROVHSM_E_EXISTS when the handle is taken.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_persist(provhsm_tpm *tpm, ESYS_TR object,
                                                   TPM2_HANDLE handle, ESYS_TR *persistent_out);

/*
 * EvictControl (owner authorisation): removes the persistent object and releases its
 * ESYS handle (*persistent becomes ESYS_TR_NONE). PROVHSM_E_NOT_FOUND when it was gone.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_evict(provhsm_tpm *tpm, ESYS_TR *persistent);

/*
 * FlushContext of a transient object, sequence or session; *tr becomes ESYS_TR_NONE
 * whatever happens (a failure is logged). ESYS_TR_NONE is fine and sends nothing.
 */
void provhsm_tpm_flush(provhsm_tpm *tpm, ESYS_TR *tr);

/* Releases an ESYS handle without a TPM command; *tr becomes ESYS_TR_NONE. */
void provhsm_tpm_forget(provhsm_tpm *tpm, ESYS_TR *tr);

/* ---- credential activation and import ------------------------------------------- */

/*
 * A policy session satisfying the TCG EK policy: StartAuthSession (policy, SHA-256)
 * then PolicySecret(TPM_RH_ENDORSEMENT). The session is single-use: the TPM flushes it
 * after the next command that succeeds with it. On failure nothing is left behind.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_ek_policy_session(provhsm_tpm *tpm,
                                                             ESYS_TR *session_out);

/*
 * ActivateCredential: `activate` (password-authorised, e.g. the SRK) is the object the
 * credential names, `key` (the EK) decrypts it under the policy `*session`. On success
 * the TPM has consumed the session (*session becomes ESYS_TR_NONE) and *cred_out holds
 * the credential in provhsm_secure_alloc() memory (free with provhsm_secure_free()).
 * On failure *session stays for the caller to flush.
 */
PROVHSM_MUST_CHECK provhsm_err
provhsm_tpm_activate_credential(provhsm_tpm *tpm, ESYS_TR activate, ESYS_TR key, ESYS_TR *session,
                                const TPM2B_ID_OBJECT *credential_blob,
                                const TPM2B_ENCRYPTED_SECRET *secret, TPM2B_DIGEST **cred_out);

/* Import under `parent` (password-authorised); *private_out malloc'd (free()). */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_import(provhsm_tpm *tpm, ESYS_TR parent,
                                                  const TPM2B_DATA *encryption_key,
                                                  const TPM2B_PUBLIC *object_public,
                                                  const TPM2B_PRIVATE *duplicate,
                                                  const TPM2B_ENCRYPTED_SECRET *in_sym_seed,
                                                  const TPMT_SYM_DEF_OBJECT *symmetric,
                                                  TPM2B_PRIVATE **private_out);

/* Load under `parent` (password-authorised): a transient object. */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_load(provhsm_tpm *tpm, ESYS_TR parent,
                                                const TPM2B_PRIVATE *in_private,
                                                const TPM2B_PUBLIC *in_public, ESYS_TR *tr_out);

/* ---- HMAC ------------------------------------------------------------------------ */

/*
 * HMAC-SHA256 of data with the (password-authorised, empty auth) key `key`: one
 * TPM2_HMAC when len fits the TPM's input buffer (TPM2_PT_INPUT_BUFFER, read once per
 * connection when first needed), else an HMAC sequence, flushed on failure.
 * *mac_out is malloc'd (32 bytes). PROVHSM_E_NOT_FOUND, logged only at debug level,
 * when no object is at the key's handle.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_hmac_sha256(provhsm_tpm *tpm, ESYS_TR key,
                                                       const uint8_t *data, size_t len,
                                                       uint8_t **mac_out, size_t *mac_len_out);

/* ---- ECDSA signing keys (the X.509 device key) ------------------------------------ */

/*
 * The attributes of the X.509 device keys made here: the private key is made inside the
 * TPM (sensitiveDataOrigin) and can never be duplicated out of it or away from its parent
 * (fixedTPM, fixedParent); it signs anything with its authorisation value in a password
 * session (userWithAuth, sign; not restricted, so TPM2_Sign needs no ticket) and decrypts
 * nothing. noDA: the value is 32 random bytes, which no guessing reaches, and without it
 * any local process could lock the device's key (and every other dictionary-protected
 * object) out by sending wrong values.
 */
#define PROVHSM_TPM_X509_KEY_ATTRIBUTES                                                            \
    (TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |            \
     TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA | TPMA_OBJECT_SIGN_ENCRYPT)

/* 1 in *has_out when the TPM implements `curve` (GetCapability TPM2_CAP_ECC_CURVES). */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_has_curve(provhsm_tpm *tpm, TPM2_ECC_CURVE curve,
                                                     int *has_out);

/*
 * Create under `parent` (password-authorised, e.g. the SRK with its empty value): an ECC
 * key on `curve` with PROVHSM_TPM_X509_KEY_ATTRIBUTES, scheme NULL (each TPM2_Sign names
 * ECDSA and the hash), nameAlg SHA-256, and `auth` as its authorisation value. *private_out
 * and *public_out are ESAPI-allocated (Esys_Free). One TPM command.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_create_ec_signing_key(provhsm_tpm *tpm, ESYS_TR parent,
                                                                 TPM2_ECC_CURVE curve,
                                                                 const TPM2B_AUTH *auth,
                                                                 TPM2B_PRIVATE **private_out,
                                                                 TPM2B_PUBLIC **public_out);

/*
 * Sets the authorisation value ESAPI puts in the password session of commands that use
 * `object` (NULL: the empty value, overwriting the earlier one). Sends no command.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_set_object_auth(provhsm_tpm *tpm, ESYS_TR object,
                                                           const TPM2B_AUTH *auth);

/*
 * TPM2_Sign with the ECC key `key` (password session with the value set by
 * provhsm_tpm_set_object_auth), ECDSA with the hash whose size is digest_len (20, 32, 48,
 * 64: SHA-1, SHA-256, SHA-384, SHA-512), validation ticket TPM_RH_NULL: one TPM command.
 * A key whose own scheme is ECDSA with a fixed hash must be given a digest of that hash.
 * rs receives r | s, each left-padded to `half` bytes (the curve's size); *rs_len: in,
 * room; out, 2 * half. PROVHSM_E_NOT_FOUND (logged at debug level) when no object is at
 * the key's handle; a refused authorisation value is PROVHSM_E_TPM with
 * provhsm_tpm_last_failure_auth() set, logged as such.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_ecdsa_sign(provhsm_tpm *tpm, ESYS_TR key,
                                                      const TPMT_PUBLIC *key_public,
                                                      const uint8_t *digest, size_t digest_len,
                                                      uint8_t *rs, size_t *rs_len);

/* The byte size of an EC public area's curve (32 for P-256, 48 for P-384); 0 for any
 * other curve or key type. */
size_t provhsm_tpm_ec_half_size(const TPMT_PUBLIC *pub);

/*
 * The DER SubjectPublicKeyInfo of an ECC public area on P-256 or P-384, made by OpenSSL
 * from the point (EVP_PKEY_fromdata). *der_out is malloc'd. PROVHSM_E_UNSUPPORTED (logged)
 * for another curve or key type. No TPM command.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_ec_public_to_spki(const TPMT_PUBLIC *pub,
                                                             uint8_t **der_out, size_t *len_out);

/* ---- inspection ------------------------------------------------------------------ */

#ifdef PROVHSM_TEST_HOOKS
/*
 * Number of handles of the type of `first` the TPM reports from `first` on
 * (GetCapability TPM2_CAP_HANDLES), e.g. TPM2_TRANSIENT_FIRST, TPM2_LOADED_SESSION_FIRST,
 * TPM2_PERSISTENT_FIRST. For leak checks; only the tests call it, so it is built into their copy
 * of the library alone.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_count_handles(provhsm_tpm *tpm, TPM2_HANDLE first,
                                                         uint32_t *count_out);
#endif

/* ---- sealed data (the store key sealed to the TPM) ------------------------------- */

/*
 * Create under `parent` (password-authorised, empty auth): a keyedhash sealed data object
 * holding `data` (at most 128 bytes), fixedTPM and fixedParent, noDA, with neither sign
 * nor decrypt. `policy` NULL or empty: userWithAuth with the empty authorisation value;
 * otherwise userWithAuth clear and `policy` as its authPolicy. *private_out and
 * *public_out are ESAPI-allocated (Esys_Free, or free()). One TPM command.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_create_sealed(provhsm_tpm *tpm, ESYS_TR parent,
                                                         const uint8_t *data, size_t len,
                                                         const TPM2B_DIGEST *policy,
                                                         TPM2B_PRIVATE **private_out,
                                                         TPM2B_PUBLIC **public_out);

/*
 * Load of a sealed data object under `parent`, as provhsm_tpm_load() does, telling apart
 * the failure of a blob made under another TPM's parent (TPM_RC_INTEGRITY and the like on
 * the private area): PROVHSM_E_WRONG_KEY, logged by the caller, who knows what it means.
 * Other failures are logged here.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_load_sealed(provhsm_tpm *tpm, ESYS_TR parent,
                                                       const TPM2B_PRIVATE *in_private,
                                                       const TPM2B_PUBLIC *in_public,
                                                       ESYS_TR *tr_out);

/*
 * Unseal of `item`, authorised by the empty password (session ESYS_TR_PASSWORD) or by a
 * policy session from provhsm_tpm_pcr_policy_session() (consumed on success: *session
 * becomes ESYS_TR_NONE; on failure it stays for the caller to flush). The data goes
 * straight into `out` (the caller's secure memory, `size` bytes) when it is exactly
 * `size` bytes long; *len_out is its length either way, so the caller can tell another
 * length apart. A failed policy check (the PCRs are no longer those the object was sealed
 * to) is PROVHSM_E_WRONG_KEY, and no object at `item`'s handle PROVHSM_E_NOT_FOUND:
 * neither logged here.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_unseal(provhsm_tpm *tpm, ESYS_TR item, ESYS_TR *session,
                                                  uint8_t *out, size_t size, size_t *len_out);

/*
 * StartAuthSession (SHA-256; a trial session when `trial`) then PolicyPCR over the
 * current values of the PCRs in `pcrs`: two commands. A policy session is single-use
 * (continueSession clear). On failure nothing is left behind.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_pcr_policy_session(provhsm_tpm *tpm,
                                                              const TPML_PCR_SELECTION *pcrs,
                                                              int trial, ESYS_TR *session_out);

/*
 * provhsm_tpm_pcr_policy_session() with the PCRs' digest given: `pcr_digest` empty takes
 * the current values (as provhsm_tpm_pcr_policy_session does); otherwise, only in a trial
 * session (TPM 2.0 Part 3, PolicyPCR: a trial session takes a non-empty pcrDigest as
 * given), it is the digest of the values the PCRs will have: the SHA-256 (the session's
 * hash, not the bank's) of the selected PCRs' values, ascending by PCR number. That is how
 * a policy for values the PCRs hold only later is made. PROVHSM_E_INVALID_ARG for a
 * non-empty digest outside a trial session or not 32 bytes long.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_pcr_policy_session_to(provhsm_tpm *tpm,
                                                                 const TPML_PCR_SELECTION *pcrs,
                                                                 const TPM2B_DIGEST *pcr_digest,
                                                                 int trial, ESYS_TR *session_out);

/*
 * Which PCRs of `mask` (bit n: PCR n) the TPM has not allocated in `bank`: one
 * GetCapability(TPM2_CAP_PCRS). A policy on a PCR the TPM does not keep can never be
 * satisfied (PolicyPCR leaves such PCRs out), so nothing may be sealed to it.
 * *missing_out: those PCRs (all of `mask` when the bank is not there at all).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_pcrs_unallocated(provhsm_tpm *tpm, TPMI_ALG_HASH bank,
                                                            uint32_t mask, uint32_t *missing_out);

/*
 * PCR_Read of the PCRs in `mask` (bit n: PCR n, 0..23) of `bank` (TPM2_ALG_*): values[n]
 * is PCR n's value for each of them, the rest of values[] untouched. One command per 8
 * PCRs (what one answer carries); read again (at most 3 times) when the TPM's PCR update
 * counter shows an extend between those commands, so the values belong together.
 * PROVHSM_E_NOT_FOUND (logged) when the TPM has no such bank allocated.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_pcr_read(provhsm_tpm *tpm, TPMI_ALG_HASH bank,
                                                    uint32_t mask, TPM2B_DIGEST values[24]);

/*
 * PolicyOR of a policy (or trial) session over `branches` (2 to 8 SHA-256 policy digests,
 * TPM 2.0 Part 3, PolicyOR): one command. In a policy session the TPM accepts it only when
 * the session's digest so far is one of the branches; otherwise (TPM_RC_VALUE)
 * PROVHSM_E_WRONG_KEY, not logged: for a PCR policy, the PCRs hold the values of none of the
 * branches, which the caller explains. PROVHSM_E_INVALID_ARG for a list of the wrong length.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_policy_or(provhsm_tpm *tpm, ESYS_TR session,
                                                     const TPML_DIGEST *branches);

/*
 * The policy digest PolicyOR leaves in a session over `branches` (2 to 8 SHA-256 digests):
 * SHA-256(32 zero bytes || TPM_CC_PolicyOR || the branches' digests), whatever came before
 * it. No TPM command: for checking a file's record against its object's authPolicy.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_policy_or_digest(const TPML_DIGEST *branches,
                                                            TPM2B_DIGEST *digest_out);

/* A TPML_DIGEST marshaled / unmarshaled with tss2-mu (PROVHSM_E_CORRUPT, logged). */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_marshal_digests(const TPML_DIGEST *digests, uint8_t *buf,
                                                           size_t size, size_t *offset);
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_unmarshal_digests(const uint8_t *buf, size_t size,
                                                             size_t *offset, const char *what,
                                                             TPML_DIGEST *digests);

/* PolicyGetDigest of a (trial) session: one command. */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_policy_digest(provhsm_tpm *tpm, ESYS_TR session,
                                                         TPM2B_DIGEST *digest_out);

/* PCR_Extend of the SHA-256 bank of `pcr` with a 32-byte digest (tests, tools). */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_pcr_extend_sha256(provhsm_tpm *tpm, unsigned pcr,
                                                             const uint8_t digest[32]);

/* The TPM2B_PUBLIC and TPM2B_PRIVATE of an object, marshaled one after the other (tss2-mu);
 * only the TPM2B_PUBLIC when `priv` is NULL. */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_marshal_object(const TPM2B_PUBLIC *pub,
                                                          const TPM2B_PRIVATE *priv, uint8_t *buf,
                                                          size_t size, size_t *offset);

/*
 * Unmarshals what provhsm_tpm_marshal_object() wrote, from buf[*offset] on (only the
 * TPM2B_PUBLIC when `priv` is NULL), and checks that the public area describes a sealed
 * data object as provhsm_tpm_create_sealed() makes them. PROVHSM_E_CORRUPT (logged, naming `what`)
 * otherwise. No TPM command: also the fuzz target's entry.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_unmarshal_sealed_object(const uint8_t *buf, size_t size,
                                                                   size_t *offset, const char *what,
                                                                   TPM2B_PUBLIC *pub,
                                                                   TPM2B_PRIVATE *priv);

/* A TPML_PCR_SELECTION marshaled / unmarshaled with tss2-mu (PROVHSM_E_CORRUPT, logged). */
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_marshal_pcrs(const TPML_PCR_SELECTION *pcrs,
                                                        uint8_t *buf, size_t size, size_t *offset);
PROVHSM_MUST_CHECK provhsm_err provhsm_tpm_unmarshal_pcrs(const uint8_t *buf, size_t size,
                                                          size_t *offset, const char *what,
                                                          TPML_PCR_SELECTION *pcrs);

#endif
