/*
 * Opening and reading the files provhsm trusts (safefile.h): the store, the configuration,
 * the TPM authorisations. One implementation, so that every such file gets the same
 * checks on the descriptor that is then read. No static state.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "safefile.h"
#include "secmem.h"

#define MOD "file"

#define ROOT_UID 0

static const char *what_of(const provhsm_file_ref *f)
{
    return f->what != NULL ? f->what : "file";
}

/* Room for a message that names a path twice. */
#define REPORT_MAX (2 * 4096 + 512)

/*
 * Logs the message at error level and copies it to the caller's buffer, if any. The
 * buffer is on the heap: this runs inside an SDK create, possibly on a 16 KB stack.
 */
static void report(const provhsm_file_ref *f, const char *fmt, ...) PROVHSM_PRINTF(2, 3);

static void report(const provhsm_file_ref *f, const char *fmt, ...)
{
    char *msg = malloc(REPORT_MAX);
    va_list ap;

    if (msg == NULL) {
        PH_ERR(MOD, "%s %s is refused (out of memory for the reason)", what_of(f), f->path);
        if (f->errbuf != NULL && f->errlen > 0)
            snprintf(f->errbuf, f->errlen, "%s %s is refused", what_of(f), f->path);
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, REPORT_MAX, fmt, ap);
    va_end(ap);
    PH_ERR(MOD, "%s", msg);
    if (f->errbuf != NULL && f->errlen > 0)
        snprintf(f->errbuf, f->errlen, "%s", msg);
    free(msg);
}

static int owner_ok(uid_t owner, provhsm_file_rule rule)
{
    if (owner == geteuid())
        return 1;
    return rule == PROVHSM_FILE_TRUSTED && owner == ROOT_UID;
}

static int mode_ok(mode_t mode, provhsm_file_rule rule)
{
    /* TRUSTED: others may read, nobody but the owner may write */
    mode_t forbidden = rule == PROVHSM_FILE_TRUSTED ? (S_IWGRP | S_IWOTH) : (S_IRWXG | S_IRWXO);
    return (mode & forbidden) == 0;
}

provhsm_err provhsm_safefile_check(const provhsm_file_ref *f, const struct stat *sb,
                                   provhsm_file_rule rule)
{
    int is_dir = S_ISDIR(sb->st_mode);

    if (owner_ok(sb->st_uid, rule) && mode_ok(sb->st_mode, rule))
        return PROVHSM_OK;
    if (rule == PROVHSM_FILE_TRUSTED)
        report(f,
               "%s %s has mode %04o and owner uid %ld; it must not be writable by group or "
               "others (chmod go-w %s) and must be owned by uid %ld or root, because whoever "
               "can change it controls what provhsm does",
               what_of(f), f->path, (unsigned)(sb->st_mode & 07777), (long)sb->st_uid, f->path,
               (long)geteuid());
    else
        report(f,
               "%s %s has mode %04o and owner uid %ld; it must be %s or stricter and owned by "
               "uid %ld",
               what_of(f), f->path, (unsigned)(sb->st_mode & 07777), (long)sb->st_uid,
               is_dir ? "0700" : "0600", (long)geteuid());
    return PROVHSM_E_PERMISSION;
}

static provhsm_err open_failed(const provhsm_file_ref *f, int err)
{
    if (err == ENOENT || err == ENOTDIR)
        return PROVHSM_E_NOT_FOUND;
    if (err == ELOOP) {
        report(f, "%s %s is a symbolic link; it must be a regular file", what_of(f), f->path);
        return PROVHSM_E_PERMISSION;
    }
    report(f, "cannot open %s %s: %s", what_of(f), f->path, strerror(err));
    return err == EACCES ? PROVHSM_E_PERMISSION : PROVHSM_E_IO;
}

/* Reads exactly len bytes; one more byte offered tells a file that grew since fstat. */
static provhsm_err read_exact(const provhsm_file_ref *f, int fd, uint8_t *buf, size_t len)
{
    size_t got = 0;

    while (got <= len) {
        ssize_t n = read(fd, buf + got, len + 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            report(f, "cannot read %s %s: %s", what_of(f), f->path, strerror(errno));
            return PROVHSM_E_IO;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (got != len) {
        report(f, "%s %s changed size while being read", what_of(f), f->path);
        return PROVHSM_E_CORRUPT;
    }
    return PROVHSM_OK;
}

/* fstat checks of an opened file; on success *len_out is its size. */
static provhsm_err check_opened(const provhsm_file_ref *f, int fd, provhsm_file_rule rule,
                                size_t max_len, size_t *len_out)
{
    struct stat sb;
    provhsm_err rc;

    if (fstat(fd, &sb) != 0) {
        report(f, "cannot stat %s %s: %s", what_of(f), f->path, strerror(errno));
        return PROVHSM_E_IO;
    }
    if (!S_ISREG(sb.st_mode)) {
        report(f, "%s %s is not a regular file", what_of(f), f->path);
        return PROVHSM_E_CORRUPT;
    }
    rc = provhsm_safefile_check(f, &sb, rule);
    if (rc != PROVHSM_OK)
        return rc;
    if (sb.st_size < 0 || (unsigned long long)sb.st_size > max_len) {
        report(f, "%s %s is %lld bytes, more than the %zu allowed", what_of(f), f->path,
               (long long)sb.st_size, max_len);
        return PROVHSM_E_CORRUPT;
    }
    *len_out = (size_t)sb.st_size;
    return PROVHSM_OK;
}

provhsm_err provhsm_safefile_read(const provhsm_file_ref *f, provhsm_file_rule rule, size_t max_len,
                                  uint8_t **out, size_t *len_out)
{
    int secure = rule == PROVHSM_FILE_SECRET;
    provhsm_err rc;
    uint8_t *buf = NULL;
    size_t len = 0;
    int fd;

    if (f == NULL || f->name == NULL || f->path == NULL || out == NULL || len_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    fd = openat(f->dirfd, f->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return open_failed(f, errno);
    rc = check_opened(f, fd, rule, max_len, &len);
    if (rc != PROVHSM_OK)
        goto out;
    buf = secure ? provhsm_secure_alloc(len + 1) : malloc(len + 1);
    if (buf == NULL) {
        report(f, "out of memory reading %s %s", what_of(f), f->path);
        rc = PROVHSM_E_NOMEM;
        goto out;
    }
    rc = read_exact(f, fd, buf, len);
    if (rc != PROVHSM_OK)
        goto out;
    buf[len] = '\0';
    *out = buf;
    *len_out = len;
    buf = NULL;
out:
    if (buf != NULL) {
        provhsm_wipe(buf, len + 1);
        if (secure)
            provhsm_secure_free(buf);
        else
            free(buf);
    }
    close(fd);
    return rc;
}

provhsm_err provhsm_safefile_open_dir(const provhsm_file_ref *f, provhsm_file_rule rule,
                                      int *fd_out)
{
    struct stat sb;
    provhsm_err rc;
    int fd;

    if (f == NULL || f->name == NULL || f->path == NULL || fd_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    fd = openat(f->dirfd, f->name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT || err == ENOTDIR)
            return PROVHSM_E_NOT_FOUND;
        report(f, "cannot open %s %s: %s", what_of(f), f->path, strerror(err));
        return err == EACCES ? PROVHSM_E_PERMISSION : PROVHSM_E_IO;
    }
    if (fstat(fd, &sb) != 0) {
        report(f, "cannot stat %s %s: %s", what_of(f), f->path, strerror(errno));
        close(fd);
        return PROVHSM_E_IO;
    }
    rc = provhsm_safefile_check(f, &sb, rule);
    if (rc != PROVHSM_OK) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return PROVHSM_OK;
}
