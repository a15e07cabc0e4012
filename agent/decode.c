/* Pure request decoders (decode.h): msgpack map in, typed struct or {code, message} out. */
#include "decode.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "agent.h"
#include "codec.h"
#include "sandbox.h"

#define FIELD(f) box_field_str(BOX_F_##f)

static int fail(struct decode_err *err, enum box_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct decode_err *err, enum box_err code, const char *fmt, ...)
{
    err->code = code;
    err->with_id = false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}

static int get_bool(const msgpack_object *m, const char *key, bool *v, bool dflt,
                    struct decode_err *err)
{
    int e = msg_get_bool(m, key, v);
    if (e == -ENOENT) {
        *v = dflt;
        return 0;
    }
    if (e < 0)
        return fail(err, BOX_ERR_BAD_REQUEST, "%s must be a boolean", key);
    return 0;
}

static int get_u64(const msgpack_object *m, const char *key, uint64_t *v, uint64_t dflt,
                   uint64_t max, struct decode_err *err)
{
    int e = msg_get_u64(m, key, v);
    if (e == -ENOENT) {
        *v = dflt;
        return 0;
    }
    if (e < 0 || *v > max)
        return fail(err, BOX_ERR_BAD_REQUEST, "%s must be an integer from 0 to %llu", key,
                    (unsigned long long)max);
    return 0;
}

bool decode_id_char_ok(char ch)
{
    return isalnum((unsigned char)ch) || ch == '.' || ch == '_' || ch == ':' || ch == '-';
}

int decode_run_id(const msgpack_object *m, const char **id, size_t *len, struct decode_err *err)
{
    if (msg_get_str(m, FIELD(ID), id, len) < 0)
        return fail(err, BOX_ERR_BAD_REQUEST, "id must be a string");
    return 0;
}

int decode_hello(const msgpack_object *m, uint64_t version_spoken, struct decode_err *err)
{
    uint64_t v;
    int e = msg_get_u64(m, FIELD(VERSION), &v);
    if (e == 0 && v == version_spoken)
        return 0;
    return fail(err, e == -EINVAL || e == 0 ? BOX_ERR_BAD_VERSION : BOX_ERR_BAD_REQUEST, "%s",
                e == -ENOENT ? "hello needs a version" : "this agent speaks protocol version 1");
}

int decode_shutdown(const msgpack_object *m, bool *reboot, struct decode_err *err)
{
    const char *act = "poweroff";
    size_t n = 8;
    int e = msg_get_str(m, FIELD(ACTION), &act, &n);
    if (e == -EINVAL || (e == 0 && !((n == 8 && memcmp(act, "poweroff", 8) == 0) ||
                                     (n == 6 && memcmp(act, "reboot", 6) == 0))))
        return fail(err, BOX_ERR_BAD_REQUEST, "action must be \"poweroff\" or \"reboot\"");
    *reboot = n == 6;
    return 0;
}

int decode_stdin(const msgpack_object *m, struct dec_stdin *out, struct decode_err *err)
{
    out->data = "";
    out->len = 0;
    if (msg_get_bytes(m, FIELD(DATA), &out->data, &out->len) == -EINVAL) {
        out->data = "";
        out->len = 0;
        fail(err, BOX_ERR_BAD_REQUEST, "data must be str or bin");
        err->with_id = true;
        return -1;
    }
    return get_bool(m, FIELD(EOF_), &out->eof, false, err);
}

int decode_signal_value(const msgpack_object *o)
{
    static const struct {
        const char *name;
        int sig;
    } names[] = {
        {"HUP", SIGHUP},   {"INT", SIGINT},     {"QUIT", SIGQUIT}, {"ILL", SIGILL},
        {"TRAP", SIGTRAP}, {"ABRT", SIGABRT},   {"BUS", SIGBUS},   {"FPE", SIGFPE},
        {"KILL", SIGKILL}, {"USR1", SIGUSR1},   {"SEGV", SIGSEGV}, {"USR2", SIGUSR2},
        {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},   {"TERM", SIGTERM}, {"CHLD", SIGCHLD},
        {"CONT", SIGCONT}, {"STOP", SIGSTOP},   {"TSTP", SIGTSTP}, {"TTIN", SIGTTIN},
        {"TTOU", SIGTTOU}, {"URG", SIGURG},     {"XCPU", SIGXCPU}, {"XFSZ", SIGXFSZ},
        {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF}, {"WINCH", SIGWINCH}, {"IO", SIGIO},
        {"PWR", SIGPWR},   {"SYS", SIGSYS},
    };
    if (o == NULL)
        return -1;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return o->via.u64 >= 1 && o->via.u64 < (uint64_t)NSIG ? (int)o->via.u64 : -1;
    if (o->type != MSGPACK_OBJECT_STR)
        return -1;
    const char *s = o->via.str.ptr;
    size_t n = o->via.str.size;
    if (n > 3 && strncasecmp(s, "SIG", 3) == 0)
        s += 3, n -= 3;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i].name) == n && strncasecmp(names[i].name, s, n) == 0)
            return names[i].sig;
    return -1;
}

int decode_signal(const msgpack_object *m, int *sig, struct decode_err *err)
{
    *sig = decode_signal_value(msg_get(m, FIELD(SIGNAL)));
    if (*sig < 0) {
        fail(err, BOX_ERR_BAD_REQUEST, "signal must be a number from 1 to %d or a name",
             NSIG - 1);
        err->with_id = true;
        return -1;
    }
    return 0;
}

int decode_cancel(const msgpack_object *m, uint64_t dflt, uint64_t *grace_ms,
                  struct decode_err *err)
{
    return get_u64(m, FIELD(GRACE_MS), grace_ms, dflt, DECODE_GRACE_MAX_MS, err);
}

int decode_attach(const msgpack_object *m, struct dec_attach *out, struct decode_err *err)
{
    if (get_u64(m, FIELD(FROM_SEQ), &out->from_seq, 0, UINT64_MAX, err) < 0)
        return -1;
    return get_bool(m, FIELD(OUTPUT), &out->output, false, err);
}

int decode_wait(const msgpack_object *m, bool *output, struct decode_err *err)
{
    return get_bool(m, FIELD(OUTPUT), output, false, err);
}

int decode_logs(const msgpack_object *m, struct dec_logs *out, struct decode_err *err)
{
    if (get_u64(m, FIELD(FROM_SEQ), &out->from_seq, 0, UINT64_MAX, err) < 0 ||
        get_u64(m, FIELD(MAX_RECORDS), &out->max_records, DECODE_LOGS_RECORDS,
                DECODE_LOGS_MAX_RECORDS, err) < 0 ||
        get_u64(m, FIELD(MAX_BYTES), &out->max_bytes, DECODE_LOGS_BYTES, UINT64_MAX, err) < 0)
        return -1;
    if (out->max_records == 0)
        out->max_records = 1;
    return 0;
}

int decode_run(const msgpack_object *m, bool timeout_alias, uint64_t dflt_grace,
               struct dec_run *out, struct decode_err *err)
{
    memset(out, 0, sizeof *out);
    int e = msg_get_str(m, FIELD(ID), &out->id, &out->id_len);
    if (e == -EINVAL || (e == 0 && (out->id_len == 0 || out->id_len > BOXD_ID_MAX)))
        return fail(err, BOX_ERR_BAD_REQUEST, "id must be a string of 1 to %d characters",
                    BOXD_ID_MAX);
    if (e < 0)
        out->id = NULL, out->id_len = 0;
    for (size_t i = 0; i < out->id_len; i++)
        if (!decode_id_char_ok(out->id[i]))
            return fail(err, BOX_ERR_BAD_REQUEST,
                        "id may hold only letters, digits and . _ : -");
    const char *tkey = FIELD(TIMEOUT_MS);
    if (timeout_alias && msg_get(m, FIELD(TIMEOUT))) {
        if (msg_get(m, FIELD(TIMEOUT_MS)))
            return fail(err, BOX_ERR_BAD_REQUEST, "give timeout or timeout_ms, not both");
        tkey = FIELD(TIMEOUT);
    }
    if (get_bool(m, FIELD(FOLLOW), &out->follow, true, err) < 0 ||
        get_bool(m, FIELD(OUTPUT), &out->want_output, false, err) < 0 ||
        get_bool(m, FIELD(STDIN), &out->want_stdin, false, err) < 0 ||
        get_u64(m, tkey, &out->timeout_ms, 0, DECODE_TIMEOUT_MAX_MS, err) < 0 ||
        get_u64(m, FIELD(GRACE_MS), &out->grace_ms, dflt_grace, DECODE_GRACE_MAX_MS, err) < 0)
        return -1;
    return 0;
}

int decode_user(const msgpack_object *m, size_t max, const char **user, size_t *len,
                struct decode_err *err)
{
    const char *u;
    size_t ul;
    int e = msg_get_str(m, FIELD(USER), &u, &ul);
    if (e == -EINVAL ||
        (e == 0 && (ul == 0 || ul >= max || memchr(u, '\0', ul) || memchr(u, ':', ul))))
        return fail(err, BOX_ERR_BAD_REQUEST, "user must be a user name");
    *user = e == 0 ? u : NULL;
    *len = e == 0 ? ul : 0;
    return 0;
}

int decode_seccomp(const msgpack_object *m, bool *given, int *profile, struct decode_err *err)
{
    const char *sp;
    size_t sl;
    *given = false;
    int e = msg_get_str(m, FIELD(SECCOMP), &sp, &sl);
    if (e == -EINVAL)
        return fail(err, BOX_ERR_BAD_REQUEST, "seccomp must be a string");
    if (e < 0)
        return 0;
    *profile = sandbox_profile_parse(sp, sl);
    if (*profile < 0)
        return fail(err, BOX_ERR_BAD_REQUEST,
                    "seccomp must be \"none\", \"default\" or \"strict\"");
    *given = true;
    return 0;
}

int decode_env(const msgpack_object *m, struct dec_env *out, struct decode_err *err)
{
    const msgpack_object *env = msg_get(m, FIELD(ENV));
    const msgpack_object *cwd = msg_get(m, FIELD(CWD));
    if (env && env->type == MSGPACK_OBJECT_NIL)
        env = NULL;
    if (cwd && cwd->type == MSGPACK_OBJECT_NIL)
        cwd = NULL;
    if (env && (env->type != MSGPACK_OBJECT_MAP || env->via.map.size > DECODE_MAX_ENV))
        return fail(err, BOX_ERR_BAD_REQUEST, "env must be a map of at most %u strings",
                    DECODE_MAX_ENV);
    if (cwd && (cwd->type != MSGPACK_OBJECT_STR || cwd->via.str.size == 0))
        return fail(err, BOX_ERR_BAD_REQUEST, "cwd must be a non-empty string");
    if (cwd && memchr(cwd->via.str.ptr, '\0', cwd->via.str.size))
        return fail(err, BOX_ERR_BAD_REQUEST, "cwd must not contain NUL");
    out->env_bytes = 0;
    if (env)
        for (uint32_t i = 0; i < env->via.map.size; i++) {
            const msgpack_object_kv *kv = &env->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR || kv->val.type != MSGPACK_OBJECT_STR)
                return fail(err, BOX_ERR_BAD_REQUEST, "env keys and values must be strings");
            const char *k = kv->key.via.str.ptr, *v = kv->val.via.str.ptr;
            size_t kl = kv->key.via.str.size, vl = kv->val.via.str.size;
            if (kl == 0 || memchr(k, '=', kl) || memchr(k, '\0', kl) || memchr(v, '\0', vl))
                return fail(err, BOX_ERR_BAD_REQUEST,
                            "env keys must be non-empty without = or NUL, values without NUL");
            out->env_bytes += kl + vl + 2;
        }
    out->env = env;
    out->cwd = cwd;
    return 0;
}

int decode_exec(const msgpack_object *m, bool tty, struct dec_exec *out, struct decode_err *err)
{
    const msgpack_object *cmd = msg_get(m, FIELD(CMD));
    const msgpack_object *argv = msg_get(m, FIELD(ARGV));
    if (cmd && cmd->type == MSGPACK_OBJECT_NIL)
        cmd = NULL;
    if (argv && argv->type == MSGPACK_OBJECT_NIL)
        argv = NULL;
    if (get_bool(m, FIELD(LOGIN), &out->login, false, err) < 0)
        return -1;
    if (out->login) {
        /* A login shell is a terminal's: it reads its commands from the user. */
        if (!tty)
            return fail(err, BOX_ERR_BAD_REQUEST, "login needs a tty");
        if (cmd || argv)
            return fail(err, BOX_ERR_BAD_REQUEST,
                        "login runs the user's login shell: give neither cmd nor argv");
        out->cmd = out->argv = NULL;
        return 0;
    }
    if ((cmd == NULL) == (argv == NULL))
        return fail(err, BOX_ERR_BAD_REQUEST, "exec needs exactly one of cmd and argv");
    if (cmd && cmd->type != MSGPACK_OBJECT_STR)
        return fail(err, BOX_ERR_BAD_REQUEST, "cmd must be a string");
    if (argv && (argv->type != MSGPACK_OBJECT_ARRAY || argv->via.array.size == 0 ||
                 argv->via.array.size > DECODE_MAX_ARGV))
        return fail(err, BOX_ERR_BAD_REQUEST, "argv must be an array of 1 to %u strings",
                    DECODE_MAX_ARGV);
    out->cmd = cmd;
    out->argv = argv;
    return 0;
}

/* rows and cols of map t, each a uint from 1 to DECODE_TTY_MAX; what names them in errors. */
static int tty_size(const msgpack_object *t, const char *what, struct dec_tty *out,
                    struct decode_err *err)
{
    uint64_t rows, cols;
    if (msg_get_u64(t, FIELD(ROWS), &rows) < 0 || msg_get_u64(t, FIELD(COLS), &cols) < 0 ||
        rows < 1 || rows > DECODE_TTY_MAX || cols < 1 || cols > DECODE_TTY_MAX)
        return fail(err, BOX_ERR_BAD_REQUEST, "%s must be integers from 1 to %u", what,
                    DECODE_TTY_MAX);
    out->rows = (uint16_t)rows;
    out->cols = (uint16_t)cols;
    return 0;
}

int decode_tty(const msgpack_object *m, struct dec_tty *out, struct decode_err *err)
{
    memset(out, 0, sizeof *out);
    const msgpack_object *t = msg_get(m, FIELD(TTY));
    if (t == NULL || t->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (t->type != MSGPACK_OBJECT_MAP)
        return fail(err, BOX_ERR_BAD_REQUEST, "tty must be a map {rows, cols}");
    if (tty_size(t, "tty.rows and tty.cols", out, err) < 0)
        return -1;
    out->given = true;
    return 0;
}

int decode_resize(const msgpack_object *m, struct dec_tty *out, struct decode_err *err)
{
    memset(out, 0, sizeof *out);
    if (tty_size(m, "rows and cols", out, err) < 0) {
        err->with_id = true;
        return -1;
    }
    out->given = true;
    return 0;
}

int decode_code(const msgpack_object *m, size_t max, struct dec_code *out,
                struct decode_err *err)
{
    out->lang = "";
    out->lang_len = 0;
    if (msg_get_str(m, FIELD(LANG), &out->lang, &out->lang_len) == -EINVAL)
        return fail(err, BOX_ERR_BAD_REQUEST, "lang must be a string");
    if (msg_get_bytes(m, FIELD(CODE), &out->code, &out->code_len) < 0)
        return fail(err, BOX_ERR_BAD_REQUEST, "code (a str or bin) is required");
    if (out->code_len > max)
        return fail(err, BOX_ERR_TOO_LARGE, "code is %zu bytes; at most %zu (max_code)",
                    out->code_len, max);
    return 0;
}

int decode_take_str(const msgpack_object *o, char **at, char **out)
{
    if (o->type != MSGPACK_OBJECT_STR || memchr(o->via.str.ptr, '\0', o->via.str.size))
        return -1;
    memcpy(*at, o->via.str.ptr, o->via.str.size);
    (*at)[o->via.str.size] = '\0';
    *out = *at;
    *at += o->via.str.size + 1;
    return 0;
}
