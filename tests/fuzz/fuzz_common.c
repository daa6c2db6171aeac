/* Helpers shared by the fuzz targets (fuzz_common.h). */
#define _XOPEN_SOURCE 700 /* nftw */
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "log.h"

static char store_root[64];

void fuzz_check_failed(const char *what, const char *file, int line)
{
    fprintf(stderr, "fuzz: property broken: %s (%s:%d)\n", what, file, line);
    abort();
}

static void quiet_log(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)level;
    (void)module;
    (void)message;
    (void)ctx;
}

void fuzz_quiet_logs(void)
{
    setenv("TSS2_LOG", "all+none", 1); /* tpm2-tss's own warnings on every bad input */
    provhsm_set_log_callback(quiet_log, NULL);
    provhsm_set_log_level(PROVHSM_LOG_DEBUG);
}

static void die(const char *what)
{
    fprintf(stderr, "fuzz: %s\n", what);
    abort();
}

static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_store_root(void)
{
    if (store_root[0] != '\0')
        nftw(store_root, remove_one, 8, FTW_DEPTH | FTW_PHYS);
}

provhsm_store *fuzz_store_setup(provhsm_config *cfg)
{
    struct stat sb;
    const char *base = stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(store_root, sizeof(store_root), "%s/provhsm-fuzz-XXXXXX", base);
    if (mkdtemp(store_root) == NULL)
        die("cannot make a temporary directory");
    atexit(remove_store_root);

    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->store_dir, sizeof(cfg->store_dir), "%s/store", store_root);
    /* a variable nobody sets: the store is a key-file store */
    strcpy(cfg->passphrase_env, "PROVHSM_FUZZ_NO_PASSPHRASE");
    unsetenv(cfg->passphrase_env);
    cfg->scrypt_log2_n = 10;
    cfg->scrypt_r = 8;
    cfg->scrypt_p = 1;

    provhsm_store *st = NULL;
    if (provhsm_store_create(cfg) != PROVHSM_OK || provhsm_store_open(cfg, &st) != PROVHSM_OK)
        die("cannot create the store");
    return st;
}

char *fuzz_text(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL)
        die("out of memory");
    memcpy(text, data, size);
    text[size] = '\0';
    return text;
}

void fuzz_write_file(const char *path, const uint8_t *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        die("cannot open a file to write");
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n <= 0)
            die("cannot write a file");
        done += (size_t)n;
    }
    close(fd);
}

uint8_t *fuzz_read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        die("cannot open a file to read");
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            uint8_t *bigger = realloc(buf, cap);
            if (bigger == NULL)
                die("out of memory");
            buf = bigger;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    fclose(f);
    *len_out = len;
    return buf;
}
