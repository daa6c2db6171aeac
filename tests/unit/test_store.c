/*
 * Unit tests for the encrypted software key store (src/store.c). Each test works in its
 * own mkdtemp directory under /tmp with a hand-built configuration (cheap scrypt cost,
 * a test-only passphrase variable) and checks behaviour through the store API and the
 * raw files: round trips in both key modes, tamper and truncation detection, wrong keys,
 * permission checks (files, the store directory, the key file's directory), FIFOs
 * refused without blocking, the write lock between processes, the exposed entry format
 * functions, the interrupted-replace hook, the documented byte layout, and that no
 * plaintext reaches the disk. Log lines are captured to check what errors name.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <openssl/evp.h>

#include "log.h"
#include "secmem.h"
#include "store.h"
#ifdef PROVHSM_WITH_TPM
#include "tpm_esys.h"
#endif

#define PASS_ENV "PROVHSM_TEST_STORE_PASSPHRASE"
#define MARKER   "PLAINTEXT-MARKER-5e1f0c"

typedef struct fixture {
    char root[64];
    char store[128];
    provhsm_config cfg;
    mode_t saved_umask;
} fixture;

/* ---- captured log ------------------------------------------------------- */

static char log_buf[16384];

static void capture_log(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)ctx;
    size_t used = strlen(log_buf);
    snprintf(log_buf + used, sizeof(log_buf) - used, "%d [%s] %s\n", (int)level, module, message);
    if (getenv("PROVHSM_TEST_VERBOSE") != NULL)
        fprintf(stderr, "log: [%s] %s\n", module, message);
}

static int log_has(const char *text)
{
    return strstr(log_buf, text) != NULL;
}

static void log_reset(void)
{
    log_buf[0] = '\0';
}

/* ---- file helpers ------------------------------------------------------- */

static void rm_rf(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode)) {
        chmod(path, 0700);
        DIR *d = opendir(path);
        if (d != NULL) {
            struct dirent *de;
            while ((de = readdir(d)) != NULL) {
                char sub[1024];
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                    continue;
                snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
                rm_rf(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void store_path(const fixture *fx, const char *name, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/%s", fx->store, name);
}

static uint8_t *read_all(const char *path, size_t *len_out)
{
    struct stat sb;
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &sb), 0);
    uint8_t *buf = malloc((size_t)sb.st_size + 1);
    assert_non_null(buf);
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
        assert_true(n > 0);
        got += (size_t)n;
    }
    close(fd);
    *len_out = got;
    return buf;
}

/* Overwrites the file's contents in place, keeping its inode and mode. */
static void write_all_in_place(const char *path, const uint8_t *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

static void write_new_file(const char *path, const void *buf, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

static void poke_byte(const char *path, off_t off, uint8_t value)
{
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, &value, 1, off), 1);
    close(fd);
}

static mode_t mode_of(const char *path)
{
    struct stat sb;
    assert_int_equal(lstat(path, &sb), 0);
    return sb.st_mode & 07777;
}

static int count_prefix(const char *dir, const char *prefix)
{
    int n = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
            n++;
    closedir(d);
    return n;
}

static int find_prefix(const char *dir, const char *prefix, char *out, size_t outlen)
{
    int found = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0) {
            snprintf(out, outlen, "%s/%s", dir, de->d_name);
            found = 1;
        }
    }
    closedir(d);
    return found;
}

static int bytes_contain(const uint8_t *hay, size_t hlen, const void *needle, size_t nlen)
{
    for (size_t i = 0; nlen <= hlen && i <= hlen - nlen; i++)
        if (memcmp(hay + i, needle, nlen) == 0)
            return 1;
    return 0;
}

/* ---- store helpers ------------------------------------------------------ */

static provhsm_store *open_ok(const fixture *fx)
{
    provhsm_store *st = NULL;
    assert_int_equal(provhsm_store_open(&fx->cfg, &st), PROVHSM_OK);
    assert_non_null(st);
    return st;
}

static provhsm_err open_rc(const fixture *fx)
{
    provhsm_store *st = NULL;
    provhsm_err rc = provhsm_store_open(&fx->cfg, &st);
    if (rc == PROVHSM_OK)
        provhsm_store_close(st);
    else
        assert_null(st);
    return rc;
}

static void put_ok(provhsm_store *st, const char *name, const void *data, size_t len)
{
    assert_int_equal(provhsm_store_put(st, name, data, len), PROVHSM_OK);
}

static void expect_entry(provhsm_store *st, const char *name, const void *data, size_t len)
{
    uint8_t *got = NULL;
    size_t got_len = 12345;
    assert_int_equal(provhsm_store_get(st, name, &got, &got_len), PROVHSM_OK);
    assert_non_null(got);
    assert_int_equal(got_len, len);
    if (len > 0)
        assert_memory_equal(got, data, len);
    provhsm_secure_free(got); /* aborts unless the result is secure memory */
}

/* get() must fail with `want` and leave the outputs alone */
static void expect_get_fails(provhsm_store *st, const char *name, provhsm_err want)
{
    uint8_t *got = NULL;
    size_t got_len = 777;
    assert_int_equal(provhsm_store_get(st, name, &got, &got_len), want);
    assert_null(got);
    assert_int_equal(got_len, 777);
}

/* ---- fixture ------------------------------------------------------------ */

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof(*fx));
    if (fx == NULL)
        return -1;
    snprintf(fx->root, sizeof(fx->root), "/tmp/provhsm-store-XXXXXX");
    if (mkdtemp(fx->root) == NULL)
        return -1;
    snprintf(fx->store, sizeof(fx->store), "%s/store", fx->root);
    memset(&fx->cfg, 0, sizeof(fx->cfg));
    snprintf(fx->cfg.store_dir, sizeof(fx->cfg.store_dir), "%s", fx->store);
    snprintf(fx->cfg.passphrase_env, sizeof(fx->cfg.passphrase_env), "%s", PASS_ENV);
    fx->cfg.scrypt_log2_n = 10;
    fx->cfg.scrypt_r = 8;
    fx->cfg.scrypt_p = 1;
    fx->saved_umask = umask(022);
    unsetenv(PASS_ENV);
    provhsm_store_test_fail_before_rename = 0;
    log_reset();
    provhsm_set_log_callback(capture_log, NULL);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    provhsm_store_test_fail_before_rename = 0;
    unsetenv(PASS_ENV);
    umask(fx->saved_umask);
    provhsm_set_log_callback(NULL, NULL);
    rm_rf(fx->root);
    free(fx);
    return 0;
}

/* ---- tests -------------------------------------------------------------- */

static void test_round_trip_key_file(void **state)
{
    fixture *fx = *state;
    static uint8_t big[64 * 1024];
    char name64[65], path[512];
    const char small[] = "device key material";

    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 31 + 7);
    memset(name64, 'z', 64);
    name64[64] = '\0';

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    store_path(fx, "store.key", path, sizeof(path));
    assert_int_equal(access(path, F_OK), 0);

    provhsm_store *st = open_ok(fx);
    assert_int_equal(provhsm_store_has(st, "small"), 0);
    put_ok(st, "small", small, sizeof(small));
    put_ok(st, "empty", NULL, 0);
    put_ok(st, "big", big, sizeof(big));
    put_ok(st, name64, "x", 1);
    expect_entry(st, "small", small, sizeof(small));
    expect_entry(st, "empty", "", 0);
    expect_entry(st, "big", big, sizeof(big));
    expect_entry(st, name64, "x", 1);
    assert_int_equal(provhsm_store_has(st, "small"), 1);
    assert_int_equal(provhsm_store_has(st, "empty"), 1);
    provhsm_store_close(st);

    /* the data survives a close and reopen, and replacing works */
    st = open_ok(fx);
    expect_entry(st, "small", small, sizeof(small));
    expect_entry(st, "empty", "", 0);
    expect_entry(st, "big", big, sizeof(big));
    put_ok(st, "small", "v2", 2);
    expect_entry(st, "small", "v2", 2);

    /* remove */
    assert_int_equal(provhsm_store_remove(st, "small"), PROVHSM_OK);
    assert_int_equal(provhsm_store_has(st, "small"), 0);
    expect_get_fails(st, "small", PROVHSM_E_NOT_FOUND);
    assert_int_equal(provhsm_store_remove(st, "small"), PROVHSM_E_NOT_FOUND);
    expect_get_fails(st, "never", PROVHSM_E_NOT_FOUND);
    expect_entry(st, "big", big, sizeof(big));
    provhsm_store_close(st);
}

static void test_size_limit(void **state)
{
    fixture *fx = *state;
    size_t max = 1024 * 1024;
    uint8_t *buf = calloc(1, max + 1);
    assert_non_null(buf);
    buf[max - 1] = 0xab;

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    assert_int_equal(provhsm_store_put(st, "huge", buf, max + 1), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_store_has(st, "huge"), 0);
    put_ok(st, "max", buf, max);
    expect_entry(st, "max", buf, max);

    /* a file too large to be an entry is refused without being read in */
    char path[512];
    store_path(fx, "bloat.entry", path, sizeof(path));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)64 * 1024 * 1024), 0);
    close(fd);
    log_reset();
    expect_get_fails(st, "bloat", PROVHSM_E_CORRUPT);
    assert_true(log_has("bloat.entry"));
    assert_true(log_has("more than the")); /* refused on its size, before reading */
    provhsm_store_close(st);
    free(buf);
}

static void test_round_trip_passphrase(void **state)
{
    fixture *fx = *state;
    char path[512];
    size_t len;

    setenv(PASS_ENV, "correct horse battery staple", 1);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);

    /* passphrase mode: no key file, and the header records mode 2 and the cost */
    store_path(fx, "store.key", path, sizeof(path));
    assert_int_equal(access(path, F_OK), -1);
    store_path(fx, "store.meta", path, sizeof(path));
    uint8_t *meta = read_all(path, &len);
    assert_int_equal(len, 64);
    assert_int_equal(meta[10], 2);
    assert_int_equal(meta[11], 10);
    free(meta);

    provhsm_store *st = open_ok(fx);
    put_ok(st, "secret", "s3", 2);
    put_ok(st, "empty", NULL, 0);
    provhsm_store_close(st);

    st = open_ok(fx);
    expect_entry(st, "secret", "s3", 2);
    expect_entry(st, "empty", "", 0);
    provhsm_store_close(st);

    /* no passphrase at all: a configuration error that says where to put one */
    unsetenv(PASS_ENV);
    log_reset();
    assert_int_equal(open_rc(fx), PROVHSM_E_CONFIG);
    assert_true(log_has(PASS_ENV));
    assert_true(log_has("passphrase_file"));
    setenv(PASS_ENV, "", 1);
    assert_int_equal(open_rc(fx), PROVHSM_E_CONFIG);
}

static void test_wrong_passphrase(void **state)
{
    fixture *fx = *state;

    setenv(PASS_ENV, "right passphrase", 1);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    put_ok(st, "id", "value", 5);
    provhsm_store_close(st);

    setenv(PASS_ENV, "wrong passphrase", 1);
    log_reset();
    assert_int_equal(open_rc(fx), PROVHSM_E_WRONG_KEY);
    assert_true(log_has("does not open"));
    assert_false(log_has("wrong passphrase")); /* never log a secret */

    setenv(PASS_ENV, "right passphrase", 1);
    st = open_ok(fx);
    expect_entry(st, "id", "value", 5);
    provhsm_store_close(st);
}

static void test_passphrase_file(void **state)
{
    fixture *fx = *state;
    char pfile[256];

    snprintf(pfile, sizeof(pfile), "%s/pass.txt", fx->root);
    write_new_file(pfile, "file phrase\n", 12, 0600);
    snprintf(fx->cfg.passphrase_file, sizeof(fx->cfg.passphrase_file), "%s", pfile);

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    put_ok(st, "k", "v", 1);
    provhsm_store_close(st);

    /* one trailing newline was dropped: the same phrase from the environment opens it */
    fx->cfg.passphrase_file[0] = '\0';
    setenv(PASS_ENV, "file phrase", 1);
    st = open_ok(fx);
    expect_entry(st, "k", "v", 1);
    provhsm_store_close(st);
    setenv(PASS_ENV, "file phrase\n", 1);
    assert_int_equal(open_rc(fx), PROVHSM_E_WRONG_KEY);

    /* the environment wins over the file */
    snprintf(fx->cfg.passphrase_file, sizeof(fx->cfg.passphrase_file), "%s", pfile);
    setenv(PASS_ENV, "not it", 1);
    assert_int_equal(open_rc(fx), PROVHSM_E_WRONG_KEY);
    unsetenv(PASS_ENV);
    assert_int_equal(open_rc(fx), PROVHSM_OK);

    /* a readable passphrase file is refused */
    assert_int_equal(chmod(pfile, 0644), 0);
    log_reset();
    assert_int_equal(open_rc(fx), PROVHSM_E_PERMISSION);
    assert_true(log_has(pfile));
    assert_true(log_has("0644"));
    assert_int_equal(chmod(pfile, 0400), 0);
    assert_int_equal(open_rc(fx), PROVHSM_OK);

    /* a configured but missing or empty file is a configuration error */
    assert_int_equal(unlink(pfile), 0);
    assert_int_equal(open_rc(fx), PROVHSM_E_CONFIG);
    write_new_file(pfile, "\n", 1, 0600);
    assert_int_equal(open_rc(fx), PROVHSM_E_CONFIG);
}

static void test_wrong_key_file(void **state)
{
    fixture *fx = *state;
    char other[256], key_a[512], key_b[512];
    size_t len_a, len_b;

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    put_ok(st, "id", "value", 5);
    provhsm_store_close(st);

    /* a second store has its own random key */
    provhsm_config cfg_b = fx->cfg;
    snprintf(other, sizeof(other), "%s/other", fx->root);
    snprintf(cfg_b.store_dir, sizeof(cfg_b.store_dir), "%s", other);
    assert_int_equal(provhsm_store_create(&cfg_b), PROVHSM_OK);

    store_path(fx, "store.key", key_a, sizeof(key_a));
    snprintf(key_b, sizeof(key_b), "%s/store.key", other);
    uint8_t *a = read_all(key_a, &len_a);
    uint8_t *b = read_all(key_b, &len_b);
    assert_int_equal(len_a, 44);
    assert_int_equal(len_b, 44);
    assert_memory_not_equal(a + 12, b + 12, 32);

    write_all_in_place(key_a, b, len_b);
    log_reset();
    assert_int_equal(open_rc(fx), PROVHSM_E_WRONG_KEY);
    assert_true(log_has("does not open"));

    /* wrong size */
    write_all_in_place(key_a, a, len_a - 1);
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
    uint8_t longer[45];
    memcpy(longer, a, 44);
    longer[44] = 0;
    write_all_in_place(key_a, longer, sizeof(longer));
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
    /* bad magic */
    uint8_t bad[44];
    memcpy(bad, a, 44);
    bad[0] ^= 0xff;
    write_all_in_place(key_a, bad, sizeof(bad));
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);

    /* the right key again */
    write_all_in_place(key_a, a, len_a);
    st = open_ok(fx);
    expect_entry(st, "id", "value", 5);
    provhsm_store_close(st);

    /* a missing key file cannot open the store */
    assert_int_equal(unlink(key_a), 0);
    log_reset();
    assert_int_equal(open_rc(fx), PROVHSM_E_WRONG_KEY);
    assert_true(log_has(key_a));
    free(a);
    free(b);
}

static void test_key_file_elsewhere(void **state)
{
    fixture *fx = *state;
    char keydir[256];

    snprintf(keydir, sizeof(keydir), "%s/keys/sub", fx->root);
    snprintf(fx->cfg.key_file, sizeof(fx->cfg.key_file), "%s/my.key", keydir);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    assert_int_equal(mode_of(keydir), 0700);
    assert_int_equal(mode_of(fx->cfg.key_file), 0600);

    char path[512];
    store_path(fx, "store.key", path, sizeof(path));
    assert_int_equal(access(path, F_OK), -1);

    provhsm_store *st = open_ok(fx);
    put_ok(st, "a", "b", 1);
    expect_entry(st, "a", "b", 1);
    provhsm_store_close(st);

    /* the store does not open without its configured key file */
    fx->cfg.key_file[0] = '\0';
    assert_int_equal(open_rc(fx), PROVHSM_E_WRONG_KEY);
}

/*
 * Whoever can write the key file's directory can swap the key file: that directory must
 * be ours or root's and writable by nobody else (others may read and enter it).
 */
static void test_key_file_directory_checked(void **state)
{
    fixture *fx = *state;
    char keydir[256];

    snprintf(keydir, sizeof(keydir), "%s/keys", fx->root);
    snprintf(fx->cfg.key_file, sizeof(fx->cfg.key_file), "%s/my.key", keydir);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);

    static const mode_t refused[] = {0770, 0707, 0720, 0777};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        char shown[8];
        snprintf(shown, sizeof(shown), "%04o", (unsigned)refused[i]);
        assert_int_equal(chmod(keydir, refused[i]), 0);
        log_reset();
        assert_int_equal(open_rc(fx), PROVHSM_E_PERMISSION);
        assert_true(log_has(keydir));
        assert_true(log_has(shown));
        assert_true(log_has("key file directory"));
    }
    assert_int_equal(chmod(keydir, 0755), 0);
    assert_int_equal(open_rc(fx), PROVHSM_OK);

    /* a new store does not put its key into such a directory either */
    snprintf(fx->cfg.store_dir, sizeof(fx->cfg.store_dir), "%s/second", fx->root);
    snprintf(fx->cfg.key_file, sizeof(fx->cfg.key_file), "%s/second.key", keydir);
    assert_int_equal(chmod(keydir, 0775), 0);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_E_PERMISSION);
    assert_int_equal(access(fx->cfg.key_file, F_OK), -1);
    assert_int_equal(chmod(keydir, 0700), 0);

    /* another owner (only testable with the right to chown) */
    snprintf(fx->cfg.store_dir, sizeof(fx->cfg.store_dir), "%s", fx->store);
    snprintf(fx->cfg.key_file, sizeof(fx->cfg.key_file), "%s/my.key", keydir);
    if (chown(keydir, geteuid() + 4242, (gid_t)-1) == 0) {
        log_reset();
        assert_int_equal(open_rc(fx), PROVHSM_E_PERMISSION);
        assert_true(log_has("owner uid"));
        assert_int_equal(chown(keydir, geteuid(), (gid_t)-1), 0);
    } else {
        printf("note: cannot chown: a key file directory of another owner is not tried\n");
    }
    assert_int_equal(open_rc(fx), PROVHSM_OK);
}

/* A FIFO in place of a store file or the passphrase file is refused without waiting. */
static void test_fifo_refused_without_blocking(void **state)
{
    fixture *fx = *state;
    char path[512], pfile[256];

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    put_ok(st, "e", "v", 1);
    store_path(fx, "e.entry", path, sizeof(path));
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkfifo(path, 0600), 0);
    alarm(10); /* a blocking open would end the program here */
    log_reset();
    expect_get_fails(st, "e", PROVHSM_E_CORRUPT);
    assert_true(log_has("not a regular file"));
    alarm(0);
    provhsm_store_close(st);
    assert_int_equal(unlink(path), 0);

    snprintf(pfile, sizeof(pfile), "%s/pass.fifo", fx->root);
    assert_int_equal(mkfifo(pfile, 0600), 0);
    snprintf(fx->cfg.passphrase_file, sizeof(fx->cfg.passphrase_file), "%s", pfile);
    snprintf(fx->cfg.store_dir, sizeof(fx->cfg.store_dir), "%s/p", fx->root);
    alarm(10);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_E_CORRUPT);
    alarm(0);
}

/* The other writer: on "go", opens the store, locks it, writes "child", says "done". */
static void run_locked_writer(const fixture *fx, int go_fd, int done_fd)
{
    provhsm_store *mine = NULL;
    char go;
    if (read(go_fd, &go, 1) != 1 || provhsm_store_open(&fx->cfg, &mine) != PROVHSM_OK ||
        provhsm_store_lock(mine) != PROVHSM_OK ||
        provhsm_store_put(mine, "child", (const uint8_t *)"c", 1) != PROVHSM_OK)
        _exit(1);
    provhsm_store_close(mine);
    _exit(write(done_fd, "d", 1) == 1 ? 0 : 2);
}

/*
 * The write lock excludes another handle in another process: while this process holds
 * it, the child's locked write waits; it goes through once the lock is released. (The
 * child is forked before the lock is taken: a child forked later would share the locked
 * descriptor, and with it the lock.)
 */
static void test_lock_excludes_other_writers(void **state)
{
    fixture *fx = *state;
    int go[2], done[2], status = 0;

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    assert_int_equal(pipe(go), 0);
    assert_int_equal(pipe(done), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        close(done[0]);
        close(go[1]);
        run_locked_writer(fx, go[0], done[1]);
    }
    close(done[1]);
    close(go[0]);
    provhsm_store *st = open_ok(fx);
    assert_int_equal(provhsm_store_lock(st), PROVHSM_OK);
    assert_int_equal(write(go[1], "g", 1), 1);
    struct pollfd pfd = {done[0], POLLIN, 0};
    assert_int_equal(poll(&pfd, 1, 400), 0); /* the child is still waiting */
    assert_int_equal(provhsm_store_has(st, "child"), 0);
    provhsm_store_close(st);
    assert_int_equal(poll(&pfd, 1, 10000), 1);
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    close(done[0]);
    close(go[1]);
    st = open_ok(fx);
    expect_entry(st, "child", "c", 1);
    provhsm_store_close(st);
}

/*
 * A rekey between a writer's open and its lock: the key the writer read is stale, and an
 * entry written under it would be lost. The lock refuses it, saying why; a fresh open
 * writes, and every entry reads under the new key.
 */
static void test_lock_refuses_a_key_replaced_since_open(void **state)
{
    fixture *fx = *state;
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    assert_int_equal(provhsm_store_lock(st), PROVHSM_OK);
    assert_int_equal(provhsm_store_put(st, "first", (const uint8_t *)"1", 1), PROVHSM_OK);
    provhsm_store_close(st);

    provhsm_store *stale = open_ok(fx);
    assert_int_equal(provhsm_store_rekey_with(&fx->cfg, "key-file"), PROVHSM_OK);
    log_reset();
    assert_int_equal(provhsm_store_lock(stale), PROVHSM_E_WRONG_KEY);
    assert_true(log_has("was given a new key"));
    provhsm_store_close(stale);

    st = open_ok(fx);
    assert_int_equal(provhsm_store_lock(st), PROVHSM_OK);
    assert_int_equal(provhsm_store_put(st, "second", (const uint8_t *)"2", 1), PROVHSM_OK);
    provhsm_store_close(st);
    st = open_ok(fx);
    expect_entry(st, "first", "1", 1);
    expect_entry(st, "second", "2", 1);
    provhsm_store_close(st);
}

/* The entry format functions a fuzz target calls: round trip, and refusals. */
static void test_seal_unseal(void **state)
{
    uint8_t key[32], *file = NULL, *plain = NULL;
    size_t file_len = 0, plain_len = 0;
    (void)state;

    memset(key, 0x42, sizeof(key));
    assert_int_equal(
        provhsm_store_seal(key, "name", NULL, 0, (const uint8_t *)"data", 4, &file, &file_len),
        PROVHSM_OK);
    assert_int_equal(file_len, 44 + 4);
    assert_int_equal(
        provhsm_store_unseal(key, "name", NULL, 0, file, file_len, "t", &plain, &plain_len),
        PROVHSM_OK);
    assert_int_equal(plain_len, 4);
    assert_memory_equal(plain, "data", 4);
    provhsm_secure_free(plain);
    plain = NULL;
    /* another name: authentication fails */
    assert_int_equal(
        provhsm_store_unseal(key, "other", NULL, 0, file, file_len, "t", &plain, &plain_len),
        PROVHSM_E_TAMPERED);
    /* a length field that disagrees with the size, a short buffer, bad magic */
    file[15] ^= 1;
    assert_int_equal(
        provhsm_store_unseal(key, "name", NULL, 0, file, file_len, "t", &plain, &plain_len),
        PROVHSM_E_CORRUPT);
    file[15] ^= 1;
    assert_int_equal(provhsm_store_unseal(key, "name", NULL, 0, file, 43, "t", &plain, &plain_len),
                     PROVHSM_E_CORRUPT);
    file[0] ^= 1;
    assert_int_equal(
        provhsm_store_unseal(key, "name", NULL, 0, file, file_len, "t", &plain, &plain_len),
        PROVHSM_E_CORRUPT);
    assert_null(plain);
    assert_int_equal(
        provhsm_store_unseal(NULL, "name", NULL, 0, file, file_len, "t", &plain, &plain_len),
        PROVHSM_E_INVALID_ARG);
    free(file);
}

static void test_flipped_bytes_detected(void **state)
{
    fixture *fx = *state;
    char path[512];
    const char value[] = "twenty-four byte value!";
    size_t len;

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    put_ok(st, "victim", value, sizeof(value));
    store_path(fx, "victim.entry", path, sizeof(path));
    uint8_t *orig = read_all(path, &len);
    assert_int_equal(len, 44 + sizeof(value));

    for (size_t off = 0; off < len; off++) {
        poke_byte(path, (off_t)off, (uint8_t)(orig[off] ^ 0x5a));
        /* the 16-byte header is checked structurally; the rest by the GCM tag */
        expect_get_fails(st, "victim", off < 16 ? PROVHSM_E_CORRUPT : PROVHSM_E_TAMPERED);
        poke_byte(path, (off_t)off, orig[off]);
    }
    /* every single-bit flip too, in nonce, ciphertext and tag */
    for (size_t off = 16; off < len; off++) {
        for (int bit = 0; bit < 8; bit++) {
            poke_byte(path, (off_t)off, (uint8_t)(orig[off] ^ (1u << bit)));
            expect_get_fails(st, "victim", PROVHSM_E_TAMPERED);
        }
        poke_byte(path, (off_t)off, orig[off]);
    }
    expect_entry(st, "victim", value, sizeof(value));
    provhsm_store_close(st);
    free(orig);
}

static void test_truncated_entry(void **state)
{
    fixture *fx = *state;
    char path[512];
    size_t len;

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    put_ok(st, "t", "some payload", 12);
    store_path(fx, "t.entry", path, sizeof(path));
    uint8_t *orig = read_all(path, &len);

    size_t cuts[] = {0, 1, 15, 16, 27, 28, 43, len - 16, len - 1};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        write_all_in_place(path, orig, cuts[i]);
        expect_get_fails(st, "t", PROVHSM_E_CORRUPT);
    }
    /* one byte too many is as bad as one too few */
    uint8_t *longer = malloc(len + 1);
    assert_non_null(longer);
    memcpy(longer, orig, len);
    longer[len] = 0;
    write_all_in_place(path, longer, len + 1);
    expect_get_fails(st, "t", PROVHSM_E_CORRUPT);

    write_all_in_place(path, orig, len);
    expect_entry(st, "t", "some payload", 12);
    provhsm_store_close(st);
    free(orig);
    free(longer);
}

static void test_entry_bound_to_name(void **state)
{
    fixture *fx = *state;
    char from[512], to[512];
    size_t len;

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    put_ok(st, "one", "first", 5);
    put_ok(st, "two", "second", 6);

    /* renamed: the file authenticates only as "one" */
    store_path(fx, "one.entry", from, sizeof(from));
    store_path(fx, "three.entry", to, sizeof(to));
    assert_int_equal(rename(from, to), 0);
    expect_get_fails(st, "three", PROVHSM_E_TAMPERED);
    expect_get_fails(st, "one", PROVHSM_E_NOT_FOUND);
    assert_int_equal(rename(to, from), 0);
    expect_entry(st, "one", "first", 5);

    /* "two"'s file copied over "one" */
    store_path(fx, "two.entry", to, sizeof(to));
    uint8_t *two = read_all(to, &len);
    write_all_in_place(from, two, len);
    expect_get_fails(st, "one", PROVHSM_E_TAMPERED);
    expect_entry(st, "two", "second", 6);

    /* the key-check entry cannot be read as an entry */
    uint8_t *check;
    store_path(fx, "store.check", to, sizeof(to));
    check = read_all(to, &len);
    store_path(fx, "check.entry", from, sizeof(from));
    write_new_file(from, check, len, 0600);
    expect_get_fails(st, "check", PROVHSM_E_TAMPERED);
    provhsm_store_close(st);
    free(two);
    free(check);
}

static void test_permissions(void **state)
{
    fixture *fx = *state;
    char path[512], key[512], meta[512];

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    put_ok(st, "e", "v", 1);

    /* store directory 0755 */
    assert_int_equal(chmod(fx->store, 0755), 0);
    log_reset();
    assert_int_equal(open_rc(fx), PROVHSM_E_PERMISSION);
    assert_true(log_has(fx->store));
    assert_true(log_has("0755"));
    assert_int_equal(chmod(fx->store, 0710), 0);
    assert_int_equal(open_rc(fx), PROVHSM_E_PERMISSION);
    assert_int_equal(chmod(fx->store, 0700), 0);
    assert_int_equal(open_rc(fx), PROVHSM_OK);

    /* an entry 0644: get() refuses it, and so does open() */
    store_path(fx, "e.entry", path, sizeof(path));
    assert_int_equal(chmod(path, 0644), 0);
    log_reset();
    expect_get_fails(st, "e", PROVHSM_E_PERMISSION);
    assert_true(log_has(path));
    assert_true(log_has("0644"));
    assert_int_equal(open_rc(fx), PROVHSM_E_PERMISSION);
    assert_int_equal(chmod(path, 0400), 0); /* stricter is fine */
    expect_entry(st, "e", "v", 1);
    assert_int_equal(chmod(path, 0600), 0);

    /* key file 0640 */
    store_path(fx, "store.key", key, sizeof(key));
    assert_int_equal(chmod(key, 0640), 0);
    log_reset();
    assert_int_equal(open_rc(fx), PROVHSM_E_PERMISSION);
    assert_true(log_has(key));
    assert_true(log_has("0640"));
    assert_int_equal(chmod(key, 0600), 0);

    /* header 0604 */
    store_path(fx, "store.meta", meta, sizeof(meta));
    assert_int_equal(chmod(meta, 0604), 0);
    assert_int_equal(open_rc(fx), PROVHSM_E_PERMISSION);
    assert_int_equal(chmod(meta, 0600), 0);
    assert_int_equal(open_rc(fx), PROVHSM_OK);

    /* an entry that is a symbolic link to a well-formed file is refused */
    char real[512];
    snprintf(real, sizeof(real), "%s/elsewhere", fx->root);
    assert_int_equal(rename(path, real), 0);
    assert_int_equal(symlink(real, path), 0);
    expect_get_fails(st, "e", PROVHSM_E_PERMISSION);
    assert_int_equal(open_rc(fx), PROVHSM_E_PERMISSION);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rename(real, path), 0);
    expect_entry(st, "e", "v", 1);

    /* a file owned by someone else (only testable with the right to chown) */
    if (chown(path, geteuid() + 4242, (gid_t)-1) == 0) {
        log_reset();
        expect_get_fails(st, "e", PROVHSM_E_PERMISSION);
        assert_true(log_has("owner uid"));
        assert_int_equal(open_rc(fx), PROVHSM_E_PERMISSION);
        assert_int_equal(chown(path, geteuid(), (gid_t)-1), 0);
        expect_entry(st, "e", "v", 1);
    }
    provhsm_store_close(st);
}

static void test_missing_and_corrupt_store(void **state)
{
    fixture *fx = *state;
    char meta[512], check[512];
    size_t len;

    /* nothing there, or an empty directory */
    assert_int_equal(open_rc(fx), PROVHSM_E_NOT_FOUND);
    assert_int_equal(mkdir(fx->store, 0700), 0);
    assert_int_equal(open_rc(fx), PROVHSM_E_NOT_FOUND);

    /* create accepts the existing empty directory */
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    assert_int_equal(open_rc(fx), PROVHSM_OK);

    store_path(fx, "store.meta", meta, sizeof(meta));
    uint8_t *orig = read_all(meta, &len);
    assert_int_equal(len, 64);
    assert_memory_equal(orig, "PHSMMETA", 8);
    assert_int_equal(orig[10], 1); /* key-file mode */

    write_all_in_place(meta, orig, 63);
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
    write_all_in_place(meta, orig, 0);
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
    write_all_in_place(meta, orig, 64);

    /* magic, version, mode, key-file fields that must be zero, reserved bytes */
    size_t offs[] = {0, 7, 9, 10, 11, 13, 20, 51, 52, 63};
    for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
        poke_byte(meta, (off_t)offs[i], (uint8_t)(orig[offs[i]] ^ 0x40));
        assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
        poke_byte(meta, (off_t)offs[i], orig[offs[i]]);
    }
    assert_int_equal(open_rc(fx), PROVHSM_OK);

    /* no check entry */
    store_path(fx, "store.check", check, sizeof(check));
    uint8_t *chk = read_all(check, &len);
    assert_int_equal(unlink(check), 0);
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
    write_new_file(check, chk, len, 0600);
    assert_int_equal(open_rc(fx), PROVHSM_OK);
    free(orig);
    free(chk);
}

#ifdef PROVHSM_WITH_TPM
/*
 * A header naming the TPM-sealed mode (3) is read without any TPM command up to
 * store.sealed: missing, it is named; malformed, it is refused before a TPM is contacted
 * (this configuration names none); scrypt fields in that mode are refused too. The
 * key-file store it was made from still opens once the header is restored.
 */
static void test_sealed_mode_header_checked_before_the_tpm(void **state)
{
    fixture *fx = *state;
    char meta[512], sealed[512];
    size_t len;

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    store_path(fx, "store.meta", meta, sizeof(meta));
    store_path(fx, "store.sealed", sealed, sizeof(sealed));
    uint8_t *orig = read_all(meta, &len);
    poke_byte(meta, 10, 3);
    log_reset();
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
    assert_true(log_has("store.sealed is missing"));

    /* a file that is not a sealed key: refused by the parser, no TPM command */
    static const uint8_t junk[] = "PHSMSEAL\0\1\0\0not a sealed key";
    write_new_file(sealed, junk, sizeof(junk) - 1, 0600);
    uint64_t before = provhsm_tpm_commands_total();
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
    assert_int_equal(provhsm_tpm_commands_total(), before);
    assert_int_equal(unlink(sealed), 0);

    /* scrypt parameters in a sealed store's header */
    poke_byte(meta, 11, 15);
    log_reset();
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
    assert_true(log_has("TPM-sealed store with scrypt parameters"));
    poke_byte(meta, 11, 0);
    poke_byte(meta, 10, orig[10]);
    assert_int_equal(open_rc(fx), PROVHSM_OK);
    free(orig);
}
#endif

static void test_passphrase_header_bound(void **state)
{
    fixture *fx = *state;
    char meta[512];
    size_t len;

    setenv(PASS_ENV, "pw", 1);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    store_path(fx, "store.meta", meta, sizeof(meta));
    uint8_t *orig = read_all(meta, &len);

    /* a changed salt or cost gives another key: the check entry tells */
    size_t offs[] = {20, 35, 51};
    for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
        poke_byte(meta, (off_t)offs[i], (uint8_t)(orig[offs[i]] ^ 1));
        assert_int_equal(open_rc(fx), PROVHSM_E_WRONG_KEY);
        poke_byte(meta, (off_t)offs[i], orig[offs[i]]);
    }
    poke_byte(meta, 11, 11); /* N = 2^11 */
    assert_int_equal(open_rc(fx), PROVHSM_E_WRONG_KEY);
    /* absurd cost is refused before any work is done */
    poke_byte(meta, 11, 60);
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
    poke_byte(meta, 11, 0);
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
    poke_byte(meta, 11, orig[11]);
    poke_byte(meta, 15, 0); /* r = 0 */
    assert_int_equal(open_rc(fx), PROVHSM_E_CORRUPT);
    poke_byte(meta, 15, orig[15]);
    assert_int_equal(open_rc(fx), PROVHSM_OK);
    free(orig);
}

static void test_create_twice(void **state)
{
    fixture *fx = *state;
    char meta[512];

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    put_ok(st, "keep", "me", 2);
    provhsm_store_close(st);

    log_reset();
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_E_EXISTS);
    assert_true(log_has(fx->store));
    setenv(PASS_ENV, "pw", 1); /* not even in the other mode */
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_E_EXISTS);
    unsetenv(PASS_ENV);

    /* nothing was disturbed */
    st = open_ok(fx);
    expect_entry(st, "keep", "me", 2);
    provhsm_store_close(st);

    /* an existing key file is never overwritten, even without a header */
    store_path(fx, "store.meta", meta, sizeof(meta));
    assert_int_equal(unlink(meta), 0);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_E_EXISTS);
}

static void test_failed_create_cleans_up(void **state)
{
    fixture *fx = *state;
    char check[512], key[512];

    /* a directory where the check entry goes makes create fail after the key file */
    store_path(fx, "store.check", check, sizeof(check));
    store_path(fx, "store.key", key, sizeof(key));
    assert_int_equal(mkdir(fx->store, 0700), 0);
    assert_int_equal(mkdir(check, 0700), 0);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_E_IO);
    assert_int_equal(access(key, F_OK), -1);
    assert_int_equal(count_prefix(fx->store, ".tmp-"), 0);
    assert_int_equal(open_rc(fx), PROVHSM_E_NOT_FOUND);

    assert_int_equal(rmdir(check), 0);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    assert_int_equal(open_rc(fx), PROVHSM_OK);
}

static void test_bad_scrypt_config(void **state)
{
    fixture *fx = *state;

    setenv(PASS_ENV, "pw", 1);
    fx->cfg.scrypt_log2_n = 0;
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_E_CONFIG);
    fx->cfg.scrypt_log2_n = 10;
    fx->cfg.scrypt_r = 0;
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_E_CONFIG);
    fx->cfg.scrypt_r = 8;
    /* nothing half-made stops a later, valid create */
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    assert_int_equal(open_rc(fx), PROVHSM_OK);
}

static void test_interrupted_replace(void **state)
{
    fixture *fx = *state;
    char tmp[512];

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    put_ok(st, "cfg", "old value", 9);

    provhsm_store_test_fail_before_rename = 1;
    assert_int_equal(provhsm_store_put(st, "cfg", (const uint8_t *)"new value!", 10), PROVHSM_E_IO);
    assert_int_equal(provhsm_store_put(st, "fresh", (const uint8_t *)"x", 1), PROVHSM_E_IO);
    provhsm_store_test_fail_before_rename = 0;

    /* the temp files are there, as after a crash, and change nothing */
    assert_int_equal(count_prefix(fx->store, ".tmp-"), 2);
    expect_entry(st, "cfg", "old value", 9);
    assert_int_equal(provhsm_store_has(st, "fresh"), 0);
    expect_get_fails(st, "fresh", PROVHSM_E_NOT_FOUND);
    provhsm_store_close(st);

    st = open_ok(fx);
    expect_entry(st, "cfg", "old value", 9);
    put_ok(st, "cfg", "new value!", 10);
    expect_entry(st, "cfg", "new value!", 10);
    provhsm_store_close(st);

    /* fresh temp files may belong to a write in progress: left alone */
    assert_int_equal(count_prefix(fx->store, ".tmp-"), 2);
    /* stale ones are cleaned at open */
    assert_true(find_prefix(fx->store, ".tmp-", tmp, sizeof(tmp)));
    struct timespec old[2] = {{time(NULL) - 3600, 0}, {time(NULL) - 3600, 0}};
    assert_int_equal(utimensat(AT_FDCWD, tmp, old, 0), 0);
    assert_int_equal(open_rc(fx), PROVHSM_OK);
    assert_int_equal(count_prefix(fx->store, ".tmp-"), 1);
    assert_int_equal(access(tmp, F_OK), -1);
}

static void scan_dir_for(const char *dir, const void *needle, size_t nlen)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(d)) != NULL) {
        char path[1024];
        struct stat sb;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        size_t len;
        uint8_t *buf = read_all(path, &len);
        if (bytes_contain(buf, len, needle, nlen))
            fail_msg("%s contains plaintext", path);
        free(buf);
        files++;
    }
    closedir(d);
    assert_true(files >= 3);
}

static void test_no_plaintext_on_disk(void **state)
{
    fixture *fx = *state;
    static uint8_t big[64 * 1024];
    const char *pass = "passphrase-marker-91c2";

    memset(big, 'q', sizeof(big));
    memcpy(big + 30000, MARKER, strlen(MARKER));

    for (int mode = 0; mode < 2; mode++) {
        if (mode == 1) {
            snprintf(fx->cfg.store_dir, sizeof(fx->cfg.store_dir), "%s/pass", fx->root);
            setenv(PASS_ENV, pass, 1);
        }
        assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
        provhsm_store *st = open_ok(fx);
        put_ok(st, "small", MARKER, strlen(MARKER));
        put_ok(st, "big", big, sizeof(big));
        provhsm_store_test_fail_before_rename = 1; /* the temp file as well */
        assert_int_equal(provhsm_store_put(st, "tmp", (const uint8_t *)MARKER, strlen(MARKER)),
                         PROVHSM_E_IO);
        provhsm_store_test_fail_before_rename = 0;
        expect_entry(st, "small", MARKER, strlen(MARKER));
        provhsm_store_close(st);

        scan_dir_for(fx->cfg.store_dir, MARKER, strlen(MARKER));
        if (mode == 1)
            scan_dir_for(fx->cfg.store_dir, pass, strlen(pass));
    }
}

static void test_modes_with_umask_zero(void **state)
{
    fixture *fx = *state;
    char path[512], parent[256];

    umask(0);
    snprintf(parent, sizeof(parent), "%s/deep", fx->root);
    snprintf(fx->store, sizeof(fx->store), "%s/deep/store", fx->root);
    snprintf(fx->cfg.store_dir, sizeof(fx->cfg.store_dir), "%s", fx->store);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);

    assert_int_equal(mode_of(parent), 0700);
    assert_int_equal(mode_of(fx->store), 0700);
    const char *files[] = {"store.meta", "store.check", "store.key"};
    for (size_t i = 0; i < 3; i++) {
        store_path(fx, files[i], path, sizeof(path));
        assert_int_equal(mode_of(path), 0600);
    }
    provhsm_store *st = open_ok(fx);
    put_ok(st, "e", "v", 1);
    put_ok(st, "e", "w", 1); /* replaced: the new file is 0600 too */
    store_path(fx, "e.entry", path, sizeof(path));
    assert_int_equal(mode_of(path), 0600);
    provhsm_store_close(st);

    /* passphrase mode */
    snprintf(fx->cfg.store_dir, sizeof(fx->cfg.store_dir), "%s/p", fx->root);
    setenv(PASS_ENV, "pw", 1);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    assert_int_equal(mode_of(fx->cfg.store_dir), 0700);
    snprintf(path, sizeof(path), "%s/p/store.meta", fx->root);
    assert_int_equal(mode_of(path), 0600);

    /* an existing directory open to others is refused, not chmod'ed: it is not ours to
     * change (issue item: init does not chmod a directory it did not create) */
    snprintf(fx->cfg.store_dir, sizeof(fx->cfg.store_dir), "%s/loose", fx->root);
    assert_int_equal(mkdir(fx->cfg.store_dir, 0777), 0);
    log_reset();
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_E_PERMISSION);
    assert_int_equal(mode_of(fx->cfg.store_dir), 0777);
    assert_true(log_has(fx->cfg.store_dir));
    assert_true(log_has("0777"));
    assert_true(log_has("did not create"));
    snprintf(path, sizeof(path), "%s/loose/store.meta", fx->root);
    assert_int_equal(access(path, F_OK), -1);
    /* made private by its owner, it is used as it is */
    assert_int_equal(chmod(fx->cfg.store_dir, 0700), 0);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    assert_int_equal(mode_of(fx->cfg.store_dir), 0700);
    assert_int_equal(open_rc(fx), PROVHSM_OK);
}

static void test_invalid_names(void **state)
{
    fixture *fx = *state;
    char name65[66], name64[65];
    const char *bad[] = {"",    "A",   "Abc",         "a.b",        "a/b",    "../x",
                         "a b", "x\n", "caf\xc3\xa9", "store.meta", ".tmp-x", name65};
    const char *good[] = {"a", "0", "_", "-", "a-b_c9", "-leading", name64};

    memset(name65, 'a', 65);
    name65[65] = '\0';
    memset(name64, 'b', 64);
    name64[64] = '\0';

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t *out = NULL;
        size_t len = 0;
        assert_int_equal(provhsm_store_put(st, bad[i], (const uint8_t *)"v", 1),
                         PROVHSM_E_INVALID_ARG);
        assert_int_equal(provhsm_store_get(st, bad[i], &out, &len), PROVHSM_E_INVALID_ARG);
        assert_null(out);
        assert_int_equal(provhsm_store_remove(st, bad[i]), PROVHSM_E_INVALID_ARG);
        assert_int_equal(provhsm_store_has(st, bad[i]), 0);
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        put_ok(st, good[i], "v", 1);
        expect_entry(st, good[i], "v", 1);
        assert_int_equal(provhsm_store_has(st, good[i]), 1);
    }
    /* nothing but the good entries and the store's own files were written */
    int n = 0;
    DIR *d = opendir(fx->store);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    assert_int_equal(n, 3 + (int)(sizeof(good) / sizeof(good[0])));
    provhsm_store_close(st);
}

static void test_null_arguments(void **state)
{
    fixture *fx = *state;
    provhsm_store *st = NULL;
    uint8_t *out = NULL;
    size_t len = 0;

    assert_int_equal(provhsm_store_create(NULL), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_store_open(NULL, &st), PROVHSM_E_INVALID_ARG);
    assert_null(st);
    assert_int_equal(provhsm_store_open(&fx->cfg, NULL), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_store_get(NULL, "a", &out, &len), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_store_put(NULL, "a", (const uint8_t *)"v", 1), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_store_remove(NULL, "a"), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_store_has(NULL, "a"), 0);
    provhsm_store_close(NULL);

    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    st = open_ok(fx);
    put_ok(st, "a", "v", 1);
    assert_int_equal(provhsm_store_get(st, NULL, &out, &len), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_store_get(st, "a", NULL, &len), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_store_get(st, "a", &out, NULL), PROVHSM_E_INVALID_ARG);
    assert_null(out);
    assert_int_equal(provhsm_store_put(st, NULL, (const uint8_t *)"v", 1), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_store_put(st, "a", NULL, 1), PROVHSM_E_INVALID_ARG);
    expect_entry(st, "a", "v", 1);
    assert_int_equal(provhsm_store_remove(st, NULL), PROVHSM_E_INVALID_ARG);
    assert_int_equal(provhsm_store_has(st, NULL), 0);
    provhsm_store_close(st);

    /* an empty store_dir is a configuration error */
    fx->cfg.store_dir[0] = '\0';
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_E_CONFIG);
    assert_int_equal(provhsm_store_open(&fx->cfg, &st), PROVHSM_E_CONFIG);
}

/* Decrypts an entry file by the layout documented in store.c, without the store code. */
static void decrypt_by_spec(const uint8_t *key, const char *name, const uint8_t *file, size_t len,
                            const void *want, size_t want_len)
{
    assert_true(len >= 44);
    assert_memory_equal(file, "PHSMENTR", 8);
    assert_int_equal(file[8], 0);
    assert_int_equal(file[9], 1);
    assert_int_equal(file[10], 1);
    assert_int_equal(file[11], 0);
    size_t n =
        ((size_t)file[12] << 24) | ((size_t)file[13] << 16) | ((size_t)file[14] << 8) | file[15];
    assert_int_equal(n, want_len);
    assert_int_equal(len, 44 + n);

    uint8_t aad[16 + 1 + 64];
    size_t name_len = strlen(name);
    memcpy(aad, file, 16);
    aad[16] = (uint8_t)name_len;
    memcpy(aad + 17, name, name_len);

    uint8_t plain[256], tag[16];
    int outl = 0, fin = 0;
    memcpy(tag, file + 28 + n, 16);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, file + 16), 1);
    assert_int_equal(EVP_DecryptUpdate(ctx, NULL, &outl, aad, (int)(17 + name_len)), 1);
    assert_true(n <= sizeof(plain));
    assert_int_equal(EVP_DecryptUpdate(ctx, plain, &outl, file + 28, (int)n), 1);
    assert_int_equal(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, tag), 1);
    assert_int_equal(EVP_DecryptFinal_ex(ctx, plain + outl, &fin), 1);
    EVP_CIPHER_CTX_free(ctx);
    assert_memory_equal(plain, want, want_len);
}

static void test_format_layout(void **state)
{
    fixture *fx = *state;
    char path[512];
    size_t klen, elen, elen2, mlen;
    const char value[] = "layout check";

    /* key-file mode */
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    provhsm_store *st = open_ok(fx);
    put_ok(st, "fmt", value, sizeof(value));
    store_path(fx, "store.key", path, sizeof(path));
    uint8_t *key = read_all(path, &klen);
    assert_int_equal(klen, 44);
    assert_memory_equal(key, "PHSMSKEY\0\1\0\0", 12);
    store_path(fx, "fmt.entry", path, sizeof(path));
    uint8_t *e1 = read_all(path, &elen);
    decrypt_by_spec(key + 12, "fmt", e1, elen, value, sizeof(value));

    /* the same value written again gets a fresh nonce and so a different file */
    put_ok(st, "fmt", value, sizeof(value));
    uint8_t *e2 = read_all(path, &elen2);
    assert_int_equal(elen, elen2);
    assert_memory_not_equal(e1 + 16, e2 + 16, 12);
    assert_memory_not_equal(e1 + 28, e2 + 28, elen - 28);
    decrypt_by_spec(key + 12, "fmt", e2, elen2, value, sizeof(value));
    provhsm_store_close(st);
    free(key);
    free(e1);
    free(e2);

    /* passphrase mode: key = scrypt(passphrase, salt, N, r, p) from the header */
    snprintf(fx->store, sizeof(fx->store), "%s/pp", fx->root);
    snprintf(fx->cfg.store_dir, sizeof(fx->cfg.store_dir), "%s", fx->store);
    setenv(PASS_ENV, "layout passphrase", 1);
    assert_int_equal(provhsm_store_create(&fx->cfg), PROVHSM_OK);
    st = open_ok(fx);
    put_ok(st, "fmt", value, sizeof(value));
    provhsm_store_close(st);

    store_path(fx, "store.meta", path, sizeof(path));
    uint8_t *meta = read_all(path, &mlen);
    assert_int_equal(mlen, 64);
    assert_memory_equal(meta, "PHSMMETA\0\1", 10);
    assert_int_equal(meta[10], 2);
    assert_int_equal(meta[11], 10);
    assert_memory_equal(meta + 12, "\0\0\0\x08\0\0\0\x01", 8);
    static const uint8_t zero[32];
    assert_memory_not_equal(meta + 20, zero, 32);
    assert_memory_equal(meta + 52, zero, 12);

    uint8_t derived[32];
    const char *pass = "layout passphrase";
    assert_int_equal(EVP_PBE_scrypt(pass, strlen(pass), meta + 20, 32, 1u << 10, 8, 1,
                                    64 * 1024 * 1024, derived, sizeof(derived)),
                     1);
    store_path(fx, "fmt.entry", path, sizeof(path));
    e1 = read_all(path, &elen);
    decrypt_by_spec(derived, "fmt", e1, elen, value, sizeof(value));
    free(e1);
    free(meta);
}

/* Several creates at once (threads here; processes alike): one store, one winner. */
typedef struct create_race {
    const provhsm_config *cfg;
    provhsm_err result;
} create_race;

static void *race_create(void *arg)
{
    create_race *r = arg;
    r->result = provhsm_store_create(r->cfg);
    return NULL;
}

static void test_concurrent_create(void **state)
{
    fixture *fx = *state;
    enum { RACERS = 4 };
    pthread_t th[RACERS];
    create_race r[RACERS];
    setenv(PASS_ENV, "race passphrase", 1);
    for (int i = 0; i < RACERS; i++) {
        r[i].cfg = &fx->cfg;
        r[i].result = PROVHSM_E__COUNT;
        assert_int_equal(pthread_create(&th[i], NULL, race_create, &r[i]), 0);
    }
    int ok = 0;
    for (int i = 0; i < RACERS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        if (r[i].result == PROVHSM_OK)
            ok++;
        else
            assert_int_equal(r[i].result, PROVHSM_E_EXISTS);
    }
    assert_int_equal(ok, 1);
    /* the store the winner made opens with the passphrase */
    provhsm_store *st = NULL;
    assert_int_equal(provhsm_store_open(&fx->cfg, &st), PROVHSM_OK);
    provhsm_store_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_key_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_trip_passphrase, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_passphrase, setup, teardown),
        cmocka_unit_test_setup_teardown(test_passphrase_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_key_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_file_elsewhere, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_file_directory_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fifo_refused_without_blocking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_excludes_other_writers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_refuses_a_key_replaced_since_open, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_seal_unseal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_bytes_detected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_entry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_entry_bound_to_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_permissions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_and_corrupt_store, setup, teardown),
        cmocka_unit_test_setup_teardown(test_passphrase_header_bound, setup, teardown),
#ifdef PROVHSM_WITH_TPM
        cmocka_unit_test_setup_teardown(test_sealed_mode_header_checked_before_the_tpm, setup,
                                        teardown),
#endif
        cmocka_unit_test_setup_teardown(test_create_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_create_cleans_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_scrypt_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interrupted_replace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_plaintext_on_disk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_modes_with_umask_zero, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_null_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_layout, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
