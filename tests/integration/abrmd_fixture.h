/*
 * tpm2-abrmd for tests and benchmarks: a private D-Bus session bus (its configuration
 * and socket in the caller's temporary directory, so tpm2-abrmd's well-known name and
 * its clients stay off whatever bus the machine has) and tpm2-abrmd on it, in front of a
 * TPM the caller started (e.g. the swtpm fixture's). Both daemons get SIGKILL when the
 * program that started them dies.
 * Checking for the tabrmd TCTI and for a client's connection happens in a forked child:
 * that TCTI brings GLib and its threads, which a program that forks later keeps out of
 * its own process.
 * Plus the process helpers behind it, which the benchmarks use for their own commands.
 * Test code only; never linked into the library.
 */
#ifndef PROVHSM_ABRMD_FIXTURE_H
#define PROVHSM_ABRMD_FIXTURE_H

#include <stddef.h>
#include <sys/types.h>

typedef struct provhsm_test_abrmd {
    pid_t dbus_pid, abrmd_pid; /* 0 when not running */
    char dir[256];             /* bus.conf, the bus socket, dbus.log and abrmd.log */
    char tcti[160];            /* what clients pass as TCTI: "tabrmd:bus_type=session" */
} provhsm_test_abrmd;

/*
 * NULL when tpm2-abrmd, dbus-daemon and the tabrmd TCTI's library are installed, else
 * why not, naming the Debian packages (a static string, for a skip message).
 */
const char *provhsm_test_abrmd_missing(void);

/*
 * Starts the private session bus in dir (the first time only; it sets
 * DBUS_SESSION_BUS_ADDRESS for this process and its children) and then tpm2-abrmd on
 * tpm_tcti (e.g. "swtpm:host=127.0.0.1,port=<port>"); returns once a client can connect,
 * at most 10 s for each daemon. 0, or -1 with the reason (with the start of the daemon's
 * log) in why; a daemon that did not start is stopped again. *a starts zeroed (or
 * stopped); dir must exist and stay until provhsm_test_abrmd_stop. Call it before this
 * process loads the tabrmd TCTI itself (a client of tpm2-abrmd here): the check for a
 * client's connection forks, and GLib's threads do not survive a fork.
 */
int provhsm_test_abrmd_start(provhsm_test_abrmd *a, const char *dir, const char *tpm_tcti,
                             char *why, size_t len);

/*
 * Stops tpm2-abrmd only; the bus stays, so provhsm_test_abrmd_start can start tpm2-abrmd
 * again (e.g. on a restarted swtpm, since tpm2-abrmd does not survive its TPM's restart).
 */
void provhsm_test_abrmd_stop_daemon(provhsm_test_abrmd *a);

/* Stops tpm2-abrmd, then the bus. Safe to call twice. The files in dir stay. */
void provhsm_test_abrmd_stop(provhsm_test_abrmd *a);

/* ---- the process helpers behind it ------------------------------------------------- */

/*
 * Starts argv (found on PATH) with its standard output and error appended to the file
 * log; its pid, or -1. The child gets SIGKILL when the thread that started it ends (the
 * kernel ties PR_SET_PDEATHSIG to that thread; in a test, the main thread: the program), and
 * the default action for SIGINT, SIGTERM and SIGHUP (see provhsm_test_default_stop_signals).
 */
pid_t provhsm_test_spawn_logged(char *const argv[], const char *log);

/* Stops a child: SIGTERM, SIGKILL when it has not ended 3 s later; reaps it; *pid = 0.
 * Nothing when *pid is 0. */
void provhsm_test_stop_child(pid_t *pid);

/*
 * In a forked child that does not exec (or before it does): SIGINT, SIGTERM and SIGHUP
 * back to their default action, so that a stop signal ends the child instead of running
 * a handler of the parent's (e.g. one that writes to a pipe the parent reads).
 */
void provhsm_test_default_stop_signals(void);

/* Up to 16383 bytes of a text file, NUL-terminated, malloc'd; NULL when unreadable. */
char *provhsm_test_read_text(const char *path);

/* Appends ": <the start of the file log, on one line>" to the string err (size len). */
void provhsm_test_append_log(char *err, size_t len, const char *log);

#endif
