/*
 * Secure memory (src/secmem.c): freeing one secret must not unlock the memory of
 * another that is still alive. mlock() does not nest, so a block that shares a page with
 * another and munlock()s it on free would make the survivor swappable. The kernel's
 * count of locked memory (VmLck in /proc/self/status) shows it. Skipped when the process
 * may not lock memory at all.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(freeing_a_neighbour_keeps_a_secret_locked),
        cmocka_unit_test(blocks_are_zeroed_aligned_and_usable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
