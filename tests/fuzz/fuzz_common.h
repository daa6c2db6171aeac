/*
 * What every fuzz target shares: the libFuzzer entry points, a property check that
 * stops the run, silenced logs, and a real store in a private temporary directory for
 * the targets that must call the library the way it calls itself.
 */
#ifndef PROVHSM_FUZZ_COMMON_H
#define PROVHSM_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken property is a finding: abort() so that libFuzzer saves the input and fails. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fuzz_check_failed(#cond, __FILE__, __LINE__);                                          \
        }                                                                                          \
    } while (0)

void fuzz_check_failed(const char *what, const char *file, int line);

/* Bad inputs make the library log at error level on every run: keep them formatted, unshown. */
void fuzz_quiet_logs(void);

/*
 * Creates a key-file store in a new temporary directory (on tmpfs when /dev/shm exists, so
 * the store's fsyncs cost nothing) and opens it; both are removed at exit. `cfg` receives
 * the configuration that opens it again. Aborts when the store cannot be made.
 */
provhsm_store *fuzz_store_setup(provhsm_config *cfg);

/* NUL-terminated malloc'd copy of the input, as the library receives text. */
char *fuzz_text(const uint8_t *data, size_t size);

/* Replaces (or creates, 0600) the file at `path` with the given bytes; aborts on failure. */
void fuzz_write_file(const char *path, const uint8_t *data, size_t len);

/* The whole file, malloc'd; aborts on failure. */
uint8_t *fuzz_read_file(const char *path, size_t *len_out);

#endif
