/*
 * Running as the store's owner. A device's SDK application runs as its own unprivileged
 * user, while factory scripts run as root. The store must belong to the application's
 * user (the library refuses files of another owner), so when root runs the tool on a
 * store owned by someone else, the tool becomes that user before doing anything: every
 * file it writes is then the owner's, and it never has to chown or loosen a file.
 *
 * `init --owner USER[:GROUP]` makes a store for another user: root creates the directory
 * (or takes an empty one that root owns, which holds nothing to expose), hands it to the
 * user, becomes the user, and creates the store inside as that user.
 *
 * Called from main() (provhsm.c) and from init (cmd_store.c). No static state.
 */
/* initgroups and setgroups are not POSIX */
#define _DEFAULT_SOURCE 1

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "cli.h"

/* Becomes uid/gid for good: supplementary groups first (they need root), then the group,
 * then the user; finally checks that root cannot be regained. */
static int drop_to(uid_t uid, gid_t gid, const char *user_name)
{
    int groups_rc = user_name != NULL ? initgroups(user_name, gid) : setgroups(1, &gid);
    if (groups_rc != 0)
        return provhsm_cli_error("cannot set the groups of uid %ld: %s", (long)uid,
                                 strerror(errno));
    if (setgid(gid) != 0)
        return provhsm_cli_error("cannot become gid %ld: %s", (long)gid, strerror(errno));
    if (setuid(uid) != 0)
        return provhsm_cli_error("cannot become uid %ld: %s", (long)uid, strerror(errno));
    if (uid != 0 && (setuid(0) == 0 || geteuid() == 0))
        return provhsm_cli_error("root could be regained after becoming uid %ld", (long)uid);
    return PROVHSM_CLI_OK;
}

/*
 * The library picks a default store by user (root's is under /var/lib, others' under
 * their home): once we run as the owner, the store must stay the one root was asked about.
 */
static int pin_store_dir(const char *dir)
{
    if (setenv("PROVHSM_STORE", dir, 1) != 0)
        return provhsm_cli_error("cannot set PROVHSM_STORE: %s", strerror(errno));
    return PROVHSM_CLI_OK;
}

static int become(uid_t uid, gid_t gid, const char *dir)
{
    const struct passwd *pw = getpwuid(uid);
    int rc = pin_store_dir(dir);
    if (rc != PROVHSM_CLI_OK)
        return rc;
    if (provhsm_cli_verbose())
        fprintf(stderr, "provhsm: acting as %s (uid %ld), the owner of the store %s\n",
                pw != NULL ? pw->pw_name : "a user without a name", (long)uid, dir);
    return drop_to(uid, gid, pw != NULL ? pw->pw_name : NULL);
}

int provhsm_cli_become_store_owner(void)
{
    struct stat sb;
    char *dir = NULL;
    int rc = PROVHSM_CLI_OK;

    if (geteuid() != 0)
        return PROVHSM_CLI_OK;
    /* a configuration that cannot be read is the command's to report */
    if (provhsm_config_store_dir(&dir) != PROVHSM_OK)
        return PROVHSM_CLI_OK;
    if (lstat(dir, &sb) == 0 && S_ISDIR(sb.st_mode) && sb.st_uid != 0) {
        const struct passwd *pw = getpwuid(sb.st_uid);
        rc = become(sb.st_uid, pw != NULL ? pw->pw_gid : sb.st_gid, dir);
    }
    free(dir);
    return rc;
}

/* ---- init --owner ------------------------------------------------------------------- */

static int parse_id(const char *text, unsigned long *out)
{
    char *end = NULL;
    if (text[0] < '0' || text[0] > '9')
        return 0;
    errno = 0;
    *out = strtoul(text, &end, 10);
    return errno == 0 && *end == '\0' && *out < (unsigned long)INT_MAX;
}

int provhsm_cli_resolve_owner(const char *spec, provhsm_cli_owner *out)
{
    char user[256];
    const char *colon = strchr(spec, ':');
    size_t ulen = colon != NULL ? (size_t)(colon - spec) : strlen(spec);
    unsigned long num;

    if (ulen == 0 || ulen >= sizeof(user) || (colon != NULL && colon[1] == '\0'))
        return provhsm_cli_error("--owner takes USER or USER:GROUP, not '%s'", spec);
    memcpy(user, spec, ulen);
    user[ulen] = '\0';

    const struct passwd *pw = getpwnam(user);
    if (pw == NULL && parse_id(user, &num))
        pw = getpwuid((uid_t)num);
    if (pw == NULL)
        return provhsm_cli_error("no such user: %s", user);
    if (pw->pw_uid == 0)
        return provhsm_cli_error("--owner names root; run init without --owner instead");
    out->uid = pw->pw_uid;
    out->gid = pw->pw_gid;
    if (colon != NULL) {
        const struct group *gr = getgrnam(colon + 1);
        if (gr == NULL && parse_id(colon + 1, &num))
            gr = getgrgid((gid_t)num);
        if (gr == NULL)
            return provhsm_cli_error("no such group: %s", colon + 1);
        out->gid = gr->gr_gid;
    }
    snprintf(out->name, sizeof(out->name), "%s", pw->pw_name);
    return PROVHSM_CLI_OK;
}

static int is_empty_dir(int fd)
{
    int dup_fd = dup(fd);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    const struct dirent *e;
    int empty = 1;

    if (d == NULL) {
        if (dup_fd >= 0)
            close(dup_fd);
        return 0;
    }
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            empty = 0;
    closedir(d);
    return empty;
}

/*
 * Makes `dir` the owner's, 0700: created here, or an existing empty directory of root's
 * (one a package made), or one the owner has already. Anything else is refused, so that
 * no file that holds something is ever given away or loosened.
 */
static int hand_over_dir(const char *dir, const provhsm_cli_owner *owner)
{
    struct stat sb;
    int fd, rc = PROVHSM_CLI_OK;

    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return provhsm_cli_error("cannot create the store directory %s: %s", dir, strerror(errno));
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return provhsm_cli_error("cannot open the store directory %s: %s", dir, strerror(errno));
    if (fstat(fd, &sb) != 0) {
        rc = provhsm_cli_error("cannot stat %s: %s", dir, strerror(errno));
    } else if (sb.st_uid == owner->uid) {
        /* the owner's already: the library checks its mode */
    } else if (sb.st_uid != 0 || !is_empty_dir(fd)) {
        rc = provhsm_cli_error("the store directory %s belongs to uid %ld and is not an empty "
                               "directory of root's; it is not given to %s",
                               dir, (long)sb.st_uid, owner->name);
    } else if (fchown(fd, owner->uid, owner->gid) != 0 || fchmod(fd, 0700) != 0) {
        rc = provhsm_cli_error("cannot give %s to %s: %s", dir, owner->name, strerror(errno));
    }
    close(fd);
    return rc;
}

int provhsm_cli_init_as_owner(const char *dir, const provhsm_cli_owner *owner)
{
    int rc;

    if (geteuid() != 0) {
        /* main() already made us the owner of an existing store directory */
        if (geteuid() == owner->uid)
            return PROVHSM_CLI_OK;
        return provhsm_cli_error("init --owner must be run as root");
    }
    rc = hand_over_dir(dir, owner);
    if (rc != PROVHSM_CLI_OK)
        return rc;
    rc = pin_store_dir(dir);
    if (rc != PROVHSM_CLI_OK)
        return rc;
    return drop_to(owner->uid, owner->gid, owner->name);
}
