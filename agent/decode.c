/* Pure request decoders (decode.h): msgpack map in, typed struct or {code, message} out. */
#include "decode.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
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

/* The `tunnel` every tunnel request but tunnel_open names. */
static int get_tunnel(const msgpack_object *m, uint64_t *tunnel, struct decode_err *err)
{
    if (msg_get_u64(m, FIELD(TUNNEL), tunnel) < 0)
        return fail(err, BOX_ERR_BAD_REQUEST, "tunnel must be the id a tunnel_opened gave");
    return 0;
}

int decode_tunnel_open(const msgpack_object *m, struct dec_tunnel_open *out,
                       struct decode_err *err)
{
    memset(out, 0, sizeof *out);
    int eh = msg_get_str(m, FIELD(HOST), &out->host, &out->host_len);
    int ep = msg_get_str(m, FIELD(PATH), &out->path, &out->path_len);
    if (eh == -EINVAL || ep == -EINVAL)
        return fail(err, BOX_ERR_BAD_REQUEST, "host and path must be strings");
    if ((eh == 0) == (ep == 0))
        return fail(err, BOX_ERR_BAD_REQUEST,
                    "tunnel_open needs exactly one of host (with port) and path");
    if (ep == 0) {
        out->host = NULL;
        if (msg_get(m, FIELD(PORT)) && msg_get(m, FIELD(PORT))->type != MSGPACK_OBJECT_NIL)
            return fail(err, BOX_ERR_BAD_REQUEST, "port goes with host, not with path");
        if (out->path_len == 0 || out->path_len > DECODE_TUNNEL_PATH_MAX ||
            out->path[0] != '/' || memchr(out->path, '\0', out->path_len))
            return fail(err, BOX_ERR_BAD_REQUEST,
                        "path must be an absolute unix socket path of at most %u bytes "
                        "without NUL", DECODE_TUNNEL_PATH_MAX);
        return 0;
    }
    out->path = NULL;
    if (out->host_len == 0 || out->host_len > DECODE_TUNNEL_HOST_MAX ||
        memchr(out->host, '\0', out->host_len))
        return fail(err, BOX_ERR_BAD_REQUEST,
                    "host must be an address or name of 1 to %u bytes without NUL",
                    DECODE_TUNNEL_HOST_MAX);
    uint64_t port;
    if (msg_get_u64(m, FIELD(PORT), &port) < 0 || port == 0 || port > 65535)
        return fail(err, BOX_ERR_BAD_REQUEST, "port must be an integer from 1 to 65535");
    out->port = (uint16_t)port;
    return 0;
}

int decode_tunnel_data(const msgpack_object *m, struct dec_tunnel_data *out,
                       struct decode_err *err)
{
    out->data = "";
    out->len = 0;
    if (get_tunnel(m, &out->tunnel, err) < 0)
        return -1;
    if (msg_get_bytes(m, FIELD(DATA), &out->data, &out->len) == -EINVAL) {
        out->data = "";
        out->len = 0;
        return fail(err, BOX_ERR_BAD_REQUEST, "data must be str or bin");
    }
    return 0;
}

int decode_tunnel_ack(const msgpack_object *m, uint64_t *tunnel, uint64_t *bytes,
                      struct decode_err *err)
{
    if (get_tunnel(m, tunnel, err) < 0)
        return -1;
    if (msg_get_u64(m, FIELD(BYTES), bytes) < 0)
        return fail(err, BOX_ERR_BAD_REQUEST, "bytes must be an integer >= 0");
    return 0;
}

int decode_tunnel_close(const msgpack_object *m, uint64_t *tunnel, bool *write_only,
                        struct decode_err *err)
{
    if (get_tunnel(m, tunnel, err) < 0)
        return -1;
    const char *how = "both";
    size_t n = 4;
    int e = msg_get_str(m, FIELD(HOW), &how, &n);
    if (e == -EINVAL || (e == 0 && !((n == 5 && memcmp(how, "write", 5) == 0) ||
                                     (n == 4 && memcmp(how, "both", 4) == 0))))
        return fail(err, BOX_ERR_BAD_REQUEST, "how must be \"write\" or \"both\"");
    *write_only = n == 5;
    return 0;
}

/* ---- trees ------------------------------------------------------------------------------------ */

#define RKEY(f) box_rfield_str(BOX_RF_##f) /* the keys of an entry are those of the replies' */

int decode_tree_read(const msgpack_object *m, const struct dec_tree_caps *limits,
                     struct dec_tree_caps *out, struct decode_err *err)
{
    if (get_u64(m, FIELD(MAX_ENTRIES), &out->entries, limits->entries, limits->entries, err) < 0 ||
        get_u64(m, FIELD(MAX_BYTES), &out->bytes, limits->bytes, limits->bytes, err) < 0 ||
        get_u64(m, FIELD(MAX_DEPTH), &out->depth, limits->depth, limits->depth, err) < 0)
        return -1;
    if (out->depth == 0)
        out->depth = 1;
    return 0;
}

bool decode_tree_id_ok(const char *s, size_t n)
{
    if (n == 0 || n > DECODE_TREE_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
            return false;
    return true;
}

static int get_tree_id(const msgpack_object *m, bool required, const char **id, size_t *n,
                       struct decode_err *err)
{
    int e = msg_get_str(m, FIELD(TREE_ID), id, n);
    if (e == -ENOENT && !required) {
        *id = NULL;
        *n = 0;
        return 0;
    }
    if (e < 0 || !decode_tree_id_ok(*id, *n))
        return fail(err, BOX_ERR_BAD_REQUEST, "tree_id must be 1-32 of [A-Za-z0-9_-]");
    return 0;
}

static int get_entries(const msgpack_object *m, const msgpack_object **out,
                       struct decode_err *err)
{
    *out = msg_get(m, FIELD(ENTRIES));
    if (*out != NULL && (*out)->type == MSGPACK_OBJECT_NIL)
        *out = NULL;
    if (*out != NULL && (*out)->type != MSGPACK_OBJECT_ARRAY)
        return fail(err, BOX_ERR_BAD_REQUEST, "entries must be an array");
    return 0;
}

int decode_tree_write(const msgpack_object *m, const struct dec_tree_caps *limits,
                      struct dec_tree_write *out, struct decode_err *err)
{
    memset(out, 0, sizeof *out);
    if (get_tree_id(m, false, &out->tree_id, &out->tree_id_len, err) < 0 ||
        get_bool(m, FIELD(MKDIR), &out->mkdir, false, err) < 0 ||
        get_bool(m, FIELD(OVERWRITE), &out->overwrite, true, err) < 0 ||
        get_bool(m, FIELD(FSYNC), &out->fsync, true, err) < 0 ||
        decode_tree_read(m, limits, &out->caps, err) < 0 ||
        get_entries(m, &out->entries, err) < 0 ||
        get_bool(m, FIELD(EOF_), &out->eof, false, err) < 0)
        return -1;
    return 0;
}

int decode_tree_data(const msgpack_object *m, struct dec_tree_data *out, struct decode_err *err)
{
    memset(out, 0, sizeof *out);
    if (get_tree_id(m, true, &out->tree_id, &out->tree_id_len, err) < 0 ||
        get_entries(m, &out->entries, err) < 0 ||
        get_bool(m, FIELD(EOF_), &out->eof, false, err) < 0)
        return -1;
    return 0;
}

int decode_tree_name(const char *s, size_t n)
{
    if (n == 1 && s[0] == '.')
        return 0;
    if (n == 0 || n >= PATH_MAX || s[0] == '/' || memchr(s, '\0', n))
        return -1;
    int parts = 0;
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && s[j] != '/')
            j++;
        size_t len = j - i;
        if (len == 0 || len > NAME_MAX || (len == 1 && s[i] == '.') ||
            (len == 2 && s[i] == '.' && s[i + 1] == '.'))
            return -1;
        parts++;
        i = j + 1;
    }
    return parts;
}

static int entry_fail(struct decode_err *err, uint32_t i, const char *what)
{
    return fail(err, BOX_ERR_BAD_REQUEST, "entries[%u]: %s", (unsigned)i, what);
}

int decode_tree_entry(const msgpack_object *e, uint32_t i, bool *in_file,
                      struct dec_tree_entry *out, struct decode_err *err)
{
    memset(out, 0, sizeof *out);
    if (e->type != MSGPACK_OBJECT_MAP)
        return entry_fail(err, i, "each entry must be a map");
    int de = msg_get_bytes(e, RKEY(DATA), &out->data, &out->data_len);
    if (de == -EINVAL)
        return entry_fail(err, i, "data must be a str or bin");
    if (de < 0)
        out->data = NULL, out->data_len = 0;
    int me = msg_get_bool(e, RKEY(MORE), &out->more);
    if (me == -EINVAL)
        return entry_fail(err, i, "more must be a boolean");
    int ne = msg_get_bytes(e, RKEY(NAME), &out->name, &out->name_len);
    if (ne == -EINVAL)
        return entry_fail(err, i, "name must be a str or bin");
    if (ne == -ENOENT) {
        if (!*in_file)
            return entry_fail(err, i, "an entry without a name continues a file's data, and no "
                                      "file is open (its header had no more: true)");
        out->continuation = true;
        *in_file = out->more;
        out->kind = 'f';
        return 0;
    }
    if (*in_file)
        return entry_fail(err, i, "the previous file's data goes on (more: true): a continuation "
                                  "({data, more}) is due, not a new entry");
    int parts = decode_tree_name(out->name, out->name_len);
    if (parts < 0)
        return entry_fail(err, i, "name must be \".\" or a relative path without \"\", \".\" or "
                                  "\"..\" components, under 4096 bytes");
    out->depth = (unsigned)parts;
    const char *k;
    size_t kl;
    if (msg_get_str(e, RKEY(KIND), &k, &kl) < 0)
        return entry_fail(err, i, "kind must be a string (\"file\", \"dir\" or \"symlink\")");
    out->kind = kl == 4 && memcmp(k, "file", 4) == 0  ? 'f'
                : kl == 3 && memcmp(k, "dir", 3) == 0 ? 'd'
                : kl == 7 && memcmp(k, "symlink", 7) == 0 ? 'l'
                                                          : '?';
    if (parts == 0 && out->kind != 'd')
        return entry_fail(err, i, "\".\" (the tree's root) is a dir");
    uint64_t mode;
    int mo = msg_get_u64(e, RKEY(MODE), &mode);
    if (mo == -EINVAL || (mo == 0 && mode > 07777))
        return entry_fail(err, i, "mode must be an integer from 0 to 4095 (0o7777)");
    out->has_mode = mo == 0;
    out->mode = mo == 0 ? (uint32_t)mode : 0;
    int te = msg_get_i64(e, RKEY(MTIME_NS), &out->mtime_ns);
    if (te == -EINVAL)
        return entry_fail(err, i, "mtime_ns must be an integer");
    out->has_mtime = te == 0;
    int ge = msg_get_bytes(e, RKEY(TARGET), &out->target, &out->target_len);
    if (ge == -EINVAL || (ge == 0 && (out->target_len == 0 || out->target_len >= PATH_MAX ||
                                      memchr(out->target, '\0', out->target_len))))
        return entry_fail(err, i, "target must be 1-4095 bytes without NUL");
    if (out->kind == 'l' && ge < 0)
        return entry_fail(err, i, "a symlink needs its target");
    if (out->kind != 'f' && (out->data_len > 0 || out->more))
        return entry_fail(err, i, "only a file has data");
    *in_file = out->kind == 'f' && out->more;
    return 0;
}

int decode_tree_entries(const msgpack_object *entries, uint32_t max, bool *in_file,
                        uint64_t *headers, uint64_t *bytes, struct decode_err *err)
{
    if (entries == NULL)
        return 0;
    if (entries->via.array.size > max)
        return fail(err, BOX_ERR_BAD_REQUEST, "entries: at most %u in one request",
                    (unsigned)max);
    bool open = *in_file;
    uint64_t h = 0, b = 0;
    for (uint32_t i = 0; i < entries->via.array.size; i++) {
        struct dec_tree_entry d;
        if (decode_tree_entry(&entries->via.array.ptr[i], i, &open, &d, err) < 0)
            return -1;
        h += !d.continuation;
        b += d.data_len;
    }
    *in_file = open;
    *headers += h;
    *bytes += b;
    return 0;
}
