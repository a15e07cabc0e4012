/* A minimal unit-test harness for boxd: assertion macros and a runner.
 *
 * A test is a `static void test_x(void)` listed in a `struct unit_test` table. unit_main() runs
 * each test in its own child process (as libuv's runner does), so a failed assertion or a crash
 * in one test is reported and the others still run. It prints one line per test and, last,
 * exactly `N passed, M failed`; it returns non-zero when any test failed.
 *
 * `./test_x NAME` runs only the test called NAME, in-process (handy under a debugger).
 */
#ifndef BOXD_TESTS_UNIT_H
#define BOXD_TESTS_UNIT_H

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

struct unit_test {
    const char *name;
    void (*fn)(void);
};

#define UNIT_TEST(fn) { #fn, fn }

/* Fails the current test: prints where, then exits the test's process with status 1. */
#define UNIT_FAIL(...)                                                                             \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                            \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        fflush(stderr);                                                                            \
        exit(1);                                                                                   \
    } while (0)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            UNIT_FAIL("CHECK failed: %s", #cond);                                                  \
    } while (0)

/* Integer comparison that prints both values. Evaluates each argument once. */
#define CHECK_INT(a, op, b)                                                                        \
    do {                                                                                           \
        long long unit_a_ = (long long)(a), unit_b_ = (long long)(b);                              \
        if (!(unit_a_ op unit_b_))                                                                 \
            UNIT_FAIL("CHECK_INT failed: %s %s %s (%lld vs %lld)", #a, #op, #b, unit_a_, unit_b_); \
    } while (0)

#define CHECK_EQ(a, b) CHECK_INT(a, ==, b)

#define CHECK_U64(a, b)                                                                            \
    do {                                                                                           \
        uint64_t unit_a_ = (uint64_t)(a), unit_b_ = (uint64_t)(b);                                 \
        if (unit_a_ != unit_b_)                                                                    \
            UNIT_FAIL("CHECK_U64 failed: %s == %s (%" PRIu64 " vs %" PRIu64 ")", #a, #b, unit_a_,  \
                      unit_b_);                                                                    \
    } while (0)

#define CHECK_MEM(a, b, n)                                                                         \
    do {                                                                                           \
        if (memcmp((a), (b), (n)) != 0)                                                            \
            UNIT_FAIL("CHECK_MEM failed: %s == %s (%zu bytes)", #a, #b, (size_t)(n));              \
    } while (0)

static inline int unit_main(int argc, char **argv, const struct unit_test *tests, size_t n)
{
    if (argc > 1) {
        for (size_t i = 0; i < n; i++) {
            if (strcmp(argv[1], tests[i].name) == 0) {
                tests[i].fn();
                printf("ok %s\n1 passed, 0 failed\n", tests[i].name);
                return 0;
            }
        }
        fprintf(stderr, "no test named %s\n", argv[1]);
        return 2;
    }

    unsigned passed = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            tests[i].fn();
            fflush(stdout);
            _exit(0);
        }
        int status = 0;
        pid_t w;
        do
            w = waitpid(pid, &status, 0);
        while (w < 0 && errno == EINTR);
        if (w == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            passed++;
            printf("ok %s\n", tests[i].name);
        } else {
            failed++;
            if (w == pid && WIFSIGNALED(status))
                printf("FAIL %s (signal %d)\n", tests[i].name, WTERMSIG(status));
            else
                printf("FAIL %s\n", tests[i].name);
        }
    }
    printf("%u passed, %u failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif
