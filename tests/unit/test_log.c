/*
 * Logging (src/log.c): the application's callback is called without the log lock held,
 * so a callback that calls back into provhsm (set the level, swap the callback) does not
 * deadlock. A deadlock would hang the test: an alarm turns it into a failure.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "log.h"
#include "provhsm/provhsm.h"

#define DEADLOCK_SECONDS 10

static struct {
    int calls;
    char last[128];
} got;

/* Lowers the level to error from inside the callback: takes the log lock. */
static void callback_sets_level(provhsm_log_level level, const char *module, const char *message,
                                void *ctx)
{
    (void)level;
    (void)module;
    (void)ctx;
    got.calls++;
    snprintf(got.last, sizeof(got.last), "%s", message);
    provhsm_set_log_level(PROVHSM_LOG_ERROR);
}

static void callback_removes_itself(provhsm_log_level level, const char *module,
                                    const char *message, void *ctx)
{
    (void)level;
    (void)module;
    (void)message;
    (void)ctx;
    got.calls++;
    provhsm_set_log_callback(NULL, NULL);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "test_log: a callback that calls provhsm deadlocked\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)ignored;
    _exit(1);
}

static int arm_deadlock_alarm(void **state)
{
    (void)state;
    memset(&got, 0, sizeof(got));
    signal(SIGALRM, on_alarm);
    alarm(DEADLOCK_SECONDS);
    return 0;
}

static int disarm(void **state)
{
    (void)state;
    alarm(0);
    provhsm_set_log_callback(NULL, NULL);
    provhsm_set_log_level((provhsm_log_level)-1);
    return 0;
}

static void callback_may_change_the_level(void **state)
{
    (void)state;
    provhsm_set_log_level(PROVHSM_LOG_INFO);
    provhsm_set_log_callback(callback_sets_level, NULL);
    PH_INFO("test", "first line %d", 1);
    assert_int_equal(got.calls, 1);
    assert_string_equal(got.last, "first line 1");
    /* the level the callback set applies: info is now filtered out, error is not */
    PH_INFO("test", "filtered");
    assert_int_equal(got.calls, 1);
    PH_ERR("test", "error line");
    assert_int_equal(got.calls, 2);
    assert_string_equal(got.last, "error line");
}

static void callback_may_remove_itself(void **state)
{
    (void)state;
    provhsm_set_log_level(PROVHSM_LOG_ERROR);
    provhsm_set_log_callback(callback_removes_itself, NULL);
    PH_ERR("test", "to the callback");
    assert_int_equal(got.calls, 1);
    /* the next line goes to stderr, not to the removed callback */
    PH_ERR("test", "to stderr (expected in this test's output)");
    assert_int_equal(got.calls, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(callback_may_change_the_level, arm_deadlock_alarm, disarm),
        cmocka_unit_test_setup_teardown(callback_may_remove_itself, arm_deadlock_alarm, disarm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
