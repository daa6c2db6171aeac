/*
 * libFuzzer target for the two TPM2_Load wrappers of src/tpm_esys.c, provhsm_tpm_load and
 * provhsm_tpm_load_sealed: they hand a TPM2B_PRIVATE and a TPM2B_PUBLIC that came from
 * outside (store.sealed from disk, the activation blob from the network) to ESAPI, which
 * marshals them into a command. The input is read the way each caller reads it:
 *  - as the object of a store.sealed in blob form (provhsm_tpm_unmarshal_sealed_object, as
 *    store.c does), then given to both loaders;
 *  - as an activation blob (provhsm_tpm_blob_parse, as backend_tpm.c does), whose public
 *    area goes to provhsm_tpm_load; the private area there comes from Import, i.e. from the
 *    TPM, so the blob's duplicate (the same type, from the network) stands in for it.
 * There is no TPM: the connection is the device TCTI on /dev/zero, which takes the command and
 * answers a header of zeros, no TPM response (the TCTI refuses /dev/null: its start-up probe
 * reads nothing back). Properties: the call fails (never PROVHSM_OK), the output handle stays
 * ESYS_TR_NONE, and either the connection is then lost (PROVHSM_E_NO_DEVICE: the command
 * was sent and no valid answer came) or ESAPI refused the input before sending anything
 * (PROVHSM_E_TPM, no command counted). The connection is kept across inputs and made again
 * once lost.
 * Built only with PROVHSM_FUZZ=ON (tests/fuzz/CMakeLists.txt); seeds in corpus/tpm_load: the
 * objects of the blob-form files of corpus/sealed, and two activation blobs of corpus/tpm_blob.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "log.h"
#include "tpm_blob.h"
#include "tpm_esys.h"

/* Takes any command and answers none the TCTI accepts, without a TPM. */
#define NO_TPM_TCTI "device:/dev/zero"
/* The storage root key's usual handle: a parent as store.c and backend_tpm.c name it. */
#define PARENT_HANDLE 0x81000001u

static provhsm_tpm *tpm;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

static void drop_connection(void)
{
    provhsm_tpm_disconnect(tpm);
    tpm = NULL;
}

/* The connection, made again when the previous input lost it. Aborts when it cannot be made. */
static provhsm_tpm *live_connection(void)
{
    if (tpm != NULL && provhsm_tpm_lost(tpm))
        drop_connection();
    if (tpm == NULL && provhsm_tpm_connect(NO_TPM_TCTI, &tpm) != PROVHSM_OK) {
        fprintf(stderr, "fuzz: cannot open the TCTI \"%s\"\n", NO_TPM_TCTI);
        abort();
    }
    return tpm;
}

typedef provhsm_err (*loader_fn)(provhsm_tpm *tpm, ESYS_TR parent, const TPM2B_PRIVATE *priv,
                                 const TPM2B_PUBLIC *pub, ESYS_TR *tr_out);

/* One load on a live connection, and what must hold after it without a TPM. */
static void load_without_tpm(loader_fn load, const TPM2B_PRIVATE *priv, const TPM2B_PUBLIC *pub)
{
    provhsm_tpm *conn = live_connection();
    ESYS_TR parent = ESYS_TR_NONE, loaded = ESYS_TR_NONE;

    /* no command: ESAPI takes the handle as given */
    FUZZ_CHECK(provhsm_tpm_persistent_handle(conn, PARENT_HANDLE, &parent) == PROVHSM_OK);
    uint64_t sent_before = provhsm_tpm_commands(conn);
    provhsm_err rc = load(conn, parent, priv, pub, &loaded);

    FUZZ_CHECK(rc != PROVHSM_OK);
    FUZZ_CHECK(loaded == ESYS_TR_NONE);
    if (provhsm_tpm_lost(conn)) {
        FUZZ_CHECK(rc == PROVHSM_E_NO_DEVICE);
    } else {
        /* refused before it reached the TCTI */
        FUZZ_CHECK(rc == PROVHSM_E_TPM);
        FUZZ_CHECK(provhsm_tpm_commands(conn) == sent_before);
        provhsm_tpm_forget(conn, &parent);
    }
}

static void load_sealed_object(const uint8_t *data, size_t size)
{
    TPM2B_PUBLIC pub;
    TPM2B_PRIVATE priv;
    size_t off = 0;
    if (provhsm_tpm_unmarshal_sealed_object(data, size, &off, "fuzz/store.sealed", &pub, &priv) !=
        PROVHSM_OK)
        return;
    load_without_tpm(provhsm_tpm_load_sealed, &priv, &pub);
    load_without_tpm(provhsm_tpm_load, &priv, &pub);
}

static void load_activation_key(const uint8_t *data, size_t size)
{
    provhsm_activation_blob blob;
    if (provhsm_tpm_blob_parse(data, size, &blob) != PROVHSM_OK)
        return;
    load_without_tpm(provhsm_tpm_load, &blob.duplicate, &blob.object_public);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    load_sealed_object(data, size);
    load_activation_key(data, size);
    return 0;
}
