/*
 * The store key's mode, for the factory line and the provhsm tool: a store whose key is
 * sealed to the device's TPM, what protects a store, and resealing before a firmware
 * update. The configuration is read as provhsm.h's administration calls read it.
 */
#ifndef PROVHSM_STORE_KEY_H
#define PROVHSM_STORE_KEY_H

#include "provhsm/provhsm.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Creates the store like provhsm_store_init(), with a random store key sealed to the TPM
 * named by [tpm] (a keyedhash sealed data object under the SRK, bound to the PCRs of
 * [store] seal_pcrs when set), kept in the store directory. PROVHSM_E_CONFIG without a
 * [tpm] section, PROVHSM_E_NOT_FOUND when the TPM has no SRK yet, PROVHSM_E_EXISTS when a
 * store is already there.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_init_sealed(void);

/*
 * What protects the store's key, as text: "key-file", "passphrase", or "tpm (...)" with
 * where the sealed key is and the PCRs it is bound to. Sends no TPM command. *mode_out is
 * malloc'd. PROVHSM_E_NOT_FOUND when there is no store.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_key_mode(char **mode_out);

/*
 * Seals the store key of a TPM-sealed store again: to the current values of the PCRs
 * of [store] seal_pcrs, or to no PCRs when `unbound` is non-zero (run that before a
 * firmware update, then the bound form after it). The store must open now; the store key
 * and the entries do not change, and the sealed key is replaced in one atomic write.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_reseal(int unbound);

/*
 * Seals the store key of a TPM-sealed store again, bound to the PCRs of [store] seal_pcrs
 * at the values they will hold after a firmware or boot update, so that the store is
 * never left bound to no PCR: run it before the update, with the new values, and the
 * store opens again once the device boots into them (and no longer before).
 *
 * `pcr_values` is "<bank>:<pcr>=<hex>[,<pcr>=<hex>...]", e.g. "sha256:7=<64 hex digits>":
 * the bank must be seal_pcrs' bank, each PCR one of seal_pcrs, each value exactly the
 * bank's digest size in hex. A PCR of seal_pcrs that is not named keeps its current value
 * (read from the TPM), so only the PCRs an update changes need to be given; naming
 * a PCR outside seal_pcrs is refused, as is a missing seal_pcrs. The TPM makes the policy
 * in a trial session from the digest of those values.
 *
 * As provhsm_store_reseal(): the store must open now (its key unseals under the current
 * PCR values), the store key and the entries do not change, and the sealed key is
 * replaced in one atomic write. PROVHSM_E_INVALID_ARG (logged: what is wrong) for a
 * malformed text or one that does not fit seal_pcrs, PROVHSM_E_CONFIG without seal_pcrs:
 * those are found before the store or the TPM is touched, and nothing changes.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_reseal_to(const char *pcr_values);

/*
 * Re-encrypts every entry under a new store key held as `to` says: "tpm" (sealed, as
 * provhsm_store_init_sealed), "key-file" (a new random key file) or "passphrase" (the
 * configured passphrase, new salt). The store must open with its current key. New files
 * are written beside the old ones and take over in one atomic switch of the store's
 * header; a crash at any point leaves a store that opens, with the old key before the
 * switch and the new one after it (opening finishes or undoes what was left).
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_store_rekey(const char *to);

#ifdef __cplusplus
}
#endif

#endif
