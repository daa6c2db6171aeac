/*
 * Code shared by the provhsm tool's commands: option parsing and error reporting with
 * the tool's exit codes, the output buffer and JSON writer, the log callback (print or
 * capture), the SDK tables' init/deinit, file and secret-line input, and certificate
 * summaries through OpenSSL. Encodings come from the library's public API.
 *
 * Called by provhsm.c and cmd_*.c. Static state: the log-capture slot, the verbosity,
 * whether the SDK tables were initialised, and the terminal settings to put back if a
 * signal ends the tool during a hidden prompt; the tool is single-threaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "cli.h"
#include "hsm_client_data.h"

/* ---- errors ----------------------------------------------------------------- */

void provhsm_cli_cmd_name(const provhsm_cli_cmd *cmd, char *out, size_t outlen)
{
    if (cmd->group != NULL)
        snprintf(out, outlen, "%s %s", cmd->group, cmd->name);
    else
        snprintf(out, outlen, "%s", cmd->name);
}

/* "provhsm: <kind>: <message><suffix>\n" on stderr: every diagnostic has this shape. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 3, 0)))
#endif
static void
report(const char *kind, const char *suffix, const char *fmt, va_list ap)
{
    fprintf(stderr, "provhsm: %s: ", kind);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "%s\n", suffix);
}

int provhsm_cli_usage_error(const provhsm_cli_cmd *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("error", "", fmt, ap);
    va_end(ap);
    if (cmd != NULL) {
        char name[64];
        provhsm_cli_cmd_name(cmd, name, sizeof(name));
        fprintf(stderr, "Try 'provhsm %s --help'.\n", name);
    } else {
        fputs("Try 'provhsm --help'.\n", stderr);
    }
    return PROVHSM_CLI_USAGE;
}

int provhsm_cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("error", "", fmt, ap);
    va_end(ap);
    return PROVHSM_CLI_FAIL;
}

int provhsm_cli_fail(provhsm_err err, const char *fmt, ...)
{
    char suffix[128];
    va_list ap;
    snprintf(suffix, sizeof(suffix), ": %s", provhsm_strerror(err));
    va_start(ap, fmt);
    report("error", suffix, fmt, ap);
    va_end(ap);
    return PROVHSM_CLI_FAIL;
}

void provhsm_cli_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("warning", "", fmt, ap);
    va_end(ap);
}

int provhsm_cli_parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (text == NULL || *text == '\0')
        return -1;
    for (const char *p = text; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* ---- options ---------------------------------------------------------------- */

int provhsm_cli_parse(const provhsm_cli_cmd *cmd, int argc, char **argv, provhsm_cli_opt *opts,
                      size_t nopts, const char **pos, size_t max_pos, size_t *npos, int *rc)
{
    size_t n = 0;
    int end_of_options = 0;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];

        if (!end_of_options && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)) {
            fputs(cmd->usage, stdout);
            *rc = PROVHSM_CLI_OK;
            return 1;
        }
        if (!end_of_options && strcmp(a, "--") == 0) {
            end_of_options = 1;
            continue;
        }
        if (end_of_options || a[0] != '-' || a[1] == '\0') {
            if (n >= max_pos) {
                *rc = provhsm_cli_usage_error(cmd, "unexpected argument '%s'", a);
                return 1;
            }
            pos[n++] = a;
            continue;
        }
        if (a[1] != '-') {
            *rc = provhsm_cli_usage_error(cmd, "unknown option '%s'", a);
            return 1;
        }

        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq != NULL ? (size_t)(eq - name) : strlen(name);
        provhsm_cli_opt *o = NULL;
        for (size_t k = 0; k < nopts; k++) {
            if (strlen(opts[k].name) == nlen && strncmp(opts[k].name, name, nlen) == 0) {
                o = &opts[k];
                break;
            }
        }
        if (o == NULL) {
            *rc = provhsm_cli_usage_error(cmd, "unknown option '--%.*s'", (int)nlen, name);
            return 1;
        }
        if (o->seen) {
            *rc = provhsm_cli_usage_error(cmd, "option --%s given more than once", o->name);
            return 1;
        }
        if (o->takes_value) {
            if (eq != NULL) {
                o->value = eq + 1;
                o->value_index = i;
            } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
                i++;
                o->value = argv[i];
                o->value_index = i;
            } else {
                *rc = provhsm_cli_usage_error(cmd, "option --%s needs a value", o->name);
                return 1;
            }
        } else if (eq != NULL) {
            *rc = provhsm_cli_usage_error(cmd, "option --%s takes no value", o->name);
            return 1;
        }
        o->seen = 1;
    }
    if (npos != NULL)
        *npos = n;
    return 0;
}

/* ---- log lines ---------------------------------------------------------------- */

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static int capturing;
static int captured_level = 99;
static char captured[512];

static void log_to_tool(provhsm_log_level level, const char *module, const char *message, void *ctx)
{
    (void)ctx;
    if (capturing && level <= PROVHSM_LOG_WARN) {
        /* The first line of the most severe level: the library logs a failure where it
         * happens, and the layers above it then add more general lines. */
        if ((int)level < captured_level) {
            snprintf(captured, sizeof(captured), "%s", message);
            captured_level = (int)level;
        }
        return;
    }
    const char *lname =
        (level >= PROVHSM_LOG_ERROR && level <= PROVHSM_LOG_DEBUG) ? level_names[level] : "log";
    fprintf(stderr, "provhsm: %s: [%s] %s\n", lname, module != NULL ? module : "?", message);
}

void provhsm_cli_log_install(void)
{
    provhsm_set_log_callback(log_to_tool, NULL);
}

static int verbose;

void provhsm_cli_set_verbose(int on)
{
    verbose = on;
}

int provhsm_cli_verbose(void)
{
    return verbose;
}

void provhsm_cli_capture_begin(void)
{
    captured[0] = '\0';
    captured_level = 99;
    capturing = 1;
}

void provhsm_cli_capture_end(char *out, size_t outlen)
{
    capturing = 0;
    snprintf(out, outlen, "%s", captured);
    captured[0] = '\0';
    captured_level = 99;
}

/* ---- SDK tables ------------------------------------------------------------ */

static int sdk_ready;

int provhsm_cli_sdk_init(void)
{
    if (sdk_ready)
        return 0;
    if (hsm_client_x509_init() != 0)
        return provhsm_cli_error("hsm_client_x509_init failed");
    if (hsm_client_tpm_init() != 0) {
        hsm_client_x509_deinit();
        return provhsm_cli_error("hsm_client_tpm_init failed");
    }
    sdk_ready = 1;
    return 0;
}

void provhsm_cli_sdk_deinit(void)
{
    if (!sdk_ready)
        return;
    hsm_client_tpm_deinit();
    hsm_client_x509_deinit();
    sdk_ready = 0;
}

/* ---- output buffer ------------------------------------------------------------- */

void provhsm_cli_free_wiped(void *p, size_t len)
{
    if (p == NULL)
        return;
    OPENSSL_cleanse(p, len);
    free(p);
}

static int buf_reserve(provhsm_cli_buf *b, size_t extra)
{
    if (b->failed)
        return -1;
    if (b->cap - b->len > extra)
        return 0;
    size_t cap = b->cap != 0 ? b->cap : 256;
    while (cap - b->len <= extra) {
        if (cap > SIZE_MAX / 2) {
            b->failed = 1;
            return -1;
        }
        cap *= 2;
    }
    /* no realloc: the old block is wiped before it goes back to the allocator */
    char *p = malloc(cap);
    if (p == NULL) {
        b->failed = 1;
        return -1;
    }
    if (b->data != NULL) {
        memcpy(p, b->data, b->len);
        provhsm_cli_free_wiped(b->data, b->cap);
    }
    b->data = p;
    b->cap = cap;
    b->data[b->len] = '\0';
    return 0;
}

void provhsm_cli_buf_add(provhsm_cli_buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) != 0)
        return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void provhsm_cli_buf_puts(provhsm_cli_buf *b, const char *s)
{
    provhsm_cli_buf_add(b, s, strlen(s));
}

void provhsm_cli_buf_printf(provhsm_cli_buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];

    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        provhsm_cli_buf_add(b, small, (size_t)n);
        OPENSSL_cleanse(small, sizeof(small));
        return;
    }
    OPENSSL_cleanse(small, sizeof(small)); /* the start of a long token or key */
    if (buf_reserve(b, (size_t)n) != 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

int provhsm_cli_buf_flush(provhsm_cli_buf *b)
{
    size_t done = 0;

    if (b->failed)
        return provhsm_cli_error("out of memory while formatting the output");
    /* write(2), not stdio: no copy of a printed device key stays in stdio's buffer */
    if (fflush(stdout) != 0)
        return provhsm_cli_error("writing to stdout failed: %s", strerror(errno));
    while (done < b->len) {
        ssize_t n = write(STDOUT_FILENO, b->data + done, b->len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return provhsm_cli_error("writing to stdout failed: %s", strerror(errno));
        }
        done += (size_t)n;
    }
    return 0;
}

void provhsm_cli_buf_free(provhsm_cli_buf *b)
{
    provhsm_cli_free_wiped(b->data, b->cap);
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = 0;
}

/* ---- JSON ------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 when it is not valid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static void json_string(provhsm_cli_buf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);

    provhsm_cli_buf_add(b, "\"", 1);
    while (n > 0) {
        unsigned c = *p;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            provhsm_cli_buf_add(b, esc, 2);
        } else if (c == '\n') {
            provhsm_cli_buf_add(b, "\\n", 2);
        } else if (c == '\r') {
            provhsm_cli_buf_add(b, "\\r", 2);
        } else if (c == '\t') {
            provhsm_cli_buf_add(b, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            provhsm_cli_buf_printf(b, "\\u%04x", c);
        } else if (c >= 0x80) {
            size_t len = utf8_len(p, n);
            if (len == 0) {
                provhsm_cli_buf_add(b, "\\ufffd", 6);
                len = 1;
            } else {
                provhsm_cli_buf_add(b, (const char *)p, len);
            }
            p += len;
            n -= len;
            continue;
        } else {
            provhsm_cli_buf_add(b, (const char *)p, 1);
        }
        p++;
        n--;
    }
    provhsm_cli_buf_add(b, "\"", 1);
}

void provhsm_cli_buf_text(provhsm_cli_buf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);

    while (n > 0) {
        size_t len = *p >= 0x80 ? utf8_len(p, n) : 1;
        if (len == 0 || *p < 0x20 || *p == 0x7f || (*p == 0xc2 && p[1] < 0xa0)) {
            /* a C1 control (U+0080..U+009F) is 0xc2 0x80..0x9f */
            size_t bad = len == 0 ? 1 : len;
            for (size_t i = 0; i < bad; i++)
                provhsm_cli_buf_printf(b, "\\x%02X", p[i]);
            len = bad;
        } else {
            provhsm_cli_buf_add(b, (const char *)p, len);
        }
        p += len;
        n -= len;
    }
}

static void json_member(provhsm_cli_json *j, const char *key)
{
    if (j->count[j->depth]++ > 0)
        provhsm_cli_buf_add(j->b, ",", 1);
    if (key != NULL) {
        json_string(j->b, key);
        provhsm_cli_buf_add(j->b, ":", 1);
    }
}

void provhsm_cli_json_begin(provhsm_cli_json *j, provhsm_cli_buf *b)
{
    memset(j, 0, sizeof(*j));
    j->b = b;
    provhsm_cli_buf_add(b, "{", 1);
}

void provhsm_cli_json_open(provhsm_cli_json *j, const char *key)
{
    json_member(j, key);
    provhsm_cli_buf_add(j->b, "{", 1);
    if (j->depth + 1 >= PROVHSM_CLI_JSON_DEPTH) {
        j->b->failed = 1;
        return;
    }
    j->count[++j->depth] = 0;
}

void provhsm_cli_json_close(provhsm_cli_json *j)
{
    provhsm_cli_buf_add(j->b, "}", 1);
    if (j->depth > 0)
        j->depth--;
}

void provhsm_cli_json_end(provhsm_cli_json *j)
{
    provhsm_cli_buf_add(j->b, "}\n", 2);
}

void provhsm_cli_json_str(provhsm_cli_json *j, const char *key, const char *value)
{
    json_member(j, key);
    if (value == NULL)
        provhsm_cli_buf_add(j->b, "null", 4);
    else
        json_string(j->b, value);
}

void provhsm_cli_json_int(provhsm_cli_json *j, const char *key, long long value)
{
    json_member(j, key);
    provhsm_cli_buf_printf(j->b, "%lld", value);
}

void provhsm_cli_json_bool(provhsm_cli_json *j, const char *key, int value)
{
    json_member(j, key);
    provhsm_cli_buf_puts(j->b, value ? "true" : "false");
}

/* ---- encodings ---------------------------------------------------------------- */

/* ---- input -------------------------------------------------------------------- */

/*
 * Opens a file argument for reading. O_NONBLOCK so that a FIFO (or a device) cannot make
 * the tool wait for a writer; anything but a regular file is refused after fstat().
 * Returns the descriptor, or -1 after printing an error.
 */
static int open_regular_file(const char *path)
{
    struct stat sb;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        provhsm_cli_error("cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &sb) != 0) {
        provhsm_cli_error("cannot examine %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        provhsm_cli_error("%s is not a regular file (give '-' to read standard input)", path);
        close(fd);
        return -1;
    }
    return fd;
}

int provhsm_cli_read_file(const char *path, size_t max, char **out, size_t *len_out)
{
    int is_stdin = strcmp(path, "-") == 0;
    int fd = is_stdin ? STDIN_FILENO : open_regular_file(path);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = PROVHSM_CLI_FAIL;
    const char *shown = is_stdin ? "standard input" : path;

    if (fd < 0)
        return PROVHSM_CLI_FAIL;
    for (;;) {
        if (cap - len < 2) {
            size_t ncap = cap != 0 ? cap * 2 : 4096;
            if (ncap > max + 2)
                ncap = max + 2;
            if (ncap <= cap) {
                provhsm_cli_error("%s is larger than %zu bytes", shown, max);
                goto cleanup;
            }
            char *nbuf = malloc(ncap);
            if (nbuf == NULL) {
                provhsm_cli_error("out of memory reading %s", shown);
                goto cleanup;
            }
            if (buf != NULL) {
                memcpy(nbuf, buf, len);
                provhsm_cli_free_wiped(buf, cap);
            }
            buf = nbuf;
            cap = ncap;
        }
        ssize_t got = read(fd, buf + len, cap - len - 1);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            provhsm_cli_error("reading %s failed: %s", shown, strerror(errno));
            goto cleanup;
        }
        if (got == 0)
            break;
        len += (size_t)got;
        if (len > max) {
            provhsm_cli_error("%s is larger than %zu bytes", shown, max);
            goto cleanup;
        }
    }
    if (buf == NULL) {
        buf = malloc(1);
        if (buf == NULL) {
            provhsm_cli_error("out of memory reading %s", shown);
            goto cleanup;
        }
        cap = 1;
    }
    buf[len] = '\0';
    *out = buf;
    *len_out = len;
    buf = NULL;
    rc = PROVHSM_CLI_OK;
cleanup:
    provhsm_cli_free_wiped(buf, cap);
    if (!is_stdin)
        close(fd);
    return rc;
}

/*
 * A key typed at a terminal must not show on the screen: echo is off while the line is
 * read, and back as it was afterwards (also on error). A signal that ends the tool while
 * echo is off (Ctrl-C, kill) would leave the user's shell without echo: the handlers put
 * the saved settings back first, then let the signal end the process as it would have.
 */
static int read_secret_line_raw(char *buf, size_t buflen);

static const int prompt_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
#define PROMPT_SIGNALS (sizeof(prompt_signals) / sizeof(prompt_signals[0]))

static struct termios prompt_saved_termios;

static void restore_terminal_and_die(int sig)
{
    tcsetattr(STDIN_FILENO, TCSANOW, &prompt_saved_termios); /* async-signal-safe */
    signal(sig, SIG_DFL);
    raise(sig);
}

static void prompt_signals_catch(struct sigaction *old)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = restore_terminal_and_die;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < PROMPT_SIGNALS; i++)
        sigaddset(&sa.sa_mask, prompt_signals[i]);
    for (size_t i = 0; i < PROMPT_SIGNALS; i++)
        sigaction(prompt_signals[i], &sa, &old[i]);
}

static void prompt_signals_release(const struct sigaction *old)
{
    for (size_t i = 0; i < PROMPT_SIGNALS; i++)
        sigaction(prompt_signals[i], &old[i], NULL);
}

int provhsm_cli_read_secret_line(char *buf, size_t buflen)
{
    struct termios quiet;
    struct sigaction old[PROMPT_SIGNALS];
    int tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &prompt_saved_termios) == 0;
    if (tty) {
        quiet = prompt_saved_termios;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        quiet.c_lflag |= ECHONL;
        fputs("key (not echoed): ", stderr);
        fflush(stderr);
        prompt_signals_catch(old);
        tty = tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) == 0;
        if (!tty)
            prompt_signals_release(old);
    }
    int rc = read_secret_line_raw(buf, buflen);
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &prompt_saved_termios);
        prompt_signals_release(old);
    }
    return rc;
}

static int read_secret_line_raw(char *buf, size_t buflen)
{
    size_t n = 0;

    for (;;) {
        char c;
        ssize_t got = read(STDIN_FILENO, &c, 1);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            OPENSSL_cleanse(buf, buflen);
            return provhsm_cli_error("reading standard input failed: %s", strerror(errno));
        }
        if (got == 0 || c == '\n')
            break;
        if (c == '\0') {
            /* a key cut short at the NUL would be stored without a word */
            OPENSSL_cleanse(buf, buflen);
            return provhsm_cli_error("the line on standard input contains a NUL byte");
        }
        if (n + 1 >= buflen) {
            OPENSSL_cleanse(buf, buflen);
            OPENSSL_cleanse(&c, sizeof(c));
            return provhsm_cli_error("the line on standard input is too long");
        }
        buf[n++] = c;
        OPENSSL_cleanse(&c, sizeof(c));
    }
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    buf[n] = '\0';
    return 0;
}

/* ---- certificates ------------------------------------------------------------- */

static char *name_text(const X509_NAME *name)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *text = NULL, *data = NULL;
    long len;

    if (bio == NULL)
        return NULL;
    /* RFC 2253 order and escaping, but UTF-8 left readable */
    if (X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) < 0)
        goto cleanup;
    len = BIO_get_mem_data(bio, &data);
    if (len < 0)
        goto cleanup;
    text = malloc((size_t)len + 1);
    if (text == NULL)
        goto cleanup;
    memcpy(text, data, (size_t)len);
    text[len] = '\0';
cleanup:
    BIO_free(bio);
    return text;
}

static char *common_name(const X509_NAME *name)
{
    const X509_NAME_ENTRY *e;
    unsigned char *utf8 = NULL;
    char *cn = NULL;
    int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    int len;

    if (idx < 0)
        return NULL;
    e = X509_NAME_get_entry(name, idx);
    len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e));
    if (len < 0)
        return NULL;
    cn = malloc((size_t)len + 1);
    if (cn != NULL) {
        memcpy(cn, utf8, (size_t)len);
        cn[len] = '\0';
    }
    OPENSSL_free(utf8);
    return cn;
}

static int time_text(const ASN1_TIME *t, char *out, size_t outlen)
{
    struct tm tm;

    memset(&tm, 0, sizeof(tm));
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return -1;
    if (strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        return -1;
    return 0;
}

int provhsm_cli_cert_summary(const char *pem, provhsm_cli_cert_info *out)
{
    provhsm_cli_cert_info ci;
    BIO *bio = NULL;
    X509 *leaf = NULL, *next = NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int rc = -1;

    memset(&ci, 0, sizeof(ci));
    bio = BIO_new_mem_buf(pem, -1);
    if (bio == NULL)
        goto cleanup;
    leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (leaf == NULL)
        goto cleanup;
    ci.count = 1;
    while ((next = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        ci.count++;
        X509_free(next);
    }
    ERR_clear_error(); /* the end of the text ends the loop with an error */

    ci.common_name = common_name(X509_get_subject_name(leaf));
    ci.subject = name_text(X509_get_subject_name(leaf));
    ci.issuer = name_text(X509_get_issuer_name(leaf));
    if (ci.subject == NULL || ci.issuer == NULL)
        goto cleanup;
    if (time_text(X509_get0_notBefore(leaf), ci.not_before, sizeof(ci.not_before)) != 0 ||
        time_text(X509_get0_notAfter(leaf), ci.not_after, sizeof(ci.not_after)) != 0)
        goto cleanup;
    ci.expired = X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0;
    if (X509_digest(leaf, EVP_sha256(), md, &mdlen) != 1)
        goto cleanup;
    for (unsigned int i = 0; i < mdlen && (size_t)i * 3 + 3 <= sizeof(ci.fingerprint); i++)
        snprintf(ci.fingerprint + i * 3, 4, i + 1 < mdlen ? "%02X:" : "%02X", md[i]);
    *out = ci;
    memset(&ci, 0, sizeof(ci));
    rc = 0;
cleanup:
    provhsm_cli_cert_info_free(&ci);
    X509_free(leaf);
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

void provhsm_cli_cert_info_free(provhsm_cli_cert_info *ci)
{
    free(ci->common_name);
    free(ci->subject);
    free(ci->issuer);
    ci->common_name = ci->subject = ci->issuer = NULL;
}
