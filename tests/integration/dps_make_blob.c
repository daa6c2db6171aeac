/*
 * dps_make_blob: the provisioning service's side as a command, for the demo and for
 * trying a TPM by hand. Builds an activation blob for a device's EK and SRK that carries
 * a given HMAC key, with the test implementation of the service (tests/common/
 * dps_service.c). Test code: never part of the library.
 * Usage: dps_make_blob EK.tpm2b SRK.tpm2b KEY_HEX > blob.bin
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dps_service.h"
#include "testutil.h"

int main(int argc, char **argv)
{
    uint8_t *ek = NULL, *srk = NULL, *key = NULL, *blob = NULL;
    size_t ek_len = 0, srk_len = 0, key_len = 0, blob_len = 0;
    int rc = 1;
    if (argc != 4) {
        fprintf(stderr, "usage: dps_make_blob EK.tpm2b SRK.tpm2b KEY_HEX > blob.bin\n");
        return 2;
    }
    if (provhsm_test_read_file(argv[1], &ek, &ek_len) != 0 ||
        provhsm_test_read_file(argv[2], &srk, &srk_len) != 0) {
        fprintf(stderr, "dps_make_blob: cannot read the EK or SRK file\n");
        goto out;
    }
    if (provhsm_test_hex_decode(argv[3], &key, &key_len) != 0) {
        fprintf(stderr, "dps_make_blob: the key is not hex\n");
        goto out;
    }
    if (provhsm_test_dps_make_blob(ek, ek_len, srk, srk_len, key, key_len, &blob, &blob_len) != 0) {
        fprintf(stderr, "dps_make_blob: could not build the blob\n");
        goto out;
    }
    if (fwrite(blob, 1, blob_len, stdout) != blob_len || fflush(stdout) != 0)
        goto out;
    rc = 0;
out:
    free(ek);
    free(srk);
    free(key);
    free(blob);
    return rc;
}
