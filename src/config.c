/*
 * Configuration loading: built-in defaults, one INI file, then environment overrides.
 * The front (hsm_front.c) and the admin API call provhsm_config_load() and hand the
 * result to the store and the backends; tests call the smaller steps directly.
 *
 * The file format is deliberately strict: every section and key is listed in the table
 * below, and anything unknown, duplicated or malformed is an error naming the origin and
 * line, so a typo never silently falls back to a default. Every function works on a
 * private copy and writes the caller's struct only on success. No state is kept between
 * calls. The configuration never holds secrets, and error messages echo values only for
 * keys whose values cannot be secrets (backend names, numbers, handles, log levels).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "safefile.h"

#define MOD "config"

#define CONFIG_SYSTEM_FILE  "/etc/provhsm/provhsm.conf"
#define CONFIG_DEFAULTS     "built-in defaults"
#define CONFIG_NONE         "/dev/null"
#define CONFIG_LINE_MAX     4096
#define CONFIG_FILE_MAX     (1024 * 1024)
#define CONFIG_KEY_FILENAME "/store.key"

/* ---- the schema ---------------------------------------------------------------- */

enum section {
    SEC_NONE = -1,
    SEC_STORE,
    SEC_X509,
    SEC_SYMMETRIC,
    SEC_TPM,
    SEC_PKCS11,
    SEC_LOG,
    SEC__COUNT
};

static const char *const section_names[SEC__COUNT] = {
    [SEC_STORE] = "store", [SEC_X509] = "x509",     [SEC_SYMMETRIC] = "symmetric",
    [SEC_TPM] = "tpm",     [SEC_PKCS11] = "pkcs11", [SEC_LOG] = "log",
};

enum value_kind {
    V_DIR,          /* absolute directory, required */
    V_PATH_OPT,     /* absolute path, or "" for none */
    V_ENV_NAME,     /* environment variable name, required */
    V_ENV_NAME_OPT, /* environment variable name, or "" for none */
    V_UINT,         /* decimal integer in [min, max] */
    V_HANDLE,       /* TPM persistent handle, hex (0x) or decimal */
    V_BACKEND,      /* software | tpm | pkcs11 */
    V_STRING,       /* any non-empty text */
    V_P11_URI,      /* an RFC 7512 PKCS#11 URI: "pkcs11:" and attributes, parsed where used */
    V_PCRS,         /* "" or <bank>:<n>[,<n>...], the PCRs a sealed store key is bound to */
    V_LEVEL         /* error | warn | info | debug */
};

typedef struct key_desc {
    enum section section;
    const char *name;
    enum value_kind kind;
    size_t offset; /* of the member in provhsm_config */
    size_t size;   /* of that member: buffer size for text, width for integers */
    unsigned long min, max;
} key_desc;

#define MEMBER(m) offsetof(provhsm_config, m), sizeof(((provhsm_config *)0)->m)

#define TPM_PERSISTENT_FIRST 0x81000000ul
#define TPM_PERSISTENT_LAST  0x81FFFFFFul

static const key_desc keys[] = {
    {SEC_STORE, "path", V_DIR, MEMBER(store_dir), 0, 0},
    {SEC_STORE, "key_file", V_PATH_OPT, MEMBER(key_file), 0, 0},
    {SEC_STORE, "passphrase_file", V_PATH_OPT, MEMBER(passphrase_file), 0, 0},
    {SEC_STORE, "passphrase_env", V_ENV_NAME, MEMBER(passphrase_env), 0, 0},
    {SEC_STORE, "scrypt_log2_n", V_UINT, MEMBER(scrypt_log2_n), 10, 22},
    {SEC_STORE, "scrypt_r", V_UINT, MEMBER(scrypt_r), 1, 32},
    {SEC_STORE, "scrypt_p", V_UINT, MEMBER(scrypt_p), 1, 16},
    {SEC_STORE, "seal_pcrs", V_PCRS, MEMBER(seal_pcrs), 0, 0},
    {SEC_STORE, "sealed_key_handle", V_HANDLE, MEMBER(sealed_key_handle), TPM_PERSISTENT_FIRST,
     TPM_PERSISTENT_LAST},
    {SEC_X509, "backend", V_BACKEND, MEMBER(x509_backend), 0, 0},
    {SEC_SYMMETRIC, "backend", V_BACKEND, MEMBER(symmetric_backend), 0, 0},
    {SEC_TPM, "backend", V_BACKEND, MEMBER(tpm_backend), 0, 0},
    {SEC_TPM, "tcti", V_STRING, MEMBER(tcti), 0, 0},
    {SEC_TPM, "ek_handle", V_HANDLE, MEMBER(ek_handle), TPM_PERSISTENT_FIRST, TPM_PERSISTENT_LAST},
    {SEC_TPM, "srk_handle", V_HANDLE, MEMBER(srk_handle), TPM_PERSISTENT_FIRST,
     TPM_PERSISTENT_LAST},
    {SEC_TPM, "identity_handle", V_HANDLE, MEMBER(identity_handle), TPM_PERSISTENT_FIRST,
     TPM_PERSISTENT_LAST},
    {SEC_TPM, "owner_auth_file", V_PATH_OPT, MEMBER(owner_auth_file), 0, 0},
    {SEC_TPM, "owner_auth_env", V_ENV_NAME_OPT, MEMBER(owner_auth_env), 0, 0},
    {SEC_TPM, "endorsement_auth_file", V_PATH_OPT, MEMBER(endorsement_auth_file), 0, 0},
    {SEC_TPM, "endorsement_auth_env", V_ENV_NAME_OPT, MEMBER(endorsement_auth_env), 0, 0},
    {SEC_TPM, "x509_key_handle", V_HANDLE, MEMBER(x509_key_handle), TPM_PERSISTENT_FIRST,
     TPM_PERSISTENT_LAST},
    {SEC_PKCS11, "module", V_PATH_OPT, MEMBER(pkcs11_module), 0, 0},
    {SEC_PKCS11, "token", V_P11_URI, MEMBER(pkcs11_token), 0, 0},
    {SEC_PKCS11, "pin_file", V_PATH_OPT, MEMBER(pkcs11_pin_file), 0, 0},
    {SEC_PKCS11, "pin_env", V_ENV_NAME, MEMBER(pkcs11_pin_env), 0, 0},
    {SEC_LOG, "level", V_LEVEL, MEMBER(log_level), 0, 0},
};

#define KEY_COUNT (sizeof(keys) / sizeof(keys[0]))

/* Names accepted syntactically; whether one is compiled in is the front's check. */
static const char *const backend_names[] = {
    "software", "tpm", "pkcs11",
#ifdef PROVHSM_TEST_HOOKS
    "testkey", /* the provider tests' key */
#endif
};

/* The longest store directory for which <dir>/store.key still fits a path buffer. */
#define STORE_DIR_MAX (PROVHSM_PATH_MAX - 1 - (sizeof(CONFIG_KEY_FILENAME) - 1))

/* ---- small utilities ------------------------------------------------------------ */

/* Copies src into dst[dstlen]; 0 on success, -1 (dst untouched) when it does not fit. */
static int copy_str(char *dst, size_t dstlen, const char *src)
{
    size_t len = strlen(src);

    if (len >= dstlen)
        return -1;
    memcpy(dst, src, len + 1);
    return 0;
}

/* dst = a + b; 0 on success, -1 (dst untouched) when it does not fit. dst may be a. */
static int join_str(char *dst, size_t dstlen, const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);

    if (la + lb >= dstlen)
        return -1;
    memmove(dst, a, la);
    memcpy(dst + la, b, lb + 1);
    return 0;
}

/* dst = dir (without trailing slashes) + leaf, where leaf starts with '/'. */
static int join_path(char *dst, size_t dstlen, const char *dir, const char *leaf)
{
    size_t ld = strlen(dir), ll = strlen(leaf);

    while (ld > 0 && dir[ld - 1] == '/')
        ld--;
    if (ld + ll >= dstlen)
        return -1;
    memmove(dst, dir, ld);
    memcpy(dst + ld, leaf, ll + 1);
    return 0;
}

/* Drops trailing slashes, keeping a lone "/". */
static void strip_trailing_slashes(char *path)
{
    size_t len = strlen(path);

    while (len > 1 && path[len - 1] == '/')
        path[--len] = '\0';
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* Trims blanks on both ends, in place; returns the new start. */
static char *trim(char *s)
{
    size_t len;

    while (is_blank(*s))
        s++;
    len = strlen(s);
    while (len > 0 && is_blank(s[len - 1]))
        s[--len] = '\0';
    return s;
}

/* [A-Z_][A-Z0-9_]* */
static int valid_env_name(const char *s)
{
    if (!(isupper((unsigned char)*s) || *s == '_'))
        return 0;
    for (s++; *s != '\0'; s++)
        if (!(isupper((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '_'))
            return 0;
    return 1;
}

/* Strict unsigned parse: digits only (after an optional 0x for base 16), no sign, no
 * surrounding text, no overflow. 0 on success. */
static int parse_ulong(const char *s, int base, unsigned long *out)
{
    char *end = NULL;
    unsigned long v;

    if (base == 16 ? !isxdigit((unsigned char)*s) : !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtoul(s, &end, base);
    if (errno != 0 || end == s || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

/* ---- the parser ----------------------------------------------------------------- */

typedef struct parse_ctx {
    provhsm_config *cfg;
    const char *origin;
    unsigned line;
    enum section section;
    unsigned char seen[KEY_COUNT];
    char *errbuf;
    size_t errlen;
} parse_ctx;

/* Logs "<origin>:<line>: <reason>" once and copies it to errbuf. */
static void fail(parse_ctx *ctx, const char *fmt, ...) PROVHSM_PRINTF(2, 3);

static void fail(parse_ctx *ctx, const char *fmt, ...)
{
    char reason[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    PH_ERR(MOD, "%s:%u: %s", ctx->origin, ctx->line, reason);
    if (ctx->errbuf != NULL && ctx->errlen > 0)
        snprintf(ctx->errbuf, ctx->errlen, "%s:%u: %s", ctx->origin, ctx->line, reason);
}

/* Same format for failures that have no line (reading a file, environment). */
static void fail_plain(char *errbuf, size_t errlen, const char *fmt, ...) PROVHSM_PRINTF(3, 4);

static void fail_plain(char *errbuf, size_t errlen, const char *fmt, ...)
{
    char msg[PROVHSM_PATH_MAX + 256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    PH_ERR(MOD, "%s", msg);
    if (errbuf != NULL && errlen > 0)
        snprintf(errbuf, errlen, "%s", msg);
}

/*
 * Extracts the value from the text after '=' (in place): a double-quoted string with \"
 * and \\ escapes, or bare text ending at a '#' that follows a blank. Trailing blanks and
 * a comment may follow either form. Returns NULL (after fail()) on a malformed value.
 */
static char *extract_value(parse_ctx *ctx, char *raw)
{
    char *v = raw, *r, *w;

    while (is_blank(*v))
        v++;
    if (*v != '"') {
        /* bare: a '#' starts a comment only after a blank; the '=' before raw is none */
        for (r = v; *r != '\0'; r++)
            if (*r == '#' && (r == raw ? 0 : is_blank(r[-1])))
                break;
        *r = '\0';
        return trim(v);
    }
    r = w = v + 1;
    for (;;) {
        if (*r == '\0') {
            fail(ctx, "unterminated quoted value");
            return NULL;
        }
        if (*r == '"')
            break;
        if (*r == '\\' && (r[1] == '"' || r[1] == '\\'))
            r++;
        *w++ = *r++;
    }
    *w = '\0';
    for (r++; is_blank(*r); r++)
        ;
    if (*r != '\0' && !(*r == '#' && is_blank(r[-1]))) {
        fail(ctx, "unexpected text after the closing quote");
        return NULL;
    }
    return v + 1;
}

/* PCR banks by name, with their TPM algorithm identifiers (TPM2_ALG_*). */
static const struct {
    const char *name;
    uint16_t alg;
} pcr_banks[] = {{"sha1", 0x0004}, {"sha256", 0x000b}, {"sha384", 0x000c}, {"sha512", 0x000d}};

/* "sha256:0,7": a bank and distinct PCR numbers 0..23; "" for none. 0, or -1 after fail(). */
static int apply_pcrs(parse_ctx *ctx, const key_desc *k, const char *value)
{
    const char *colon = strchr(value, ':');
    uint16_t alg = 0;
    uint32_t mask = 0;

    if (*value == '\0') {
        ctx->cfg->seal_pcrs[0] = '\0';
        ctx->cfg->seal_pcr_bank = 0;
        ctx->cfg->seal_pcr_mask = 0;
        return 0;
    }
    for (size_t i = 0; colon != NULL && i < sizeof(pcr_banks) / sizeof(pcr_banks[0]); i++)
        if (strlen(pcr_banks[i].name) == (size_t)(colon - value) &&
            strncmp(value, pcr_banks[i].name, (size_t)(colon - value)) == 0)
            alg = pcr_banks[i].alg;
    if (alg == 0) {
        fail(ctx,
             "[store] %s: \"%.32s\" does not start with a PCR bank (sha1:, sha256:, sha384:, "
             "sha512:)",
             k->name, value);
        return -1;
    }
    for (const char *p = colon + 1;;) {
        char *end = NULL;
        if (*p < '0' || *p > '9') {
            fail(ctx, "[store] %s: expected a PCR number at \"%.32s\"", k->name, p);
            return -1;
        }
        unsigned long n = strtoul(p, &end, 10);
        if (n > 23 || (mask & (1ul << n)) != 0) {
            fail(ctx, "[store] %s: PCR %lu is out of range (0..23) or named twice", k->name, n);
            return -1;
        }
        mask |= 1ul << n;
        if (*end == '\0')
            break;
        if (*end != ',') {
            fail(ctx, "[store] %s: expected ',' at \"%.32s\"", k->name, end);
            return -1;
        }
        p = end + 1;
    }
    if (copy_str(ctx->cfg->seal_pcrs, k->size, value) != 0) {
        fail(ctx, "[store] %s: value is longer than %zu characters", k->name, k->size - 1);
        return -1;
    }
    ctx->cfg->seal_pcr_bank = alg;
    ctx->cfg->seal_pcr_mask = mask;
    return 0;
}

/* Checks and stores one value into ctx->cfg; 0 on success, -1 after fail(). */
static int apply_value(parse_ctx *ctx, const key_desc *k, const char *value)
{
    const char *sec = section_names[k->section];
    char *member = (char *)ctx->cfg + k->offset;
    unsigned long n = 0;
    int level;

    switch (k->kind) {
    case V_DIR:
    case V_PATH_OPT:
        if (*value == '\0') {
            if (k->kind == V_DIR) {
                fail(ctx, "[%s] %s: must not be empty", sec, k->name);
                return -1;
            }
            member[0] = '\0';
            return 0;
        }
        if (value[0] != '/') {
            fail(ctx, "[%s] %s: must be an absolute path", sec, k->name);
            return -1;
        }
        if (copy_str(member, k->size, value) != 0 ||
            (k->kind == V_DIR && strlen(value) > STORE_DIR_MAX)) {
            fail(ctx, "[%s] %s: path is too long", sec, k->name);
            return -1;
        }
        if (k->kind == V_DIR)
            strip_trailing_slashes(member);
        return 0;

    case V_ENV_NAME:
    case V_ENV_NAME_OPT:
        if (*value == '\0' && k->kind == V_ENV_NAME_OPT) {
            member[0] = '\0';
            return 0;
        }
        if (!valid_env_name(value)) {
            fail(ctx, "[%s] %s: not an environment variable name ([A-Z_][A-Z0-9_]*)", sec, k->name);
            return -1;
        }
        if (copy_str(member, k->size, value) != 0) {
            fail(ctx, "[%s] %s: name is longer than %zu characters", sec, k->name, k->size - 1);
            return -1;
        }
        return 0;

    case V_UINT:
        if (parse_ulong(value, 10, &n) != 0 || n < k->min || n > k->max) {
            fail(ctx, "[%s] %s: \"%.32s\" is not an integer in %lu..%lu", sec, k->name, value,
                 k->min, k->max);
            return -1;
        }
        if (k->size == sizeof(uint8_t))
            *(uint8_t *)member = (uint8_t)n;
        else
            *(uint32_t *)member = (uint32_t)n;
        return 0;

    case V_HANDLE:
        if (value[0] == '0' && (value[1] == 'x' || value[1] == 'X')) {
            if (parse_ulong(value + 2, 16, &n) != 0)
                n = 0;
        } else if (parse_ulong(value, 10, &n) != 0) {
            n = 0;
        }
        if (n < k->min || n > k->max) {
            fail(ctx,
                 "[%s] %s: \"%.32s\" is not a persistent handle (0x%08lX..0x%08lX, hex or "
                 "decimal)",
                 sec, k->name, value, k->min, k->max);
            return -1;
        }
        *(uint32_t *)member = (uint32_t)n;
        return 0;

    case V_BACKEND:
        for (size_t i = 0; i < sizeof(backend_names) / sizeof(backend_names[0]); i++)
            if (strcmp(value, backend_names[i]) == 0)
                return copy_str(member, k->size, value);
        fail(ctx, "[%s] %s: unknown backend \"%.32s\" (software, tpm or pkcs11)", sec, k->name,
             value);
        return -1;

    case V_P11_URI:
        if (strncmp(value, "pkcs11:", 7) != 0) {
            fail(ctx, "[%s] %s: not a PKCS#11 URI (pkcs11:token=<label>;...)", sec, k->name);
            return -1;
        }
        /* fall through */
    case V_STRING:
        if (*value == '\0') {
            fail(ctx, "[%s] %s: must not be empty", sec, k->name);
            return -1;
        }
        if (copy_str(member, k->size, value) != 0) {
            fail(ctx, "[%s] %s: value is longer than %zu characters", sec, k->name, k->size - 1);
            return -1;
        }
        return 0;

    case V_PCRS:
        return apply_pcrs(ctx, k, value);

    case V_LEVEL:
        level = provhsm_log_parse_level(value);
        if (level < 0) {
            fail(ctx, "[%s] %s: \"%.32s\" is not error, warn, info or debug", sec, k->name, value);
            return -1;
        }
        *(int *)member = level;
        return 0;
    }
    fail(ctx, "[%s] %s: internal error: unhandled value kind", sec, k->name);
    return -1;
}

/* "[name]" with an optional comment after it. */
static int parse_section(parse_ctx *ctx, char *line)
{
    char *close = strchr(line, ']');
    char *name, *rest;

    if (close == NULL) {
        fail(ctx, "section header without ']'");
        return -1;
    }
    *close = '\0';
    for (rest = close + 1; is_blank(*rest); rest++)
        ;
    if (*rest != '\0' && !(*rest == '#' && rest > close + 1)) {
        fail(ctx, "unexpected text after the section header");
        return -1;
    }
    name = trim(line + 1);
    for (int s = 0; s < SEC__COUNT; s++) {
        if (strcmp(name, section_names[s]) == 0) {
            ctx->section = (enum section)s;
            if (s == SEC_TPM)
                ctx->cfg->tpm_configured = 1;
            return 0;
        }
    }
    fail(ctx, "unknown section [%.64s]", name);
    return -1;
}

/* "key = value" inside a section. */
static int parse_assignment(parse_ctx *ctx, char *line)
{
    char *eq = strchr(line, '=');
    char *name, *value;

    if (eq == NULL) {
        fail(ctx, "expected \"key = value\", a [section] or a # comment");
        return -1;
    }
    *eq = '\0';
    name = trim(line);
    if (*name == '\0') {
        fail(ctx, "missing key name before '='");
        return -1;
    }
    if (ctx->section == SEC_NONE) {
        fail(ctx, "key \"%.64s\" outside any [section]", name);
        return -1;
    }
    for (size_t i = 0; i < KEY_COUNT; i++) {
        if (keys[i].section != ctx->section || strcmp(keys[i].name, name) != 0)
            continue;
        if (ctx->seen[i]) {
            fail(ctx, "duplicate key \"%s\" in [%s]", keys[i].name, section_names[ctx->section]);
            return -1;
        }
        ctx->seen[i] = 1;
        value = extract_value(ctx, eq + 1);
        if (value == NULL)
            return -1;
        return apply_value(ctx, &keys[i], value);
    }
    fail(ctx, "unknown key \"%.64s\" in [%s]", name, section_names[ctx->section]);
    return -1;
}

/*
 * The X.509 device key's handle must be its own: replacing that key evicts whatever is at
 * the handle, which must never be the EK, the SRK, the identity key or the sealed store key.
 */
static int x509_handle_collides(const provhsm_config *cfg, const char *origin, char *errbuf,
                                size_t errlen)
{
    const struct {
        uint32_t handle;
        const char *name;
    } others[] = {{cfg->ek_handle, "[tpm] ek_handle"},
                  {cfg->srk_handle, "[tpm] srk_handle"},
                  {cfg->identity_handle, "[tpm] identity_handle"},
                  {cfg->sealed_key_handle, "[store] sealed_key_handle"}};
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        if (others[i].handle != 0 && others[i].handle == cfg->x509_key_handle) {
            fail_plain(errbuf, errlen,
                       "%s: [tpm] x509_key_handle 0x%08x is also %s; the X.509 key needs a "
                       "handle of its own",
                       origin, (unsigned)cfg->x509_key_handle, others[i].name);
            return 1;
        }
    }
    return 0;
}

provhsm_err provhsm_config_parse(provhsm_config *cfg, const char *text, const char *origin,
                                 char *errbuf, size_t errlen)
{
    provhsm_err err = PROVHSM_E_CONFIG;
    parse_ctx ctx;
    char *line = NULL; /* on the heap: create may run on a 16 KB thread stack */
    const char *p, *nl;
    size_t len;

    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';
    if (cfg == NULL || text == NULL) {
        PH_ERR(MOD, "provhsm_config_parse: NULL argument");
        return PROVHSM_E_INVALID_ARG;
    }
    memset(&ctx, 0, sizeof(ctx));
    ctx.origin = origin != NULL ? origin : "(configuration text)";
    ctx.section = SEC_NONE;
    ctx.errbuf = errbuf;
    ctx.errlen = errlen;
    ctx.cfg = malloc(sizeof(*ctx.cfg));
    line = malloc(CONFIG_LINE_MAX + 1);
    if (ctx.cfg == NULL || line == NULL) {
        PH_ERR(MOD, "out of memory");
        free(ctx.cfg);
        free(line);
        return PROVHSM_E_NOMEM;
    }
    memcpy(ctx.cfg, cfg, sizeof(*cfg));

    for (p = text; *p != '\0'; p = nl != NULL ? nl + 1 : p + len) {
        char *s;

        ctx.line++;
        nl = strchr(p, '\n');
        len = nl != NULL ? (size_t)(nl - p) : strlen(p);
        if (len > CONFIG_LINE_MAX) {
            fail(&ctx, "line longer than %d bytes", CONFIG_LINE_MAX);
            goto out;
        }
        memcpy(line, p, len);
        line[len] = '\0';
        s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        if ((*s == '[' ? parse_section(&ctx, s) : parse_assignment(&ctx, s)) != 0)
            goto out;
    }
    if (x509_handle_collides(ctx.cfg, ctx.origin, errbuf, errlen))
        goto out;
    memcpy(cfg, ctx.cfg, sizeof(*cfg));
    err = PROVHSM_OK;
out:
    free(line);
    free(ctx.cfg);
    return err;
}

/* ---- files ---------------------------------------------------------------------- */

/*
 * Reads and applies `path`; `via` names what chose it ("PROVHSM_CONFIG") for the error
 * message, or NULL. Sets cfg->source on success.
 *
 * The file is read through safefile.c under the TRUSTED rule (owner = euid or root, not
 * writable by group or others, a regular file opened without following a link): the
 * configuration names the TCTI, and the TCTI loader loads whatever library that names,
 * so whoever could write this file could run code in the host process. /dev/null is
 * taken as an empty configuration.
 */
static provhsm_err parse_file_via(provhsm_config *cfg, const char *path, const char *via,
                                  char *errbuf, size_t errlen)
{
    provhsm_err err;
    uint8_t *buf = NULL;
    const char *nul;
    size_t len = 0;
    char what[96];

    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';
    if (cfg == NULL || path == NULL) {
        PH_ERR(MOD, "provhsm_config_parse_file: NULL argument");
        return PROVHSM_E_INVALID_ARG;
    }
    snprintf(what, sizeof(what), "configuration file%s%s%s", via != NULL ? " (named by " : "",
             via != NULL ? via : "", via != NULL ? ")" : "");
    if (strlen(path) >= sizeof(cfg->source)) {
        fail_plain(errbuf, errlen, "%s path is longer than %d bytes", what, PROVHSM_PATH_MAX - 1);
        return PROVHSM_E_CONFIG;
    }
    if (strcmp(path, CONFIG_NONE) == 0) {
        /* the usual way to say "no configuration file": empty, and not a regular file */
        err = provhsm_config_parse(cfg, "", path, errbuf, errlen);
        if (err == PROVHSM_OK)
            (void)copy_str(cfg->source, sizeof(cfg->source), path);
        return err;
    }
    const provhsm_file_ref f = {AT_FDCWD, path, path, what, errbuf, errlen};
    err = provhsm_safefile_read(&f, PROVHSM_FILE_TRUSTED, CONFIG_FILE_MAX, &buf, &len);
    if (err == PROVHSM_E_NOT_FOUND)
        fail_plain(errbuf, errlen, "cannot open %s %s: %s", what, path, strerror(ENOENT));
    if (err != PROVHSM_OK)
        return err;

    nul = memchr(buf, '\0', len);
    if (nul != NULL) {
        unsigned line = 1;

        for (const char *q = (const char *)buf; q < nul; q++)
            line += *q == '\n';
        err = PROVHSM_E_CONFIG;
        fail_plain(errbuf, errlen, "%s:%u: NUL byte in configuration file", path, line);
        goto out;
    }

    err = provhsm_config_parse(cfg, (const char *)buf, path, errbuf, errlen);
    if (err == PROVHSM_OK)
        (void)copy_str(cfg->source, sizeof(cfg->source), path); /* length checked above */
out:
    free(buf);
    return err;
}

provhsm_err provhsm_config_parse_file(provhsm_config *cfg, const char *path, char *errbuf,
                                      size_t errlen)
{
    return parse_file_via(cfg, path, NULL, errbuf, errlen);
}

/* ---- defaults ------------------------------------------------------------------- */

/* The home directory of the effective user from the password database, into out. */
static int home_from_passwd(char *out, size_t outlen)
{
    struct passwd pw, *found = NULL;
    size_t buflen = 16384;
    char *buf = NULL;
    int rc = -1;

    for (;;) {
        char *bigger = realloc(buf, buflen);

        if (bigger == NULL)
            break;
        buf = bigger;
        int e = getpwuid_r(geteuid(), &pw, buf, buflen, &found);
        if (e == ERANGE && buflen < 1024 * 1024) {
            buflen *= 2;
            continue;
        }
        if (e == 0 && found != NULL && found->pw_dir != NULL && found->pw_dir[0] == '/')
            rc = copy_str(out, outlen, found->pw_dir);
        break;
    }
    free(buf);
    return rc;
}

/* Per-user store directory: $XDG_DATA_HOME/provhsm, else <home>/.local/share/provhsm. */
static void default_user_store(char *out, size_t outlen)
{
    const char *xdg = getenv("XDG_DATA_HOME");
    const char *home = getenv("HOME");
    char pwhome[PROVHSM_PATH_MAX];

    /* XDG base directory rules: a relative or empty XDG_DATA_HOME is ignored. */
    if (xdg != NULL && xdg[0] == '/') {
        if (join_path(out, outlen, xdg, "/provhsm") == 0 && strlen(out) <= STORE_DIR_MAX)
            return;
        PH_WARN(MOD, "XDG_DATA_HOME is too long for a store path; ignoring it");
    }
    if (home == NULL || home[0] != '/') {
        if (home_from_passwd(pwhome, sizeof(pwhome)) != 0) {
            out[0] = '\0';
            PH_WARN(MOD, "no home directory for uid %lu: set PROVHSM_STORE or [store] path",
                    (unsigned long)geteuid());
            return;
        }
        home = pwhome;
    }
    if (join_path(out, outlen, home, "/.local/share/provhsm") != 0 || strlen(out) > STORE_DIR_MAX) {
        out[0] = '\0';
        PH_WARN(MOD, "home directory is too long for a store path: set PROVHSM_STORE");
    }
}

void provhsm_config_defaults(provhsm_config *cfg)
{
    if (cfg == NULL)
        return;
    memset(cfg, 0, sizeof(*cfg));
    (void)copy_str(cfg->source, sizeof(cfg->source), CONFIG_DEFAULTS);
    if (geteuid() == 0)
        (void)copy_str(cfg->store_dir, sizeof(cfg->store_dir), "/var/lib/provhsm");
    else
        default_user_store(cfg->store_dir, sizeof(cfg->store_dir));
    strip_trailing_slashes(cfg->store_dir);
    (void)copy_str(cfg->passphrase_env, sizeof(cfg->passphrase_env), "PROVHSM_PASSPHRASE");
    cfg->scrypt_log2_n = 15;
    cfg->scrypt_r = 8;
    cfg->scrypt_p = 1;
    (void)copy_str(cfg->x509_backend, sizeof(cfg->x509_backend), "software");
    (void)copy_str(cfg->symmetric_backend, sizeof(cfg->symmetric_backend), "software");
    (void)copy_str(cfg->tpm_backend, sizeof(cfg->tpm_backend), "tpm");
    cfg->tpm_configured = 0;
    (void)copy_str(cfg->tcti, sizeof(cfg->tcti), "device:/dev/tpmrm0");
    cfg->ek_handle = 0x81010001u;
    cfg->srk_handle = 0x81000001u;
    cfg->identity_handle = 0x81000100u;
    cfg->x509_key_handle = 0x81000110u;
    (void)copy_str(cfg->pkcs11_token, sizeof(cfg->pkcs11_token), "pkcs11:");
    (void)copy_str(cfg->pkcs11_pin_env, sizeof(cfg->pkcs11_pin_env), "PROVHSM_PKCS11_PIN");
    cfg->log_level = -1;
}

/* ---- environment ---------------------------------------------------------------- */

provhsm_err provhsm_config_apply_env(provhsm_config *cfg)
{
    provhsm_err err = PROVHSM_E_CONFIG;
    provhsm_config *tmp = NULL;
    const char *store = getenv("PROVHSM_STORE");
    const char *logv = getenv("PROVHSM_LOG");
    const char *tcti = getenv("PROVHSM_TCTI");
    char cwd[PROVHSM_PATH_MAX];

    if (cfg == NULL) {
        PH_ERR(MOD, "provhsm_config_apply_env: NULL argument");
        return PROVHSM_E_INVALID_ARG;
    }
    tmp = malloc(sizeof(*tmp));
    if (tmp == NULL) {
        PH_ERR(MOD, "out of memory");
        return PROVHSM_E_NOMEM;
    }
    memcpy(tmp, cfg, sizeof(*tmp));

    if (store != NULL) {
        if (store[0] == '\0') {
            PH_ERR(MOD, "PROVHSM_STORE is set but empty: unset it or name the store directory");
            goto out;
        }
        if (store[0] == '/') {
            if (copy_str(tmp->store_dir, sizeof(tmp->store_dir), store) != 0 ||
                strlen(store) > STORE_DIR_MAX) {
                PH_ERR(MOD, "PROVHSM_STORE is longer than %zu bytes", (size_t)STORE_DIR_MAX);
                goto out;
            }
        } else {
            if (getcwd(cwd, sizeof(cwd)) == NULL) {
                PH_ERR(MOD, "PROVHSM_STORE is relative and the current directory is unknown: %s",
                       strerror(errno));
                err = PROVHSM_E_IO;
                goto out;
            }
            if (join_path(tmp->store_dir, sizeof(tmp->store_dir), cwd, "/") != 0 ||
                join_str(tmp->store_dir, sizeof(tmp->store_dir), tmp->store_dir, store) != 0 ||
                strlen(tmp->store_dir) > STORE_DIR_MAX) {
                PH_ERR(MOD, "PROVHSM_STORE, made absolute, is longer than %zu bytes",
                       (size_t)STORE_DIR_MAX);
                goto out;
            }
        }
        strip_trailing_slashes(tmp->store_dir);
    }

    /* An empty PROVHSM_LOG means "not set", as the logger itself treats it. */
    if (logv != NULL && logv[0] != '\0') {
        int level = provhsm_log_parse_level(logv);

        if (level < 0) {
            PH_ERR(MOD, "PROVHSM_LOG=\"%.32s\" is not one of error, warn, info, debug", logv);
            goto out;
        }
        tmp->log_level = level;
    }

    if (tcti != NULL) {
        if (tcti[0] == '\0') {
            PH_ERR(MOD, "PROVHSM_TCTI is set but empty: unset it or name a TCTI");
            goto out;
        }
        if (copy_str(tmp->tcti, sizeof(tmp->tcti), tcti) != 0) {
            PH_ERR(MOD, "PROVHSM_TCTI is longer than %zu bytes", sizeof(tmp->tcti) - 1);
            goto out;
        }
        tmp->tpm_configured = 1;
    }

    memcpy(cfg, tmp, sizeof(*cfg));
    err = PROVHSM_OK;
out:
    free(tmp);
    return err;
}

/* ---- the whole chain ------------------------------------------------------------ */

provhsm_err provhsm_config_load(provhsm_config *cfg, const char *explicit_path)
{
    provhsm_err err = PROVHSM_OK;
    provhsm_config *tmp = NULL;
    const char *envpath = getenv("PROVHSM_CONFIG");
    struct stat st;

    if (cfg == NULL) {
        PH_ERR(MOD, "provhsm_config_load: NULL argument");
        return PROVHSM_E_INVALID_ARG;
    }
    tmp = malloc(sizeof(*tmp));
    if (tmp == NULL) {
        PH_ERR(MOD, "out of memory");
        return PROVHSM_E_NOMEM;
    }
    provhsm_config_defaults(tmp);

    if (explicit_path != NULL) {
        err = parse_file_via(tmp, explicit_path, NULL, NULL, 0);
    } else if (envpath != NULL && envpath[0] != '\0') {
        err = parse_file_via(tmp, envpath, "PROVHSM_CONFIG", NULL, 0);
    } else if (stat(CONFIG_SYSTEM_FILE, &st) == 0) {
        err = parse_file_via(tmp, CONFIG_SYSTEM_FILE, NULL, NULL, 0);
    } else if (errno != ENOENT && errno != ENOTDIR) {
        /* It may exist; silently running on defaults instead would hide that. */
        PH_ERR(MOD, "cannot check for %s: %s", CONFIG_SYSTEM_FILE, strerror(errno));
        err = PROVHSM_E_IO;
    }
    if (err != PROVHSM_OK)
        goto out;

    err = provhsm_config_apply_env(tmp);
    if (err != PROVHSM_OK)
        goto out;

    if (tmp->store_dir[0] == '\0') {
        PH_ERR(MOD, "no store directory could be determined: set PROVHSM_STORE or [store] path");
        err = PROVHSM_E_CONFIG;
        goto out;
    }
    PH_INFO(MOD, "configuration from %s; store %s", tmp->source, tmp->store_dir);
    memcpy(cfg, tmp, sizeof(*cfg));
out:
    free(tmp);
    return err;
}

void provhsm_config_key_file(const provhsm_config *cfg, char *out, size_t outlen)
{
    if (out == NULL || outlen == 0)
        return;
    out[0] = '\0';
    if (cfg == NULL)
        return;
    if (cfg->key_file[0] != '\0') {
        if (copy_str(out, outlen, cfg->key_file) != 0)
            PH_ERR(MOD, "key file path does not fit a %zu-byte buffer", outlen);
        return;
    }
    if (join_path(out, outlen, cfg->store_dir, CONFIG_KEY_FILENAME) != 0) {
        out[0] = '\0';
        PH_ERR(MOD, "store key path does not fit a %zu-byte buffer", outlen);
    }
}

/* 1 when `name` (length len) is the TCTI `short_name` or its library's file name. */
static int tcti_name_is(const char *name, size_t len, const char *short_name)
{
    static const char lib_prefix[] = "libtss2-tcti-";
    const size_t prefix_len = sizeof(lib_prefix) - 1, short_len = strlen(short_name);
    if (len == short_len)
        return memcmp(name, short_name, len) == 0;
    if (len < prefix_len + short_len + 3 || memcmp(name, lib_prefix, prefix_len) != 0 ||
        memcmp(name + prefix_len, short_name, short_len) != 0)
        return 0;
    const char *rest = name + prefix_len + short_len;
    size_t rest_len = len - prefix_len - short_len;
    /* ".so", or ".so." and a version */
    return memcmp(rest, ".so", 3) == 0 && (rest_len == 3 || rest[3] == '.');
}

/* 1 for "/dev/tpmrm" followed by one or more digits and nothing else. */
static int is_kernel_rm_path(const char *path)
{
    static const char prefix[] = "/dev/tpmrm";
    if (strncmp(path, prefix, sizeof(prefix) - 1) != 0)
        return 0;
    const char *digits = path + sizeof(prefix) - 1;
    if (*digits == '\0')
        return 0;
    for (; *digits != '\0'; digits++)
        if (*digits < '0' || *digits > '9')
            return 0;
    return 1;
}

int provhsm_tcti_releases_on_close(const char *tcti)
{
    if (tcti == NULL)
        return 0;
    const char *colon = strchr(tcti, ':');
    size_t name_len = colon != NULL ? (size_t)(colon - tcti) : strlen(tcti);
    if (tcti_name_is(tcti, name_len, "tabrmd"))
        return 1;
    /* the device TCTI without a path picks /dev/tpmrm0 or else /dev/tpm0: not known here */
    return colon != NULL && tcti_name_is(tcti, name_len, "device") && is_kernel_rm_path(colon + 1);
}
