/*
 * The encrypted software key store (store.h): files in one directory, each entry sealed
 * with AES-256-GCM (OpenSSL EVP) under a store key that comes from a random key file,
 * from a passphrase through scrypt (EVP_KDF "SCRYPT"), or from the TPM, which unseals a
 * random key sealed to it (tpm_esys.h; its commands go through the process's one
 * connection to that TPM, the TPM backend's, under its lock). A rekey moves every entry to a new
 * key, crash-safe. Called by the software backend and the administration API. Static state: none
 * besides the test hook; an open store handle is immutable after open (a directory fd and the key
 * in secure memory), so one handle may be used from several threads at once.
 *
 * Every file is read through safefile.c: opened with O_NOFOLLOW, its owner and mode
 * checked on the opened fd, so what is checked is what is read. The key file's directory
 * is checked too. Writes go to a temp file in the same directory (O_EXCL, 0600), are
 * fsync'ed, renamed over the target, and the directory is fsync'ed. Sequences of writes
 * are serialised by an flock on the store directory (provhsm_store_lock).
 *
 * On-disk format, version 1. Integers are big-endian.
 *
 *   <store_dir>/               0700, owned by the effective uid
 *     store.meta               public header, written last by create (marks a store)
 *     store.check              key-check entry
 *     store.key                key file in key-file mode (its path is configurable)
 *     store.sealed             the sealed store key in TPM mode
 *     <name>.entry             one file per entry, 0600
 *     .tmp-<16 hex>-<target>   unfinished write: ignored; removed by open when stale
 *     <file>.new               staged by a rekey (store.meta.new, store.check.new,
 *                              store.sealed.new, <name>.entry.new, <key file>.new):
 *                              finished or undone by the next open (see "rekey" below)
 *
 *   store.meta, 64 bytes:
 *     off len
 *       0   8  magic "PHSMMETA"
 *       8   2  format version, 1
 *      10   1  key mode: 1 = random key in the key file, 2 = scrypt of a passphrase,
 *                        3 = random key sealed to the TPM (store.sealed); a build without
 *                        mode 3 refuses it as an unknown mode, as older builds do
 *      11   1  scrypt log2(N)        (0 in key-file and TPM modes)
 *      12   4  scrypt r              (0 in key-file and TPM modes)
 *      16   4  scrypt p              (0 in key-file and TPM modes)
 *      20  32  scrypt salt, random   (zero in key-file and TPM modes)
 *      52  12  reserved, zero
 *
 *   key file, 44 bytes, 0600:
 *       0   8  magic "PHSMSKEY"
 *       8   2  format version, 1
 *      10   2  reserved, zero
 *      12  32  the store key (AES-256)
 *
 *   store.sealed, at most 4096 bytes, 0600 (TPM mode):
 *       0   8  magic "PHSMSEAL"
 *       8   2  format version: 1, or 2 for a key sealed to two sets of PCR values
 *      10   2  reserved, zero
 *      12   4  the parent's persistent handle (the SRK when it was sealed)
 *      16   4  the sealed object's persistent handle; 0: the object follows here
 *      20   *  TPML_PCR_SELECTION (tss2-mu; count 0: no PCR policy, else one bank)
 *       *   *  version 2 only: TPML_DIGEST (tss2-mu), the branches of a PolicyOR, exactly
 *              two SHA-256 policy digests: [0] PolicyPCR over the PCRs' values when
 *              `reseal --pcr-values` ran, [1] PolicyPCR over the values it was given.
 *              Version 2 needs a one-bank PCR selection.
 *       *   *  TPM2B_PUBLIC then, when the handle is 0, TPM2B_PRIVATE (tss2-mu): a
 *              keyedhash sealed data object (fixedTPM, fixedParent, noDA, no sign or
 *              decrypt; userWithAuth with the empty value, or a policy as authPolicy:
 *              PolicyPCR in version 1, in version 2 PolicyOR of the two branches, i.e.
 *              SHA-256(32 zero bytes || TPM_CC_PolicyOR || branch 0 || branch 1))
 *              holding the 32-byte store key. At a handle, the public area gives the
 *              object's Name without a ReadPublic. Nothing after it.
 *   A version-1 file is what earlier builds wrote and read: they refuse version 2 as a
 *   newer format, and a plain `provhsm store reseal` writes version 1 again.
 *
 *   entry file, 44 + n bytes (n <= 1 MiB):
 *       0   8  magic "PHSMENTR"
 *       8   2  format version, 1
 *      10   1  cipher: 1 = AES-256-GCM, 96-bit nonce, 128-bit tag
 *      11   1  reserved, zero
 *      12   4  n, the plaintext length
 *      16  12  nonce, fresh random for every write
 *      28   n  ciphertext
 *    28+n  16  GCM tag
 *   The associated data is bytes 0..15, one byte holding the name's length, the name.
 *   store.check is an entry named "store.check" (outside the entry-name alphabet, so no
 *   entry can pose as it) whose associated data is followed by the 64 bytes of
 *   store.meta, and whose plaintext is "provhsm store key check v1".
 *
 *   Store key = key file bytes 12..43, or scrypt(passphrase, salt, N, r, p) -> 32 bytes,
 *   or the data of the sealed object, unsealed by the TPM.
 *
 *   Old stores (modes 1 and 2) read as before: mode 3 adds a value and a file, nothing else.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "front.h"
#include "provhsm/provhsm_store_key.h"
#include "encoding.h"
#include "log.h"
#include "safefile.h"
#include "secmem.h"
#include "store.h"

#ifdef PROVHSM_WITH_TPM
#include "tpm_esys.h"
#endif

#define MOD "store"

#define FORMAT_VERSION 1u

#define META_NAME    "store.meta"
#define CHECK_NAME   "store.check"
#define KEY_DEFAULT  "store.key"
#define ENTRY_SUFFIX ".entry"
#define TMP_PREFIX   ".tmp-"

#define META_MAGIC     "PHSMMETA"
#define META_LEN       64u
#define META_OFF_MODE  10u
#define META_OFF_LOG2N 11u
#define META_OFF_R     12u
#define META_OFF_P     16u
#define META_OFF_SALT  20u
#define META_OFF_RSVD  52u
#define SALT_LEN       32u

#define KEY_MODE_FILE       1u
#define KEY_MODE_PASSPHRASE 2u
#define KEY_MODE_TPM        3u

#define SEALED_NAME       "store.sealed"
#define SEALED_MAGIC      "PHSMSEAL"
#define SEALED_OFF_PARENT 12u
#define SEALED_OFF_HANDLE 16u
#define SEALED_OFF_PCRS   20u
#define SEALED_VERSION_OR 2u /* with the PolicyOR branches */
#define SEALED_BRANCHES   2u /* the values at the reseal, the values given */
#define SEALED_MAX        4096u

#define KEYFILE_MAGIC   "PHSMSKEY"
#define KEYFILE_LEN     44u
#define KEYFILE_OFF_KEY 12u
#define STORE_KEY_LEN   32u

#define ENTRY_MAGIC      "PHSMENTR"
#define ENTRY_CIPHER_GCM 1u
#define ENTRY_HDR_LEN    16u
#define NONCE_LEN        12u
#define TAG_LEN          16u
#define ENTRY_OVERHEAD   (ENTRY_HDR_LEN + NONCE_LEN + TAG_LEN)
#define ENTRY_MAX_DATA   (1024u * 1024u)
#define ENTRY_NAME_MAX   64u
/* "<name>.entry" and ".tmp-<16 hex>-<target>" */
#define FILE_NAME_BUF  128u
#define CHECK_PLAIN    "provhsm store key check v1"
#define PASSPHRASE_MAX 4096u

/* scrypt bounds, also applied to a header read from disk so it cannot demand absurd work */
#define SCRYPT_MAX_LOG2N 30u
#define SCRYPT_MAX_R     32u
#define SCRYPT_MAX_P     16u
#define SCRYPT_MAX_MEM   (1ull << 30) /* 128 * r * N */

/* A temp file older than this cannot belong to a write still in progress. */
#define STALE_TMP_SECONDS 600

#define STORE_MAGIC 0x53544f52u

struct provhsm_store {
    unsigned magic;
    int dirfd;
    uint8_t *key; /* STORE_KEY_LEN bytes of secure memory */
    char dir[PROVHSM_PATH_MAX];
};

static provhsm_err rekey_recover(const provhsm_config *cfg, int dirfd, const char *dir);
static int lock_dir(int dirfd, int nonblocking);

typedef struct store_meta {
    uint8_t raw[META_LEN];
    unsigned key_mode;
    unsigned log2_n;
    uint32_t r, p;
} store_meta;

#ifdef PROVHSM_TEST_HOOKS
int provhsm_store_test_fail_before_rename = 0;
void (*provhsm_store_test_before_remove)(const char *name) = NULL;
#define FAIL_BEFORE_RENAME provhsm_store_test_fail_before_rename
#define BEFORE_REMOVE(name)                                                                        \
    do {                                                                                           \
        if (provhsm_store_test_before_remove != NULL)                                              \
            provhsm_store_test_before_remove(name);                                                \
    } while (0)
#else
#define FAIL_BEFORE_RENAME  0
#define BEFORE_REMOVE(name) ((void)0)
#endif

/* ---- small helpers ------------------------------------------------------ */

static void put_be16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static unsigned get_be16(const uint8_t *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

static uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int all_zero(const uint8_t *p, size_t len)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < len; i++)
        acc |= p[i];
    return acc == 0;
}

static int handle_is_persistent(uint32_t h)
{
    return h >= 0x81000000u && h <= 0x81ffffffu;
}

static int name_is_valid(const char *name)
{
    size_t n = 0;
    if (name == NULL)
        return 0;
    for (; name[n] != '\0'; n++) {
        char c = name[n];
        if (n >= ENTRY_NAME_MAX)
            return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return n > 0;
}

static int str_fits(const char *s, size_t size)
{
    return memchr(s, '\0', size) != NULL;
}

/* The config struct comes from elsewhere: make sure its strings are terminated. */
static int cfg_strings_ok(const provhsm_config *cfg)
{
    return str_fits(cfg->store_dir, sizeof(cfg->store_dir)) &&
           str_fits(cfg->key_file, sizeof(cfg->key_file)) &&
           str_fits(cfg->passphrase_file, sizeof(cfg->passphrase_file)) &&
           str_fits(cfg->passphrase_env, sizeof(cfg->passphrase_env));
}

static void entry_file_name(const char *name, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s%s", name, ENTRY_SUFFIX);
}

static int store_ok(const provhsm_store *st)
{
    return st != NULL && st->magic == STORE_MAGIC && st->key != NULL && st->dirfd >= 0;
}

/* Effective key file path (config.c owns the default), or an error when it does not fit. */
static provhsm_err key_file_path(const provhsm_config *cfg, char *out, size_t outlen)
{
    provhsm_config_key_file(cfg, out, outlen);
    return out[0] != '\0' ? PROVHSM_OK : PROVHSM_E_CONFIG;
}

/*
 * Path buffers come from the heap: the SDK may create a handle on a 16 KB thread stack,
 * and a few PROVHSM_PATH_MAX arrays nested on that path would not fit there. NULL
 * (logged) when out of memory; otherwise an empty string of `size` bytes.
 */
static char *path_alloc(size_t size)
{
    char *p = malloc(size);
    if (p == NULL) {
        PH_ERR(MOD, "out of memory");
        return NULL;
    }
    p[0] = '\0';
    return p;
}

/* Splits "a/b/c" into "a/b" and "c"; "c" into "." and "c"; "/c" into "/" and "c". */
static provhsm_err split_path(const char *path, char *dir, size_t dirlen, char *base,
                              size_t baselen)
{
    const char *slash = strrchr(path, '/');
    const char *b = slash != NULL ? slash + 1 : path;

    if (*b == '\0' || strlen(b) >= baselen) {
        PH_ERR(MOD, "%s does not name a file", path);
        return PROVHSM_E_CONFIG;
    }
    if (slash == NULL) {
        snprintf(dir, dirlen, ".");
    } else {
        size_t dl = slash == path ? 1 : (size_t)(slash - path);
        if (dl >= dirlen) {
            PH_ERR(MOD, "%s: path too long", path);
            return PROVHSM_E_CONFIG;
        }
        memcpy(dir, path, dl);
        dir[dl] = '\0';
    }
    memcpy(base, b, strlen(b) + 1);
    return PROVHSM_OK;
}

/*
 * mkdir -p: missing directories are made 0700 (the umask can only make them stricter).
 * *created (optional) tells whether the last component was made here.
 */
static provhsm_err mkdir_p(const char *path, int *created)
{
    provhsm_err rc = PROVHSM_OK;
    size_t len = strlen(path);

    if (created != NULL)
        *created = 0;
    if (len == 0 || len >= PROVHSM_PATH_MAX) {
        PH_ERR(MOD, "directory path \"%s\" is empty or too long", path);
        return PROVHSM_E_CONFIG;
    }
    char *buf = path_alloc(len + 1);
    if (buf == NULL)
        return PROVHSM_E_NOMEM;
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        if (buf[i - 1] == '/')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        int made = mkdir(buf, 0700) == 0;
        if (!made && errno != EEXIST) {
            int err = errno;
            PH_ERR(MOD, "cannot create directory %s: %s", buf, strerror(err));
            rc = err == EACCES ? PROVHSM_E_PERMISSION : PROVHSM_E_IO;
            break;
        }
        if (created != NULL)
            *created = made;
        buf[i] = saved;
    }
    free(buf);
    return rc;
}

/* Checks a stat'ed store file or directory: owner = euid, no access for anyone else. */
static provhsm_err check_owner_mode(const struct stat *sb, const char *path)
{
    const provhsm_file_ref f = {AT_FDCWD, path, path, "store file", NULL, 0};
    return provhsm_safefile_check(&f, sb, PROVHSM_FILE_PRIVATE);
}

/*
 * Reads a whole store file (relative to dirfd) of at most max_len bytes through
 * safefile.c (owner, mode and type checked on the opened fd). A missing file is
 * PROVHSM_E_NOT_FOUND and is not logged; every other failure is logged there.
 */
static provhsm_err read_file_at(int dirfd, const char *name, const char *path, size_t max_len,
                                int secure, uint8_t **out, size_t *len_out)
{
    const provhsm_file_ref f = {dirfd, name, path, secure ? "secret file" : "store file", NULL, 0};
    return provhsm_safefile_read(&f, secure ? PROVHSM_FILE_SECRET : PROVHSM_FILE_PRIVATE, max_len,
                                 out, len_out);
}

static provhsm_err write_all(int fd, const uint8_t *buf, size_t len, const char *path)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            PH_ERR(MOD, "cannot write %s: %s", path, n < 0 ? strerror(errno) : "short write");
            return PROVHSM_E_IO;
        }
        done += (size_t)n;
    }
    return PROVHSM_OK;
}

static provhsm_err fsync_dir(int dirfd, const char *dir_path)
{
    /* some file systems cannot sync a directory; nothing more can be done there */
    if (fsync(dirfd) != 0 && errno != EINVAL && errno != ENOTSUP) {
        PH_ERR(MOD, "cannot fsync directory %s: %s", dir_path, strerror(errno));
        return PROVHSM_E_IO;
    }
    return PROVHSM_OK;
}

enum { WRITE_REPLACE = 0, WRITE_NEW = 1 };

/*
 * Writes `name` in dirfd atomically through a temp file. WRITE_REPLACE renames over an
 * existing file; WRITE_NEW links the temp file into place and so fails with
 * PROVHSM_E_EXISTS rather than replace anything. honour_hook applies the test hook.
 */
static provhsm_err write_atomic_named(int dirfd, const char *dir_path, const char *name,
                                      const char *path, const uint8_t *buf, size_t len, int how,
                                      int honour_hook)
{
    provhsm_err rc = PROVHSM_OK;
    char tmp[FILE_NAME_BUF];
    uint8_t rnd[8];
    int fd = -1, tmp_made = 0, n;

    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        provhsm_log_openssl(MOD, "RAND_bytes (temp file name)");
        return PROVHSM_E_CRYPTO;
    }
    n = snprintf(tmp, sizeof(tmp), TMP_PREFIX "%02x%02x%02x%02x%02x%02x%02x%02x-%s", rnd[0], rnd[1],
                 rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7], name);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        PH_ERR(MOD, "file name %s is too long", name);
        return PROVHSM_E_INVALID_ARG;
    }
    fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        int err = errno;
        PH_ERR(MOD, "cannot create a temp file in %s: %s", dir_path, strerror(err));
        return err == EACCES ? PROVHSM_E_PERMISSION : PROVHSM_E_IO;
    }
    tmp_made = 1;
    if (fchmod(fd, 0600) != 0) {
        PH_ERR(MOD, "cannot set mode 0600 on a temp file for %s: %s", path, strerror(errno));
        rc = PROVHSM_E_IO;
        goto out;
    }
    rc = write_all(fd, buf, len, path);
    if (rc != PROVHSM_OK)
        goto out;
    if (fsync(fd) != 0) {
        PH_ERR(MOD, "cannot fsync the temp file for %s: %s", path, strerror(errno));
        rc = PROVHSM_E_IO;
        goto out;
    }
    n = close(fd);
    fd = -1;
    if (n != 0) {
        PH_ERR(MOD, "cannot close the temp file for %s: %s", path, strerror(errno));
        rc = PROVHSM_E_IO;
        goto out;
    }
    if (honour_hook && FAIL_BEFORE_RENAME) {
        PH_ERR(MOD, "test hook: stopping before renaming the temp file over %s", path);
        tmp_made = 0; /* left behind, as a crash would */
        rc = PROVHSM_E_IO;
        goto out;
    }
    if (how == WRITE_REPLACE) {
        if (renameat(dirfd, tmp, dirfd, name) != 0) {
            PH_ERR(MOD, "cannot rename the temp file over %s: %s", path, strerror(errno));
            rc = PROVHSM_E_IO;
            goto out;
        }
        tmp_made = 0;
    } else if (linkat(dirfd, tmp, dirfd, name, 0) != 0) {
        if (errno == EEXIST) {
            PH_ERR(MOD, "%s already exists; not replacing it", path);
            rc = PROVHSM_E_EXISTS;
            goto out;
        }
        /* no hard links on this file system: check, then rename */
        struct stat sb;
        if (fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
            PH_ERR(MOD, "%s already exists; not replacing it", path);
            rc = PROVHSM_E_EXISTS;
            goto out;
        }
        if (renameat(dirfd, tmp, dirfd, name) != 0) {
            PH_ERR(MOD, "cannot rename the temp file to %s: %s", path, strerror(errno));
            rc = PROVHSM_E_IO;
            goto out;
        }
        tmp_made = 0;
    }
    rc = fsync_dir(dirfd, dir_path);
out:
    if (fd >= 0)
        close(fd);
    if (tmp_made) {
        unlinkat(dirfd, tmp, 0);
        if (rc == PROVHSM_OK)
            rc = fsync_dir(dirfd, dir_path); /* drop the temp name from the directory too */
    }
    return rc;
}

/* write_atomic_named with the file's full path, for messages, made here. */
static provhsm_err write_atomic(int dirfd, const char *dir_path, const char *name,
                                const uint8_t *buf, size_t len, int how, int honour_hook)
{
    const size_t size = PROVHSM_PATH_MAX + FILE_NAME_BUF;
    char *path = path_alloc(size);
    if (path == NULL)
        return PROVHSM_E_NOMEM;
    snprintf(path, size, "%s/%s", dir_path, name);
    provhsm_err rc = write_atomic_named(dirfd, dir_path, name, path, buf, len, how, honour_hook);
    free(path);
    return rc;
}

/* ---- sealing ------------------------------------------------------------ */

static provhsm_err add_aad(EVP_CIPHER_CTX *ctx, int enc, const uint8_t *hdr, const char *name,
                           const uint8_t *extra, size_t extra_len)
{
    uint8_t name_len = (uint8_t)strlen(name);
    int outl;
    int (*update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int) =
        enc ? EVP_EncryptUpdate : EVP_DecryptUpdate;

    if (update(ctx, NULL, &outl, hdr, (int)ENTRY_HDR_LEN) != 1 ||
        update(ctx, NULL, &outl, &name_len, 1) != 1 ||
        update(ctx, NULL, &outl, (const unsigned char *)name, (int)name_len) != 1 ||
        (extra_len > 0 && update(ctx, NULL, &outl, extra, (int)extra_len) != 1)) {
        provhsm_log_openssl(MOD, "AES-GCM associated data");
        return PROVHSM_E_CRYPTO;
    }
    return PROVHSM_OK;
}

/* Builds the bytes of an entry file (not secret: header, nonce, ciphertext, tag). */
provhsm_err provhsm_store_seal(const uint8_t *key, const char *name, const uint8_t *extra,
                               size_t extra_len, const uint8_t *data, size_t len, uint8_t **out,
                               size_t *out_len)
{
    provhsm_err rc = PROVHSM_OK;
    EVP_CIPHER_CTX *ctx = NULL;
    size_t total = ENTRY_OVERHEAD + len;
    uint8_t *buf = NULL, *nonce, *ct, *tag;
    int outl = 0;

    if (key == NULL || name == NULL || strlen(name) > UINT8_MAX || (data == NULL && len > 0) ||
        (extra == NULL && extra_len > 0) || extra_len > META_LEN || len > ENTRY_MAX_DATA ||
        out == NULL || out_len == NULL)
        return PROVHSM_E_INVALID_ARG;
    buf = malloc(total);
    if (buf == NULL) {
        PH_ERR(MOD, "out of memory sealing entry %s", name);
        return PROVHSM_E_NOMEM;
    }
    nonce = buf + ENTRY_HDR_LEN;
    ct = nonce + NONCE_LEN;
    tag = ct + len;
    memcpy(buf, ENTRY_MAGIC, 8);
    put_be16(buf + 8, FORMAT_VERSION);
    buf[10] = ENTRY_CIPHER_GCM;
    buf[11] = 0;
    put_be32(buf + 12, (uint32_t)len);
    if (RAND_bytes(nonce, NONCE_LEN) != 1) {
        provhsm_log_openssl(MOD, "RAND_bytes (nonce)");
        rc = PROVHSM_E_CRYPTO;
        goto out;
    }
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL || EVP_EncryptInit_ex2(ctx, EVP_aes_256_gcm(), key, nonce, NULL) != 1) {
        provhsm_log_openssl(MOD, "AES-256-GCM encrypt init");
        rc = PROVHSM_E_CRYPTO;
        goto out;
    }
    rc = add_aad(ctx, 1, buf, name, extra, extra_len);
    if (rc != PROVHSM_OK)
        goto out;
    if (len > 0 &&
        (EVP_EncryptUpdate(ctx, ct, &outl, data, (int)len) != 1 || (size_t)outl != len)) {
        provhsm_log_openssl(MOD, "AES-256-GCM encrypt");
        rc = PROVHSM_E_CRYPTO;
        goto out;
    }
    if (EVP_EncryptFinal_ex(ctx, tag, &outl) != 1 || outl != 0 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, (int)TAG_LEN, tag) != 1) {
        provhsm_log_openssl(MOD, "AES-256-GCM encrypt final");
        rc = PROVHSM_E_CRYPTO;
        goto out;
    }
    *out = buf;
    *out_len = total;
    buf = NULL;
out:
    EVP_CIPHER_CTX_free(ctx);
    free(buf);
    return rc;
}

/*
 * Checks the structure of an entry file and decrypts it into secure memory.
 * PROVHSM_E_CORRUPT (logged) for a malformed file, PROVHSM_E_TAMPERED (not logged: the
 * caller says what it means) when authentication fails.
 */
provhsm_err provhsm_store_unseal(const uint8_t *key, const char *name, const uint8_t *extra,
                                 size_t extra_len, const uint8_t *file, size_t file_len,
                                 const char *path, uint8_t **out, size_t *out_len)
{
    provhsm_err rc = PROVHSM_OK;
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *plain = NULL;
    uint8_t tag[TAG_LEN];
    size_t len;
    int outl = 0;

    if (key == NULL || name == NULL || strlen(name) > UINT8_MAX || (file == NULL && file_len > 0) ||
        (extra == NULL && extra_len > 0) || extra_len > META_LEN || path == NULL || out == NULL ||
        out_len == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (file_len < ENTRY_OVERHEAD) {
        PH_ERR(MOD, "%s is %zu bytes, too short for a store entry", path, file_len);
        return PROVHSM_E_CORRUPT;
    }
    if (memcmp(file, ENTRY_MAGIC, 8) != 0) {
        PH_ERR(MOD, "%s is not a store entry (bad magic)", path);
        return PROVHSM_E_CORRUPT;
    }
    if (get_be16(file + 8) != FORMAT_VERSION) {
        PH_ERR(MOD, "%s has format version %u; this build reads version %u", path,
               get_be16(file + 8), FORMAT_VERSION);
        return PROVHSM_E_CORRUPT;
    }
    if (file[10] != ENTRY_CIPHER_GCM || file[11] != 0) {
        PH_ERR(MOD, "%s names unknown cipher %u (flags %u)", path, file[10], file[11]);
        return PROVHSM_E_CORRUPT;
    }
    len = get_be32(file + 12);
    if (len != file_len - ENTRY_OVERHEAD) {
        PH_ERR(MOD, "%s: header says %zu bytes of data, file holds %zu", path, len,
               file_len - ENTRY_OVERHEAD);
        return PROVHSM_E_CORRUPT;
    }
    plain = provhsm_secure_alloc(len);
    if (plain == NULL) {
        PH_ERR(MOD, "out of memory decrypting %s", path);
        return PROVHSM_E_NOMEM;
    }
    memcpy(tag, file + ENTRY_HDR_LEN + NONCE_LEN + len, TAG_LEN);
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL ||
        EVP_DecryptInit_ex2(ctx, EVP_aes_256_gcm(), key, file + ENTRY_HDR_LEN, NULL) != 1) {
        provhsm_log_openssl(MOD, "AES-256-GCM decrypt init");
        rc = PROVHSM_E_CRYPTO;
        goto out;
    }
    rc = add_aad(ctx, 0, file, name, extra, extra_len);
    if (rc != PROVHSM_OK)
        goto out;
    if (len > 0 &&
        (EVP_DecryptUpdate(ctx, plain, &outl, file + ENTRY_HDR_LEN + NONCE_LEN, (int)len) != 1 ||
         (size_t)outl != len)) {
        provhsm_log_openssl(MOD, "AES-256-GCM decrypt");
        rc = PROVHSM_E_CRYPTO;
        goto out;
    }
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, (int)TAG_LEN, tag) != 1) {
        provhsm_log_openssl(MOD, "AES-256-GCM set tag");
        rc = PROVHSM_E_CRYPTO;
        goto out;
    }
    if (EVP_DecryptFinal_ex(ctx, plain + len, &outl) != 1) {
        ERR_clear_error();
        rc = PROVHSM_E_TAMPERED;
        goto out;
    }
    *out = plain;
    *out_len = len;
    plain = NULL;
out:
    EVP_CIPHER_CTX_free(ctx);
    provhsm_secure_free(plain);
    return rc;
}

/* ---- the store key sealed to the TPM ------------------------------------------------ */

/* "0,7" for messages. */
static void describe_pcr_mask(uint32_t mask, char *out, size_t outlen)
{
    size_t n = 0;
    out[0] = '\0';
    for (unsigned i = 0; i < 24 && n < outlen; i++)
        if (mask & (1ul << i))
            n += (size_t)snprintf(out + n, outlen - n, "%s%u", n == 0 ? "" : ",", i);
}

#ifdef PROVHSM_WITH_TPM
/*
 * store.sealed: where the sealed store key is, and what unseals it (the byte layout is in
 * the opening comment). Parsed in full before any TPM command.
 */
typedef struct sealed_file {
    uint32_t parent;         /* the SRK's persistent handle when it was sealed */
    uint32_t handle;         /* the sealed object's persistent handle; 0: pub/priv below */
    TPML_PCR_SELECTION pcrs; /* count 0: no PCR policy */
    TPML_DIGEST branches;    /* count 0: PolicyPCR alone; else PolicyPCR, PolicyOR of these */
    TPM2B_PUBLIC pub;
    TPM2B_PRIVATE priv;
} sealed_file;

/*
 * The PolicyOR branches of a version-2 store.sealed, from buf[*off]: exactly two SHA-256
 * digests, and a PCR selection to go with them (they are PolicyPCR digests).
 */
static provhsm_err parse_branches(const uint8_t *buf, size_t len, size_t *off, const char *path,
                                  sealed_file *out)
{
    provhsm_err rc = provhsm_tpm_unmarshal_digests(buf, len, off, path, &out->branches);
    if (rc != PROVHSM_OK)
        return rc;
    if (out->pcrs.count == 0) {
        PH_ERR(MOD,
               "%s: PolicyOR branches for a key bound to no PCR (format version 2 without a "
               "PCR selection)",
               path);
        return PROVHSM_E_CORRUPT;
    }
    if (out->branches.count != SEALED_BRANCHES) {
        PH_ERR(MOD, "%s: %lu PolicyOR branches; format version 2 has %u", path,
               (unsigned long)out->branches.count, SEALED_BRANCHES);
        return PROVHSM_E_CORRUPT;
    }
    for (UINT32 i = 0; i < out->branches.count; i++) {
        if (out->branches.digests[i].size != TPM2_SHA256_DIGEST_SIZE) {
            PH_ERR(MOD, "%s: PolicyOR branch %lu is %u bytes, not a SHA-256 policy digest", path,
                   (unsigned long)i, (unsigned)out->branches.digests[i].size);
            return PROVHSM_E_CORRUPT;
        }
    }
    return PROVHSM_OK;
}

/* The sealed object's authPolicy must be the PolicyOR of the branches the file records. */
static provhsm_err check_or_policy(const sealed_file *sf, const char *path)
{
    TPM2B_DIGEST expected = {.size = 0};
    const TPM2B_DIGEST *policy = &sf->pub.publicArea.authPolicy;
    provhsm_err rc = provhsm_tpm_policy_or_digest(&sf->branches, &expected);
    if (rc != PROVHSM_OK)
        return rc;
    if (policy->size != expected.size || memcmp(policy->buffer, expected.buffer, expected.size)) {
        PH_ERR(MOD,
               "%s: the sealed object's policy is not the PolicyOR of the branches the file "
               "records",
               path);
        return PROVHSM_E_CORRUPT;
    }
    return PROVHSM_OK;
}

static provhsm_err parse_sealed(const uint8_t *buf, size_t len, const char *path, sealed_file *out)
{
    size_t off = SEALED_OFF_PCRS;
    provhsm_err rc;

    memset(out, 0, sizeof(*out));
    if (len < SEALED_OFF_PCRS || memcmp(buf, SEALED_MAGIC, 8) != 0) {
        PH_ERR(MOD, "%s is not a sealed store key (%zu bytes, bad size or magic)", path, len);
        return PROVHSM_E_CORRUPT;
    }
    unsigned version = get_be16(buf + 8);
    if ((version != FORMAT_VERSION && version != SEALED_VERSION_OR) || get_be16(buf + 10) != 0) {
        PH_ERR(MOD, "%s has format version %u (flags %u); this build reads versions %u and %u",
               path, version, get_be16(buf + 10), FORMAT_VERSION, SEALED_VERSION_OR);
        return PROVHSM_E_CORRUPT;
    }
    out->parent = get_be32(buf + SEALED_OFF_PARENT);
    out->handle = get_be32(buf + SEALED_OFF_HANDLE);
    if (!handle_is_persistent(out->parent) ||
        (out->handle != 0 && !handle_is_persistent(out->handle))) {
        PH_ERR(MOD, "%s names handles 0x%08lx and 0x%08lx; persistent handles expected", path,
               (unsigned long)out->parent, (unsigned long)out->handle);
        return PROVHSM_E_CORRUPT;
    }
    rc = provhsm_tpm_unmarshal_pcrs(buf, len, &off, path, &out->pcrs);
    if (rc == PROVHSM_OK && out->pcrs.count > 1) {
        PH_ERR(MOD, "%s: the store key is bound to %lu PCR banks; provhsm binds to one", path,
               (unsigned long)out->pcrs.count);
        rc = PROVHSM_E_CORRUPT;
    }
    if (rc == PROVHSM_OK && version == SEALED_VERSION_OR)
        rc = parse_branches(buf, len, &off, path, out);
    /* the object in full, or at a handle only its public area (it names the object) */
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_unmarshal_sealed_object(buf, len, &off, path, &out->pub,
                                                 out->handle == 0 ? &out->priv : NULL);
    if (rc == PROVHSM_OK && off != len) {
        PH_ERR(MOD, "%s: %zu bytes after the sealed key", path, len - off);
        rc = PROVHSM_E_CORRUPT;
    }
    if (rc == PROVHSM_OK && (out->pcrs.count > 0) != (out->pub.publicArea.authPolicy.size > 0)) {
        PH_ERR(MOD, "%s: the PCR selection and the sealed object's policy disagree", path);
        rc = PROVHSM_E_CORRUPT;
    }
    if (rc == PROVHSM_OK && out->branches.count > 0)
        rc = check_or_policy(out, path);
    return rc;
}

provhsm_err provhsm_store_parse_sealed(const uint8_t *buf, size_t len, const char *path)
{
    if (buf == NULL || path == NULL)
        return PROVHSM_E_INVALID_ARG;
    sealed_file *sf = malloc(sizeof(*sf));
    if (sf == NULL)
        return PROVHSM_E_NOMEM;
    provhsm_err rc = parse_sealed(buf, len, path, sf);
    free(sf);
    return rc;
}

/* The configured PCR binding as a TPM selection (count 0 when there is none). */
static void configured_pcrs(const provhsm_config *cfg, TPML_PCR_SELECTION *sel)
{
    memset(sel, 0, sizeof(*sel));
    if (cfg->seal_pcr_bank == 0 || cfg->seal_pcr_mask == 0)
        return;
    sel->count = 1;
    sel->pcrSelections[0].hash = cfg->seal_pcr_bank;
    sel->pcrSelections[0].sizeofSelect = 3;
    for (unsigned i = 0; i < 3; i++)
        sel->pcrSelections[0].pcrSelect[i] = (uint8_t)(cfg->seal_pcr_mask >> (8 * i));
}

/* "sha256:0,7" for messages, from a selection read from disk. */
static void describe_pcrs(const TPML_PCR_SELECTION *sel, char *out, size_t outlen)
{
    size_t n = 0;
    out[0] = '\0';
    if (sel->count == 0) {
        snprintf(out, outlen, "none");
        return;
    }
    const TPMS_PCR_SELECTION *s = &sel->pcrSelections[0];
    const char *bank = s->hash == 0x0004   ? "sha1"
                       : s->hash == 0x000b ? "sha256"
                       : s->hash == 0x000c ? "sha384"
                       : s->hash == 0x000d ? "sha512"
                                           : "bank?";
    n = (size_t)snprintf(out, outlen, "%s:", bank);
    for (unsigned i = 0; i < 24 && n < outlen; i++)
        if (s->pcrSelect[i / 8] & (1u << (i % 8)))
            n += (size_t)snprintf(out + n, outlen - n, "%s%u", out[n - 1] == ':' ? "" : ",", i);
}

/*
 * Enters the process's one connection to the configured TPM (the TPM backend's: while a
 * TPM table handle or a TPM X.509 key is open, a bare /dev/tpm0 refuses a second one and
 * a simulator's socket leaves it waiting) and addresses the SRK (no command for the SRK).
 * On failure nothing is held. The caller releases what it made on *tpm_out, then leaves.
 */
static provhsm_err tpm_and_srk(const provhsm_config *cfg, uint32_t srk_handle,
                               provhsm_tpm_site **site_out, provhsm_tpm **tpm_out, ESYS_TR *srk_out)
{
    provhsm_tpm_site *site = NULL;
    provhsm_tpm *tpm = NULL;
    provhsm_err rc = provhsm_tpm_enter(cfg, &site, &tpm);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_persistent_handle(tpm, srk_handle, srk_out);
    if (rc != PROVHSM_OK) {
        provhsm_tpm_leave(site);
        return rc;
    }
    *site_out = site;
    *tpm_out = tpm;
    return PROVHSM_OK;
}

/*
 * The digest a PolicyPCR compares for the PCRs of [store] seal_pcrs once they hold the
 * values in `target` (those it does not name keep their current values: PCR_Read):
 * SHA-256, the policy session's hash (TPM 2.0 Part 3, PolicyPCR: the TPM digests the PCR
 * values with the session's algorithm, whatever the bank), over the values in ascending
 * PCR order.
 */
static provhsm_err future_pcr_digest(provhsm_tpm *tpm, const provhsm_config *cfg,
                                     const provhsm_pcr_values *target, TPM2B_DIGEST *out)
{
    TPM2B_DIGEST *current = calloc(24, sizeof(*current));
    uint32_t unnamed = cfg->seal_pcr_mask & ~target->named;
    unsigned int len = 0;
    provhsm_err rc = current == NULL ? PROVHSM_E_NOMEM : PROVHSM_OK;

    if (target->bank != cfg->seal_pcr_bank || unnamed == cfg->seal_pcr_mask ||
        target->digest_len > PROVHSM_PCR_DIGEST_MAX)
        rc = PROVHSM_E_INVALID_ARG; /* provhsm_store_check_pcr_values() refused it already */
    if (rc == PROVHSM_OK && unnamed != 0)
        rc = provhsm_tpm_pcr_read(tpm, cfg->seal_pcr_bank, unnamed, current);
    EVP_MD_CTX *md = rc == PROVHSM_OK ? EVP_MD_CTX_new() : NULL;
    if (rc == PROVHSM_OK && (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1))
        rc = PROVHSM_E_CRYPTO;
    for (unsigned pcr = 0; rc == PROVHSM_OK && pcr < 24; pcr++) {
        if (!(cfg->seal_pcr_mask & (1ul << pcr)))
            continue;
        int named = (target->named & (1ul << pcr)) != 0;
        if (!named && current[pcr].size != target->digest_len) {
            PH_ERR(MOD, "PCR %u: the TPM gave a %u-byte value, %zu expected", pcr,
                   (unsigned)current[pcr].size, target->digest_len);
            rc = PROVHSM_E_TPM;
        } else if (EVP_DigestUpdate(md, named ? target->value[pcr] : current[pcr].buffer,
                                    target->digest_len) != 1) {
            rc = PROVHSM_E_CRYPTO;
        }
    }
    if (rc == PROVHSM_OK && EVP_DigestFinal_ex(md, out->buffer, &len) != 1)
        rc = PROVHSM_E_CRYPTO;
    if (rc == PROVHSM_OK)
        out->size = (UINT16)len;
    EVP_MD_CTX_free(md);
    free(current);
    return rc;
}

/* Refuses seal_pcrs naming PCRs the TPM does not keep: a store sealed to them never opens. */
static provhsm_err pcrs_allocated(const provhsm_config *cfg, provhsm_tpm *tpm)
{
    uint32_t missing = 0;
    provhsm_err rc =
        provhsm_tpm_pcrs_unallocated(tpm, cfg->seal_pcr_bank, cfg->seal_pcr_mask, &missing);
    if (rc != PROVHSM_OK || missing == 0)
        return rc;
    char names[80];
    describe_pcr_mask(missing, names, sizeof(names));
    PH_ERR(MOD,
           "[store] seal_pcrs = %s: this TPM does not keep PCRs %s in that bank (not "
           "allocated), and a key sealed to them would never unseal; bind to an allocated "
           "bank (tpm2_getcap pcrs lists them). Nothing was changed.",
           cfg->seal_pcrs, names);
    return PROVHSM_E_CONFIG;
}

/*
 * Branch B of a reseal --pcr-values: the PolicyPCR digest for the values in `target` (the
 * PCRs it does not name at their current values), from a trial session: [PCR_Read,]
 * StartAuthSession, PolicyPCR, PolicyGetDigest, FlushContext.
 */
static provhsm_err future_branch(provhsm_tpm *tpm, const provhsm_config *cfg,
                                 const TPML_PCR_SELECTION *pcrs, const provhsm_pcr_values *target,
                                 TPM2B_DIGEST *branch_out)
{
    TPM2B_DIGEST values_digest = {.size = 0};
    ESYS_TR trial = ESYS_TR_NONE;
    provhsm_err rc = future_pcr_digest(tpm, cfg, target, &values_digest);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_pcr_policy_session_to(tpm, pcrs, &values_digest, 1, &trial);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_policy_digest(tpm, trial, branch_out);
    provhsm_tpm_flush(tpm, &trial);
    return rc;
}

/*
 * The authPolicy of a key bound to `pcrs`, from trial sessions. Without `target`:
 * PolicyPCR over the current values (StartAuthSession, PolicyPCR, PolicyGetDigest,
 * FlushContext). With it, so that the store opens both before an update and after it:
 * PolicyOR of branch A, PolicyPCR over the current values, and branch B, PolicyPCR over
 * the values `target` gives (future_branch), recorded in *branches; the same trial session
 * that gave A runs the PolicyOR and a second PolicyGetDigest. When B is A (the values given
 * are the current ones) the policy is A alone, with no branches.
 */
static provhsm_err pcr_policy(provhsm_tpm *tpm, const provhsm_config *cfg,
                              const TPML_PCR_SELECTION *pcrs, const provhsm_pcr_values *target,
                              TPM2B_DIGEST *policy_out, TPML_DIGEST *branches)
{
    TPM2B_DIGEST future = {.size = 0};
    ESYS_TR trial = ESYS_TR_NONE;
    provhsm_err rc = PROVHSM_OK;

    memset(branches, 0, sizeof(*branches));
    if (target != NULL)
        rc = future_branch(tpm, cfg, pcrs, target, &future);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_pcr_policy_session(tpm, pcrs, 1, &trial);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_policy_digest(tpm, trial, policy_out);
    if (rc == PROVHSM_OK && target != NULL &&
        (future.size != policy_out->size ||
         memcmp(future.buffer, policy_out->buffer, future.size) != 0)) {
        branches->count = SEALED_BRANCHES;
        branches->digests[0] = *policy_out;
        branches->digests[1] = future;
        rc = provhsm_tpm_policy_or(tpm, trial, branches);
        if (rc == PROVHSM_OK)
            rc = provhsm_tpm_policy_digest(tpm, trial, policy_out);
    }
    provhsm_tpm_flush(tpm, &trial);
    return rc;
}

/*
 * The bytes of store.sealed (see the opening comment): version 2 when there are PolicyOR
 * branches, else version 1; the object's private area when `priv` is given (the blob
 * form), only its public area otherwise (the handle form, `handle` non-zero).
 */
static provhsm_err sealed_file_bytes(uint32_t parent, uint32_t handle,
                                     const TPML_PCR_SELECTION *pcrs, const TPML_DIGEST *branches,
                                     const TPM2B_PUBLIC *pub, const TPM2B_PRIVATE *priv,
                                     uint8_t **file_out, size_t *len_out)
{
    size_t off = SEALED_OFF_PCRS;
    uint8_t *buf = malloc(SEALED_MAX);
    if (buf == NULL)
        return PROVHSM_E_NOMEM;
    memset(buf, 0, SEALED_OFF_PCRS);
    memcpy(buf, SEALED_MAGIC, 8);
    put_be16(buf + 8, branches->count > 0 ? SEALED_VERSION_OR : FORMAT_VERSION);
    put_be32(buf + SEALED_OFF_PARENT, parent);
    put_be32(buf + SEALED_OFF_HANDLE, handle);
    provhsm_err rc = provhsm_tpm_marshal_pcrs(pcrs, buf, SEALED_MAX, &off);
    if (rc == PROVHSM_OK && branches->count > 0)
        rc = provhsm_tpm_marshal_digests(branches, buf, SEALED_MAX, &off);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_marshal_object(pub, priv, buf, SEALED_MAX, &off);
    if (rc != PROVHSM_OK) {
        free(buf);
        return rc;
    }
    *file_out = buf;
    *len_out = off;
    return PROVHSM_OK;
}

/*
 * Seals `key` under the SRK (checked to exist first: one GetCapability; created and
 * persisted when absent, as the TPM backend does), with a PCR
 * policy when the configuration asks for one (unbound: never), and builds the bytes of
 * store.sealed. The policy is for the PCRs' current values, or with `target` (non-NULL,
 * checked against the configuration by the caller) the PolicyOR of those and of the
 * values it gives (pcr_policy). Sends GetCapability, [GetCapability (pcrs_allocated),
 * the policy's commands (pcr_policy),] Create.
 */
static provhsm_err seal_store_key(const provhsm_config *cfg, const uint8_t *key, int unbound,
                                  const provhsm_pcr_values *target, uint8_t **file_out,
                                  size_t *len_out)
{
    provhsm_err rc;
    provhsm_tpm_site *site = NULL;
    provhsm_tpm *tpm = NULL;
    ESYS_TR srk = ESYS_TR_NONE;
    TPML_PCR_SELECTION pcrs;
    TPML_DIGEST branches = {.count = 0};
    TPM2B_DIGEST policy = {.size = 0};
    TPM2B_PRIVATE *priv = NULL;
    TPM2B_PUBLIC *pub = NULL;
    int present = 0;

    if (!cfg->tpm_configured) {
        PH_ERR(MOD, "sealing the store key to the TPM needs a [tpm] section (or PROVHSM_TCTI) "
                    "in the configuration");
        return PROVHSM_E_CONFIG;
    }
    if (unbound)
        memset(&pcrs, 0, sizeof(pcrs));
    else
        configured_pcrs(cfg, &pcrs);
    rc = provhsm_tpm_enter(cfg, &site, &tpm);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_persistent_present(tpm, &cfg->srk_handle, 1, &present);
    /* a fresh TPM: the SRK made as the TPM backend makes it, so both find the same key */
    if (rc == PROVHSM_OK && !present) {
        rc = provhsm_tpm_create_srk(cfg, tpm);
        if (rc != PROVHSM_OK && provhsm_tpm_last_failure_auth(tpm))
            PH_ERR(MOD, "the TPM refused the owner authorisation: [tpm] owner_auth_file or "
                        "owner_auth_env is missing or wrong");
        if (rc != PROVHSM_OK)
            PH_ERR(MOD,
                   "no storage root key at 0x%08lx to seal the store key under, and it "
                   "could not be created",
                   (unsigned long)cfg->srk_handle);
    }
    if (rc == PROVHSM_OK && pcrs.count > 0)
        rc = pcrs_allocated(cfg, tpm);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_persistent_handle(tpm, cfg->srk_handle, &srk);
    if (rc == PROVHSM_OK && pcrs.count > 0)
        rc = pcr_policy(tpm, cfg, &pcrs, target, &policy, &branches);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_create_sealed(tpm, srk, key, STORE_KEY_LEN, &policy, &priv, &pub);
    provhsm_tpm_forget(tpm, &srk);
    provhsm_tpm_leave(site);
    if (rc == PROVHSM_OK)
        rc = sealed_file_bytes(cfg->srk_handle, 0, &pcrs, &branches, pub, priv, file_out, len_out);
    free(priv);
    free(pub);
    return rc;
}

/*
 * Makes the sealed object of a blob-form store.sealed persistent at `handle`, after
 * evicting `old_handle` (0: none; the store's previous sealed key, already replaced on
 * disk by the blob form), under the owner authorisation: Load, [EvictControl,]
 * EvictControl, FlushContext, plus one GetCapability. A handle in use by anything else is
 * refused (PROVHSM_E_EXISTS). *file_out is the handle form of store.sealed, with the
 * blob's PolicyOR branches if it has any.
 */
static provhsm_err place_at_handle(const provhsm_config *cfg, const uint8_t *blob, size_t blob_len,
                                   uint32_t old_handle, uint32_t handle, uint8_t **file_out,
                                   size_t *len_out)
{
    sealed_file *sf = malloc(sizeof(*sf));
    provhsm_tpm_site *site = NULL;
    provhsm_tpm *tpm = NULL;
    ESYS_TR srk = ESYS_TR_NONE, loaded = ESYS_TR_NONE, old = ESYS_TR_NONE,
            persistent = ESYS_TR_NONE;
    int present = 0;
    provhsm_err rc = sf == NULL ? PROVHSM_E_NOMEM : PROVHSM_OK;

    if (rc == PROVHSM_OK)
        rc = parse_sealed(blob, blob_len, "the new sealed store key", sf);
    if (rc != PROVHSM_OK) {
        free(sf);
        return rc;
    }
    rc = tpm_and_srk(cfg, sf->parent, &site, &tpm, &srk);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_use_owner_auth(cfg, tpm);
    if (rc == PROVHSM_OK && old_handle != 0 &&
        provhsm_tpm_find_persistent(tpm, old_handle, &old) == PROVHSM_OK)
        rc = provhsm_tpm_evict(tpm, &old);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_persistent_present(tpm, &handle, 1, &present);
    if (rc == PROVHSM_OK && present) {
        PH_ERR(MOD,
               "persistent handle 0x%08lx ([store] sealed_key_handle) holds another object: "
               "choose a free handle, or evict that object if it is not needed",
               (unsigned long)handle);
        rc = PROVHSM_E_EXISTS;
    }
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_load_sealed(tpm, srk, &sf->priv, &sf->pub, &loaded);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_persist(tpm, loaded, handle, &persistent);
    if (rc != PROVHSM_OK && provhsm_tpm_last_failure_auth(tpm))
        PH_ERR(MOD, "the TPM refused the owner authorisation: [tpm] owner_auth_file or "
                    "owner_auth_env is missing or wrong. Nothing was changed in the TPM.");
    provhsm_tpm_flush(tpm, &loaded);
    provhsm_tpm_forget(tpm, &persistent);
    provhsm_tpm_forget(tpm, &old); /* still there when its eviction failed */
    provhsm_tpm_forget(tpm, &srk);
    provhsm_tpm_drop_owner_auth(tpm);
    provhsm_tpm_leave(site);
    if (rc == PROVHSM_OK)
        rc = sealed_file_bytes(sf->parent, handle, &sf->pcrs, &sf->branches, &sf->pub, NULL,
                               file_out, len_out);
    free(sf);
    return rc;
}

/* Evicts the store's former sealed key at `handle` (owner authorisation); logs a failure. */
static void evict_sealed_handle(const provhsm_config *cfg, uint32_t handle)
{
    provhsm_tpm_site *site = NULL;
    provhsm_tpm *tpm = NULL;
    ESYS_TR tr = ESYS_TR_NONE;
    provhsm_err rc = provhsm_tpm_enter(cfg, &site, &tpm);
    if (rc == PROVHSM_OK)
        rc = provhsm_tpm_use_owner_auth(cfg, tpm);
    if (rc == PROVHSM_OK && provhsm_tpm_find_persistent(tpm, handle, &tr) == PROVHSM_OK)
        rc = provhsm_tpm_evict(tpm, &tr);
    if (rc != PROVHSM_OK)
        PH_WARN(MOD,
                "the former sealed store key at 0x%08lx could not be evicted; it is no "
                "longer used (tpm2_evictcontrol removes it)",
                (unsigned long)handle);
    provhsm_tpm_forget(tpm, &tr); /* still there when the eviction failed */
    provhsm_tpm_drop_owner_auth(tpm);
    provhsm_tpm_leave(site);
}

/*
 * Reads <dir>/store.sealed and parses it into *sf; `path` receives its path, for the
 * caller's messages. A missing file is PROVHSM_E_NOT_FOUND, not logged.
 */
static provhsm_err read_sealed(int dirfd, const char *dir, char *path, size_t path_size,
                               sealed_file *sf)
{
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    snprintf(path, path_size, "%s/%s", dir, SEALED_NAME);
    provhsm_err rc = read_file_at(dirfd, SEALED_NAME, path, SEALED_MAX, 0, &raw, &raw_len);
    if (rc == PROVHSM_OK)
        rc = parse_sealed(raw, raw_len, path, sf);
    free(raw);
    return rc;
}

/* The persistent handle the store's current store.sealed names (0: a blob). */
static provhsm_err current_sealed_handle(const provhsm_store *st, uint32_t *handle_out)
{
    const size_t path_size = PROVHSM_PATH_MAX + 32;
    char *path = path_alloc(path_size);
    sealed_file *sf = malloc(sizeof(*sf));
    provhsm_err rc = path == NULL || sf == NULL ? PROVHSM_E_NOMEM : PROVHSM_OK;
    if (rc == PROVHSM_OK)
        rc = read_sealed(st->dirfd, st->dir, path, path_size, sf);
    if (rc == PROVHSM_OK)
        *handle_out = sf->handle;
    free(sf);
    free(path);
    return rc;
}

static int exists_sealed(const provhsm_store *st)
{
    struct stat sb;
    return fstatat(st->dirfd, SEALED_NAME, &sb, AT_SYMLINK_NOFOLLOW) == 0;
}

/* As current_sealed_handle, with no store.sealed (another mode) as handle 0. */
static provhsm_err current_sealed_handle_quiet(const provhsm_store *st, uint32_t *handle_out)
{
    *handle_out = 0;
    if (!exists_sealed(st))
        return PROVHSM_OK;
    return current_sealed_handle(st, handle_out);
}

/* Says why a sealed store key does not open, with the way out. */
static void explain_unseal_failure(const provhsm_config *cfg, const sealed_file *sf, int at_load)
{
    char pcrs[96];
    describe_pcrs(&sf->pcrs, pcrs, sizeof(pcrs));
    if (at_load)
        PH_ERR(MOD,
               "store %s: its key is sealed to another TPM (the TPM behind \"%s\" refuses the "
               "sealed object as made under another storage root key): this store directory was "
               "copied from another device, or this TPM was cleared. Nothing was changed.",
               cfg->store_dir, cfg->tcti);
    else if (sf->branches.count > 0)
        PH_ERR(MOD,
               "store %s: the PCRs its key is bound to (%s) hold neither the values they had "
               "at the last `provhsm store reseal --pcr-values` nor the values given with "
               "--pcr-values (a wrong value given, or a change other than the update "
               "prepared?). Boot the state before the update or the one prepared for, then "
               "run `provhsm store reseal` (or reseal --pcr-values with the right values). "
               "Nothing was changed.",
               cfg->store_dir, pcrs);
    else
        PH_ERR(MOD,
               "store %s: the PCRs its key is bound to (%s) no longer hold the values it was "
               "sealed to (a firmware, boot loader or boot configuration change?). Boot the "
               "previous state and, before such an update, run `provhsm store reseal --pcr-values` "
               "with the values the PCRs will have after it (or `provhsm store reseal "
               "--unbound`, then `provhsm store reseal` after it). Nothing was changed.",
               cfg->store_dir, pcrs);
}

/*
 * Reads store.sealed (through safefile) and unseals the store key into key_out. On a
 * provisioned TPM: Load, Unseal with a blob, and FlushContext unless the connection
 * closes through a resource manager, which releases the object itself (the default TCTI,
 * /dev/tpmrm0, and tpm2-abrmd); Unseal alone with a persistent handle; a PCR policy adds
 * StartAuthSession and PolicyPCR, and a key resealed with --pcr-values (PolicyOR branches
 * in store.sealed) PolicyOR too. So a create costs, with a blob (FlushContext counted):
 * 3 unbound, 5 bound to PCRs, 6 with branches; at a persistent handle 1, 3 and 4. All of
 * it on the TPM backend's connection, entered (locked) while a transient object or a
 * session exists and released empty: every ESYS handle made here is flushed or forgotten
 * before leaving.
 */
static provhsm_err unseal_store_key(const provhsm_config *cfg, int dirfd, const char *dir,
                                    uint8_t *key_out)
{
    const size_t path_size = PROVHSM_PATH_MAX + 32;
    char *path = path_alloc(path_size);
    sealed_file *sf = NULL;
    provhsm_tpm_site *site = NULL;
    provhsm_tpm *tpm = NULL;
    ESYS_TR srk = ESYS_TR_NONE, item = ESYS_TR_NONE, session = ESYS_TR_NONE;
    size_t key_len = 0;
    provhsm_err rc;

    if (path == NULL)
        return PROVHSM_E_NOMEM;
    sf = malloc(sizeof(*sf));
    if (sf == NULL) {
        rc = PROVHSM_E_NOMEM;
        goto out;
    }
    rc = read_sealed(dirfd, dir, path, path_size, sf);
    if (rc == PROVHSM_E_NOT_FOUND) {
        PH_ERR(MOD, "%s is missing: the store's key is sealed to the TPM and cannot be found",
               path);
        rc = PROVHSM_E_CORRUPT;
    }
    if (rc != PROVHSM_OK)
        goto out;
    rc = tpm_and_srk(cfg, sf->parent, &site, &tpm, &srk);
    if (rc == PROVHSM_OK && sf->handle == 0) {
        rc = provhsm_tpm_load_sealed(tpm, srk, &sf->priv, &sf->pub, &item);
        if (rc == PROVHSM_E_WRONG_KEY)
            explain_unseal_failure(cfg, sf, 1);
    } else if (rc == PROVHSM_OK) {
        /* no lookup: the handle is addressed directly, and a missing object makes the
           Unseal fail (explained below) */
        rc = provhsm_tpm_persistent_object(tpm, sf->handle, &sf->pub, &item);
    }
    if (rc == PROVHSM_OK && sf->pcrs.count > 0)
        rc = provhsm_tpm_pcr_policy_session(tpm, &sf->pcrs, 0, &session);
    /* the values before the update or those after it: the TPM takes either branch */
    if (rc == PROVHSM_OK && sf->branches.count > 0) {
        rc = provhsm_tpm_policy_or(tpm, session, &sf->branches);
        if (rc == PROVHSM_E_WRONG_KEY)
            explain_unseal_failure(cfg, sf, 0);
    }
    if (rc == PROVHSM_OK) {
        rc = provhsm_tpm_unseal(tpm, item, &session, key_out, STORE_KEY_LEN, &key_len);
        if (rc == PROVHSM_E_WRONG_KEY)
            explain_unseal_failure(cfg, sf, 0);
        if ((rc == PROVHSM_E_TPM || rc == PROVHSM_E_NOT_FOUND) && sf->handle != 0) {
            PH_ERR(MOD,
                   "store %s: its key is sealed at persistent handle 0x%08lx, which this TPM "
                   "does not hold as sealed (sealed to another TPM, a cleared TPM, or an "
                   "evicted handle). Nothing was changed.",
                   cfg->store_dir, (unsigned long)sf->handle);
            rc = PROVHSM_E_WRONG_KEY; /* as a blob from another TPM */
        }
    }
    provhsm_tpm_flush(tpm, &session); /* left only when the Unseal did not take it */
    provhsm_tpm_forget(tpm, &srk);
    if (sf->handle == 0) {
        provhsm_tpm_leave_releasing(site, &item);
    } else {
        provhsm_tpm_forget(tpm, &item); /* at a persistent handle: only ours to release */
        provhsm_tpm_leave(site);
    }
    if (rc == PROVHSM_E_NO_DEVICE)
        PH_ERR(MOD, "store %s: its key is sealed to a TPM, and none answers through \"%s\"",
               cfg->store_dir, cfg->tcti);
    if (rc == PROVHSM_OK && key_len != STORE_KEY_LEN) {
        PH_ERR(MOD, "%s: the sealed store key is %zu bytes, not %u", path, key_len, STORE_KEY_LEN);
        rc = PROVHSM_E_CORRUPT;
    }
out:
    free(sf);
    free(path);
    return rc;
}
#else
provhsm_err provhsm_store_parse_sealed(const uint8_t *buf, size_t len, const char *path)
{
    (void)buf;
    (void)len;
    (void)path;
    return PROVHSM_E_UNSUPPORTED;
}

static provhsm_err unseal_store_key(const provhsm_config *cfg, int dirfd, const char *dir,
                                    uint8_t *key_out)
{
    (void)dirfd;
    (void)dir;
    (void)key_out;
    PH_ERR(MOD, "store %s: its key is sealed to a TPM, and this build has no TPM support",
           cfg->store_dir);
    return PROVHSM_E_UNSUPPORTED;
}
#endif

/* ---- keys --------------------------------------------------------------- */

static int scrypt_params_ok(unsigned log2_n, uint32_t r, uint32_t p)
{
    if (log2_n < 1 || log2_n > SCRYPT_MAX_LOG2N || r < 1 || r > SCRYPT_MAX_R || p < 1 ||
        p > SCRYPT_MAX_P)
        return 0;
    return 128ull * r * (1ull << log2_n) <= SCRYPT_MAX_MEM;
}

static provhsm_err derive_scrypt(const uint8_t *pass, size_t pass_len, const uint8_t *salt,
                                 unsigned log2_n, uint32_t r, uint32_t p, uint8_t *key_out)
{
    provhsm_err rc = PROVHSM_OK;
    EVP_KDF *kdf = NULL;
    EVP_KDF_CTX *kctx = NULL;
    OSSL_PARAM params[7];
    uint64_t n = 1ull << log2_n;
    /* what OpenSSL's scrypt allocates (128 r (N + p + 2)), plus slack */
    uint64_t maxmem = 128ull * r * (n + p + 2) + 65536;

    params[0] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, (void *)pass, pass_len);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, SALT_LEN);
    params[2] = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n);
    params[3] = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r);
    params[4] = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &p);
    params[5] = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem);
    params[6] = OSSL_PARAM_construct_end();

    kdf = EVP_KDF_fetch(NULL, OSSL_KDF_NAME_SCRYPT, NULL);
    if (kdf == NULL || (kctx = EVP_KDF_CTX_new(kdf)) == NULL) {
        provhsm_log_openssl(MOD, "EVP_KDF_fetch(SCRYPT)");
        rc = PROVHSM_E_CRYPTO;
        goto out;
    }
    if (EVP_KDF_derive(kctx, key_out, STORE_KEY_LEN, params) != 1) {
        provhsm_log_openssl(MOD, "scrypt");
        rc = PROVHSM_E_CRYPTO;
        goto out;
    }
out:
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    return rc;
}

/*
 * The passphrase, in secure memory: the environment variable named by passphrase_env
 * when set and non-empty, else the contents of passphrase_file (one trailing newline
 * dropped). PROVHSM_E_NOT_FOUND, not logged, when neither is configured.
 */
static provhsm_err get_passphrase(const provhsm_config *cfg, uint8_t **out, size_t *len_out)
{
    provhsm_err rc;
    const char *env = cfg->passphrase_env[0] != '\0' ? getenv(cfg->passphrase_env) : NULL;
    uint8_t *buf = NULL;
    size_t len = 0;

    if (env != NULL && *env != '\0') {
        len = strlen(env);
        buf = provhsm_secure_alloc(len);
        if (buf == NULL) {
            PH_ERR(MOD, "out of memory reading the passphrase");
            return PROVHSM_E_NOMEM;
        }
        memcpy(buf, env, len);
        *out = buf;
        *len_out = len;
        return PROVHSM_OK;
    }
    if (cfg->passphrase_file[0] == '\0')
        return PROVHSM_E_NOT_FOUND;
    rc = read_file_at(AT_FDCWD, cfg->passphrase_file, cfg->passphrase_file, PASSPHRASE_MAX, 1, &buf,
                      &len);
    if (rc == PROVHSM_E_NOT_FOUND) {
        PH_ERR(MOD, "passphrase_file %s does not exist", cfg->passphrase_file);
        return PROVHSM_E_CONFIG;
    }
    if (rc != PROVHSM_OK)
        return rc;
    if (len > 0 && buf[len - 1] == '\n')
        buf[--len] = 0;
    if (len == 0) {
        PH_ERR(MOD, "passphrase_file %s is empty", cfg->passphrase_file);
        provhsm_secure_free(buf);
        return PROVHSM_E_CONFIG;
    }
    *out = buf;
    *len_out = len;
    return PROVHSM_OK;
}

static provhsm_err parse_meta(const uint8_t *raw, size_t len, const char *path, store_meta *m)
{
    if (len != META_LEN || memcmp(raw, META_MAGIC, 8) != 0) {
        PH_ERR(MOD, "%s is not a store header (%zu bytes, bad size or magic)", path, len);
        return PROVHSM_E_CORRUPT;
    }
    if (get_be16(raw + 8) != FORMAT_VERSION) {
        PH_ERR(MOD, "%s has format version %u; this build reads version %u", path,
               get_be16(raw + 8), FORMAT_VERSION);
        return PROVHSM_E_CORRUPT;
    }
    memcpy(m->raw, raw, META_LEN);
    m->key_mode = raw[META_OFF_MODE];
    m->log2_n = raw[META_OFF_LOG2N];
    m->r = get_be32(raw + META_OFF_R);
    m->p = get_be32(raw + META_OFF_P);
    if (!all_zero(raw + META_OFF_RSVD, META_LEN - META_OFF_RSVD)) {
        PH_ERR(MOD, "%s: reserved bytes are not zero", path);
        return PROVHSM_E_CORRUPT;
    }
    if (m->key_mode == KEY_MODE_FILE) {
        if (!all_zero(raw + META_OFF_LOG2N, META_OFF_RSVD - META_OFF_LOG2N)) {
            PH_ERR(MOD, "%s: key-file store with scrypt parameters", path);
            return PROVHSM_E_CORRUPT;
        }
    } else if (m->key_mode == KEY_MODE_TPM) {
        if (!all_zero(raw + META_OFF_LOG2N, META_OFF_RSVD - META_OFF_LOG2N)) {
            PH_ERR(MOD, "%s: TPM-sealed store with scrypt parameters", path);
            return PROVHSM_E_CORRUPT;
        }
    } else if (m->key_mode == KEY_MODE_PASSPHRASE) {
        if (!scrypt_params_ok(m->log2_n, m->r, m->p)) {
            PH_ERR(MOD, "%s: scrypt parameters log2(N)=%u r=%lu p=%lu are out of range", path,
                   m->log2_n, (unsigned long)m->r, (unsigned long)m->p);
            return PROVHSM_E_CORRUPT;
        }
    } else {
        PH_ERR(MOD, "%s: unknown key mode %u", path, m->key_mode);
        return PROVHSM_E_CORRUPT;
    }
    return PROVHSM_OK;
}

/*
 * Reads <dir>/store.meta. With m, parses it there; with raw_out (m NULL), hands back its
 * bytes unparsed, to free. A missing header is PROVHSM_E_NOT_FOUND, not logged.
 */
static provhsm_err read_meta(int dirfd, const char *dir, store_meta *m, uint8_t **raw_out,
                             size_t *len_out)
{
    const size_t path_size = PROVHSM_PATH_MAX + 32;
    char *path = path_alloc(path_size);
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    if (path == NULL)
        return PROVHSM_E_NOMEM;
    snprintf(path, path_size, "%s/%s", dir, META_NAME);
    provhsm_err rc = read_file_at(dirfd, META_NAME, path, META_LEN, 0, &raw, &raw_len);
    if (rc == PROVHSM_OK && m != NULL)
        rc = parse_meta(raw, raw_len, path, m);
    if (rc == PROVHSM_OK && m == NULL) {
        *raw_out = raw;
        *len_out = raw_len;
        raw = NULL;
    }
    free(raw);
    free(path);
    return rc;
}

/*
 * Opens the key file's directory: whoever may write there could replace the key file, so
 * it must belong to us or root and be writable by nobody else (safefile.h, TRUSTED).
 * key_base receives the key file's name in that directory. PROVHSM_E_NOT_FOUND, not
 * logged, when the directory does not exist.
 */
static provhsm_err open_key_dir(const char *key_path, char *key_base, size_t baselen, int *fd_out)
{
    char *key_dir = path_alloc(PROVHSM_PATH_MAX);
    if (key_dir == NULL)
        return PROVHSM_E_NOMEM;
    provhsm_err rc = split_path(key_path, key_dir, PROVHSM_PATH_MAX, key_base, baselen);
    if (rc == PROVHSM_OK) {
        const provhsm_file_ref f = {AT_FDCWD, key_dir, key_dir, "key file directory", NULL, 0};
        rc = provhsm_safefile_open_dir(&f, PROVHSM_FILE_TRUSTED, fd_out);
    }
    free(key_dir);
    return rc;
}

/* Loads the store key named by the header into key_out (secure, STORE_KEY_LEN bytes). */
static provhsm_err load_key(const provhsm_config *cfg, const store_meta *m, int dirfd,
                            uint8_t *key_out)
{
    provhsm_err rc;
    char *path = NULL, base[FILE_NAME_BUF];
    int keydirfd = -1;
    uint8_t *buf = NULL;
    size_t len = 0;

    if (m->key_mode == KEY_MODE_TPM)
        return unseal_store_key(cfg, dirfd, cfg->store_dir, key_out);
    if (m->key_mode == KEY_MODE_PASSPHRASE) {
        rc = get_passphrase(cfg, &buf, &len);
        if (rc == PROVHSM_E_NOT_FOUND) {
            PH_ERR(MOD,
                   "store %s is protected by a passphrase, but none is set: set the "
                   "environment variable %s or passphrase_file",
                   cfg->store_dir,
                   cfg->passphrase_env[0] != '\0' ? cfg->passphrase_env : "(passphrase_env)");
            return PROVHSM_E_CONFIG;
        }
        if (rc != PROVHSM_OK)
            return rc;
        rc = derive_scrypt(buf, len, m->raw + META_OFF_SALT, m->log2_n, m->r, m->p, key_out);
        provhsm_secure_free(buf);
        return rc;
    }

    path = path_alloc(PROVHSM_PATH_MAX);
    if (path == NULL)
        return PROVHSM_E_NOMEM;
    rc = key_file_path(cfg, path, PROVHSM_PATH_MAX);
    if (rc == PROVHSM_OK)
        rc = open_key_dir(path, base, sizeof(base), &keydirfd);
    if (rc == PROVHSM_OK) {
        rc = read_file_at(keydirfd, base, path, KEYFILE_LEN, 1, &buf, &len);
        close(keydirfd);
    }
    if (rc == PROVHSM_E_NOT_FOUND) {
        PH_ERR(MOD, "store %s is locked by key file %s, which does not exist", cfg->store_dir,
               path);
        rc = PROVHSM_E_WRONG_KEY;
    }
    if (rc != PROVHSM_OK)
        goto out;
    if (len != KEYFILE_LEN || memcmp(buf, KEYFILE_MAGIC, 8) != 0 ||
        get_be16(buf + 8) != FORMAT_VERSION || get_be16(buf + 10) != 0) {
        PH_ERR(MOD, "key file %s is malformed (%zu bytes; expected a %u-byte version %u key file)",
               path, len, KEYFILE_LEN, FORMAT_VERSION);
        rc = PROVHSM_E_CORRUPT;
    } else {
        memcpy(key_out, buf + KEYFILE_OFF_KEY, STORE_KEY_LEN);
    }
out:
    provhsm_secure_free(buf);
    free(path);
    return rc;
}

/*
 * Checks owner and mode of every store file in the directory (entries, header, check,
 * key) and removes stale temp files. Other names are left alone.
 */
static provhsm_err scan_store(int dirfd, const char *dir_path)
{
    provhsm_err rc = PROVHSM_OK;
    const size_t path_size = PROVHSM_PATH_MAX + 300;
    char *path = path_alloc(path_size);
    struct dirent *de;
    struct stat sb;
    DIR *d = NULL;
    time_t now = time(NULL);
    int fd;

    if (path == NULL)
        return PROVHSM_E_NOMEM;
    fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (d = fdopendir(fd)) == NULL) {
        PH_ERR(MOD, "cannot list %s: %s", dir_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        free(path);
        return PROVHSM_E_IO;
    }
    for (;;) {
        errno = 0;
        de = readdir(d);
        if (de == NULL) {
            if (errno != 0) {
                PH_ERR(MOD, "cannot list %s: %s", dir_path, strerror(errno));
                rc = PROVHSM_E_IO;
            }
            break;
        }
        const char *name = de->d_name;
        size_t nl = strlen(name);
        size_t sl = strlen(ENTRY_SUFFIX);
        int is_tmp = strncmp(name, TMP_PREFIX, strlen(TMP_PREFIX)) == 0;
        int is_store_file = strcmp(name, META_NAME) == 0 || strcmp(name, CHECK_NAME) == 0 ||
                            strcmp(name, KEY_DEFAULT) == 0 || strcmp(name, SEALED_NAME) == 0 ||
                            (nl > sl && strcmp(name + nl - sl, ENTRY_SUFFIX) == 0);
        if (!is_tmp && !is_store_file)
            continue;
        snprintf(path, path_size, "%s/%s", dir_path, name);
        if (fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT)
                continue; /* went away meanwhile */
            PH_ERR(MOD, "cannot stat %s: %s", path, strerror(errno));
            rc = PROVHSM_E_IO;
            break;
        }
        if (is_tmp) {
            if (S_ISREG(sb.st_mode) && now - sb.st_mtim.tv_sec > STALE_TMP_SECONDS &&
                unlinkat(dirfd, name, 0) == 0)
                PH_INFO(MOD, "removed %s, left by an interrupted write", path);
            continue;
        }
        if (S_ISLNK(sb.st_mode)) {
            PH_ERR(MOD, "%s is a symbolic link; store files must be regular files", path);
            rc = PROVHSM_E_PERMISSION;
            break;
        }
        rc = check_owner_mode(&sb, path);
        if (rc != PROVHSM_OK)
            break;
    }
    closedir(d);
    free(path);
    return rc;
}

/* ---- the API ------------------------------------------------------------ */

/*
 * Makes (with parents) and opens the store directory for create: fails with
 * PROVHSM_E_EXISTS when it holds a store header. A directory made here is set to 0700;
 * one that existed already must be ours and closed to others (check_owner_mode), and is
 * refused otherwise rather than changed: its mode is someone's decision, and the path
 * may name a directory shared with other things.
 */
static provhsm_err prepare_store_dir(const char *dir, int *dirfd_out)
{
    provhsm_err rc;
    struct stat sb;
    int fd, created = 0;

    rc = mkdir_p(dir, &created);
    if (rc != PROVHSM_OK)
        return rc;
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        PH_ERR(MOD, "cannot open store directory %s: %s", dir, strerror(err));
        return err == EACCES ? PROVHSM_E_PERMISSION : PROVHSM_E_IO;
    }
    if (fstatat(fd, META_NAME, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
        PH_ERR(MOD, "a store already exists in %s", dir);
        rc = PROVHSM_E_EXISTS;
    } else if (errno != ENOENT) {
        PH_ERR(MOD, "cannot stat %s/%s: %s", dir, META_NAME, strerror(errno));
        rc = PROVHSM_E_IO;
    } else if (fstat(fd, &sb) != 0) {
        PH_ERR(MOD, "cannot stat %s: %s", dir, strerror(errno));
        rc = PROVHSM_E_IO;
    } else if (sb.st_uid != geteuid()) {
        PH_ERR(MOD, "store directory %s is owned by uid %ld, not by uid %ld", dir, (long)sb.st_uid,
               (long)geteuid());
        rc = PROVHSM_E_PERMISSION;
    } else if (created) {
        /* ours: the umask may have taken more than group and other bits */
        if ((sb.st_mode & 07777) != 0700 && fchmod(fd, 0700) != 0) {
            PH_ERR(MOD, "cannot set mode 0700 on %s: %s", dir, strerror(errno));
            rc = PROVHSM_E_IO;
        }
    } else if ((sb.st_mode & 077) != 0) {
        PH_ERR(MOD,
               "store directory %s exists with mode %04o; provhsm does not change the mode of a "
               "directory it did not create: make it 0700 (chmod 700 %s) or choose another "
               "store path",
               dir, (unsigned)(sb.st_mode & 07777), dir);
        rc = PROVHSM_E_PERMISSION;
    }
    if (rc != PROVHSM_OK) {
        close(fd);
        return rc;
    }
    *dirfd_out = fd;
    return PROVHSM_OK;
}

/*
 * Key-file mode: draws a random store key into `key` and writes it, never replacing an
 * existing file. On success *keydirfd_out is the key file's directory and key_base its
 * name there, so that a later failure can remove it.
 */
static provhsm_err make_key_file(const char *key_path, uint8_t *key, int *keydirfd_out,
                                 char *key_base, size_t baselen)
{
    provhsm_err rc;
    char *key_dir = path_alloc(PROVHSM_PATH_MAX);
    uint8_t *keyfile = NULL;
    struct stat sb;
    int fd = -1;

    if (key_dir == NULL)
        return PROVHSM_E_NOMEM;
    rc = split_path(key_path, key_dir, PROVHSM_PATH_MAX, key_base, baselen);
    if (rc == PROVHSM_OK)
        rc = mkdir_p(key_dir, NULL);
    if (rc == PROVHSM_OK)
        rc = open_key_dir(key_path, key_base, baselen, &fd);
    if (rc == PROVHSM_E_NOT_FOUND) {
        PH_ERR(MOD, "key file directory of %s went away while the store was created", key_path);
        rc = PROVHSM_E_IO;
    }
    if (rc != PROVHSM_OK) {
        free(key_dir);
        return rc;
    }
    if (fstatat(fd, key_base, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
        PH_ERR(MOD,
               "key file %s already exists; not replacing it (remove it to create a new store)",
               key_path);
        rc = PROVHSM_E_EXISTS;
        goto out;
    }
    if (errno != ENOENT) {
        PH_ERR(MOD, "cannot stat %s: %s", key_path, strerror(errno));
        rc = PROVHSM_E_IO;
        goto out;
    }
    keyfile = provhsm_secure_alloc(KEYFILE_LEN);
    if (keyfile == NULL) {
        PH_ERR(MOD, "out of memory");
        rc = PROVHSM_E_NOMEM;
        goto out;
    }
    if (RAND_priv_bytes(key, STORE_KEY_LEN) != 1) {
        provhsm_log_openssl(MOD, "RAND_priv_bytes (store key)");
        rc = PROVHSM_E_CRYPTO;
        goto out;
    }
    memcpy(keyfile, KEYFILE_MAGIC, 8);
    put_be16(keyfile + 8, FORMAT_VERSION);
    put_be16(keyfile + 10, 0);
    memcpy(keyfile + KEYFILE_OFF_KEY, key, STORE_KEY_LEN);
    rc = write_atomic(fd, key_dir, key_base, keyfile, KEYFILE_LEN, WRITE_NEW, 0);
out:
    provhsm_secure_free(keyfile);
    free(key_dir);
    if (rc != PROVHSM_OK) {
        close(fd);
        return rc;
    }
    *keydirfd_out = fd;
    return PROVHSM_OK;
}

/* Passphrase mode: records scrypt cost and a fresh salt in meta, derives the key. */
static provhsm_err make_passphrase_key(const provhsm_config *cfg, const uint8_t *pass,
                                       size_t pass_len, uint8_t *meta, uint8_t *key)
{
    if (!scrypt_params_ok(cfg->scrypt_log2_n, cfg->scrypt_r, cfg->scrypt_p)) {
        PH_ERR(MOD,
               "scrypt parameters log2_n=%u r=%lu p=%lu are out of range (log2_n 1..%u, r 1..%u, "
               "p 1..%u, 128*r*N at most 1 GiB)",
               (unsigned)cfg->scrypt_log2_n, (unsigned long)cfg->scrypt_r,
               (unsigned long)cfg->scrypt_p, SCRYPT_MAX_LOG2N, SCRYPT_MAX_R, SCRYPT_MAX_P);
        return PROVHSM_E_CONFIG;
    }
    meta[META_OFF_MODE] = KEY_MODE_PASSPHRASE;
    meta[META_OFF_LOG2N] = cfg->scrypt_log2_n;
    put_be32(meta + META_OFF_R, cfg->scrypt_r);
    put_be32(meta + META_OFF_P, cfg->scrypt_p);
    if (RAND_bytes(meta + META_OFF_SALT, SALT_LEN) != 1) {
        provhsm_log_openssl(MOD, "RAND_bytes (salt)");
        return PROVHSM_E_CRYPTO;
    }
    return derive_scrypt(pass, pass_len, meta + META_OFF_SALT, cfg->scrypt_log2_n, cfg->scrypt_r,
                         cfg->scrypt_p, key);
}

/* ---- the API ------------------------------------------------------------ */

/* Tpm mode: a random store key, sealed, written as store.sealed (by create, before the header). */
static provhsm_err make_sealed_key(const provhsm_config *cfg, int dirfd, uint8_t *meta,
                                   uint8_t *key)
{
#ifdef PROVHSM_WITH_TPM
    uint8_t *sealed = NULL;
    size_t sealed_len = 0;
    meta[META_OFF_MODE] = KEY_MODE_TPM;
    if (RAND_priv_bytes(key, STORE_KEY_LEN) != 1) {
        provhsm_log_openssl(MOD, "RAND_priv_bytes (store key)");
        return PROVHSM_E_CRYPTO;
    }
    provhsm_err rc = seal_store_key(cfg, key, 0, NULL, &sealed, &sealed_len);
    if (rc == PROVHSM_OK && cfg->sealed_key_handle != 0) {
        uint8_t *at_handle = NULL;
        size_t at_len = 0;
        rc = place_at_handle(cfg, sealed, sealed_len, 0, cfg->sealed_key_handle, &at_handle,
                             &at_len);
        free(sealed);
        sealed = at_handle;
        sealed_len = at_len;
    }
    /* one left by an interrupted create (no header yet) is replaced */
    if (rc == PROVHSM_OK)
        rc = write_atomic(dirfd, cfg->store_dir, SEALED_NAME, sealed, sealed_len, WRITE_REPLACE, 0);
    free(sealed);
    return rc;
#else
    (void)dirfd;
    (void)meta;
    (void)key;
    PH_ERR(MOD, "store %s: this build has no TPM support to seal the store key to", cfg->store_dir);
    return PROVHSM_E_UNSUPPORTED;
#endif
}

provhsm_err provhsm_store_create(const provhsm_config *cfg)
{
    return provhsm_store_create_mode(cfg, 0);
}

provhsm_err provhsm_store_create_mode(const provhsm_config *cfg, int seal_to_tpm)
{
    provhsm_err rc = PROVHSM_OK;
    char *key_path = NULL, key_base[FILE_NAME_BUF];
    uint8_t meta[META_LEN];
    uint8_t *pass = NULL, *key = NULL, *check = NULL;
    size_t pass_len = 0, check_len = 0;
    int dirfd = -1, keydirfd = -1, wrote_check = 0, wrote_sealed = 0;

    if (cfg == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (!cfg_strings_ok(cfg) || cfg->store_dir[0] == '\0') {
        PH_ERR(MOD, "store_dir is not set");
        return PROVHSM_E_CONFIG;
    }
    rc = prepare_store_dir(cfg->store_dir, &dirfd);
    if (rc != PROVHSM_OK)
        return rc;
    /*
     * Two creates at once must not interleave their check entry and header: the lock on
     * the directory serialises them (it goes with the descriptor), and the loser then
     * finds the winner's header.
     */
    if (flock(dirfd, LOCK_EX) != 0) {
        PH_ERR(MOD, "cannot lock store directory %s: %s", cfg->store_dir, strerror(errno));
        close(dirfd);
        return PROVHSM_E_IO;
    }
    if (faccessat(dirfd, META_NAME, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
        PH_ERR(MOD, "a store exists already in %s", cfg->store_dir);
        close(dirfd);
        return PROVHSM_E_EXISTS;
    }
    key = provhsm_secure_alloc(STORE_KEY_LEN);
    if (key == NULL) {
        PH_ERR(MOD, "out of memory");
        rc = PROVHSM_E_NOMEM;
        goto out;
    }
    memset(meta, 0, sizeof(meta));
    memcpy(meta, META_MAGIC, 8);
    put_be16(meta + 8, FORMAT_VERSION);

    /* sealed when asked; else passphrase mode when a passphrase is available, else a key file */
    if (seal_to_tpm) {
        rc = make_sealed_key(cfg, dirfd, meta, key);
        wrote_sealed = rc == PROVHSM_OK;
        goto key_made;
    }
    rc = get_passphrase(cfg, &pass, &pass_len);
    if (rc == PROVHSM_OK) {
        rc = make_passphrase_key(cfg, pass, pass_len, meta, key);
    } else if (rc == PROVHSM_E_NOT_FOUND) {
        meta[META_OFF_MODE] = KEY_MODE_FILE;
        key_path = path_alloc(PROVHSM_PATH_MAX);
        rc = key_path == NULL ? PROVHSM_E_NOMEM : key_file_path(cfg, key_path, PROVHSM_PATH_MAX);
        if (rc == PROVHSM_OK)
            rc = make_key_file(key_path, key, &keydirfd, key_base, sizeof(key_base));
    }
key_made:
    if (rc != PROVHSM_OK)
        goto out;

    rc = provhsm_store_seal(key, CHECK_NAME, meta, META_LEN, (const uint8_t *)CHECK_PLAIN,
                            strlen(CHECK_PLAIN), &check, &check_len);
    if (rc != PROVHSM_OK)
        goto out;
    /* a check file without a header is left from an interrupted create: replace it */
    rc = write_atomic(dirfd, cfg->store_dir, CHECK_NAME, check, check_len, WRITE_REPLACE, 0);
    if (rc != PROVHSM_OK)
        goto out;
    wrote_check = 1;
    /* the header goes last: its presence is what makes a store */
    rc = write_atomic(dirfd, cfg->store_dir, META_NAME, meta, META_LEN, WRITE_NEW, 0);
    if (rc != PROVHSM_OK)
        goto out;
    if (meta[META_OFF_MODE] == KEY_MODE_TPM)
        PH_INFO(MOD, "created store %s, key sealed to the TPM (PCRs: %s)", cfg->store_dir,
                cfg->seal_pcrs[0] != '\0' ? cfg->seal_pcrs : "none");
    else if (meta[META_OFF_MODE] == KEY_MODE_PASSPHRASE)
        PH_INFO(MOD, "created store %s, key from a passphrase (scrypt N=2^%u r=%lu p=%lu)",
                cfg->store_dir, (unsigned)cfg->scrypt_log2_n, (unsigned long)cfg->scrypt_r,
                (unsigned long)cfg->scrypt_p);
    else
        PH_INFO(MOD, "created store %s, key file %s", cfg->store_dir, key_path);
out:
    /* undo a half-made store; on EXISTS from the header, a concurrent create won */
    if (rc != PROVHSM_OK && rc != PROVHSM_E_EXISTS) {
        if (wrote_check)
            unlinkat(dirfd, CHECK_NAME, 0);
        if (wrote_sealed)
            unlinkat(dirfd, SEALED_NAME, 0);
#ifdef PROVHSM_WITH_TPM
        /* the object this create made persistent goes with it */
        if (wrote_sealed && cfg->sealed_key_handle != 0)
            evict_sealed_handle(cfg, cfg->sealed_key_handle);
#endif
        if (keydirfd >= 0)
            unlinkat(keydirfd, key_base, 0);
    }
    if (keydirfd >= 0)
        close(keydirfd);
    close(dirfd);
    free(check);
    free(key_path);
    provhsm_secure_free(key);
    provhsm_secure_free(pass);
    return rc;
}

/*
 * Whether `key` opens store.check with the header `meta_raw` as its associated data:
 * PROVHSM_OK; PROVHSM_E_TAMPERED (not logged) when it does not; else why not (logged).
 */
static provhsm_err check_store_key(int dirfd, const char *dir, const uint8_t *key,
                                   const uint8_t meta_raw[META_LEN])
{
    const size_t path_size = PROVHSM_PATH_MAX + 32;
    char *path = path_alloc(path_size);
    uint8_t *check = NULL, *plain = NULL;
    size_t check_len = 0, plain_len = 0;
    provhsm_err rc;

    if (path == NULL)
        return PROVHSM_E_NOMEM;
    snprintf(path, path_size, "%s/%s", dir, CHECK_NAME);
    rc = read_file_at(dirfd, CHECK_NAME, path, ENTRY_OVERHEAD + 256, 0, &check, &check_len);
    if (rc == PROVHSM_E_NOT_FOUND) {
        PH_ERR(MOD, "%s is missing: the store is incomplete", path);
        rc = PROVHSM_E_CORRUPT;
    }
    if (rc == PROVHSM_OK)
        rc = provhsm_store_unseal(key, CHECK_NAME, meta_raw, META_LEN, check, check_len, path,
                                  &plain, &plain_len);
    if (rc == PROVHSM_OK &&
        (plain_len != strlen(CHECK_PLAIN) || memcmp(plain, CHECK_PLAIN, plain_len) != 0)) {
        PH_ERR(MOD, "%s does not hold the expected check value", path);
        rc = PROVHSM_E_CORRUPT;
    }
    provhsm_secure_free(plain);
    free(check);
    free(path);
    return rc;
}

provhsm_err provhsm_store_open(const provhsm_config *cfg, provhsm_store **out)
{
    provhsm_err rc = PROVHSM_OK;
    provhsm_store *st = NULL;
    store_meta meta;

    if (cfg == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (!cfg_strings_ok(cfg) || cfg->store_dir[0] == '\0') {
        PH_ERR(MOD, "store_dir is not set");
        return PROVHSM_E_CONFIG;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        PH_ERR(MOD, "out of memory");
        return PROVHSM_E_NOMEM;
    }
    st->dirfd = -1;
    snprintf(st->dir, sizeof(st->dir), "%s", cfg->store_dir);

    const provhsm_file_ref dir = {AT_FDCWD,          cfg->store_dir, cfg->store_dir,
                                  "store directory", NULL,           0};
    rc = provhsm_safefile_open_dir(&dir, PROVHSM_FILE_PRIVATE, &st->dirfd);
    if (rc == PROVHSM_E_NOT_FOUND)
        PH_INFO(MOD, "no store at %s", cfg->store_dir);
    if (rc != PROVHSM_OK)
        goto out;

    rc = rekey_recover(cfg, st->dirfd, cfg->store_dir);
    if (rc != PROVHSM_OK)
        goto out;
    rc = read_meta(st->dirfd, cfg->store_dir, &meta, NULL, NULL);
    if (rc == PROVHSM_E_NOT_FOUND)
        PH_INFO(MOD, "no store at %s (no %s)", cfg->store_dir, META_NAME);
    if (rc != PROVHSM_OK)
        goto out;
    rc = scan_store(st->dirfd, cfg->store_dir);
    if (rc != PROVHSM_OK)
        goto out;

    st->key = provhsm_secure_alloc(STORE_KEY_LEN);
    if (st->key == NULL) {
        PH_ERR(MOD, "out of memory");
        rc = PROVHSM_E_NOMEM;
        goto out;
    }
    rc = load_key(cfg, &meta, st->dirfd, st->key);
    if (rc != PROVHSM_OK)
        goto out;

    rc = check_store_key(st->dirfd, cfg->store_dir, st->key, meta.raw);
    if (rc == PROVHSM_E_TAMPERED) {
        PH_ERR(MOD, "the store %s does not open with this %s", cfg->store_dir,
               meta.key_mode == KEY_MODE_PASSPHRASE ? "passphrase"
               : meta.key_mode == KEY_MODE_TPM      ? "sealed key"
                                                    : "key file");
        rc = PROVHSM_E_WRONG_KEY;
    }
    if (rc != PROVHSM_OK)
        goto out;
    st->magic = STORE_MAGIC;
    *out = st;
    st = NULL;
out:
    provhsm_store_close(st);
    return rc;
}

/* flock(LOCK_EX) on the directory, retried on EINTR; 0 or errno. */
static int lock_dir(int dirfd, int nonblocking)
{
    int r;
    do {
        r = flock(dirfd, LOCK_EX | (nonblocking ? LOCK_NB : 0));
    } while (r != 0 && errno == EINTR);
    return r == 0 ? 0 : errno;
}

/* Under the store's lock: whether the key read at open still opens the store as it is now. */
static provhsm_err check_key_still_current(const provhsm_store *st)
{
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    provhsm_err rc = read_meta(st->dirfd, st->dir, NULL, &raw, &raw_len);
    if (rc == PROVHSM_OK && raw_len != META_LEN)
        rc = PROVHSM_E_TAMPERED; /* another header than any this key opens */
    if (rc == PROVHSM_OK)
        rc = check_store_key(st->dirfd, st->dir, st->key, raw);
    if (rc == PROVHSM_E_TAMPERED || rc == PROVHSM_E_NOT_FOUND) {
        PH_ERR(MOD,
               "store %s was given a new key (a `provhsm store rekey` or `init` ran) between "
               "reading its key and locking it: nothing was written; run the command again",
               st->dir);
        rc = PROVHSM_E_WRONG_KEY;
    }
    free(raw);
    return rc;
}

provhsm_err provhsm_store_lock(provhsm_store *st)
{
    if (!store_ok(st))
        return PROVHSM_E_INVALID_ARG;
    int err = lock_dir(st->dirfd, 1);
    if (err == EWOULDBLOCK) {
        PH_INFO(MOD, "waiting for another writer of store %s", st->dir);
        err = lock_dir(st->dirfd, 0);
    }
    if (err != 0) {
        PH_ERR(MOD, "cannot lock store directory %s: %s", st->dir, strerror(err));
        return PROVHSM_E_IO;
    }
    /* The key was read at open, before the lock: a rekey or another init may have given
       the store a new key since, and whatever were written under the old one would be
       lost. Under the lock the key cannot change: check it once more. */
    provhsm_err rc = check_key_still_current(st);
    if (rc != PROVHSM_OK)
        (void)flock(st->dirfd, LOCK_UN);
    return rc;
}

void provhsm_store_close(provhsm_store *st)
{
    if (st == NULL)
        return;
    provhsm_secure_free(st->key);
    if (st->dirfd >= 0)
        close(st->dirfd);
    st->magic = 0;
    st->key = NULL;
    st->dirfd = -1;
    free(st);
}

provhsm_err provhsm_store_get(provhsm_store *st, const char *name, uint8_t **data_out,
                              size_t *len_out)
{
    provhsm_err rc;
    const size_t path_size = PROVHSM_PATH_MAX + FILE_NAME_BUF;
    char fname[FILE_NAME_BUF], *path = NULL;
    uint8_t *file = NULL, *data = NULL;
    size_t file_len = 0, len = 0;

    if (!store_ok(st) || data_out == NULL || len_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (!name_is_valid(name)) {
        PH_ERR(MOD, "invalid entry name (allowed: 1 to 64 of a-z 0-9 _ -)");
        return PROVHSM_E_INVALID_ARG;
    }
    entry_file_name(name, fname, sizeof(fname));
    path = path_alloc(path_size);
    if (path == NULL)
        return PROVHSM_E_NOMEM;
    snprintf(path, path_size, "%s/%s", st->dir, fname);
    rc = read_file_at(st->dirfd, fname, path, ENTRY_OVERHEAD + ENTRY_MAX_DATA, 0, &file, &file_len);
    if (rc == PROVHSM_E_NOT_FOUND)
        PH_DEBUG(MOD, "no entry %s in %s", name, st->dir);
    if (rc != PROVHSM_OK)
        goto out;
    rc = provhsm_store_unseal(st->key, name, NULL, 0, file, file_len, path, &data, &len);
    if (rc == PROVHSM_E_TAMPERED)
        PH_ERR(MOD, "%s failed authentication: it was modified, or does not belong to entry %s",
               path, name);
    if (rc != PROVHSM_OK)
        goto out;
    *data_out = data;
    *len_out = len;
out:
    free(file);
    free(path);
    return rc;
}

provhsm_err provhsm_store_put(provhsm_store *st, const char *name, const uint8_t *data, size_t len)
{
    provhsm_err rc;
    char fname[FILE_NAME_BUF];
    uint8_t *file = NULL;
    size_t file_len = 0;

    if (!store_ok(st) || (data == NULL && len > 0))
        return PROVHSM_E_INVALID_ARG;
    if (!name_is_valid(name)) {
        PH_ERR(MOD, "invalid entry name (allowed: 1 to 64 of a-z 0-9 _ -)");
        return PROVHSM_E_INVALID_ARG;
    }
    if (len > ENTRY_MAX_DATA) {
        PH_ERR(MOD, "entry %s: %zu bytes is more than the %u allowed", name, len, ENTRY_MAX_DATA);
        return PROVHSM_E_INVALID_ARG;
    }
    entry_file_name(name, fname, sizeof(fname));
    rc = provhsm_store_seal(st->key, name, NULL, 0, data, len, &file, &file_len);
    if (rc == PROVHSM_OK)
        rc = write_atomic(st->dirfd, st->dir, fname, file, file_len, WRITE_REPLACE, 1);
    free(file);
    return rc;
}

provhsm_err provhsm_store_remove(provhsm_store *st, const char *name)
{
    char fname[FILE_NAME_BUF];

    if (!store_ok(st))
        return PROVHSM_E_INVALID_ARG;
    if (!name_is_valid(name)) {
        PH_ERR(MOD, "invalid entry name (allowed: 1 to 64 of a-z 0-9 _ -)");
        return PROVHSM_E_INVALID_ARG;
    }
    entry_file_name(name, fname, sizeof(fname));
    BEFORE_REMOVE(name);
    if (unlinkat(st->dirfd, fname, 0) != 0) {
        if (errno == ENOENT) {
            PH_DEBUG(MOD, "no entry %s in %s to remove", name, st->dir);
            return PROVHSM_E_NOT_FOUND;
        }
        PH_ERR(MOD, "cannot remove %s/%s: %s", st->dir, fname, strerror(errno));
        return PROVHSM_E_IO;
    }
    return fsync_dir(st->dirfd, st->dir);
}

int provhsm_store_has(provhsm_store *st, const char *name)
{
    char fname[FILE_NAME_BUF];
    struct stat sb;

    if (!store_ok(st) || !name_is_valid(name))
        return 0;
    entry_file_name(name, fname, sizeof(fname));
    return fstatat(st->dirfd, fname, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(sb.st_mode);
}

/* ---- PCR values given for a reseal (command-line text; no TPM) ---------------------- */

/* The PCR banks (TPM2_ALG_* identifiers, as [store] seal_pcrs names them) and digest sizes. */
static const struct {
    const char *name;
    uint16_t alg;
    size_t digest_len;
} pcr_banks[] = {
    {"sha1", 0x0004, 20}, {"sha256", 0x000b, 32}, {"sha384", 0x000c, 48}, {"sha512", 0x000d, 64}};

static const char *pcr_bank_name(uint16_t alg)
{
    for (size_t i = 0; i < sizeof(pcr_banks) / sizeof(pcr_banks[0]); i++)
        if (pcr_banks[i].alg == alg)
            return pcr_banks[i].name;
    return "?";
}

/* The bank before the ':'; *rest after it. 0 when there is no known bank. */
static int parse_pcr_bank(const char *text, provhsm_pcr_values *out, const char **rest)
{
    const char *colon = strchr(text, ':');
    for (size_t i = 0; colon != NULL && i < sizeof(pcr_banks) / sizeof(pcr_banks[0]); i++)
        if (strlen(pcr_banks[i].name) == (size_t)(colon - text) &&
            memcmp(text, pcr_banks[i].name, (size_t)(colon - text)) == 0) {
            out->bank = pcr_banks[i].alg;
            out->digest_len = pcr_banks[i].digest_len;
            *rest = colon + 1;
            return 1;
        }
    return 0;
}

/* A PCR number, 0..23, written with one or two digits; *p moves past it. -1 otherwise. */
static int parse_pcr_number(const char **p)
{
    const char *s = *p;
    int n = 0, digits = 0;
    while (s[digits] >= '0' && s[digits] <= '9' && digits < 3)
        n = n * 10 + (s[digits++] - '0');
    if (digits == 0 || digits > 2 || n > 23)
        return -1;
    *p = s + digits;
    return n;
}

/* PCR `pcr`'s value: exactly digest_len bytes in hex, up to ',' or the end. */
static provhsm_err parse_pcr_value(const char **p, unsigned pcr, provhsm_pcr_values *out)
{
    const char *s = *p;
    size_t digits = strcspn(s, ",");
    if (digits != 2 * out->digest_len) {
        PH_ERR(MOD,
               "--pcr-values: PCR %u: the value must be %zu hex digits (a %s digest is %zu "
               "bytes); %zu characters given",
               pcr, 2 * out->digest_len, pcr_bank_name(out->bank), out->digest_len, digits);
        return PROVHSM_E_INVALID_ARG;
    }
    for (size_t i = 0; i < digits; i += 2) {
        int hi = provhsm_hex_digit_value((unsigned char)s[i]),
            lo = provhsm_hex_digit_value((unsigned char)s[i + 1]);
        if (hi < 0 || lo < 0) {
            PH_ERR(MOD, "--pcr-values: PCR %u: character %zu of its value is not a hex digit", pcr,
                   hi < 0 ? i + 1 : i + 2);
            return PROVHSM_E_INVALID_ARG;
        }
        out->value[pcr][i / 2] = (uint8_t)(hi << 4 | lo);
    }
    *p = s + digits;
    return PROVHSM_OK;
}

provhsm_err provhsm_store_parse_pcr_values(const char *text, provhsm_pcr_values *out)
{
    const char *p = NULL;
    if (text == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    if (strlen(text) > PROVHSM_PCR_VALUES_MAX_TEXT) {
        PH_ERR(MOD, "--pcr-values: %zu characters, more than 24 PCRs can take", strlen(text));
        return PROVHSM_E_INVALID_ARG;
    }
    if (!parse_pcr_bank(text, out, &p)) {
        PH_ERR(MOD, "--pcr-values: does not start with a PCR bank (sha1:, sha256:, sha384:, "
                    "sha512:), as in sha256:7=<64 hex digits>");
        return PROVHSM_E_INVALID_ARG;
    }
    for (;;) {
        size_t at = (size_t)(p - text) + 1;
        int pcr = parse_pcr_number(&p);
        if (pcr < 0) {
            PH_ERR(MOD, "--pcr-values: expected a PCR number (0..23) at character %zu", at);
            break;
        }
        if (out->named & (1ul << pcr)) {
            PH_ERR(MOD, "--pcr-values: PCR %d is named twice", pcr);
            break;
        }
        if (*p++ != '=') {
            PH_ERR(MOD, "--pcr-values: expected '=' and a value after PCR %d", pcr);
            break;
        }
        if (parse_pcr_value(&p, (unsigned)pcr, out) != PROVHSM_OK)
            break;
        out->named |= 1ul << pcr;
        if (*p == '\0')
            return PROVHSM_OK;
        p++; /* the ',' that ended the value */
    }
    memset(out, 0, sizeof(*out));
    return PROVHSM_E_INVALID_ARG;
}

provhsm_err provhsm_store_check_pcr_values(const provhsm_config *cfg,
                                           const provhsm_pcr_values *values)
{
    if (cfg == NULL || values == NULL || values->named == 0)
        return PROVHSM_E_INVALID_ARG;
    if (cfg->seal_pcr_bank == 0 || cfg->seal_pcr_mask == 0) {
        PH_ERR(MOD, "--pcr-values: the configuration binds the store key to no PCR ([store] "
                    "seal_pcrs is not set): set seal_pcrs to the PCRs to bind to");
        return PROVHSM_E_CONFIG;
    }
    if (values->bank != cfg->seal_pcr_bank) {
        PH_ERR(MOD,
               "--pcr-values: values of the %s bank, but [store] seal_pcrs = %s binds to "
               "the %s bank",
               pcr_bank_name(values->bank), cfg->seal_pcrs, pcr_bank_name(cfg->seal_pcr_bank));
        return PROVHSM_E_INVALID_ARG;
    }
    uint32_t extra = values->named & ~cfg->seal_pcr_mask;
    if (extra != 0) {
        char names[80];
        describe_pcr_mask(extra, names, sizeof(names));
        PH_ERR(MOD,
               "--pcr-values: PCRs %s are not in [store] seal_pcrs = %s: the store key is "
               "bound to exactly those PCRs",
               names, cfg->seal_pcrs);
        return PROVHSM_E_INVALID_ARG;
    }
    return PROVHSM_OK;
}

/* ---- key mode: description, reseal -------------------------------------------------- */

provhsm_err provhsm_store_describe_key(const provhsm_config *cfg, char *out, size_t outlen)
{
    const size_t path_size = PROVHSM_PATH_MAX + 32;
    char *path = NULL;
    store_meta meta;
    int dirfd = -1;
    provhsm_err rc;

    if (cfg == NULL || out == NULL || outlen == 0 || !cfg_strings_ok(cfg))
        return PROVHSM_E_INVALID_ARG;
    out[0] = '\0';
    path = path_alloc(path_size);
    if (path == NULL)
        return PROVHSM_E_NOMEM;
    const provhsm_file_ref dir = {AT_FDCWD,          cfg->store_dir, cfg->store_dir,
                                  "store directory", NULL,           0};
    rc = provhsm_safefile_open_dir(&dir, PROVHSM_FILE_PRIVATE, &dirfd);
    if (rc == PROVHSM_OK)
        rc = read_meta(dirfd, cfg->store_dir, &meta, NULL, NULL);
    if (rc != PROVHSM_OK)
        goto out;
    if (meta.key_mode == KEY_MODE_FILE) {
        snprintf(out, outlen, "key-file");
    } else if (meta.key_mode == KEY_MODE_PASSPHRASE) {
        snprintf(out, outlen, "passphrase");
    } else {
#ifdef PROVHSM_WITH_TPM
        sealed_file *sf = malloc(sizeof(*sf));
        rc = sf == NULL ? PROVHSM_E_NOMEM : read_sealed(dirfd, cfg->store_dir, path, path_size, sf);
        if (rc == PROVHSM_OK) {
            char pcrs[96];
            const char *pending = sf->branches.count == 0
                                      ? ""
                                      : ", also the values given by reseal --pcr-values: run "
                                        "`provhsm store reseal` once the update is in";
            describe_pcrs(&sf->pcrs, pcrs, sizeof(pcrs));
            if (sf->handle != 0)
                snprintf(out, outlen, "tpm (persistent handle 0x%08lx, PCRs %s%s)",
                         (unsigned long)sf->handle, pcrs, pending);
            else
                snprintf(out, outlen, "tpm (sealed blob in the store directory, PCRs %s%s)", pcrs,
                         pending);
        }
        free(sf);
#else
        snprintf(out, outlen, "tpm");
#endif
    }
out:
    if (dirfd >= 0)
        close(dirfd);
    free(path);
    return rc;
}

#ifdef PROVHSM_WITH_TPM
/*
 * Seals the store key again: to the current values of [store] seal_pcrs, to none
 * (unbound), or to the values in `target` (checked against the configuration already).
 */
static provhsm_err reseal_sealed(const provhsm_config *cfg, int unbound,
                                 const provhsm_pcr_values *target)
{
    provhsm_store *st = NULL;
    uint8_t *sealed = NULL;
    size_t sealed_len = 0;
    uint32_t old_handle = 0;
    char mode[256];

    if (cfg == NULL || (unbound && target != NULL))
        return PROVHSM_E_INVALID_ARG;
    provhsm_err rc = provhsm_store_describe_key(cfg, mode, sizeof(mode));
    if (rc == PROVHSM_OK && strncmp(mode, "tpm", 3) != 0) {
        PH_ERR(MOD, "store %s: its key is not sealed to the TPM (%s): nothing to reseal",
               cfg->store_dir, mode);
        rc = PROVHSM_E_UNSUPPORTED;
    }
    /* opening unseals the key under the current PCR values: only a readable store reseals */
    if (rc == PROVHSM_OK)
        rc = provhsm_store_open(cfg, &st);
    if (rc == PROVHSM_OK)
        rc = provhsm_store_lock(st);
    if (rc == PROVHSM_OK)
        rc = current_sealed_handle(st, &old_handle);
    if (rc == PROVHSM_OK)
        rc = seal_store_key(cfg, st->key, unbound, target, &sealed, &sealed_len);
    /*
     * First the blob form, in one atomic replace: a crash leaves the old sealed key or the
     * new one, for the same store key. Then, with a handle configured, the new object is
     * made persistent there (the old one evicted) and the handle form replaces the blob.
     */
    if (rc == PROVHSM_OK)
        rc = write_atomic(st->dirfd, st->dir, SEALED_NAME, sealed, sealed_len, WRITE_REPLACE, 0);
    if (rc == PROVHSM_OK && cfg->sealed_key_handle != 0) {
        uint8_t *at_handle = NULL;
        size_t at_len = 0;
        rc = place_at_handle(cfg, sealed, sealed_len, old_handle, cfg->sealed_key_handle,
                             &at_handle, &at_len);
        if (rc == PROVHSM_OK)
            rc = write_atomic(st->dirfd, st->dir, SEALED_NAME, at_handle, at_len, WRITE_REPLACE, 0);
        if (rc != PROVHSM_OK)
            PH_ERR(MOD, "store %s: its key stays sealed as a blob in the store directory",
                   cfg->store_dir);
        free(at_handle);
    } else if (rc == PROVHSM_OK && old_handle != 0) {
        evict_sealed_handle(cfg, old_handle);
    }
    if (rc == PROVHSM_OK)
        PH_INFO(MOD, "store %s: key sealed again, bound to PCRs %s%s", cfg->store_dir,
                unbound || cfg->seal_pcrs[0] == '\0' ? "none" : cfg->seal_pcrs,
                target != NULL ? ", at their current values or at the values given (PCRs not "
                                 "given: their current values)"
                               : "");
    free(sealed);
    provhsm_store_close(st);
    return rc;
}
#endif

provhsm_err provhsm_store_reseal_with(const provhsm_config *cfg, int unbound)
{
#ifdef PROVHSM_WITH_TPM
    return reseal_sealed(cfg, unbound, NULL);
#else
    (void)unbound;
    (void)cfg;
    PH_ERR(MOD, "this build has no TPM support");
    return PROVHSM_E_UNSUPPORTED;
#endif
}

provhsm_err provhsm_store_reseal_to_with(const provhsm_config *cfg, const char *pcr_values)
{
    if (cfg == NULL || pcr_values == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_pcr_values *target = malloc(sizeof(*target));
    if (target == NULL)
        return PROVHSM_E_NOMEM;
    /* every check on the text before the store or the TPM is touched */
    provhsm_err rc = provhsm_store_parse_pcr_values(pcr_values, target);
    if (rc == PROVHSM_OK)
        rc = provhsm_store_check_pcr_values(cfg, target);
#ifdef PROVHSM_WITH_TPM
    if (rc == PROVHSM_OK)
        rc = reseal_sealed(cfg, 0, target);
#else
    if (rc == PROVHSM_OK) {
        PH_ERR(MOD, "this build has no TPM support");
        rc = PROVHSM_E_UNSUPPORTED;
    }
#endif
    free(target);
    return rc;
}

/* ---- the public administration calls (include/provhsm/provhsm_store_key.h) ----------- */

static provhsm_err with_config(provhsm_config **out)
{
    *out = malloc(sizeof(**out));
    if (*out == NULL) {
        PH_ERR(MOD, "out of memory");
        return PROVHSM_E_NOMEM;
    }
    provhsm_err rc = provhsm_front_config(*out);
    if (rc != PROVHSM_OK) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

provhsm_err provhsm_store_init_sealed(void)
{
    provhsm_config *cfg = NULL;
    provhsm_err rc = with_config(&cfg);
    if (rc == PROVHSM_OK)
        rc = provhsm_store_create_mode(cfg, 1);
    free(cfg);
    return rc;
}

provhsm_err provhsm_store_key_mode(char **mode_out)
{
    provhsm_config *cfg = NULL;
    char mode[256];
    if (mode_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err rc = with_config(&cfg);
    if (rc == PROVHSM_OK)
        rc = provhsm_store_describe_key(cfg, mode, sizeof(mode));
    free(cfg);
    if (rc != PROVHSM_OK)
        return rc;
    *mode_out = strdup(mode);
    return *mode_out != NULL ? PROVHSM_OK : PROVHSM_E_NOMEM;
}

provhsm_err provhsm_store_reseal(int unbound)
{
    provhsm_config *cfg = NULL;
    provhsm_err rc = with_config(&cfg);
    if (rc == PROVHSM_OK)
        rc = provhsm_store_reseal_with(cfg, unbound);
    free(cfg);
    return rc;
}

provhsm_err provhsm_store_reseal_to(const char *pcr_values)
{
    provhsm_config *cfg = NULL;
    if (pcr_values == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err rc = with_config(&cfg);
    if (rc == PROVHSM_OK)
        rc = provhsm_store_reseal_to_with(cfg, pcr_values);
    free(cfg);
    return rc;
}

/* ---- rekey: every entry under a new store key, crash-safe ----------------------------- */

/*
 * The protocol (the file names are in the opening comment):
 *   1. stage: first store.meta.new (the new header: it marks a rekey in progress), the
 *      new key holder (store.sealed.new or <key file>.new; nothing for a passphrase),
 *      every entry re-encrypted as <name>.entry.new, then store.check.new. The old files
 *      are not touched.
 *   2. switch: store.meta.new renamed over store.meta (the commit point).
 *   3. roll forward: every <name>.entry.new renamed over <name>.entry, the new key holder
 *      into place, the old one removed, and last store.check.new over store.check.
 * Opening recovers under the store lock: store.meta.new present means the switch did not
 * happen (staged files are removed, store.meta.new last, so the old store stays as it
 * was); store.check.new without store.meta.new means it did (the roll forward is done
 * again; each of its renames can be repeated).
 */
#define NEW_SUFFIX       "new"
#define META_NEW         META_NAME "." NEW_SUFFIX
#define CHECK_NEW        CHECK_NAME "." NEW_SUFFIX
#define SEALED_NEW       SEALED_NAME "." NEW_SUFFIX
#define ENTRY_NEW_SUFFIX ENTRY_SUFFIX "." NEW_SUFFIX

#ifdef PROVHSM_TEST_HOOKS
int provhsm_store_test_rekey_fail_at = 0;
/* 1 when the armed step is reached: the rekey stops there as a crash would. */
static int rekey_crash_due(void)
{
    return provhsm_store_test_rekey_fail_at > 0 && --provhsm_store_test_rekey_fail_at == 0;
}
#define REKEY_CRASH_DUE() rekey_crash_due()
#else
#define REKEY_CRASH_DUE() 0
#endif

static int exists_at(int dirfd, const char *name)
{
    struct stat sb;
    return fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0;
}

/* The names of the directory's files that end in `suffix`, without it (valid entry names). */
static provhsm_err list_suffixed(int dirfd, const char *dir_path, const char *suffix,
                                 char ***names_out, size_t *n_out)
{
    provhsm_err rc = PROVHSM_OK;
    size_t n = 0, cap = 0, sl = strlen(suffix);
    char **names = NULL;
    struct dirent *de;
    DIR *d = NULL;
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd < 0 || (d = fdopendir(fd)) == NULL) {
        PH_ERR(MOD, "cannot list %s: %s", dir_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return PROVHSM_E_IO;
    }
    while ((de = readdir(d)) != NULL) {
        size_t nl = strlen(de->d_name);
        char name[FILE_NAME_BUF];
        if (nl <= sl || nl - sl >= sizeof(name) || strcmp(de->d_name + nl - sl, suffix) != 0)
            continue;
        memcpy(name, de->d_name, nl - sl);
        name[nl - sl] = '\0';
        if (!name_is_valid(name))
            continue;
        if (n == cap) {
            size_t ncap = cap == 0 ? 16 : cap * 2;
            char **grown = realloc(names, ncap * sizeof(*names));
            if (grown == NULL) {
                rc = PROVHSM_E_NOMEM;
                break;
            }
            names = grown;
            cap = ncap;
        }
        names[n] = strdup(name);
        if (names[n] == NULL) {
            rc = PROVHSM_E_NOMEM;
            break;
        }
        n++;
    }
    closedir(d);
    if (rc != PROVHSM_OK) {
        PH_ERR(MOD, "out of memory listing %s", dir_path);
        for (size_t i = 0; i < n; i++)
            free(names[i]);
        free(names);
        return rc;
    }
    *names_out = names;
    *n_out = n;
    return PROVHSM_OK;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* The key file's directory (opened) and the key file's name in it. */
static provhsm_err key_file_dir(const provhsm_config *cfg, int *fd_out, char *base, size_t baselen)
{
    char *path = path_alloc(PROVHSM_PATH_MAX);
    if (path == NULL)
        return PROVHSM_E_NOMEM;
    provhsm_err rc = key_file_path(cfg, path, PROVHSM_PATH_MAX);
    if (rc == PROVHSM_OK)
        rc = open_key_dir(path, base, baselen, fd_out);
    free(path);
    return rc;
}

static provhsm_err rename_in(int dirfd, const char *dir, const char *from, const char *to)
{
    if (renameat(dirfd, from, dirfd, to) != 0) {
        PH_ERR(MOD, "cannot rename %s/%s to %s: %s", dir, from, to, strerror(errno));
        return PROVHSM_E_IO;
    }
    return PROVHSM_OK;
}

/* Undoes a rekey that did not reach its switch: the staged files go, store.meta.new last. */
static provhsm_err rekey_roll_back(const provhsm_config *cfg, int dirfd, const char *dir)
{
    char **names = NULL, fname[FILE_NAME_BUF], base[FILE_NAME_BUF + 8];
    size_t n = 0;
    int keydirfd = -1;
    provhsm_err rc = list_suffixed(dirfd, dir, ENTRY_NEW_SUFFIX, &names, &n);
    if (rc != PROVHSM_OK)
        return rc;
    for (size_t i = 0; i < n; i++) {
        snprintf(fname, sizeof(fname), "%s%s", names[i], ENTRY_NEW_SUFFIX);
        unlinkat(dirfd, fname, 0);
    }
    free_names(names, n);
    unlinkat(dirfd, CHECK_NEW, 0);
    unlinkat(dirfd, SEALED_NEW, 0);
    if (key_file_dir(cfg, &keydirfd, base, FILE_NAME_BUF) == PROVHSM_OK) {
        strcat(base, "." NEW_SUFFIX);
        unlinkat(keydirfd, base, 0);
        fsync(keydirfd);
        close(keydirfd);
    }
    rc = fsync_dir(dirfd, dir);
    if (rc == PROVHSM_OK && unlinkat(dirfd, META_NEW, 0) != 0 && errno != ENOENT) {
        PH_ERR(MOD, "cannot remove %s/%s: %s", dir, META_NEW, strerror(errno));
        rc = PROVHSM_E_IO;
    }
    if (rc == PROVHSM_OK)
        rc = fsync_dir(dirfd, dir);
    if (rc == PROVHSM_OK)
        PH_INFO(MOD, "store %s: an unfinished rekey was undone; the store keeps its old key", dir);
    return rc;
}

/* Completes a rekey past its switch (store.meta holds the new mode): idempotent. */
static provhsm_err rekey_roll_forward(const provhsm_config *cfg, int dirfd, const char *dir,
                                      unsigned new_mode)
{
    char **names = NULL, from[FILE_NAME_BUF], to[FILE_NAME_BUF], base[FILE_NAME_BUF + 8];
    size_t n = 0;
    int keydirfd = -1;
    provhsm_err rc = list_suffixed(dirfd, dir, ENTRY_NEW_SUFFIX, &names, &n);
    if (rc != PROVHSM_OK)
        return rc;
    for (size_t i = 0; i < n && rc == PROVHSM_OK; i++) {
        snprintf(from, sizeof(from), "%s%s", names[i], ENTRY_NEW_SUFFIX);
        entry_file_name(names[i], to, sizeof(to));
        rc = rename_in(dirfd, dir, from, to);
        if (rc == PROVHSM_OK && REKEY_CRASH_DUE())
            rc = PROVHSM_E_IO;
    }
    free_names(names, n);
    if (rc != PROVHSM_OK)
        return rc;
    /* the new key holder into place, the old one away (a key left on disk is a secret) */
    if (exists_at(dirfd, SEALED_NEW))
        rc = rename_in(dirfd, dir, SEALED_NEW, SEALED_NAME);
    else if (new_mode != KEY_MODE_TPM)
        unlinkat(dirfd, SEALED_NAME, 0);
    if (rc == PROVHSM_OK && key_file_dir(cfg, &keydirfd, base, FILE_NAME_BUF) == PROVHSM_OK) {
        char staged[FILE_NAME_BUF + 16];
        snprintf(staged, sizeof(staged), "%s.%s", base, NEW_SUFFIX);
        if (exists_at(keydirfd, staged))
            rc = rename_in(keydirfd, "key file directory", staged, base);
        else if (new_mode != KEY_MODE_FILE)
            unlinkat(keydirfd, base, 0);
        if (fsync(keydirfd) != 0 && rc == PROVHSM_OK)
            rc = PROVHSM_E_IO;
        close(keydirfd);
    }
    if (rc == PROVHSM_OK)
        rc = fsync_dir(dirfd, dir);
    if (rc == PROVHSM_OK && REKEY_CRASH_DUE())
        rc = PROVHSM_E_IO;
    /* last: while store.check.new exists, opening does all of this again */
    if (rc == PROVHSM_OK)
        rc = rename_in(dirfd, dir, CHECK_NEW, CHECK_NAME);
    if (rc == PROVHSM_OK)
        rc = fsync_dir(dirfd, dir);
    return rc;
}

/* With the store lock held: finishes or undoes an interrupted rekey, if there is one. */
static provhsm_err rekey_recover_locked(const provhsm_config *cfg, int dirfd, const char *dir)
{
    if (exists_at(dirfd, META_NEW))
        return rekey_roll_back(cfg, dirfd, dir);
    if (!exists_at(dirfd, CHECK_NEW))
        return PROVHSM_OK;
    store_meta meta;
    provhsm_err rc = read_meta(dirfd, dir, &meta, NULL, NULL);
    if (rc == PROVHSM_OK)
        rc = rekey_roll_forward(cfg, dirfd, dir, meta.key_mode);
    if (rc == PROVHSM_OK)
        PH_INFO(MOD, "store %s: an interrupted rekey was completed", dir);
    return rc;
}

/*
 * Called by open: a rekey left unfinished (by a crash, or still running in another
 * process, whose lock this waits for) is finished or undone before anything is read.
 */
static provhsm_err rekey_recover(const provhsm_config *cfg, int dirfd, const char *dir)
{
    if (!exists_at(dirfd, META_NEW) && !exists_at(dirfd, CHECK_NEW))
        return PROVHSM_OK;
    if (lock_dir(dirfd, 0) != 0) {
        PH_ERR(MOD, "cannot lock store directory %s: %s", dir, strerror(errno));
        return PROVHSM_E_IO;
    }
    provhsm_err rc = rekey_recover_locked(cfg, dirfd, dir);
    flock(dirfd, LOCK_UN);
    return rc;
}

/* Fills meta_new and key_new for `mode` (a passphrase's key is derived: fresh salt). */
static provhsm_err rekey_new_key(const provhsm_config *cfg, unsigned mode, uint8_t *meta_new,
                                 uint8_t *key_new)
{
    memset(meta_new, 0, META_LEN);
    memcpy(meta_new, META_MAGIC, 8);
    put_be16(meta_new + 8, FORMAT_VERSION);
    meta_new[META_OFF_MODE] = (uint8_t)mode;
    if (mode == KEY_MODE_PASSPHRASE) {
        uint8_t *pass = NULL;
        size_t pass_len = 0;
        provhsm_err rc = get_passphrase(cfg, &pass, &pass_len);
        if (rc == PROVHSM_E_NOT_FOUND) {
            PH_ERR(MOD, "rekey to a passphrase: set the environment variable %s or passphrase_file",
                   cfg->passphrase_env[0] != '\0' ? cfg->passphrase_env : "(passphrase_env)");
            rc = PROVHSM_E_CONFIG;
        }
        if (rc == PROVHSM_OK)
            rc = make_passphrase_key(cfg, pass, pass_len, meta_new, key_new);
        provhsm_secure_free(pass);
        return rc;
    }
    if (RAND_priv_bytes(key_new, STORE_KEY_LEN) != 1) {
        provhsm_log_openssl(MOD, "RAND_priv_bytes (store key)");
        return PROVHSM_E_CRYPTO;
    }
    return PROVHSM_OK;
}

/* Stages what holds key_new: store.sealed.new, <key file>.new, or nothing (passphrase). */
static provhsm_err rekey_stage_holder(const provhsm_config *cfg, const provhsm_store *st,
                                      unsigned mode, const uint8_t *key_new)
{
    provhsm_err rc;
    if (mode == KEY_MODE_PASSPHRASE)
        return PROVHSM_OK;
    if (mode == KEY_MODE_TPM) {
#ifdef PROVHSM_WITH_TPM
        uint8_t *sealed = NULL;
        size_t sealed_len = 0;
        rc = seal_store_key(cfg, key_new, 0, NULL, &sealed, &sealed_len);
        if (rc == PROVHSM_OK)
            rc = write_atomic(st->dirfd, st->dir, SEALED_NEW, sealed, sealed_len, WRITE_REPLACE, 0);
        free(sealed);
        return rc;
#else
        PH_ERR(MOD, "this build has no TPM support to seal the store key to");
        return PROVHSM_E_UNSUPPORTED;
#endif
    }
    char base[FILE_NAME_BUF + 8];
    int keydirfd = -1;
    uint8_t *keyfile = provhsm_secure_alloc(KEYFILE_LEN);
    if (keyfile == NULL)
        return PROVHSM_E_NOMEM;
    rc = key_file_dir(cfg, &keydirfd, base, FILE_NAME_BUF);
    if (rc == PROVHSM_E_NOT_FOUND)
        PH_ERR(MOD, "the key file's directory does not exist: create it first");
    if (rc == PROVHSM_OK) {
        memcpy(keyfile, KEYFILE_MAGIC, 8);
        put_be16(keyfile + 8, FORMAT_VERSION);
        put_be16(keyfile + 10, 0);
        memcpy(keyfile + KEYFILE_OFF_KEY, key_new, STORE_KEY_LEN);
        strcat(base, "." NEW_SUFFIX);
        rc = write_atomic(keydirfd, "key file directory", base, keyfile, KEYFILE_LEN, WRITE_REPLACE,
                          0);
        close(keydirfd);
    }
    provhsm_secure_free(keyfile);
    return rc;
}

/* Re-encrypts one entry under key_new as <name>.entry.new. */
static provhsm_err rekey_entry(provhsm_store *st, const char *name, const uint8_t *key_new)
{
    char fname[FILE_NAME_BUF];
    uint8_t *data = NULL, *file = NULL;
    size_t len = 0, file_len = 0;
    provhsm_err rc = provhsm_store_get(st, name, &data, &len);
    if (rc == PROVHSM_OK)
        rc = provhsm_store_seal(key_new, name, NULL, 0, data, len, &file, &file_len);
    provhsm_secure_free(data);
    snprintf(fname, sizeof(fname), "%s%s", name, ENTRY_NEW_SUFFIX);
    if (rc == PROVHSM_OK)
        rc = write_atomic(st->dirfd, st->dir, fname, file, file_len, WRITE_REPLACE, 0);
    free(file);
    return rc;
}

#ifdef PROVHSM_WITH_TPM
/*
 * After a complete rekey to the TPM, with [store] sealed_key_handle set: the new sealed
 * key, staged and switched as a blob (so a crash never leaves a persistent object that
 * no store uses), is made persistent at the handle (evicting the former key at
 * old_handle, 0: none) and store.sealed becomes the handle form, as init and reseal do.
 * A failure leaves the store complete and readable with its blob.
 */
static provhsm_err rekey_move_to_handle(const provhsm_config *cfg, const provhsm_store *st,
                                        uint32_t old_handle)
{
    const size_t path_size = PROVHSM_PATH_MAX + 32;
    char *path = path_alloc(path_size);
    uint8_t *blob = NULL, *at_handle = NULL;
    size_t blob_len = 0, at_len = 0;
    provhsm_err rc = path == NULL ? PROVHSM_E_NOMEM : PROVHSM_OK;

    if (rc == PROVHSM_OK) {
        snprintf(path, path_size, "%s/%s", st->dir, SEALED_NAME);
        rc = read_file_at(st->dirfd, SEALED_NAME, path, SEALED_MAX, 0, &blob, &blob_len);
    }
    if (rc == PROVHSM_OK)
        rc = place_at_handle(cfg, blob, blob_len, old_handle, cfg->sealed_key_handle, &at_handle,
                             &at_len);
    if (rc == PROVHSM_OK)
        rc = write_atomic(st->dirfd, st->dir, SEALED_NAME, at_handle, at_len, WRITE_REPLACE, 0);
    if (rc != PROVHSM_OK)
        PH_ERR(MOD,
               "store %s: the rekey is complete, but its key stays sealed as a blob in the store "
               "directory, not at 0x%08lx ([store] sealed_key_handle); `provhsm store reseal` "
               "tries again",
               st->dir, (unsigned long)cfg->sealed_key_handle);
    free(at_handle);
    free(blob);
    free(path);
    return rc;
}
#endif

provhsm_err provhsm_store_rekey_with(const provhsm_config *cfg, const char *to)
{
    provhsm_store *st = NULL;
    provhsm_err rc;
    uint8_t meta_new[META_LEN];
    uint8_t *key_new = NULL, *check = NULL;
    size_t check_len = 0, n = 0;
    char **names = NULL;
    unsigned mode;
    int switched = 0, crashed = 0;
    provhsm_err placed = PROVHSM_OK; /* the new sealed key at sealed_key_handle */
#ifdef PROVHSM_WITH_TPM
    uint32_t old_handle;
#endif

    if (cfg == NULL || to == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (strcmp(to, "tpm") == 0)
        mode = KEY_MODE_TPM;
    else if (strcmp(to, "key-file") == 0)
        mode = KEY_MODE_FILE;
    else if (strcmp(to, "passphrase") == 0)
        mode = KEY_MODE_PASSPHRASE;
    else {
        PH_ERR(MOD, "unknown store key mode \"%.32s\" (tpm, key-file or passphrase)", to);
        return PROVHSM_E_INVALID_ARG;
    }
    rc = provhsm_store_open(cfg, &st);
    if (rc == PROVHSM_OK)
        rc = provhsm_store_lock(st);
    /* a rekey that ended while this one waited for the lock */
    if (rc == PROVHSM_OK)
        rc = rekey_recover_locked(cfg, st->dirfd, st->dir);
    if (rc != PROVHSM_OK) {
        provhsm_store_close(st);
        return rc;
    }
#ifdef PROVHSM_WITH_TPM
    /* a sealed key at a persistent handle is evicted once the rekey is complete */
    if (current_sealed_handle_quiet(st, &old_handle) != PROVHSM_OK)
        old_handle = 0;
#endif
    key_new = provhsm_secure_alloc(STORE_KEY_LEN);
    rc = key_new == NULL ? PROVHSM_E_NOMEM : rekey_new_key(cfg, mode, meta_new, key_new);
    /* first: while store.meta.new exists, opening undoes everything staged */
    if (rc == PROVHSM_OK)
        rc = write_atomic(st->dirfd, st->dir, META_NEW, meta_new, META_LEN, WRITE_REPLACE, 0);
    if (rc == PROVHSM_OK)
        rc = rekey_stage_holder(cfg, st, mode, key_new);
    if (rc == PROVHSM_OK)
        rc = list_suffixed(st->dirfd, st->dir, ENTRY_SUFFIX, &names, &n);
    for (size_t i = 0; i < n && rc == PROVHSM_OK; i++) {
        rc = rekey_entry(st, names[i], key_new);
        if (rc == PROVHSM_OK && REKEY_CRASH_DUE()) {
            rc = PROVHSM_E_IO;
            crashed = 1;
        }
    }
    if (rc == PROVHSM_OK)
        rc = provhsm_store_seal(key_new, CHECK_NAME, meta_new, META_LEN,
                                (const uint8_t *)CHECK_PLAIN, strlen(CHECK_PLAIN), &check,
                                &check_len);
    if (rc == PROVHSM_OK)
        rc = write_atomic(st->dirfd, st->dir, CHECK_NEW, check, check_len, WRITE_REPLACE, 0);
    if (rc == PROVHSM_OK && REKEY_CRASH_DUE()) {
        rc = PROVHSM_E_IO;
        crashed = 1;
    }
    /* the commit point */
    if (rc == PROVHSM_OK)
        rc = rename_in(st->dirfd, st->dir, META_NEW, META_NAME);
    if (rc == PROVHSM_OK) {
        switched = 1;
        rc = fsync_dir(st->dirfd, st->dir);
    }
    if (rc == PROVHSM_OK && REKEY_CRASH_DUE()) {
        rc = PROVHSM_E_IO;
        crashed = 1;
    }
    if (rc == PROVHSM_OK)
        rc = rekey_roll_forward(cfg, st->dirfd, st->dir, mode);
#ifdef PROVHSM_WITH_TPM
    if (rc == PROVHSM_OK && mode == KEY_MODE_TPM && cfg->sealed_key_handle != 0)
        placed = rekey_move_to_handle(cfg, st, old_handle); /* evicts old_handle itself */
    else if (rc == PROVHSM_OK && old_handle != 0)
        evict_sealed_handle(cfg, old_handle);
#endif
    if (rc == PROVHSM_OK)
        PH_INFO(MOD, "store %s: %zu entries re-encrypted under a new key (%s)", st->dir, n, to);
    else if (!switched && !crashed)
        (void)rekey_roll_back(cfg, st->dirfd, st->dir);
    else if (switched)
        PH_ERR(MOD, "store %s: the rekey stopped after its switch; opening the store completes it",
               st->dir);
    free_names(names, n);
    free(check);
    provhsm_secure_free(key_new);
    provhsm_store_close(st);
    return rc != PROVHSM_OK ? rc : placed;
}

provhsm_err provhsm_store_rekey(const char *to)
{
    provhsm_config *cfg = NULL;
    provhsm_err rc = with_config(&cfg);
    if (rc == PROVHSM_OK)
        rc = provhsm_store_rekey_with(cfg, to);
    free(cfg);
    return rc;
}
