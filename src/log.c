/*
 * Logging front: level selection and the sink (callback or stderr). Process-wide state
 * guarded by one mutex. A line takes the level and the callback under the lock and is
 * delivered after it is released, so a callback that calls back into provhsm (which may
 * log, or change the level) cannot deadlock; a line already on its way when the callback
 * is replaced still goes to the old one.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/err.h>

#include "log.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static provhsm_log_fn log_callback;
static void *log_callback_ctx;

/* -1: not decided yet. Precedence: API > PROVHSM_LOG > configuration > warn. */
static int api_level = -1;
static int config_level = -1;
static int env_level = -2; /* -2: environment not read yet */

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int provhsm_log_parse_level(const char *text)
{
    if (text == NULL)
        return -1;
    for (int i = 0; i < 4; i++)
        if (strcasecmp(text, level_names[i]) == 0)
            return i;
    if (strcasecmp(text, "warning") == 0)
        return PROVHSM_LOG_WARN;
    return -1;
}

/*
 * One line to stderr, formatted here and written with one fputs: fprintf on an unbuffered
 * stream takes an 8 KB buffer on the stack in glibc, more than an SDK thread of 16 KB
 * has to spare.
 */
static void log_to_stderr(provhsm_log_level level, const char *module, const char *message)
{
    char out[1024 + 64];
    snprintf(out, sizeof(out), "provhsm: %s: [%s] %s\n", level_names[level], module, message);
    fputs(out, stderr);
}

static int current_level_locked(void)
{
    if (env_level == -2) {
        const char *env = getenv("PROVHSM_LOG");
        env_level = provhsm_log_parse_level(env);
        if (env != NULL && *env != '\0' && env_level < 0) {
            char note[160];
            snprintf(note, sizeof(note),
                     "PROVHSM_LOG=\"%.64s\" is not error|warn|info|debug; using warn", env);
            log_to_stderr(PROVHSM_LOG_WARN, "log", note);
        }
    }
    if (api_level >= 0)
        return api_level;
    if (env_level >= 0)
        return env_level;
    if (config_level >= 0)
        return config_level;
    return PROVHSM_LOG_WARN;
}

int provhsm_log_enabled(provhsm_log_level level)
{
    pthread_mutex_lock(&log_lock);
    int enabled = (int)level <= current_level_locked();
    pthread_mutex_unlock(&log_lock);
    return enabled;
}

void provhsm_set_log_callback(provhsm_log_fn fn, void *ctx)
{
    pthread_mutex_lock(&log_lock);
    log_callback = fn;
    log_callback_ctx = ctx;
    pthread_mutex_unlock(&log_lock);
}

void provhsm_set_log_level(provhsm_log_level level)
{
    pthread_mutex_lock(&log_lock);
    api_level = (level >= PROVHSM_LOG_ERROR && level <= PROVHSM_LOG_DEBUG) ? (int)level : -1;
    pthread_mutex_unlock(&log_lock);
}

void provhsm_log_set_config_level(provhsm_log_level level)
{
    pthread_mutex_lock(&log_lock);
    config_level = (level >= PROVHSM_LOG_ERROR && level <= PROVHSM_LOG_DEBUG) ? (int)level : -1;
    pthread_mutex_unlock(&log_lock);
}

void provhsm_log(provhsm_log_level level, const char *module, const char *fmt, ...)
{
    char line[1024];
    va_list ap;

    pthread_mutex_lock(&log_lock);
    int enabled = (int)level <= current_level_locked();
    provhsm_log_fn fn = log_callback;
    void *ctx = log_callback_ctx;
    pthread_mutex_unlock(&log_lock);
    if (!enabled)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* Outside the lock: a callback may call provhsm (even set the level or the callback). */
    if (fn != NULL)
        fn(level, module, line, ctx);
    else
        log_to_stderr(level, module, line);
}

void provhsm_log_openssl(const char *module, const char *what)
{
    unsigned long code;
    char buf[256];
    int any = 0;

    while ((code = ERR_get_error()) != 0) {
        ERR_error_string_n(code, buf, sizeof(buf));
        provhsm_log(PROVHSM_LOG_ERROR, module, "%s: %s", what, buf);
        any = 1;
    }
    if (!any)
        provhsm_log(PROVHSM_LOG_ERROR, module, "%s failed", what);
}
