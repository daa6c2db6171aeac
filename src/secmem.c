/*
 * Secure memory: every secret in the library is allocated and wiped here. Each block
 * carries a small header with its size so provhsm_secure_free() can wipe the whole block
 * without the caller passing a length. mlock() is best effort: a device with a low
 * RLIMIT_MEMLOCK still works, the memory is just swappable.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <openssl/crypto.h>

#include "provhsm/provhsm.h"
#include "secmem.h"

#define SECMEM_MAGIC 0x5ec3e3a1u

typedef struct secmem_header {
    size_t len; /* bytes after the header */
    unsigned magic;
    int locked;
} secmem_header;

/* The payload starts max-aligned, like malloc's. */
#define HEADER_SIZE                                                                                \
    ((sizeof(secmem_header) + _Alignof(max_align_t) - 1) & ~(_Alignof(max_align_t) - 1))

void provhsm_wipe(void *p, size_t len)
{
    if (p != NULL && len > 0)
        OPENSSL_cleanse(p, len);
}

void *provhsm_secure_alloc(size_t len)
{
    if (len > SIZE_MAX - HEADER_SIZE)
        return NULL;
    secmem_header *h = calloc(1, HEADER_SIZE + len);
    if (h == NULL)
        return NULL;
    h->len = len;
    h->magic = SECMEM_MAGIC;
    h->locked = mlock(h, HEADER_SIZE + len) == 0;
    return (unsigned char *)h + HEADER_SIZE;
}

void provhsm_secure_free(void *p)
{
    if (p == NULL)
        return;
    secmem_header *h = (secmem_header *)((unsigned char *)p - HEADER_SIZE);
    if (h->magic != SECMEM_MAGIC)
        abort(); /* not ours: freeing it would corrupt the heap, and wiping may be wrong */
    size_t total = HEADER_SIZE + h->len;
    int locked = h->locked;
    OPENSSL_cleanse(h, total);
    if (locked)
        munlock(h, total);
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

int provhsm_memcmp_ct(const void *a, const void *b, size_t len)
{
    return CRYPTO_memcmp(a, b, len);
}

void provhsm_free_secret(char *secret)
{
    provhsm_free_wiped_string(secret);
}
