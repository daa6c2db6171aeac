/*
 * libFuzzer target for the store's file formats (src/store.c, documented in its opening
 * comment), through the public store.h functions only. The first input byte picks the
 * file, the rest is its content:
 *   0  an entry file, read with provhsm_store_get
 *   1  a genuine entry (sealed by provhsm_store_put from the rest of the input), with one
 *      byte changed and/or cut short as the first four bytes say, read with provhsm_store_get
 *   2  store.meta, 3  the key file, 4  store.check: each read by provhsm_store_open
 * Every file is authenticated (the entry and check by AES-GCM, the header as the check's
 * associated data, the key by the check), so whatever differs from what the store wrote
 * must be refused, and an unchanged entry must read back as it was written.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "secmem.h"

#define ENTRY "fuzz"

static provhsm_config cfg;
static provhsm_store *st;
static char entry_path[PROVHSM_PATH_MAX + 32];
static const char *const open_files[] = {"store.meta", "store.key", "store.check"};
static char open_paths[3][PROVHSM_PATH_MAX + 32];
static uint8_t *originals[3];
static size_t original_lens[3];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    st = fuzz_store_setup(&cfg);
    snprintf(entry_path, sizeof(entry_path), "%s/" ENTRY ".entry", cfg.store_dir);
    for (int i = 0; i < 3; i++) {
        snprintf(open_paths[i], sizeof(open_paths[i]), "%s/%s", cfg.store_dir, open_files[i]);
        originals[i] = fuzz_read_file(open_paths[i], &original_lens[i]);
    }
    return 0;
}

/* Reads the entry; returns 1 when the store accepted it (and hands the plaintext back). */
static int entry_reads(uint8_t **plain, size_t *plain_len)
{
    *plain = NULL;
    *plain_len = 0;
    provhsm_err err = provhsm_store_get(st, ENTRY, plain, plain_len);
    if (err != PROVHSM_OK) {
        FUZZ_CHECK(*plain == NULL);
        return 0;
    }
    return 1;
}

static void raw_entry(const uint8_t *data, size_t size)
{
    uint8_t *plain;
    size_t plain_len;
    fuzz_write_file(entry_path, data, size);
    /* without the store key an input cannot be a valid entry; only the parser is exercised */
    if (entry_reads(&plain, &plain_len))
        provhsm_secure_free(plain);
}

static void altered_entry(const uint8_t *data, size_t size)
{
    if (size < 4)
        return;
    size_t flip_at = (size_t)data[0] << 8 | data[1]; /* byte to change, if inside the file */
    size_t cut_to = (size_t)data[2] << 8 | data[3];  /* length to cut to, if shorter */
    const uint8_t *text = data + 4;
    size_t text_len = size - 4;

    FUZZ_CHECK(provhsm_store_put(st, ENTRY, text, text_len) == PROVHSM_OK);
    size_t file_len;
    uint8_t *file = fuzz_read_file(entry_path, &file_len);
    int changed = 0;
    if (flip_at < file_len) {
        file[flip_at] ^= (uint8_t)(text_len > 0 ? text[0] | 1 : 0x80);
        changed = 1;
    }
    if (cut_to < file_len) {
        file_len = cut_to;
        changed = 1;
    }
    fuzz_write_file(entry_path, file, file_len);
    free(file);

    uint8_t *plain;
    size_t plain_len;
    int ok = entry_reads(&plain, &plain_len);
    FUZZ_CHECK(ok == !changed);
    if (ok) {
        FUZZ_CHECK(plain_len == text_len);
        FUZZ_CHECK(text_len == 0 || memcmp(plain, text, text_len) == 0);
        provhsm_secure_free(plain);
    }
}

static void store_file(int which, const uint8_t *data, size_t size)
{
    provhsm_store *again = NULL;
    fuzz_write_file(open_paths[which], data, size);
    provhsm_err err = provhsm_store_open(&cfg, &again);
    int same = size == original_lens[which] && memcmp(data, originals[which], size) == 0;
    FUZZ_CHECK((err == PROVHSM_OK) == same);
    provhsm_store_close(again);
    fuzz_write_file(open_paths[which], originals[which], original_lens[which]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    switch (data[0] % 5) {
    case 0:
        raw_entry(data + 1, size - 1);
        break;
    case 1:
        altered_entry(data + 1, size - 1);
        break;
    default:
        store_file(data[0] % 5 - 2, data + 1, size - 1);
        break;
    }
    return 0;
}
