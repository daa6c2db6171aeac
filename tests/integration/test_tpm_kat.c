/*
 * TPM backend against the known-answer vectors in tests/fixtures/tpm-activation, on a
 * swtpm started from a copy of the fixture's state (EK and SRK present, no identity):
 * EK/SRK bytes and registration id, activation of two independently made blobs with the
 * expected HMACs, persistence across states, rejection of truncated, oversized and
 * forged blobs with the previous key still signing, and provhsm_tpm_clear_identity().
 * Also checks the TPM command budget of open, activate and sign.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "backend.h"
#include "front.h"
#include "swtpm_fixture.h"
#include "testutil.h"
#include "tpm_esys.h"

static const provhsm_backend *const be = &provhsm_backend_tpm;

static struct {
    provhsm_test_swtpm swtpm;
    provhsm_config cfg;
    char config_file[512];
    uint8_t *ek, *srk, *blob1, *blob2, *payload, *regid, *hmac1_hex, *hmac2_hex;
    size_t ek_len, srk_len, blob1_len, blob2_len, payload_len, regid_len, h1_len, h2_len;
    uint8_t *hmac1, *hmac2;
    size_t hmac1_len, hmac2_len;
} K;

#ifdef PROVHSM_TEST_FRONT_STUB
/* Standalone builds without hsm_front.c: the configuration clear_identity() uses. */
provhsm_err provhsm_front_config(provhsm_config *out)
{
    *out = K.cfg;
    return PROVHSM_OK;
}
#endif

static void *open_state(void)
{
    void *st = NULL;
    assert_int_equal(be->open(&K.cfg, PROVHSM_KIND_TPM, &st), PROVHSM_OK);
    assert_non_null(st);
    return st;
}

static void expect_sign(void *st, const uint8_t *expected)
{
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    assert_int_equal(be->tpm_sign(st, K.payload, K.payload_len, &sig, &sig_len), PROVHSM_OK);
    assert_int_equal(sig_len, 32);
    assert_memory_equal(sig, expected, 32);
    free(sig);
}

static void expect_counts(const provhsm_test_tpm_counts *before)
{
    assert_int_equal(provhsm_test_tpm_counts_unchanged(K.swtpm.tcti, before), 0);
}

static int prepare(void)
{
    const char *state = provhsm_test_fixture_swtpm_state();
    if (state == NULL) {
        fprintf(stderr, "PROVHSM_FIXTURES is not set\n");
        return -1;
    }
    if (provhsm_test_read_fixture("tpm-activation/ek.tpm2b", &K.ek, &K.ek_len) != 0 ||
        provhsm_test_read_fixture("tpm-activation/srk.tpm2b", &K.srk, &K.srk_len) != 0 ||
        provhsm_test_read_fixture("tpm-activation/blob1.bin", &K.blob1, &K.blob1_len) != 0 ||
        provhsm_test_read_fixture("tpm-activation/blob2.bin", &K.blob2, &K.blob2_len) != 0 ||
        provhsm_test_read_fixture("tpm-activation/payload.txt", &K.payload, &K.payload_len) != 0 ||
        provhsm_test_read_fixture("tpm-activation/registration-id.txt", &K.regid, &K.regid_len) !=
            0 ||
        provhsm_test_read_fixture("tpm-activation/hmac-1.hex", &K.hmac1_hex, &K.h1_len) != 0 ||
        provhsm_test_read_fixture("tpm-activation/hmac-2.hex", &K.hmac2_hex, &K.h2_len) != 0 ||
        provhsm_test_hex_decode((char *)K.hmac1_hex, &K.hmac1, &K.hmac1_len) != 0 ||
        provhsm_test_hex_decode((char *)K.hmac2_hex, &K.hmac2, &K.hmac2_len) != 0) {
        fprintf(stderr, "cannot read the tpm-activation fixtures\n");
        return -1;
    }
    while (K.regid_len > 0 &&
           (K.regid[K.regid_len - 1] == '\n' || K.regid[K.regid_len - 1] == '\r'))
        K.regid[--K.regid_len] = '\0';
    if (provhsm_test_swtpm_start(&K.swtpm, state) != 0)
        return -1;
    provhsm_test_tpm_config(&K.cfg, K.swtpm.tcti);

    /* provhsm_tpm_clear_identity() reads the process configuration: point it here */
    snprintf(K.config_file, sizeof(K.config_file), "%s/provhsm.conf", K.swtpm.dir);
    FILE *f = fopen(K.config_file, "w");
    if (f == NULL)
        return -1;
    /* whatever the umask: a configuration others can write is refused */
    if (fclose(f) != 0 || chmod(K.config_file, 0644) != 0)
        return -1;
    setenv("PROVHSM_CONFIG", K.config_file, 1);
    setenv("PROVHSM_TCTI", K.swtpm.tcti, 1);
    setenv("PROVHSM_STORE", K.swtpm.dir, 1);
    provhsm_test_log_capture();
    return 0;
}

static int group_teardown(void **unused)
{
    (void)unused;
    provhsm_test_swtpm_stop(&K.swtpm);
    free(K.ek);
    free(K.srk);
    free(K.blob1);
    free(K.blob2);
    free(K.payload);
    free(K.regid);
    free(K.hmac1_hex);
    free(K.hmac2_hex);
    free(K.hmac1);
    free(K.hmac2);
    memset(&K, 0, sizeof(K)); /* a second call frees nothing */
    return 0;
}

/* cmocka runs the group teardown after a failed group setup too: the setup leaves what
 * it made to the teardown (freeing it here as well was a double free). */
static int group_setup(void **unused)
{
    (void)unused;
    return prepare() == 0 ? 0 : -1;
}

/* (a) EK and SRK are the fixture's bytes; the registration id follows from the EK. */
static void test_ek_srk_and_registration_id(void **unused)
{
    (void)unused;
    uint64_t before = provhsm_tpm_commands_total();
    void *st = open_state();
    uint64_t open_cost = provhsm_tpm_commands_total() - before;
    printf("# open on a provisioned TPM: %llu TPM commands\n", (unsigned long long)open_cost);
    assert_true(open_cost <= 3);

    uint8_t *ek = NULL, *srk = NULL;
    size_t ek_len = 0, srk_len = 0;
    before = provhsm_tpm_commands_total();
    assert_int_equal(be->tpm_endorsement_key(st, &ek, &ek_len), PROVHSM_OK);
    assert_int_equal(be->tpm_storage_root_key(st, &srk, &srk_len), PROVHSM_OK);
    assert_int_equal(provhsm_tpm_commands_total(), before); /* served from the cache */
    assert_int_equal(ek_len, K.ek_len);
    assert_memory_equal(ek, K.ek, ek_len);
    assert_int_equal(srk_len, K.srk_len);
    assert_memory_equal(srk, K.srk, srk_len);

    char *regid = provhsm_test_registration_id(ek, ek_len);
    assert_non_null(regid);
    assert_int_equal(strlen(regid), 52);
    assert_string_equal(regid, (char *)K.regid);
    free(regid);
    free(ek);
    free(srk);
    be->close(st);
}

static void test_sign_before_activation_is_not_found(void **unused)
{
    (void)unused;
    void *st = open_state();
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    provhsm_test_log_clear();
    assert_int_equal(be->tpm_sign(st, K.payload, K.payload_len, &sig, &sig_len),
                     PROVHSM_E_NOT_FOUND);
    assert_null(sig);
    assert_true(provhsm_test_log_seen("no identity key at 0x81000100; activate first"));
    be->close(st);
}

/* (a) blob1 activates; the key signs the payload as the fixture says; command budget. */
static void test_activate_blob1_and_sign(void **unused)
{
    (void)unused;
    provhsm_test_tpm_counts counts;
    assert_int_equal(provhsm_test_tpm_counts_get(K.swtpm.tcti, &counts), 0);
    void *st = open_state();

    uint64_t before = provhsm_tpm_commands_total();
    assert_int_equal(be->tpm_activate(st, K.blob1, K.blob1_len), PROVHSM_OK);
    uint64_t cost = provhsm_tpm_commands_total() - before;
    printf("# activate (no earlier identity): %llu TPM commands\n", (unsigned long long)cost);
    assert_true(cost <= 10);

    before = provhsm_tpm_commands_total();
    expect_sign(st, K.hmac1);
    cost = provhsm_tpm_commands_total() - before;
    printf("# sign %zu bytes: %llu TPM commands\n", K.payload_len, (unsigned long long)cost);
    assert_int_equal(cost, 1);
    be->close(st);

    counts.persistent += 1; /* the identity key, nothing else */
    expect_counts(&counts);
}

/* (a) what a new process would see after a reboot: the persisted key signs. */
static void test_new_state_signs_with_persisted_key(void **unused)
{
    (void)unused;
    void *st = open_state();
    expect_sign(st, K.hmac1);
    be->close(st);
}

/* (a) a second activation in one provisioning replaces the key. */
static void test_activate_twice_replaces_key(void **unused)
{
    (void)unused;
    provhsm_test_tpm_counts counts;
    assert_int_equal(provhsm_test_tpm_counts_get(K.swtpm.tcti, &counts), 0);
    void *st = open_state();
    assert_int_equal(be->tpm_activate(st, K.blob1, K.blob1_len), PROVHSM_OK);
    expect_sign(st, K.hmac1);
    uint64_t before = provhsm_tpm_commands_total();
    assert_int_equal(be->tpm_activate(st, K.blob2, K.blob2_len), PROVHSM_OK);
    uint64_t cost = provhsm_tpm_commands_total() - before;
    printf("# activate (replacing an identity): %llu TPM commands\n", (unsigned long long)cost);
    assert_true(cost <= 10);
    expect_sign(st, K.hmac2);
    be->close(st);
    expect_counts(&counts);

    st = open_state();
    expect_sign(st, K.hmac2);
    be->close(st);
}

/* (a) every truncation and oversized field is refused before any TPM command. */
static void test_malformed_blobs_rejected_before_tpm(void **unused)
{
    (void)unused;
    void *st = open_state();
    uint8_t *copy = malloc(K.blob2_len + 70000);
    assert_non_null(copy);

    uint64_t before = provhsm_tpm_commands_total();
    for (size_t len = 0; len < K.blob2_len; len++) {
        memcpy(copy, K.blob2, len);
        assert_int_not_equal(be->tpm_activate(st, copy, len), PROVHSM_OK);
    }
    /* each of the five sized fields in turn claims more than there is */
    size_t off = 0;
    for (int field = 0; field < 5; field++) {
        memcpy(copy, K.blob2, K.blob2_len);
        copy[off] = 0xff;
        copy[off + 1] = 0xff;
        assert_int_equal(be->tpm_activate(st, copy, K.blob2_len), PROVHSM_E_CORRUPT);
        copy[off] = 0x7f; /* larger than the remaining bytes, not merely than 0xffff */
        assert_int_equal(be->tpm_activate(st, copy, K.blob2_len), PROVHSM_E_CORRUPT);
        off += 2 + ((size_t)K.blob2[off] << 8 | K.blob2[off + 1]);
    }
    /* the unused encrypted-data field claims more than there is */
    memcpy(copy, K.blob2, K.blob2_len);
    copy[off] = 0x10;
    assert_int_equal(be->tpm_activate(st, copy, K.blob2_len), PROVHSM_E_CORRUPT);
    assert_int_equal(provhsm_tpm_commands_total(), before);

    /* trailing bytes after the blob are allowed by the contract */
    memcpy(copy, K.blob2, K.blob2_len);
    memset(copy + K.blob2_len, 0xa5, 70000);
    assert_int_equal(be->tpm_activate(st, copy, K.blob2_len + 70000), PROVHSM_OK);
    expect_sign(st, K.hmac2);
    free(copy);
    be->close(st);
}

/* Offsets of the first data byte of each sized field of a blob. */
static void field_offsets(const uint8_t *blob, size_t offsets[5], size_t sizes[5])
{
    size_t off = 0;
    for (int i = 0; i < 5; i++) {
        sizes[i] = (size_t)blob[off] << 8 | blob[off + 1];
        offsets[i] = off + 2;
        off += 2 + sizes[i];
    }
}

/* (a) well-formed but forged blobs: the TPM refuses them and the old key keeps signing. */
static void test_forged_blobs_keep_old_key(void **unused)
{
    (void)unused;
    static const char *const names[5] = {"credentialBlob", "secret", "duplicate", "inSymSeed",
                                         "objectPublic"};
    provhsm_test_tpm_counts counts;
    size_t offsets[5], sizes[5];
    void *st = open_state();
    expect_sign(st, K.hmac2);
    assert_int_equal(provhsm_test_tpm_counts_get(K.swtpm.tcti, &counts), 0);
    field_offsets(K.blob1, offsets, sizes);

    uint8_t *copy = malloc(K.blob1_len);
    assert_non_null(copy);
    for (int field = 0; field < 5; field++) {
        /* a byte near the start, the middle and the end of the field */
        size_t picks[3] = {offsets[field] + (field == 4 ? sizes[field] - 40 : 3),
                           offsets[field] + sizes[field] / 2, offsets[field] + sizes[field] - 1};
        for (int i = 0; i < 3; i++) {
            memcpy(copy, K.blob1, K.blob1_len);
            copy[picks[i]] ^= 0x5a;
            provhsm_err err = be->tpm_activate(st, copy, K.blob1_len);
            if (err == PROVHSM_OK)
                fail_msg("a blob with %s byte %zu flipped was accepted", names[field],
                         picks[i] - offsets[field]);
            expect_sign(st, K.hmac2);
        }
    }
    free(copy);
    be->close(st);
    expect_counts(&counts);

    st = open_state();
    expect_sign(st, K.hmac2);
    be->close(st);
}

/* provhsm_tpm_clear_identity(): evicts the key; a second call finds nothing. */
static void test_clear_identity(void **unused)
{
    (void)unused;
    void *st = open_state();
    expect_sign(st, K.hmac2);
    assert_int_equal(provhsm_tpm_clear_identity(), PROVHSM_OK);

    uint8_t *sig = NULL;
    size_t sig_len = 0;
    provhsm_test_log_clear();
    assert_int_equal(be->tpm_sign(st, K.payload, K.payload_len, &sig, &sig_len),
                     PROVHSM_E_NOT_FOUND);
    assert_true(provhsm_test_log_seen("activate first"));
    assert_int_equal(provhsm_tpm_clear_identity(), PROVHSM_E_NOT_FOUND);

    /* the device can be provisioned again, with the same state */
    assert_int_equal(be->tpm_activate(st, K.blob1, K.blob1_len), PROVHSM_OK);
    expect_sign(st, K.hmac1);
    be->close(st);
}

int main(void)
{
    if (!provhsm_test_swtpm_available()) {
        fprintf(stderr, "skip: swtpm is not installed\n");
        return PROVHSM_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ek_srk_and_registration_id),
        cmocka_unit_test(test_sign_before_activation_is_not_found),
        cmocka_unit_test(test_activate_blob1_and_sign),
        cmocka_unit_test(test_new_state_signs_with_persisted_key),
        cmocka_unit_test(test_activate_twice_replaces_key),
        cmocka_unit_test(test_malformed_blobs_rejected_before_tpm),
        cmocka_unit_test(test_forged_blobs_keep_old_key),
        cmocka_unit_test(test_clear_identity),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
