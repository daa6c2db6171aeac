/*
 * The TPM integration tests' fixture: a private swtpm per test program, on free TCP
 * ports and a temporary state directory, killed when the program ends (also when it
 * crashes: the simulator gets SIGKILL when its parent dies). Plus small helpers the TPM
 * tests share: a configuration for the TPM backend, the registration id, TPM handle
 * counts for leak checks, and a log capture.
 * Test code only; never linked into the library. Functions return 0 on success and -1
 * on failure with a line on stderr.
 */
#ifndef PROVHSM_SWTPM_FIXTURE_H
#define PROVHSM_SWTPM_FIXTURE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "testutil.h"

/* Exit code that CTest reads as "skipped" (SKIP_RETURN_CODE). */
#define PROVHSM_TEST_SKIP 77

typedef struct provhsm_test_swtpm {
    pid_t pid;      /* 0 when not running */
    int port;       /* TPM commands; the control channel is port + 1 */
    char dir[256];  /* temporary directory: state/ and swtpm.log */
    char tcti[128]; /* "swtpm:host=127.0.0.1,port=<port>" */
} provhsm_test_swtpm;

/* 1 when a swtpm binary is on PATH, or PROVHSM_TEST_SWTPM names the program to start
 * instead (a bogus one makes every start fail: the setup-failure test). */
int provhsm_test_swtpm_available(void);

/* 1 when every named program is on PATH (NULL-terminated list). */
int provhsm_test_programs_available(const char *first, ...);

/*
 * Starts swtpm on a copy of the state directory state_src (NULL: an empty state, so a
 * TPM with no keys) and waits until it accepts connections (at most 10 s).
 */
int provhsm_test_swtpm_start(provhsm_test_swtpm *s, const char *state_src);

/* Kills swtpm (the state stays, so it can be restarted on the same port). */
void provhsm_test_swtpm_kill(provhsm_test_swtpm *s);

/* Starts swtpm again on the same state directory and port. */
int provhsm_test_swtpm_restart(provhsm_test_swtpm *s);

/* Kills swtpm and removes its temporary directory. Safe to call twice. */
void provhsm_test_swtpm_stop(provhsm_test_swtpm *s);

/* $PROVHSM_FIXTURES/tpm-activation/swtpm-state, in a static buffer (NULL if unset). */
const char *provhsm_test_fixture_swtpm_state(void);

/* A configuration for the TPM backend on this TCTI with the well-known handles. */
void provhsm_test_tpm_config(provhsm_config *cfg, const char *tcti);

/* Lowercase base32 (no padding) of SHA-256(ek): the TPM registration id. malloc'd. */
char *provhsm_test_registration_id(const uint8_t *ek, size_t len);

/* Leak checks use the test copy of the library (benchmarks link the installed one). */
#ifdef PROVHSM_TEST_HOOKS
/* Transient objects, loaded sessions and persistent objects in the TPM behind tcti. */
typedef struct provhsm_test_tpm_counts {
    uint32_t transient, sessions, persistent;
} provhsm_test_tpm_counts;

int provhsm_test_tpm_counts_get(const char *tcti, provhsm_test_tpm_counts *out);

/* 0 when the counts behind tcti equal *before; else -1 with the differences on stderr. */
int provhsm_test_tpm_counts_unchanged(const char *tcti, const provhsm_test_tpm_counts *before);
#endif

/* provhsm_test_log_capture, _clear and _seen: testutil.h (included above). */

#endif
