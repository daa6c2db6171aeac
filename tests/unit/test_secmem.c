/*
 * Secure memory (src/secmem.c):
 * - freeing one secret must not unlock the memory of another that is still alive. mlock()
 *   does not nest, so a block that shares a page with another and munlock()s it on free
 *   would make the survivor swappable. The kernel's count of locked memory (VmLck in
 *   /proc/self/status) shows it. Skipped when the process may not lock memory at all;
 * - a block is wiped before it goes back to the allocator (seen through the test build's
 *   hook right before free());
 * - a block's pages are left out of core dumps ("dd" in the VmFlags of /proc/self/smaps);
 * - a failed mlock() is logged once, at debug level (forced through the test build's hook).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "provhsm/provhsm.h"
#include "secmem.h"

/* Locked memory of this process in kB, or -1 when /proc does not say. */
static long locked_kb(void)
{
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmLck: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static void freeing_a_neighbour_keeps_a_secret_locked(void **state)
{
    (void)state;
    enum { NEIGHBOURS = 16 };
    uint8_t *others[NEIGHBOURS];
    long before = locked_kb();
    if (before < 0)
        skip();
    uint8_t *secret = provhsm_secure_alloc(48);
    assert_non_null(secret);
    long with_secret = locked_kb();
    if (with_secret <= before) {
        provhsm_secure_free(secret);
        skip(); /* no mlock here (RLIMIT_MEMLOCK): nothing to check */
    }
    /* small neighbours, as a decoded key or a parsed record would be */
    for (int i = 0; i < NEIGHBOURS; i++) {
        others[i] = provhsm_secure_alloc(40);
        assert_non_null(others[i]);
    }
    for (int i = 0; i < NEIGHBOURS; i++)
        provhsm_secure_free(others[i]);
    assert_true(locked_kb() >= with_secret);
    provhsm_secure_free(secret);
    assert_true(locked_kb() <= with_secret);
}

static void blocks_are_zeroed_aligned_and_usable(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 15, 16, 4000, 4096, 70000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        uint8_t *p = provhsm_secure_alloc(sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % _Alignof(max_align_t), 0);
        for (size_t j = 0; j < sizes[i]; j++)
            assert_int_equal(p[j], 0);
        memset(p, 0xa5, sizes[i]);
        provhsm_secure_free(p);
    }
    assert_null(provhsm_secure_alloc(SIZE_MAX));
    assert_null(provhsm_secure_alloc(SIZE_MAX - 8));
    char *s = provhsm_secure_strdup("device-key");
    assert_string_equal(s, "device-key");
    provhsm_secure_free(s);
    provhsm_secure_free(NULL);
}

/* What the hook saw right before free(): how many blocks, and any byte left non-zero. */
static struct {
    int blocks;
    size_t nonzero;
    size_t len;
} seen_at_free;

static void record_block_at_free(const void *block, size_t len)
{
    const unsigned char *b = block;
    seen_at_free.blocks++;
    seen_at_free.len = len;
    for (size_t i = 0; i < len; i++)
        if (b[i] != 0)
            seen_at_free.nonzero++;
}

static void freed_blocks_are_wiped_first(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 32, 4000, 70000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        memset(&seen_at_free, 0, sizeof(seen_at_free));
        uint8_t *p = provhsm_secure_alloc(sizes[i]);
        assert_non_null(p);
        memset(p, 0x5a, sizes[i]);
        provhsm_secmem_test_before_free = record_block_at_free;
        provhsm_secure_free(p);
        provhsm_secmem_test_before_free = NULL;
        assert_int_equal(seen_at_free.blocks, 1);
        assert_true(seen_at_free.len >= sizes[i]); /* the whole block, header included */
        if (seen_at_free.nonzero != 0)
            fail_msg("%zu-byte block: %zu bytes not wiped before free()", sizes[i],
                     seen_at_free.nonzero);
    }
}

/* The VmFlags line of the mapping in /proc/self/smaps that holds addr; "" when not found. */
static void vm_flags_of(const void *addr, char *flags, size_t flagslen)
{
    char line[512];
    int inside = 0;
    uintptr_t a = (uintptr_t)addr;
    FILE *f = fopen("/proc/self/smaps", "r");
    flags[0] = '\0';
    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            inside = a >= lo && a < hi;
            continue;
        }
        if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            snprintf(flags, flagslen, "%s", line + 8);
            break;
        }
    }
    fclose(f);
}

static int has_flag(const char *flags, const char *flag)
{
    char padded[8];
    char list[512];
    snprintf(padded, sizeof(padded), " %s ", flag);
    snprintf(list, sizeof(list), " %s ", flags);
    for (char *c = list; *c != '\0'; c++)
        if (*c == '\n')
            *c = ' ';
    return strstr(list, padded) != NULL;
}

static void secret_pages_are_left_out_of_core_dumps(void **state)
{
    (void)state;
    char flags[512];
    if (getenv("PROVHSM_TEST_EMULATED") != NULL)
        skip(); /* qemu-user answers madvise() with success and does nothing */
    uint8_t *p = provhsm_secure_alloc(64);
    assert_non_null(p);
    vm_flags_of(p, flags, sizeof(flags));
    if (flags[0] == '\0') {
        provhsm_secure_free(p);
        skip(); /* no /proc/self/smaps with VmFlags here */
    }
    if (!has_flag(flags, "dd"))
        fail_msg("the secret's mapping is not MADV_DONTDUMP; VmFlags:%s", flags);
    provhsm_secure_free(p);
}

static struct {
    int mlock_lines;
    provhsm_log_level level;
} logged;

static void count_secmem_lines(provhsm_log_level level, const char *module, const char *message,
                               void *ctx)
{
    (void)ctx;
    if (strcmp(module, "secmem") == 0 && strstr(message, "mlock") != NULL) {
        logged.mlock_lines++;
        logged.level = level;
    }
}

static void mlock_failure_is_logged_once_at_debug(void **state)
{
    (void)state;
    memset(&logged, 0, sizeof(logged));
    provhsm_set_log_callback(count_secmem_lines, NULL);
    provhsm_set_log_level(PROVHSM_LOG_DEBUG);
    provhsm_secmem_test_fail_mlock = 1;
    for (int i = 0; i < 3; i++) {
        uint8_t *p = provhsm_secure_alloc(16);
        assert_non_null(p); /* still usable, only swappable */
        p[15] = 1;
        provhsm_secure_free(p);
    }
    provhsm_secmem_test_fail_mlock = 0;
    provhsm_set_log_level((provhsm_log_level)-1);
    provhsm_set_log_callback(NULL, NULL);
    assert_int_equal(logged.mlock_lines, 1);
    assert_int_equal(logged.level, PROVHSM_LOG_DEBUG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(freeing_a_neighbour_keeps_a_secret_locked),
        cmocka_unit_test(blocks_are_zeroed_aligned_and_usable),
        cmocka_unit_test(freed_blocks_are_wiped_first),
        cmocka_unit_test(secret_pages_are_left_out_of_core_dumps),
        cmocka_unit_test(mlock_failure_is_logged_once_at_debug),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
