/*
 * The one place secrets are allocated and wiped. Anything that holds key material
 * (store keys, private keys, symmetric keys, decrypted entries) lives in memory from
 * provhsm_secure_alloc() and goes back through provhsm_secure_free(), which wipes it.
 * No other code wipes with memset: it calls provhsm_wipe().
 *
 * What we hand to the SDK is a plain malloc() copy made last, because the SDK frees it
 * with free().
 */
#ifndef PROVHSM_SECMEM_H
#define PROVHSM_SECMEM_H

#include <stddef.h>
#include <stdint.h>

/* Overwrites len bytes in a way the compiler may not elide. */
void provhsm_wipe(void *p, size_t len);

/* Zeroed memory for secrets, locked in RAM where the OS allows (best effort). */
void *provhsm_secure_alloc(size_t len);

/* Wipes and frees memory from provhsm_secure_alloc(); NULL is fine. */
void provhsm_secure_free(void *p);

/* provhsm_secure_alloc() copy of a NUL-terminated string. */
char *provhsm_secure_strdup(const char *s);

/* Wipes a malloc'd string (strlen bytes) and frees it: for secrets that left secure memory. */
void provhsm_free_wiped_string(char *s);

/* Wipes a plain malloc'd buffer of known size and frees it. */
void provhsm_free_wiped(void *p, size_t len);

#ifdef PROVHSM_TEST_HOOKS
/* Non-zero: every mlock() counts as failed (the test runs as root, where it never fails). */
extern int provhsm_secmem_test_fail_mlock;
/* Called with the whole block (header included) after the wipe, right before free(). */
extern void (*provhsm_secmem_test_before_free)(const void *block, size_t len);
#endif

#endif
