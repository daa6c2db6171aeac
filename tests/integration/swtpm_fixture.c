/*
 * swtpm fixture and shared helpers for the TPM integration tests (see swtpm_fixture.h).
 * Starts the simulator with fork/exec, finds free ports by binding port 0, and polls
 * the command port until it accepts.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <openssl/evp.h>

#include "swtpm_fixture.h"
#include "testutil.h"
#include "tpm_esys.h"

#define START_ATTEMPTS 5
#define READY_WAIT_MS  10000

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int find_in_path(const char *name, char *out, size_t outlen)
{
    const char *path = getenv("PATH");
    if (path == NULL || *path == '\0')
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path != '\0') {
        size_t n = strcspn(path, ":");
        if (n > 0 && snprintf(out, outlen, "%.*s/%s", (int)n, path, name) < (int)outlen &&
            access(out, X_OK) == 0)
            return 0;
        path += n;
        if (*path == ':')
            path++;
    }
    return -1;
}

/* The swtpm to start: $PROVHSM_TEST_SWTPM when set (tests point it at a program that
 * fails, to exercise the setup-failure paths), else swtpm on PATH. */
static int swtpm_program(char *out, size_t outlen)
{
    const char *forced = getenv("PROVHSM_TEST_SWTPM");
    if (forced != NULL && *forced != '\0')
        return snprintf(out, outlen, "%s", forced) < (int)outlen ? 0 : -1;
    return find_in_path("swtpm", out, outlen);
}

int provhsm_test_swtpm_available(void)
{
    char buf[512];
    return swtpm_program(buf, sizeof(buf)) == 0;
}

int provhsm_test_programs_available(const char *first, ...)
{
    char buf[512];
    va_list ap;
    int ok = 1;
    va_start(ap, first);
    for (const char *p = first; p != NULL; p = va_arg(ap, const char *))
        if (find_in_path(p, buf, sizeof(buf)) != 0)
            ok = 0;
    va_end(ap);
    return ok;
}

/* ---- files ---------------------------------------------------------------------- */

static int copy_file(const char *from, const char *to)
{
    int ret = -1;
    int in = open(from, O_RDONLY);
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    char buf[8192];
    ssize_t n;
    if (in < 0 || out < 0)
        goto cleanup;
    while ((n = read(in, buf, sizeof(buf))) > 0)
        if (write(out, buf, (size_t)n) != n)
            goto cleanup;
    ret = n == 0 ? 0 : -1;
cleanup:
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    return ret;
}

static int copy_dir_files(const char *from, const char *to)
{
    DIR *d = opendir(from);
    struct dirent *e;
    char src[1024], dst[1024];
    int ret = 0;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL && ret == 0) {
        struct stat st;
        snprintf(src, sizeof(src), "%s/%s", from, e->d_name);
        snprintf(dst, sizeof(dst), "%s/%s", to, e->d_name);
        if (stat(src, &st) == 0 && S_ISREG(st.st_mode))
            ret = copy_file(src, dst);
    }
    closedir(d);
    return ret;
}

/* ---- ports and the process ---------------------------------------------------------- */

static int bind_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) != 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* A port P such that P and P + 1 are both free right now. */
static int free_port_pair(void)
{
    for (int i = 0; i < 50; i++) {
        int p = bind_port(0);
        if (p > 0 && p < 65535 && bind_port(p + 1) == p + 1)
            return p;
    }
    return -1;
}

static int port_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    int ok;
    if (fd < 0)
        return 0;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static pid_t spawn_swtpm(const provhsm_test_swtpm *s)
{
    char exe[512], state[512], server[128], ctrl[128], logpath[512];
    if (swtpm_program(exe, sizeof(exe)) != 0)
        return -1;
    snprintf(state, sizeof(state), "dir=%s/state", s->dir);
    snprintf(server, sizeof(server), "type=tcp,port=%d,bindaddr=127.0.0.1", s->port);
    snprintf(ctrl, sizeof(ctrl), "type=tcp,port=%d,bindaddr=127.0.0.1", s->port + 1);
    snprintf(logpath, sizeof(logpath), "%s/swtpm.log", s->dir);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* child: dies with the test program, output to the log file */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
    char *const argv[] = {"swtpm",
                          "socket",
                          "--tpm2",
                          "--tpmstate",
                          state,
                          "--server",
                          server,
                          "--ctrl",
                          ctrl,
                          "--flags",
                          "not-need-init,startup-clear",
                          NULL};
    execv(exe, argv);
    _exit(127);
}

static int reap(pid_t pid, int wait_ms)
{
    for (int waited = 0;; waited += 10) {
        pid_t r = waitpid(pid, NULL, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD))
            return 0;
        if (waited >= wait_ms)
            return -1;
        sleep_ms(10);
    }
}

/* Starts the process on s->port and waits for it; 1 = the port was taken, retry. */
static int launch(provhsm_test_swtpm *s)
{
    pid_t pid = spawn_swtpm(s);
    if (pid < 0) {
        fprintf(stderr, "swtpm fixture: fork: %s\n", strerror(errno));
        return -1;
    }
    for (int waited = 0; waited < READY_WAIT_MS; waited += 10) {
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "swtpm fixture: swtpm on port %d exited (status %d), see %s\n", s->port,
                    status, s->dir);
            return 1;
        }
        if (port_accepts(s->port)) {
            s->pid = pid;
            return 0;
        }
        sleep_ms(10);
    }
    kill(pid, SIGKILL);
    (void)reap(pid, 2000);
    fprintf(stderr, "swtpm fixture: swtpm did not accept on port %d\n", s->port);
    return -1;
}

int provhsm_test_swtpm_start(provhsm_test_swtpm *s, const char *state_src)
{
    char state[300];
    memset(s, 0, sizeof(*s));
    const char *tmp = getenv("TMPDIR");
    snprintf(s->dir, sizeof(s->dir), "%s/provhsm-swtpm-XXXXXX",
             tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
    if (mkdtemp(s->dir) == NULL) {
        fprintf(stderr, "swtpm fixture: mkdtemp: %s\n", strerror(errno));
        s->dir[0] = '\0';
        return -1;
    }
    snprintf(state, sizeof(state), "%s/state", s->dir);
    if (mkdir(state, 0700) != 0 || (state_src != NULL && copy_dir_files(state_src, state) != 0)) {
        fprintf(stderr, "swtpm fixture: cannot prepare %s from %s\n", state,
                state_src != NULL ? state_src : "(empty)");
        provhsm_test_swtpm_stop(s);
        return -1;
    }
    for (int attempt = 0; attempt < START_ATTEMPTS; attempt++) {
        s->port = free_port_pair();
        if (s->port < 0) {
            fprintf(stderr, "swtpm fixture: no two adjacent free TCP ports on 127.0.0.1 after 50 "
                            "tries (many sockets in TIME_WAIT?)\n");
            break;
        }
        snprintf(s->tcti, sizeof(s->tcti), "swtpm:host=127.0.0.1,port=%d", s->port);
        int r = launch(s);
        if (r == 0)
            return 0;
        if (r < 0)
            break;
    }
    provhsm_test_swtpm_stop(s);
    return -1;
}

void provhsm_test_swtpm_kill(provhsm_test_swtpm *s)
{
    if (s == NULL || s->pid <= 0)
        return;
    kill(s->pid, SIGTERM);
    if (reap(s->pid, 3000) != 0) {
        kill(s->pid, SIGKILL);
        (void)reap(s->pid, 3000);
    }
    s->pid = 0;
}

int provhsm_test_swtpm_restart(provhsm_test_swtpm *s)
{
    provhsm_test_swtpm_kill(s);
    for (int attempt = 0; attempt < 20; attempt++) {
        int r = launch(s);
        if (r <= 0)
            return r;
        sleep_ms(100); /* the port may still be held for a moment */
    }
    return -1;
}

void provhsm_test_swtpm_stop(provhsm_test_swtpm *s)
{
    if (s == NULL)
        return;
    provhsm_test_swtpm_kill(s);
    if (s->dir[0] != '\0')
        provhsm_test_remove_tree(s->dir);
    s->dir[0] = '\0';
}

const char *provhsm_test_fixture_swtpm_state(void)
{
    static char path[1024];
    const char *dir = getenv("PROVHSM_FIXTURES");
    if (dir == NULL || *dir == '\0')
        return NULL;
    snprintf(path, sizeof(path), "%s/tpm-activation/swtpm-state", dir);
    return path;
}

/* ---- TPM helpers ---------------------------------------------------------------------- */

void provhsm_test_tpm_config(provhsm_config *cfg, const char *tcti)
{
    provhsm_config_defaults(cfg);
    snprintf(cfg->tcti, sizeof(cfg->tcti), "%s", tcti);
    snprintf(cfg->tpm_backend, sizeof(cfg->tpm_backend), "tpm");
    cfg->tpm_configured = 1;
    cfg->ek_handle = 0x81010001u;
    cfg->srk_handle = 0x81000001u;
    cfg->identity_handle = 0x81000100u;
    cfg->owner_auth_file[0] = cfg->owner_auth_env[0] = '\0';
    cfg->endorsement_auth_file[0] = cfg->endorsement_auth_env[0] = '\0';
}

char *provhsm_test_registration_id(const uint8_t *ek, size_t len)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
    uint8_t digest[32];
    unsigned int dlen = 0;
    if (EVP_Digest(ek, len, digest, &dlen, EVP_sha256(), NULL) != 1 || dlen != 32)
        return NULL;
    char *out = malloc(53);
    if (out == NULL)
        return NULL;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < 32; i++) {
        acc = (acc << 8) | digest[i];
        bits += 8;
        while (bits >= 5) {
            out[n++] = alphabet[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0)
        out[n++] = alphabet[(acc << (5 - bits)) & 31];
    out[n] = '\0';
    return out;
}

#ifdef PROVHSM_TEST_HOOKS
int provhsm_test_tpm_counts_get(const char *tcti, provhsm_test_tpm_counts *out)
{
    provhsm_tpm *tpm = NULL;
    int ret = -1;
    if (provhsm_tpm_connect(tcti, &tpm) != PROVHSM_OK)
        return -1;
    /* literal values: tss2's TPM2_TRANSIENT_FIRST shifts a signed int into its sign bit */
    if (provhsm_tpm_count_handles(tpm, 0x80000000u, &out->transient) == PROVHSM_OK &&
        provhsm_tpm_count_handles(tpm, 0x02000000u, &out->sessions) == PROVHSM_OK &&
        provhsm_tpm_count_handles(tpm, 0x81000000u, &out->persistent) == PROVHSM_OK)
        ret = 0;
    provhsm_tpm_disconnect(tpm);
    return ret;
}

int provhsm_test_tpm_counts_unchanged(const char *tcti, const provhsm_test_tpm_counts *before)
{
    provhsm_test_tpm_counts now;
    if (provhsm_test_tpm_counts_get(tcti, &now) != 0)
        return -1;
    if (now.transient == before->transient && now.sessions == before->sessions &&
        now.persistent == before->persistent)
        return 0;
    fprintf(stderr,
            "TPM handles changed: transient %u -> %u, sessions %u -> %u, persistent %u -> %u\n",
            (unsigned)before->transient, (unsigned)now.transient, (unsigned)before->sessions,
            (unsigned)now.sessions, (unsigned)before->persistent, (unsigned)now.persistent);
    return -1;
}
#endif
