/*
 * Shared pieces of the provhsm command-line tool: the command table entry, the option
 * parser, error reporting with the tool's exit codes, an output buffer with a small JSON
 * writer, log capture, file input (regular files or stdin only), and certificate summaries
 * made with OpenSSL.
 *
 * Called by the command files (provhsm.c, cmd_*.c) only. The tool reaches the library
 * through include/provhsm/provhsm.h and the SDK's tables (hsm_client_data.h), nothing else.
 */
#ifndef PROVHSM_TOOL_CLI_H
#define PROVHSM_TOOL_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "provhsm/provhsm.h"

#if defined(__GNUC__) || defined(__clang__)
#define PROVHSM_CLI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define PROVHSM_CLI_PRINTF(a, b)
#endif

/* Exit codes. */
#define PROVHSM_CLI_OK    0
#define PROVHSM_CLI_FAIL  1
#define PROVHSM_CLI_USAGE 2

/* ---- commands ------------------------------------------------------------ */

typedef struct provhsm_cli_cmd provhsm_cli_cmd;

/* argv[0] is the first argument after the command's name. Returns an exit code. */
typedef int (*provhsm_cli_run_fn)(const provhsm_cli_cmd *cmd, int argc, char **argv);

struct provhsm_cli_cmd {
    const char *group;   /* "x509", "tpm", ... or NULL for a top-level command */
    const char *name;    /* "generate", or the top-level name */
    const char *summary; /* one line for the group's help */
    const char *usage;   /* the whole --help text */
    provhsm_cli_run_fn run;
};

/* Command implementations (cmd_*.c). */
int provhsm_cli_cmd_init(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_info(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_export_cert(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_identity_remove(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_store_reseal(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_store_rekey(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_symmetric_set(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_symmetric_derive(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_sas_token(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_x509_generate(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_x509_import(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_x509_adopt(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_tpm_info(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_tpm_activate(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_tpm_sign(const provhsm_cli_cmd *cmd, int argc, char **argv);
int provhsm_cli_cmd_tpm_clear(const provhsm_cli_cmd *cmd, int argc, char **argv);

/* ---- the store's owner (cli_owner.c) ------------------------------------- */

/*
 * As root, when the configured store directory belongs to another user: becomes that user
 * (its groups, then its gid and uid, for good), with PROVHSM_STORE pinned to the directory.
 * Does nothing otherwise. Returns an exit code (0 = go on).
 */
int provhsm_cli_become_store_owner(void);

typedef struct provhsm_cli_owner {
    uid_t uid;
    gid_t gid;
    char name[256];
} provhsm_cli_owner;

/* Resolves "USER[:GROUP]" (names or numbers; the group defaults to the user's). */
int provhsm_cli_resolve_owner(const char *spec, provhsm_cli_owner *out);

/*
 * Before init --owner creates the store: as root, makes `dir` the owner's (created, or an
 * empty directory of root's) and becomes the owner. Returns an exit code (0 = go on).
 */
int provhsm_cli_init_as_owner(const char *dir, const provhsm_cli_owner *owner);

/* ---- options ------------------------------------------------------------- */

typedef struct provhsm_cli_opt {
    const char *name;  /* long name without the leading "--" */
    int takes_value;   /* 1: "--name VALUE" or "--name=VALUE" */
    int seen;          /* set by the parser */
    const char *value; /* set by the parser; points into argv */
    int value_index;   /* argv index of the value (lets a caller wipe a secret there) */
} provhsm_cli_opt;

/*
 * Parses a command's arguments. "--help"/"-h" prints cmd->usage to stdout. Positional
 * arguments go to pos[] (at most max_pos). Returns 1 when the command must stop, with
 * the exit code in *rc (0 after --help, 2 after a usage error, already reported);
 * returns 0 when the command should go on.
 */
int provhsm_cli_parse(const provhsm_cli_cmd *cmd, int argc, char **argv, provhsm_cli_opt *opts,
                      size_t nopts, const char **pos, size_t max_pos, size_t *npos, int *rc);

/* Prints "provhsm: error: <msg>" and a hint to the command's help; returns 2. */
int provhsm_cli_usage_error(const provhsm_cli_cmd *cmd, const char *fmt, ...)
    PROVHSM_CLI_PRINTF(2, 3);

/* Prints "provhsm: error: <msg>" to stderr; returns 1. */
int provhsm_cli_error(const char *fmt, ...) PROVHSM_CLI_PRINTF(1, 2);

/* Prints "provhsm: error: <msg>: <provhsm_strerror(err)>" to stderr; returns 1. */
int provhsm_cli_fail(provhsm_err err, const char *fmt, ...) PROVHSM_CLI_PRINTF(2, 3);

/* Prints "provhsm: warning: <msg>" to stderr. */
void provhsm_cli_warn(const char *fmt, ...) PROVHSM_CLI_PRINTF(1, 2);

/* Parses a decimal integer in [min, max] with nothing around it; 0 on success. */
int provhsm_cli_parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out);

/* The command's full name for messages: "x509 generate" or "info". */
void provhsm_cli_cmd_name(const provhsm_cli_cmd *cmd, char *out, size_t outlen);

/* ---- library log lines --------------------------------------------------- */

/* Installs the tool's log callback (prints like the library, or captures). */
void provhsm_cli_log_install(void);

/* Records that the user asked for more log lines (-v or PROVHSM_LOG). */
void provhsm_cli_set_verbose(int verbose);
int provhsm_cli_verbose(void);

/*
 * While capturing, error and warning lines are not printed; the first one of the most
 * severe level seen is kept so that a command can show it as the reason of a failure.
 * Info and debug lines (asked for with -v or PROVHSM_LOG) still go to stderr.
 */
void provhsm_cli_capture_begin(void);
/* Stops capturing; copies the kept line (or "") to out. */
void provhsm_cli_capture_end(char *out, size_t outlen);

/* ---- the SDK tables ------------------------------------------------------ */

/* Calls hsm_client_x509_init() and hsm_client_tpm_init() once; 0 on success. */
int provhsm_cli_sdk_init(void);
/* Calls the matching deinits if provhsm_cli_sdk_init() succeeded. */
void provhsm_cli_sdk_deinit(void);

/* ---- output buffer and JSON --------------------------------------------- */

/* Output is built here and written at the end, so a failure prints nothing on stdout.
 * Growth and release wipe the old memory: a buffer may hold a device key. */
typedef struct provhsm_cli_buf {
    char *data;
    size_t len, cap;
    int failed; /* an allocation failed: the content is incomplete */
} provhsm_cli_buf;

void provhsm_cli_buf_add(provhsm_cli_buf *b, const char *s, size_t n);
void provhsm_cli_buf_puts(provhsm_cli_buf *b, const char *s);
void provhsm_cli_buf_printf(provhsm_cli_buf *b, const char *fmt, ...) PROVHSM_CLI_PRINTF(2, 3);
/*
 * Appends s for a reader at a terminal: C0 and C1 control characters, DEL and bytes that
 * are not UTF-8 become "\xNN", so a name taken from a certificate or the store cannot
 * forge output lines or send escape sequences. (JSON output escapes on its own.)
 */
void provhsm_cli_buf_text(provhsm_cli_buf *b, const char *s);
/* Writes the buffer to stdout; returns 0, or 1 (reported) on a write or allocation error. */
int provhsm_cli_buf_flush(provhsm_cli_buf *b);
/* Wipes and frees. */
void provhsm_cli_buf_free(provhsm_cli_buf *b);

#define PROVHSM_CLI_JSON_DEPTH 8

typedef struct provhsm_cli_json {
    provhsm_cli_buf *b;
    int depth;
    int count[PROVHSM_CLI_JSON_DEPTH]; /* members written at each level */
} provhsm_cli_json;

/* key is NULL for the top-level object. */
void provhsm_cli_json_begin(provhsm_cli_json *j, provhsm_cli_buf *b);
void provhsm_cli_json_open(provhsm_cli_json *j, const char *key);
void provhsm_cli_json_close(provhsm_cli_json *j);
/* Ends the top-level object with a newline. */
void provhsm_cli_json_end(provhsm_cli_json *j);
/* value NULL writes null. Invalid UTF-8 becomes U+FFFD. */
void provhsm_cli_json_str(provhsm_cli_json *j, const char *key, const char *value);
void provhsm_cli_json_int(provhsm_cli_json *j, const char *key, long long value);
void provhsm_cli_json_bool(provhsm_cli_json *j, const char *key, int value);

/* Encodings and the TPM registration id come from the library's public API
 * (provhsm_base64_encode, provhsm_base64_decode_text, provhsm_tpm_registration_id). */

/* OPENSSL_cleanse(p, len) then free(p). NULL is fine. */
void provhsm_cli_free_wiped(void *p, size_t len);

/* ---- input --------------------------------------------------------------- */

/*
 * Reads a whole file ("-" = stdin) of at most max bytes into a malloc'd, NUL-terminated
 * buffer. Memory released while growing is wiped (the file may hold a key). A path that
 * is not a regular file (a FIFO, a device, a directory) is refused without waiting on it.
 * Returns 0, or 1 after printing an error.
 */
int provhsm_cli_read_file(const char *path, size_t max, char **out, size_t *len_out);

/*
 * Reads one line from stdin without stdio buffering (so no copy of a key stays behind),
 * drops the line end, NUL-terminates. At a terminal, echo is off meanwhile and is put back
 * also when SIGINT, SIGTERM, SIGHUP or SIGQUIT ends the tool. Returns 0, or 1 after
 * printing an error.
 */
int provhsm_cli_read_secret_line(char *buf, size_t buflen);

/* ---- certificates -------------------------------------------------------- */

typedef struct provhsm_cli_cert_info {
    char *common_name;   /* the subject's CN in UTF-8, malloc'd; NULL when it has none */
    char *subject;       /* RFC 2253, UTF-8, malloc'd */
    char *issuer;        /* likewise */
    char not_before[32]; /* ISO 8601, "2024-01-31T12:00:00Z" */
    char not_after[32];
    char fingerprint[100]; /* SHA-256, uppercase hex with ':' */
    int expired;           /* notAfter is in the past */
    int count;             /* certificates in the PEM text */
} provhsm_cli_cert_info;

/* Summarises the first certificate of a PEM chain; 0 on success, -1 (silently) on failure. */
int provhsm_cli_cert_summary(const char *pem, provhsm_cli_cert_info *out);
void provhsm_cli_cert_info_free(provhsm_cli_cert_info *ci);

#endif
