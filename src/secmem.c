/*
 * Secure memory: every secret in the library is allocated and wiped here. Each block
 * carries a small header with its size so provhsm_secure_free() can wipe the whole block
 * without the caller passing a length. mlock() is best effort: a device with a low
 * RLIMIT_MEMLOCK still works, the memory is just swappable.
 *
 * A block occupies whole pages of its own. mlock() does not nest: munlock() on free
 * unlocks every page the block touches, so a block sharing a page with another secret
 * would make that one swappable when it goes. The slack after the payload is poisoned
 * under AddressSanitizer so overruns are still caught.
 *
 * Whole pages also let the block be left out of core dumps (MADV_DONTDUMP): a crashing
 * host must not write our keys into a core file. The pages are marked dumpable again on
 * free, since the allocator hands them to ordinary data next.
 *
 * A failed mlock() is said once, at debug level: it is the normal case under a low
 * RLIMIT_MEMLOCK, and a line per secret would flood the log.
 */
#define _DEFAULT_SOURCE /* madvise() and MADV_DONTDUMP are not in POSIX */
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <openssl/crypto.h>

#include "log.h"
#include "provhsm/provhsm.h"
#include "secmem.h"

#define MOD "secmem"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SECMEM_POISON(p, n)   ASAN_POISON_MEMORY_REGION(p, n)
#define SECMEM_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define SECMEM_POISON(p, n)   ((void)(p), (void)(n))
#define SECMEM_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define SECMEM_MAGIC 0x5ec3e3a1u

typedef struct secmem_header {
    size_t len;   /* bytes after the header */
    size_t total; /* whole pages, header included */
    unsigned magic;
    int locked;
} secmem_header;

/* The payload starts max-aligned, like malloc's. */
#define HEADER_SIZE                                                                                \
    ((sizeof(secmem_header) + _Alignof(max_align_t) - 1) & ~(_Alignof(max_align_t) - 1))

#ifdef PROVHSM_TEST_HOOKS
int provhsm_secmem_test_fail_mlock;
void (*provhsm_secmem_test_before_free)(const void *block, size_t len);
#endif

static atomic_int mlock_failure_reported;

void provhsm_wipe(void *p, size_t len)
{
    if (p != NULL && len > 0)
        OPENSSL_cleanse(p, len);
}

/* mlock() the block; says once per process when the OS refuses. */
static int lock_pages(void *block, size_t total)
{
    int locked = mlock(block, total) == 0;
#ifdef PROVHSM_TEST_HOOKS
    if (locked && provhsm_secmem_test_fail_mlock) {
        munlock(block, total);
        locked = 0;
    }
#endif
    if (!locked && atomic_exchange(&mlock_failure_reported, 1) == 0)
        PH_DEBUG(MOD, "mlock failed (RLIMIT_MEMLOCK too low?): secrets may be swapped out");
    return locked;
}

static size_t page_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    return page > 0 ? (size_t)page : 4096;
}

void *provhsm_secure_alloc(size_t len)
{
    size_t page = page_size();
    void *mem = NULL;

    if (len > SIZE_MAX - HEADER_SIZE - page)
        return NULL;
    size_t used = HEADER_SIZE + len;
    size_t total = (used + page - 1) / page * page;
    if (posix_memalign(&mem, page, total) != 0)
        return NULL;
    secmem_header *h = mem;
    memset(mem, 0, used); /* fresh memory, as calloc would give */
    h->len = len;
    h->total = total;
    h->magic = SECMEM_MAGIC;
    h->locked = lock_pages(h, total);
#ifdef MADV_DONTDUMP
    (void)madvise(h, total, MADV_DONTDUMP); /* best effort, like mlock */
#endif
    SECMEM_POISON((unsigned char *)mem + used, total - used);
    return (unsigned char *)h + HEADER_SIZE;
}

void provhsm_secure_free(void *p)
{
    if (p == NULL)
        return;
    secmem_header *h = (secmem_header *)((unsigned char *)p - HEADER_SIZE);
    if (h->magic != SECMEM_MAGIC)
        abort(); /* not ours: freeing it would corrupt the heap, and wiping may be wrong */
    size_t total = h->total;
    int locked = h->locked;
    SECMEM_UNPOISON(h, total);
    OPENSSL_cleanse(h, total);
#ifdef PROVHSM_TEST_HOOKS
    if (provhsm_secmem_test_before_free != NULL)
        provhsm_secmem_test_before_free(h, total);
#endif
    if (locked)
        munlock(h, total);
#ifdef MADV_DODUMP
    (void)madvise(h, total, MADV_DODUMP);
#endif
    free(h);
}

char *provhsm_secure_strdup(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s);
    char *copy = provhsm_secure_alloc(n + 1);
    if (copy != NULL)
        memcpy(copy, s, n + 1);
    return copy;
}

void provhsm_free_wiped_string(char *s)
{
    if (s == NULL)
        return;
    OPENSSL_cleanse(s, strlen(s));
    free(s);
}

void provhsm_free_wiped(void *p, size_t len)
{
    if (p == NULL)
        return;
    OPENSSL_cleanse(p, len);
    free(p);
}

void provhsm_free_secret(char *secret)
{
    provhsm_free_wiped_string(secret);
}
