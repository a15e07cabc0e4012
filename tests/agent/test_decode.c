/* Unit tests of the pure request decoders (agent/decode.c) with golden frames: the example
 * frames of PROTOCOL.md 11 and hand-built bad ones (wrong types, missing fields, oversize,
 * unknown fields ignored). Each checks the typed struct, or the error code and the exact message
 * the agent sends (test_protocol*.py hold the same messages over a socket).
 *
 * Frames are hex specs: hex bytes, and text between single quotes copied as is. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/unit.h"
#include "codec.h"
#include "decode.h"
#include "sandbox.h"

static uint8_t bytes[4096];
static msgpack_zone zone;
static msgpack_object obj;
static uint8_t *copy; /* the last frame's: obj points into it and into zone */

/* Parses spec into obj (a frame body: one map). */
static const msgpack_object *body(const char *spec)
{
    size_t n = 0;
    for (const char *p = spec; *p;) {
        if (*p == ' ') {
            p++;
        } else if (*p == '\'') {
            for (p++; *p && *p != '\''; p++)
                bytes[n++] = (uint8_t)*p;
            if (*p)
                p++;
        } else {
            char h[3] = {p[0], p[1], 0};
            bytes[n++] = (uint8_t)strtoul(h, NULL, 16);
            p += 2;
        }
        CHECK(n < sizeof bytes);
    }
    if (copy) {
        msgpack_zone_destroy(&zone);
        free(copy);
    }
    CHECK(msgpack_zone_init(&zone, 1024));
    copy = malloc(n ? n : 1); /* exact size: a read past the end shows under ASan */
    memcpy(copy, bytes, n);
    CHECK(msg_parse(copy, n, &zone, &obj) == 0);
    return &obj;
}

static void expect_err(int rc, const struct decode_err *e, enum box_err code, const char *msg)
{
    CHECK_EQ(rc, -1);
    if (e->code != code || strcmp(e->message, msg) != 0)
        UNIT_FAIL("got %s \"%s\", want %s \"%s\"", box_err_str(e->code), e->message,
                  box_err_str(code), msg);
}

static void test_hello_golden_frame(void)
{
    /* PROTOCOL.md 11: 83 a4 'type' a5 'hello' a3 'req' 01 a7 'version' 01 */
    struct decode_err e;
    CHECK_EQ(decode_hello(body("83 a4'type' a5'hello' a3'req' 01 a7'version' 01"), 1, &e), 0);
}

static void test_hello_bad_versions(void)
{
    struct decode_err e;
    expect_err(decode_hello(body("81 a4'type' a5'hello'"), 1, &e), &e, BOX_ERR_BAD_REQUEST,
               "hello needs a version");
    expect_err(decode_hello(body("82 a4'type' a5'hello' a7'version' 02"), 1, &e), &e,
               BOX_ERR_BAD_VERSION, "this agent speaks protocol version 1");
    expect_err(decode_hello(body("82 a4'type' a5'hello' a7'version' a1'1'"), 1, &e), &e,
               BOX_ERR_BAD_VERSION, "this agent speaks protocol version 1");
    expect_err(decode_hello(body("82 a4'type' a5'hello' a7'version' ff"), 1, &e), &e,
               BOX_ERR_BAD_VERSION, "this agent speaks protocol version 1");
}

static void test_run_id(void)
{
    struct decode_err e;
    const char *id;
    size_t n;
    CHECK_EQ(decode_run_id(body("82 a4'type' a6'detach' a2'id' a2'r1'"), &id, &n, &e), 0);
    CHECK(n == 2 && memcmp(id, "r1", 2) == 0);
    expect_err(decode_run_id(body("81 a4'type' a6'detach'"), &id, &n, &e), &e,
               BOX_ERR_BAD_REQUEST, "id must be a string");
    expect_err(decode_run_id(body("82 a4'type' a6'detach' a2'id' 07"), &id, &n, &e), &e,
               BOX_ERR_BAD_REQUEST, "id must be a string");
}

static void test_stdin(void)
{
    struct decode_err e;
    struct dec_stdin d;
    CHECK_EQ(decode_stdin(body("83 a2'id' a1'x' a4'data' c4 03 'a' 00 'b' a3'eof' c3"), &d, &e), 0);
    CHECK(d.len == 3 && memcmp(d.data, "a\0b", 3) == 0 && d.eof);
    CHECK_EQ(decode_stdin(body("81 a2'id' a1'x'"), &d, &e), 0);
    CHECK(d.len == 0 && !d.eof);
    expect_err(decode_stdin(body("82 a2'id' a1'x' a4'data' 05"), &d, &e), &e,
               BOX_ERR_BAD_REQUEST, "data must be str or bin");
    CHECK(e.with_id);
    expect_err(decode_stdin(body("82 a2'id' a1'x' a3'eof' 01"), &d, &e), &e,
               BOX_ERR_BAD_REQUEST, "eof must be a boolean");
    CHECK(!e.with_id);
}

static void test_signal_names_and_numbers(void)
{
    CHECK_EQ(decode_signal_value(&body("81 a1's' a4'TERM'")->via.map.ptr[0].val), SIGTERM);
    CHECK_EQ(decode_signal_value(&body("81 a1's' a7'sigkill'")->via.map.ptr[0].val), SIGKILL);
    CHECK_EQ(decode_signal_value(&body("81 a1's' a8'SigWinch'")->via.map.ptr[0].val), SIGWINCH);
    CHECK_EQ(decode_signal_value(&body("81 a1's' 09")->via.map.ptr[0].val), 9);
    CHECK_EQ(decode_signal_value(&body("81 a1's' 00")->via.map.ptr[0].val), -1);
    CHECK_EQ(decode_signal_value(&body("81 a1's' cc 41")->via.map.ptr[0].val), -1); /* 65 */
    CHECK_EQ(decode_signal_value(&body("81 a1's' ff")->via.map.ptr[0].val), -1);    /* -1 */
    CHECK_EQ(decode_signal_value(&body("81 a1's' a3'SIG'")->via.map.ptr[0].val), -1);
    CHECK_EQ(decode_signal_value(&body("81 a1's' a5'TERMX'")->via.map.ptr[0].val), -1);
    CHECK_EQ(decode_signal_value(&body("81 a1's' a0")->via.map.ptr[0].val), -1);
    CHECK_EQ(decode_signal_value(NULL), -1);
    struct decode_err e;
    int sig;
    CHECK_EQ(decode_signal(body("82 a2'id' a1'x' a6'signal' a3'INT'"), &sig, &e), 0);
    CHECK_EQ(sig, SIGINT);
    char want[80];
    snprintf(want, sizeof want, "signal must be a number from 1 to %d or a name", NSIG - 1);
    expect_err(decode_signal(body("81 a2'id' a1'x'"), &sig, &e), &e, BOX_ERR_BAD_REQUEST, want);
    CHECK(e.with_id);
}

static void test_cancel_attach_wait(void)
{
    struct decode_err e;
    uint64_t g;
    CHECK_EQ(decode_cancel(body("81 a2'id' a1'x'"), 777, &g, &e), 0);
    CHECK_U64(g, 777);
    CHECK_EQ(decode_cancel(body("81 a8'grace_ms' cd 01 f4"), 777, &g, &e), 0);
    CHECK_U64(g, 500);
    expect_err(decode_cancel(body("81 a8'grace_ms' ce 00 36 ee 81"), 0, &g, &e), &e,
               BOX_ERR_BAD_REQUEST, "grace_ms must be an integer from 0 to 3600000");
    expect_err(decode_cancel(body("81 a8'grace_ms' ff"), 0, &g, &e), &e, BOX_ERR_BAD_REQUEST,
               "grace_ms must be an integer from 0 to 3600000");
    struct dec_attach a;
    CHECK_EQ(decode_attach(body("83 a2'id' a1'x' a8'from_seq' 05 a6'output' c3"), &a, &e), 0);
    CHECK(a.from_seq == 5 && a.output);
    expect_err(decode_attach(body("81 a8'from_seq' a1'5'"), &a, &e), &e, BOX_ERR_BAD_REQUEST,
               "from_seq must be an integer from 0 to 18446744073709551615");
    bool out;
    CHECK_EQ(decode_wait(body("81 a7'unknown' c0"), &out, &e), 0); /* unknown fields: ignored */
    CHECK(!out);
    expect_err(decode_wait(body("81 a6'output' 01"), &out, &e), &e, BOX_ERR_BAD_REQUEST,
               "output must be a boolean");
}

static void test_logs(void)
{
    struct decode_err e;
    struct dec_logs l;
    CHECK_EQ(decode_logs(body("81 a2'id' a1'x'"), &l, &e), 0);
    CHECK(l.from_seq == 0 && l.max_records == DECODE_LOGS_RECORDS &&
          l.max_bytes == DECODE_LOGS_BYTES);
    CHECK_EQ(decode_logs(body("81 ab'max_records' 00"), &l, &e), 0);
    CHECK_U64(l.max_records, 1); /* 0 asks for at least one */
    expect_err(decode_logs(body("81 ab'max_records' ce 00 01 86 a1"), &l, &e), &e,
               BOX_ERR_BAD_REQUEST, "max_records must be an integer from 0 to 100000");
}

static void test_shutdown(void)
{
    struct decode_err e;
    bool reboot = true;
    CHECK_EQ(decode_shutdown(body("81 a4'type' a8'shutdown'"), &reboot, &e), 0);
    CHECK(!reboot);
    CHECK_EQ(decode_shutdown(body("81 a6'action' a6'reboot'"), &reboot, &e), 0);
    CHECK(reboot);
    expect_err(decode_shutdown(body("81 a6'action' a4'halt'"), &reboot, &e), &e,
               BOX_ERR_BAD_REQUEST, "action must be \"poweroff\" or \"reboot\"");
    expect_err(decode_shutdown(body("81 a6'action' 01"), &reboot, &e), &e, BOX_ERR_BAD_REQUEST,
               "action must be \"poweroff\" or \"reboot\"");
}

static void test_run_options(void)
{
    struct decode_err e;
    struct dec_run r;
    CHECK_EQ(decode_run(body("82 a4'type' a4'exec' a3'cmd' a4'true'"), false, 2000, &r, &e), 0);
    CHECK(r.id == NULL && r.follow && !r.want_output && !r.want_stdin && r.timeout_ms == 0 &&
          r.grace_ms == 2000);
    CHECK_EQ(decode_run(body("84 a2'id' a4'a.b-' a6'follow' c2 a7'timeout' cd 03 e8 "
                             "a8'grace_ms' 00"), true, 2000, &r, &e), 0);
    CHECK(r.id_len == 4 && !r.follow && r.timeout_ms == 1000 && r.grace_ms == 0);
    expect_err(decode_run(body("81 a2'id' a0"), false, 0, &r, &e), &e, BOX_ERR_BAD_REQUEST,
               "id must be a string of 1 to 64 characters");
    expect_err(decode_run(body("81 a2'id' a3'a b'"), false, 0, &r, &e), &e, BOX_ERR_BAD_REQUEST,
               "id may hold only letters, digits and . _ : -");
    expect_err(decode_run(body("82 a7'timeout' 01 aa'timeout_ms' 01"), true, 0, &r, &e), &e,
               BOX_ERR_BAD_REQUEST, "give timeout or timeout_ms, not both");
    /* Without the alias (exec), `timeout` is an unknown field: ignored. */
    CHECK_EQ(decode_run(body("81 a7'timeout' a1'x'"), false, 0, &r, &e), 0);
    expect_err(decode_run(body("81 aa'timeout_ms' cf 00 00 03 e8 00 00 00 00"), false, 0, &r, &e),
               &e, BOX_ERR_BAD_REQUEST,
               "timeout_ms must be an integer from 0 to 4294967295000");
    expect_err(decode_run(body("81 a5'stdin' a3'yes'"), false, 0, &r, &e), &e,
               BOX_ERR_BAD_REQUEST, "stdin must be a boolean");
}

static void test_user_and_seccomp(void)
{
    struct decode_err e;
    const char *u;
    size_t n;
    CHECK_EQ(decode_user(body("81 a4'user' a6'nobody'"), 32, &u, &n, &e), 0);
    CHECK(n == 6 && memcmp(u, "nobody", 6) == 0);
    CHECK_EQ(decode_user(body("81 a4'user' c0"), 32, &u, &n, &e), 0);
    CHECK(u == NULL);
    expect_err(decode_user(body("81 a4'user' a3'a:b'"), 32, &u, &n, &e), &e,
               BOX_ERR_BAD_REQUEST, "user must be a user name");
    expect_err(decode_user(body("81 a4'user' a4'abcd'"), 4, &u, &n, &e), &e,
               BOX_ERR_BAD_REQUEST, "user must be a user name");
    bool given;
    int p;
    CHECK_EQ(decode_seccomp(body("81 a7'seccomp' a6'strict'"), &given, &p, &e), 0);
    CHECK(given && p == SECCOMP_STRICT);
    CHECK_EQ(decode_seccomp(body("80"), &given, &p, &e), 0);
    CHECK(!given);
    expect_err(decode_seccomp(body("81 a7'seccomp' a3'lax'"), &given, &p, &e), &e,
               BOX_ERR_BAD_REQUEST, "seccomp must be \"none\", \"default\" or \"strict\"");
    expect_err(decode_seccomp(body("81 a7'seccomp' 01"), &given, &p, &e), &e,
               BOX_ERR_BAD_REQUEST, "seccomp must be a string");
}

static void test_env_and_cwd(void)
{
    struct decode_err e;
    struct dec_env d;
    CHECK_EQ(decode_env(body("82 a3'env' 82 a1'A' a1'1' a4'PATH' a4'/bin' a3'cwd' a4'/tmp'"), &d,
                        &e), 0);
    CHECK(d.env && d.cwd && d.env_bytes == (1 + 1 + 2) + (4 + 4 + 2));
    CHECK_EQ(decode_env(body("82 a3'env' c0 a3'cwd' c0"), &d, &e), 0);
    CHECK(d.env == NULL && d.cwd == NULL);
    expect_err(decode_env(body("81 a3'env' 90"), &d, &e), &e, BOX_ERR_BAD_REQUEST,
               "env must be a map of at most 4096 strings");
    expect_err(decode_env(body("81 a3'cwd' a0"), &d, &e), &e, BOX_ERR_BAD_REQUEST,
               "cwd must be a non-empty string");
    expect_err(decode_env(body("81 a3'cwd' a3'a' 00 'b'"), &d, &e), &e, BOX_ERR_BAD_REQUEST,
               "cwd must not contain NUL");
    expect_err(decode_env(body("81 a3'env' 81 a1'A' 01"), &d, &e), &e, BOX_ERR_BAD_REQUEST,
               "env keys and values must be strings");
    expect_err(decode_env(body("81 a3'env' 81 a3'A=B' a1'1'"), &d, &e), &e, BOX_ERR_BAD_REQUEST,
               "env keys must be non-empty without = or NUL, values without NUL");
    expect_err(decode_env(body("81 a3'env' 81 a0 a1'1'"), &d, &e), &e, BOX_ERR_BAD_REQUEST,
               "env keys must be non-empty without = or NUL, values without NUL");
}

static void test_exec_program(void)
{
    struct decode_err e;
    struct dec_exec x;
    CHECK_EQ(decode_exec(body("82 a4'type' a4'exec' a3'cmd' a4'true'"), false, &x, &e), 0);
    CHECK(x.cmd && !x.argv);
    CHECK_EQ(decode_exec(body("82 a3'cmd' c0 a4'argv' 92 a2'ls' a2'-l'"), false, &x, &e), 0);
    CHECK(!x.cmd && x.argv && x.argv->via.array.size == 2);
    expect_err(decode_exec(body("80"), false, &x, &e), &e, BOX_ERR_BAD_REQUEST,
               "exec needs exactly one of cmd and argv");
    expect_err(decode_exec(body("82 a3'cmd' a1'x' a4'argv' 91 a1'x'"), false, &x, &e), &e,
               BOX_ERR_BAD_REQUEST, "exec needs exactly one of cmd and argv");
    expect_err(decode_exec(body("81 a3'cmd' 01"), false, &x, &e), &e, BOX_ERR_BAD_REQUEST,
               "cmd must be a string");
    expect_err(decode_exec(body("81 a4'argv' 90"), false, &x, &e), &e, BOX_ERR_BAD_REQUEST,
               "argv must be an array of 1 to 4096 strings");
    /* Each argv entry is checked when it is copied. */
    char block[64], *at = block, *out;
    const msgpack_object *m = body("81 a4'argv' 92 a2'ok' a3'n' 00 'l'");
    const msgpack_object *argv = &m->via.map.ptr[0].val;
    CHECK_EQ(decode_take_str(&argv->via.array.ptr[0], &at, &out), 0);
    CHECK(strcmp(out, "ok") == 0 && at == block + 3);
    CHECK_EQ(decode_take_str(&argv->via.array.ptr[1], &at, &out), -1);
}

/* tty and login (PROTOCOL.md 4.9), and resize's sizes. */
static void test_tty_fields(void)
{
    struct decode_err e;
    struct dec_tty t;
    struct dec_exec x;
    CHECK_EQ(decode_tty(body("81 a3'cmd' a1'x'"), &t, &e), 0);
    CHECK(!t.given);
    CHECK_EQ(decode_tty(body("81 a3'tty' c0"), &t, &e), 0); /* nil is absent */
    CHECK(!t.given);
    CHECK_EQ(decode_tty(body("81 a3'tty' 82 a4'rows' 18 a4'cols' cd 10 00"), &t, &e), 0);
    CHECK(t.given && t.rows == 24 && t.cols == 4096);
    expect_err(decode_tty(body("81 a3'tty' 92 18 50"), &t, &e), &e, BOX_ERR_BAD_REQUEST,
               "tty must be a map {rows, cols}");
    const char *const bad[] = {
        "81 a3'tty' 81 a4'rows' 18",                     /* cols missing */
        "81 a3'tty' 82 a4'rows' 00 a4'cols' 50",         /* 0 rows */
        "81 a3'tty' 82 a4'rows' 18 a4'cols' cd 10 01",   /* 4097 cols */
        "81 a3'tty' 82 a4'rows' ff a4'cols' 50",         /* negative */
        "81 a3'tty' 82 a4'rows' a2'24' a4'cols' 50",     /* a string */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_err(decode_tty(body(bad[i]), &t, &e), &e, BOX_ERR_BAD_REQUEST,
                   "tty.rows and tty.cols must be integers from 1 to 4096");

    CHECK_EQ(decode_exec(body("81 a5'login' c3"), true, &x, &e), 0);
    CHECK(x.login && !x.cmd && !x.argv);
    CHECK_EQ(decode_exec(body("82 a5'login' c2 a3'cmd' a1'x'"), false, &x, &e), 0);
    CHECK(!x.login && x.cmd);
    expect_err(decode_exec(body("81 a5'login' c3"), false, &x, &e), &e, BOX_ERR_BAD_REQUEST,
               "login needs a tty");
    expect_err(decode_exec(body("82 a5'login' c3 a3'cmd' a1'x'"), true, &x, &e), &e,
               BOX_ERR_BAD_REQUEST, "login runs the user's login shell: give neither cmd nor argv");
    expect_err(decode_exec(body("82 a5'login' 01 a3'cmd' a1'x'"), true, &x, &e), &e,
               BOX_ERR_BAD_REQUEST, "login must be a boolean");

    CHECK_EQ(decode_resize(body("83 a2'id' a1'r' a4'rows' 32 a4'cols' cc c8"), &t, &e), 0);
    CHECK(t.rows == 50 && t.cols == 200);
    expect_err(decode_resize(body("82 a2'id' a1'r' a4'rows' 32"), &t, &e), &e,
               BOX_ERR_BAD_REQUEST, "rows and cols must be integers from 1 to 4096");
    CHECK(e.with_id);
}

static void test_code_fields(void)
{
    struct decode_err e;
    struct dec_code c;
    CHECK_EQ(decode_code(body("83 a4'type' a4'code' a4'lang' a2'py' a4'code' a5'print'"), 16, &c,
                         &e), 0);
    CHECK(c.lang_len == 2 && c.code_len == 5);
    CHECK_EQ(decode_code(body("81 a4'code' c4 01 'x'"), 16, &c, &e), 0);
    CHECK(c.lang_len == 0);
    expect_err(decode_code(body("82 a4'lang' 01 a4'code' a1'x'"), 16, &c, &e), &e,
               BOX_ERR_BAD_REQUEST, "lang must be a string");
    expect_err(decode_code(body("81 a4'lang' a2'py'"), 16, &c, &e), &e, BOX_ERR_BAD_REQUEST,
               "code (a str or bin) is required");
    expect_err(decode_code(body("81 a4'code' a5'12345'"), 4, &c, &e), &e, BOX_ERR_TOO_LARGE,
               "code is 5 bytes; at most 4 (max_code)");
}

int main(int argc, char **argv)
{
    static const struct unit_test tests[] = {
        UNIT_TEST(test_hello_golden_frame),
        UNIT_TEST(test_hello_bad_versions),
        UNIT_TEST(test_run_id),
        UNIT_TEST(test_stdin),
        UNIT_TEST(test_signal_names_and_numbers),
        UNIT_TEST(test_cancel_attach_wait),
        UNIT_TEST(test_logs),
        UNIT_TEST(test_shutdown),
        UNIT_TEST(test_run_options),
        UNIT_TEST(test_user_and_seccomp),
        UNIT_TEST(test_env_and_cwd),
        UNIT_TEST(test_exec_program),
        UNIT_TEST(test_code_fields),
        UNIT_TEST(test_tty_fields),
    };
    return unit_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
