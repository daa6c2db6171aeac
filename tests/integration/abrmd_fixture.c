/*
 * tpm2-abrmd on a private D-Bus session bus, and the process helpers behind it (see
 * abrmd_fixture.h). The daemons are started with fork/exec, their output appended to a
 * log in the caller's directory; readiness is polled: the bus's socket accepting a
 * connection, then a tabrmd TCTI reaching tpm2-abrmd (in a forked child).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <tss2/tss2_tctildr.h>

#include "abrmd_fixture.h"
#include "swtpm_fixture.h"

#define TABRMD_LIBRARY "libtss2-tcti-tabrmd.so.0"
#define TABRMD_TCTI    "tabrmd:bus_type=session"
#define READY_WAIT_MS  10000
#define STOP_WAIT_MS   3000

/* ---- the process helpers ------------------------------------------------------------- */

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000L;
}

void provhsm_test_default_stop_signals(void)
{
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
}

pid_t provhsm_test_spawn_logged(char *const argv[], const char *log)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) /* the parent died before prctl: nobody would stop us */
        _exit(127);
    provhsm_test_default_stop_signals();
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
    execvp(argv[0], argv);
    _exit(127);
}

/* 1 when pid has ended (and is reaped) within timeout_ms. */
static int reaped_within(pid_t pid, long timeout_ms)
{
    int status;
    for (long waited = 0;; waited += 20) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD))
            return 1;
        if (waited >= timeout_ms)
            return 0;
        sleep_ms(20);
    }
}

void provhsm_test_stop_child(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    if (!reaped_within(*pid, STOP_WAIT_MS)) {
        kill(*pid, SIGKILL);
        (void)reaped_within(*pid, STOP_WAIT_MS);
    }
    *pid = 0;
}

char *provhsm_test_read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    char *text = calloc(1, 16384);
    size_t n = text != NULL ? fread(text, 1, 16383, f) : 0;
    (void)n; /* calloc'd: the text ends where the read did */
    fclose(f);
    return text;
}

void provhsm_test_append_log(char *err, size_t len, const char *log)
{
    char *text = provhsm_test_read_text(log);
    size_t used = strlen(err);
    if (text != NULL && used < len) {
        for (char *p = text; *p != '\0'; p++)
            if (*p == '\n')
                *p = ' ';
        snprintf(err + used, len - used, ": %.400s", text);
    }
    free(text);
}

/* ---- the probe ----------------------------------------------------------------------- */

/* What probe_tabrmd's child says. */
enum { PROBE_CONNECTED = 0, PROBE_NO_LIBRARY = 3, PROBE_NO_CONNECTION = 4 };

/*
 * Whether the tabrmd TCTI's library loads and, with tcti, whether a client reaches
 * tpm2-abrmd with it. In a child of its own: the TCTI brings GLib and its threads, which
 * the caller (it may fork later) keeps out of its process.
 */
static int probe_tabrmd(const char *tcti)
{
    pid_t pid = fork();
    if (pid == 0) {
        provhsm_test_default_stop_signals();
        alarm(10); /* a client that hangs counts as no connection */
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, STDERR_FILENO);
        if (dlopen(TABRMD_LIBRARY, RTLD_NOW) == NULL)
            _exit(PROBE_NO_LIBRARY);
        TSS2_TCTI_CONTEXT *ctx = NULL;
        if (tcti != NULL && Tss2_TctiLdr_Initialize(tcti, &ctx) != TSS2_RC_SUCCESS)
            _exit(PROBE_NO_CONNECTION);
        Tss2_TctiLdr_Finalize(&ctx);
        _exit(PROBE_CONNECTED);
    }
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return pid > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

const char *provhsm_test_abrmd_missing(void)
{
    if (!provhsm_test_programs_available("tpm2-abrmd", "dbus-daemon", (const char *)NULL))
        return "tpm2-abrmd or dbus-daemon is not installed (Debian packages tpm2-abrmd, dbus)";
    if (probe_tabrmd(NULL) != PROBE_CONNECTED)
        return "the tabrmd TCTI (" TABRMD_LIBRARY ") is not installed (Debian package "
               "libtss2-tcti-tabrmd0)";
    return NULL;
}

/* ---- the bus ------------------------------------------------------------------------- */

static int unix_socket_accepts(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* A session bus on which anyone may own any name and talk to anyone: only we use it. */
static int write_bus_config(const char *conf, const char *sock)
{
    FILE *f = fopen(conf, "w");
    if (f == NULL)
        return -1;
    fprintf(f,
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
            " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
            "<busconfig>\n  <type>session</type>\n  <listen>unix:path=%s</listen>\n"
            "  <auth>EXTERNAL</auth>\n  <policy context=\"default\">\n"
            "    <allow send_destination=\"*\"/>\n    <allow receive_sender=\"*\"/>\n"
            "    <allow own=\"*\"/>\n  </policy>\n"
            "</busconfig>\n",
            sock);
    return fclose(f) == 0 ? 0 : -1;
}

static int start_bus(provhsm_test_abrmd *a, char *why, size_t len)
{
    char conf[300], sock[300], log[300], conf_arg[320], address[320];
    snprintf(conf, sizeof(conf), "%s/bus.conf", a->dir);
    snprintf(sock, sizeof(sock), "%s/bus", a->dir);
    snprintf(log, sizeof(log), "%s/dbus.log", a->dir);
    if (strlen(sock) >= sizeof(((struct sockaddr_un *)NULL)->sun_path)) {
        snprintf(why, len, "the bus socket's path %s is too long for a unix socket", sock);
        return -1;
    }
    if (write_bus_config(conf, sock) != 0) {
        snprintf(why, len, "cannot write %s", conf);
        return -1;
    }
    snprintf(conf_arg, sizeof(conf_arg), "--config-file=%s", conf);
    char *argv[] = {"dbus-daemon", "--nofork", conf_arg, NULL};
    a->dbus_pid = provhsm_test_spawn_logged(argv, log);
    for (long deadline = now_ms() + READY_WAIT_MS; a->dbus_pid > 0 && now_ms() < deadline;) {
        if (unix_socket_accepts(sock)) {
            snprintf(address, sizeof(address), "unix:path=%s", sock);
            setenv("DBUS_SESSION_BUS_ADDRESS", address, 1);
            return 0;
        }
        if (reaped_within(a->dbus_pid, 0))
            a->dbus_pid = 0;
        sleep_ms(50);
    }
    provhsm_test_stop_child(&a->dbus_pid);
    snprintf(why, len, "dbus-daemon did not start");
    provhsm_test_append_log(why, len, log);
    return -1;
}

/* ---- tpm2-abrmd ---------------------------------------------------------------------- */

static int start_daemon(provhsm_test_abrmd *a, const char *tpm_tcti, char *why, size_t len)
{
    char tcti_arg[512], log[300];
    if (snprintf(tcti_arg, sizeof(tcti_arg), "--tcti=%s", tpm_tcti) >= (int)sizeof(tcti_arg)) {
        snprintf(why, len, "the TPM's TCTI is too long");
        return -1;
    }
    snprintf(log, sizeof(log), "%s/abrmd.log", a->dir);
    char *argv[] = {"tpm2-abrmd", "--session", "--allow-root", tcti_arg, NULL};
    a->abrmd_pid = provhsm_test_spawn_logged(argv, log);
    for (long deadline = now_ms() + READY_WAIT_MS; a->abrmd_pid > 0 && now_ms() < deadline;) {
        if (probe_tabrmd(a->tcti) == PROBE_CONNECTED)
            return 0;
        if (reaped_within(a->abrmd_pid, 0))
            a->abrmd_pid = 0;
        sleep_ms(100);
    }
    provhsm_test_stop_child(&a->abrmd_pid);
    snprintf(why, len, "tpm2-abrmd did not start on %s", tpm_tcti);
    provhsm_test_append_log(why, len, log);
    return -1;
}

int provhsm_test_abrmd_start(provhsm_test_abrmd *a, const char *dir, const char *tpm_tcti,
                             char *why, size_t len)
{
    snprintf(a->tcti, sizeof(a->tcti), "%s", TABRMD_TCTI);
    provhsm_test_abrmd_stop_daemon(a); /* one tpm2-abrmd per bus: it owns the bus name */
    if (a->dbus_pid > 0 && reaped_within(a->dbus_pid, 0))
        a->dbus_pid = 0; /* the bus died: a new one */
    if (a->dbus_pid <= 0) {
        if (snprintf(a->dir, sizeof(a->dir), "%s", dir) >= (int)sizeof(a->dir)) {
            snprintf(why, len, "the directory's name is too long: %s", dir);
            return -1;
        }
        if (start_bus(a, why, len) != 0)
            return -1;
    }
    return start_daemon(a, tpm_tcti, why, len);
}

void provhsm_test_abrmd_stop_daemon(provhsm_test_abrmd *a)
{
    provhsm_test_stop_child(&a->abrmd_pid);
}

void provhsm_test_abrmd_stop(provhsm_test_abrmd *a)
{
    provhsm_test_stop_child(&a->abrmd_pid); /* before the bus it is on */
    provhsm_test_stop_child(&a->dbus_pid);
}
