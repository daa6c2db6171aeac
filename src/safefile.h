/*
 * Opening a file provhsm trusts, and reading it, in one place: the store's files, its key
 * file and passphrase file, the configuration file and the TPM authorisation files.
 *
 * What is checked is what is read: the file is opened without following a symbolic link
 * (O_NOFOLLOW), without blocking on a FIFO (O_NONBLOCK) and without leaking into a child
 * (O_CLOEXEC); type, owner and mode are then checked with fstat on the opened descriptor,
 * and the size is bounded before anything is allocated.
 *
 * The rules (one per kind of file):
 *   PROVHSM_FILE_PRIVATE  store files. Owner = the effective uid; no access at all for
 *                         group or others (0600 for a file, 0700 for a directory, or
 *                         stricter). Read into plain memory (what is read is ciphertext).
 *   PROVHSM_FILE_SECRET   key file, passphrase file, TPM authorisations: the PRIVATE rule,
 *                         read into secure memory (secmem.h).
 *   PROVHSM_FILE_TRUSTED  the configuration file and the key file's directory. Owner = the
 *                         effective uid or root (root can change the system anyway, and
 *                         /etc/provhsm belongs to root); not writable by group or others.
 *                         Reading is allowed to all: the file holds no secret. Anyone able
 *                         to write the configuration could name a TCTI library, which the
 *                         TCTI loader would load into the host process.
 */
#ifndef PROVHSM_SAFEFILE_H
#define PROVHSM_SAFEFILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include "provhsm/provhsm.h"

typedef enum provhsm_file_rule {
    PROVHSM_FILE_PRIVATE,
    PROVHSM_FILE_SECRET,
    PROVHSM_FILE_TRUSTED
} provhsm_file_rule;

/* A file to open: `name` relative to `dirfd` (AT_FDCWD for a plain path). */
typedef struct provhsm_file_ref {
    int dirfd;
    const char *name; /* what is opened */
    const char *path; /* what messages show (the full path) */
    const char *what; /* what messages call it: "configuration file", "store file", ... */
    char *errbuf;     /* optional: receives a copy of the logged message */
    size_t errlen;
} provhsm_file_ref;

/*
 * Opens and reads the whole file, at most max_len bytes, after the checks above. On
 * success *out holds the contents followed by a NUL (not counted in *len_out), in secure
 * memory for PROVHSM_FILE_SECRET (free with provhsm_secure_free()), else malloc'd.
 * A missing file is PROVHSM_E_NOT_FOUND and is not logged (the caller knows what that
 * means). A symbolic link, a wrong owner or mode: PROVHSM_E_PERMISSION. Not a regular
 * file, or larger than max_len: PROVHSM_E_CORRUPT. Every failure but NOT_FOUND is logged
 * at error level naming the file.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_safefile_read(const provhsm_file_ref *f,
                                                     provhsm_file_rule rule, size_t max_len,
                                                     uint8_t **out, size_t *len_out);

/*
 * Opens a directory (following links in its path: the check is on what was opened) and
 * checks its owner and mode under `rule`. *fd_out is an O_RDONLY|O_DIRECTORY|O_CLOEXEC
 * descriptor. PROVHSM_E_NOT_FOUND (not logged) when it does not exist.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_safefile_open_dir(const provhsm_file_ref *f,
                                                         provhsm_file_rule rule, int *fd_out);

/* Checks owner and mode (not the type) of something already stat'ed; logs when refused. */
PROVHSM_MUST_CHECK provhsm_err provhsm_safefile_check(const provhsm_file_ref *f,
                                                      const struct stat *sb,
                                                      provhsm_file_rule rule);

#endif
