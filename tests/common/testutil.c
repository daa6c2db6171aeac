/*
 * Test utilities: whole-file reads and hex decoding for fixtures, a test's private
 * directory and config file, capture of the library's log (see testutil.h). Used by unit
 * and integration tests, the benchmarks; the log capture buffer is its only state.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provhsm/provhsm.h"
#include "testutil.h"

int provhsm_test_read_file(const char *path, uint8_t **buf_out, size_t *len_out)
{
    int ret = -1;
    FILE *f = NULL;
    uint8_t *buf = NULL;
    size_t cap = 0;
    size_t len = 0;

    if (path == NULL || buf_out == NULL || len_out == NULL)
        return -1;
    f = fopen(path, "rb");
    if (f == NULL)
        goto cleanup;
    for (;;) {
        if (cap - len < 2) {
            size_t ncap = cap == 0 ? 4096 : cap * 2;
            uint8_t *nbuf = realloc(buf, ncap);
            if (nbuf == NULL)
                goto cleanup;
            buf = nbuf;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0) {
            if (ferror(f))
                goto cleanup;
            break;
        }
    }
    buf[len] = 0;
    *buf_out = buf;
    *len_out = len;
    buf = NULL;
    ret = 0;

cleanup:
    if (f != NULL)
        fclose(f);
    free(buf);
    return ret;
}

int provhsm_test_read_fixture(const char *relpath, uint8_t **buf_out, size_t *len_out)
{
    const char *dir = getenv("PROVHSM_FIXTURES");
    if (dir == NULL || *dir == '\0' || relpath == NULL)
        return -1;
    size_t n = strlen(dir) + 1 + strlen(relpath) + 1;
    char *path = malloc(n);
    if (path == NULL)
        return -1;
    snprintf(path, n, "%s/%s", dir, relpath);
    int ret = provhsm_test_read_file(path, buf_out, len_out);
    free(path);
    return ret;
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int provhsm_test_hex_decode(const char *hex, uint8_t **buf_out, size_t *len_out)
{
    if (hex == NULL || buf_out == NULL || len_out == NULL)
        return -1;
    size_t n = strlen(hex);
    while (n > 0 && isspace((unsigned char)hex[n - 1]))
        n--;
    if (n % 2 != 0)
        return -1;
    uint8_t *buf = malloc(n / 2 + 1);
    if (buf == NULL)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_nibble(hex[2 * i]);
        int lo = hex_nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(buf);
            return -1;
        }
        buf[i] = (uint8_t)(hi << 4 | lo);
    }
    *buf_out = buf;
    *len_out = n / 2;
    return 0;
}

int provhsm_test_workdir_make(char *dir, size_t len, const char *tag)
{
    int n = snprintf(dir, len, "/tmp/provhsm-%s-XXXXXX", tag);
    if (n < 0 || (size_t)n >= len || mkdtemp(dir) == NULL) {
        fprintf(stderr, "making the temporary directory for %s failed: %s\n", tag, strerror(errno));
        dir[0] = '\0';
        return -1;
    }
    return 0;
}

void provhsm_test_remove_tree(const char *path)
{
    struct stat st;
    if (path == NULL || path[0] == '\0' || lstat(path, &st) != 0)
        return;
    if (!S_ISDIR(st.st_mode)) {
        unlink(path);
        return;
    }
    DIR *d = opendir(path);
    struct dirent *e;
    char child[1024];
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(child, sizeof(child), "%s/%s", path, e->d_name);
        provhsm_test_remove_tree(child);
    }
    if (d != NULL)
        closedir(d);
    rmdir(path);
}

int provhsm_test_config_use(const char *path, const char *fmt, ...)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "writing %s failed: %s\n", path, strerror(errno));
        return -1;
    }
    va_list ap;
    va_start(ap, fmt);
    int written = vfprintf(f, fmt, ap);
    va_end(ap);
    if (fclose(f) != 0 || written < 0 || chmod(path, 0600) != 0) {
        fprintf(stderr, "writing %s failed\n", path);
        return -1;
    }
    if (provhsm_config_use_file(path) != PROVHSM_OK) {
        fprintf(stderr, "%s refused as the config\n", path);
        return -1;
    }
    return 0;
}

static pthread_mutex_t capture_lock = PTHREAD_MUTEX_INITIALIZER;
static char captured[16384];
static size_t captured_len;

static void capture_line(provhsm_log_level level, const char *module, const char *message,
                         void *ctx)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    (void)ctx;
    if (getenv("PROVHSM_TEST_VERBOSE") != NULL)
        fprintf(stderr, "provhsm: %s: [%s] %s\n", names[level & 3], module, message);
    pthread_mutex_lock(&capture_lock);
    for (int attempt = 0; attempt < 2; attempt++) {
        int n = snprintf(captured + captured_len, sizeof(captured) - captured_len, "[%s] %s\n",
                         module, message);
        if (n > 0 && (size_t)n < sizeof(captured) - captured_len) {
            captured_len += (size_t)n;
            break;
        }
        captured_len = 0; /* full: start again with the newest lines */
        captured[0] = '\0';
    }
    pthread_mutex_unlock(&capture_lock);
}

void provhsm_test_log_capture(void)
{
    provhsm_set_log_callback(capture_line, NULL);
}

void provhsm_test_log_clear(void)
{
    pthread_mutex_lock(&capture_lock);
    captured_len = 0;
    captured[0] = '\0';
    pthread_mutex_unlock(&capture_lock);
}

int provhsm_test_log_seen(const char *text)
{
    pthread_mutex_lock(&capture_lock);
    int seen = strstr(captured, text) != NULL;
    pthread_mutex_unlock(&capture_lock);
    return seen;
}
