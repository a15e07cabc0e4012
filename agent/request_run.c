/* The requests that make runs (PROTOCOL.md 4.1 and 4.8): exec and code, what they share (the
 * run options, a retry of an existing id, the policy on `user` and `seccomp`, the environment
 * and the launch), and their replies: `started` or `spawn_failed`, at once for a retry, else
 * once the spawner has the run started (request_run_started). */
#include "request.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "code.h"
#include "conn.h"
#include "environ.h"
#include "events.h"
#include "request_priv.h"
#include "runstart.h"
#include "runtab.h"
#include "sub.h"
#include "sandbox.h"

/* ---- Replies to exec and code --------------------------------------------------------------- */

static void started(struct ctx *x, const struct run *r, bool existing)
{
    struct msg_out o;
    if (ev_begin(&o, BOX_T_STARTED, &x->req) < 0)
        return;
    msg_kv_str(&o, BOX_KEY(ID), r->id);
    msg_kv_i64(&o, BOX_KEY(PID), r->pid);
    msg_kv_u64(&o, BOX_KEY(STARTED_NS), r->started_ns);
    msg_kv_bool(&o, BOX_KEY(EXISTING), existing);
    ev_close(&o);
    request__reply(x, &o);
}

static void spawn_failed(struct ctx *x, const struct run *r, bool existing)
{
    struct msg_out o;
    if (ev_begin(&o, BOX_T_ERROR, &x->req) < 0)
        return;
    msg_kv_str(&o, BOX_KEY(CODE), box_err_str(BOX_ERR_SPAWN_FAILED));
    char text[256];
    snprintf(text, sizeof text, "%s: %s", r->spawn_stage, strerror(r->spawn_err));
    msg_kv_str(&o, BOX_KEY(MESSAGE), text);
    msg_kv_str(&o, BOX_KEY(ID), r->id);
    msg_kv_i64(&o, BOX_KEY(ERRNO), r->spawn_err);
    msg_kv_str(&o, BOX_KEY(ERRNO_NAME), errno_name(r->spawn_err));
    msg_kv_str(&o, BOX_KEY(STAGE), r->spawn_stage);
    msg_kv_bool(&o, BOX_KEY(EXISTING), existing);
    ev_close(&o);
    request__reply(x, &o);
}

void request_run_started(struct agent *a, struct run *r, uint64_t conn_no,
                         const struct reqtag *req, bool follow, bool want_output)
{
    struct conn *c = conn_find(a, conn_no);
    if (c == NULL)
        return; /* gone, and its reservation with it */
    struct ctx x = {.c = c, .a = a, .m = NULL, .req = *req};
    if (follow)
        sub_unreserve(c); /* the reservation run_launch made */
    if (r->spawn_stage) {
        spawn_failed(&x, r, false);
        return;
    }
    started(&x, r, false);
    /* A retry while it was starting may have subscribed this connection already (from seq 0,
     * under the retry's req): that one stands, so no record comes twice. */
    if (follow && request__find_sub(c, r) == NULL)
        sub_new(r, c, req, 0, false, want_output);
}

/* ---- exec and code: the options every run request has ---------------------------------------- */

/* What exec and code share (PROTOCOL.md 4.1): one parser, one launcher. */
struct run_opts {
    const char *id;
    size_t id_len;
    bool follow, want_output, want_stdin;
    uint64_t timeout_ms, grace_ms;
    const msgpack_object *env, *cwd; /* NULL when absent or nil */
    uint64_t env_bytes;              /* the env's strings as K=V with NULs */
    const struct identity *ident;    /* who it runs as: &a->ident, or &req_ident */
    struct identity req_ident;       /* the request's `user`, when it named one */
    int user_err;                    /* the named user does not exist: spawn_failed, stage user */
    enum seccomp_profile seccomp;
    struct dec_tty tty;              /* a terminal run (4.9) when tty.given */
    bool login;                      /* exec's login: the run user's login shell */
};

/* A terminal run's TERM unless the request's env sets one (4.9). */
#define TTY_TERM "TERM=xterm-256color"

/* The request's `user` and `seccomp`, against the policy (PROTOCOL.md 4.1). Returns 0, or -1
 * when answered. */
static int run_opts_sandbox(struct ctx *x, struct run_opts *o)
{
    struct agent *a = x->a;
    o->ident = &a->ident;
    o->seccomp = a->sandbox.dflt;
    const char *u;
    size_t ul;
    struct decode_err err;
    if (decode_user(x->m, sizeof o->req_ident.user, &u, &ul, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return -1;
    }
    if (u && !(strlen(a->ident.user) == ul && memcmp(a->ident.user, u, ul) == 0)) {
        if (!auth_request_user_allowed(&a->auth, u, ul)) {
            request__error(x, BOX_ERR_DENIED, NULL,
                           "runs execute as %s; this agent does not let a request "
                           "name %.*s (--allow-request-user)", a->ident.user, (int)ul, u);
            return -1;
        }
        char name[sizeof o->req_ident.user];
        memcpy(name, u, ul);
        name[ul] = '\0';
        int le = identity_lookup(name, &o->req_ident);
        if (le == -ENOENT)
            o->user_err = ENOENT; /* a run that failed at stage user, as the protocol says */
        else if (le < 0) {
            request__error(x, BOX_ERR_INTERNAL, NULL, "looking up user: %s", strerror(-le));
            return -1;
        } else {
            o->ident = &o->req_ident;
        }
    }
    bool given;
    int p;
    if (decode_seccomp(x->m, &given, &p, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return -1;
    }
    if (given) {
        /* A request may always ask for more protection, never for less than the agent's
         * default, except `none` when the agent allows it. */
        if ((enum seccomp_profile)p < a->sandbox.dflt &&
            !(p == SECCOMP_NONE && a->cfg.allow_seccomp_none)) {
            request__error(x, BOX_ERR_DENIED, NULL,
                           "seccomp profile %s is less strict than this agent allows",
                           sandbox_profile_name((enum seccomp_profile)p));
            return -1;
        }
        o->seccomp = (enum seccomp_profile)p;
    }
    return 0;
}

/* Step 1, before the request's own fields: shutting_down, the id, the flags and times, a retry
 * of an existing id (answered here: `started` with existing true), and max_subs. With
 * timeout_alias, `timeout` is accepted as a synonym of timeout_ms (code requests). Returns 0 to
 * go on, -1 when the request has been answered. */
static int run_opts_begin(struct ctx *x, struct run_opts *o, bool timeout_alias)
{
    struct agent *a = x->a;
    memset(o, 0, sizeof *o);
    if (a->shutting_down) {
        request__error(x, BOX_ERR_SHUTTING_DOWN, NULL, "the agent is shutting down");
        return -1;
    }
    struct dec_run d;
    struct decode_err err;
    if (decode_run(x->m, timeout_alias, a->cfg.grace_ms, &d, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return -1;
    }
    o->id = d.id;
    o->id_len = d.id_len;
    o->follow = d.follow;
    o->want_output = d.want_output;
    o->want_stdin = d.want_stdin;
    o->timeout_ms = d.timeout_ms;
    o->grace_ms = d.grace_ms;

    if (o->id) {
        struct run *r = run_find(a, o->id, o->id_len);
        if (r) {
            /* A retry: nothing is started; the caller sees the run it already has. One that
             * never started gets the same answer as the first time (and no end). */
            if (r->spawn_stage) {
                spawn_failed(x, r, true);
                return -1;
            }
            struct sub *old = o->follow ? request__find_sub(x->c, r) : NULL;
            if (old && old->req.len == x->req.len &&
                memcmp(old->req.buf, x->req.buf, x->req.len) == 0) {
                started(x, r, true); /* already followed under this req: it goes on as is */
                return -1;
            }
            /* Else following again replaces the earlier subscription, as attach does: the
             * retry's req gets the whole run from seq 0, each record once. */
            if (o->follow && !old && sub_full(x->c)) {
                request__limit_error(x, r->id, BOX_LIM_MAX_SUBS,
                                     "this connection already follows %u runs", a->cfg.max_subs);
                return -1;
            }
            started(x, r, true);
            if (!o->follow)
                return -1;
            struct sub *s = old ? sub_replace(old, &x->req, 0, o->want_output)
                                : sub_new(r, x->c, &x->req, 0, false, o->want_output);
            if (s == NULL)
                request__error(x, BOX_ERR_INTERNAL, r->id, "out of memory");
            return -1;
        }
    }
    if (o->follow && sub_full(x->c)) {
        request__limit_error(x, NULL, BOX_LIM_MAX_SUBS, "this connection already follows %u runs",
                             a->cfg.max_subs);
        return -1;
    }
    return run_opts_sandbox(x, o);
}

/* The request's `tty` (exec and code, 4.9). A terminal run always takes stdin. Returns 0, or
 * -1 when answered. */
static int run_opts_tty(struct ctx *x, struct run_opts *o)
{
    struct decode_err err;
    if (decode_tty(x->m, &o->tty, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return -1;
    }
    if (o->tty.given)
        o->want_stdin = true;
    return 0;
}

/* Step 2, after the request's own fields: env and cwd, checked completely, so that nothing
 * after this can fail on the request's input. Returns 0, or -1 when answered. */
static int run_opts_env(struct ctx *x, struct run_opts *o)
{
    struct dec_env d;
    struct decode_err err;
    if (decode_env(x->m, &d, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return -1;
    }
    o->env = d.env;
    o->cwd = d.cwd;
    o->env_bytes = d.env_bytes;
    return 0;
}

/* Who asked for a run, kept until it has started or failed to (run_params.on_started). */
struct starter {
    uint64_t conn_no; /* conn_find: the connection may be gone by then */
    struct reqtag req;
    bool follow, want_output;
};

static void on_run_started(struct run *r, void *arg)
{
    struct starter *st = arg;
    request_run_started(r->a, r, st->conn_no, &st->req, st->follow, st->want_output);
    free(st);
}

/* A code run's directory, removed when its run ends (run_params.release). */
static void release_tmpdir(void *arg, const char *run_id)
{
    code_dir_remove(arg, run_id);
    free(arg);
}

/* Step 3: builds the environment (the base, then lang_env, then the request's env, each
 * overriding the one before) and starts the run, then answers started, spawn_failed, limit or
 * internal. argv, lang_env and desc are borrowed. tmpdir (heap, or NULL) goes to the run; when
 * no run takes it, it is removed here. */
static void run_launch(struct ctx *x, const struct run_opts *o, char **argv, bool is_shell,
                       char *const *lang_env, size_t n_lang_env, const char *desc, char *tmpdir)
{
    struct agent *a = x->a;
    const msgpack_object *env = o->env;
    /* One block for the environment and cwd. Its size is bounded by the frame (max_frame) plus
     * the base environment, checked in 64-bit arithmetic. */
    uint64_t nenv = (env ? env->via.map.size : 0) + n_lang_env + ENVIRON_BASE_MAX + 2;
    uint64_t bytes = 64 + o->env_bytes + (o->cwd ? o->cwd->via.str.size + 1 : 0) +
                     (nenv + 1) * sizeof(char *) + sizeof TTY_TERM +
                     sizeof "SHELL=" + sizeof o->ident->shell;
    char *block = malloc(bytes);
    struct starter *st = malloc(sizeof *st);
    if (block == NULL || st == NULL) {
        request__error(x, BOX_ERR_INTERNAL, NULL, "out of memory");
        goto out;
    }
    *st = (struct starter){.conn_no = x->c->no, .req = x->req, .follow = o->follow,
                           .want_output = o->want_output};
    char **envp = (char **)block;
    char *at = (char *)(envp + nenv + 1);
    char *cwd_s = NULL;
    struct environ_build eb;
    environ_begin(&eb, envp, nenv);
    if (o->cwd)
        decode_take_str(o->cwd, &at, &cwd_s); /* checked by run_opts_env */
    /* A terminal's TERM, and a login shell's SHELL: under lang_env and the request's env. */
    if (o->tty.given) {
        memcpy(at, TTY_TERM, sizeof TTY_TERM);
        environ_set(&eb, at, 4);
        at += sizeof TTY_TERM;
    }
    if (o->login) {
        at[0] = '\0';
        int n = snprintf(at, sizeof "SHELL=" + sizeof o->ident->shell, "SHELL=%s",
                         o->ident->shell);
        environ_set(&eb, at, 5);
        at += n + 1;
    }
    for (size_t i = 0; i < n_lang_env; i++)
        environ_set(&eb, lang_env[i], (size_t)(strchr(lang_env[i], '=') - lang_env[i]));
    if (env)
        for (uint32_t i = 0; i < env->via.map.size; i++) {
            const msgpack_object_kv *kv = &env->via.map.ptr[i];
            const char *k = kv->key.via.str.ptr, *v = kv->val.via.str.ptr;
            size_t kl = kv->key.via.str.size, vl = kv->val.via.str.size;
            memcpy(at, k, kl);
            at[kl] = '=';
            memcpy(at + kl + 1, v, vl);
            at[kl + 1 + vl] = '\0';
            environ_set(&eb, at, kl);
            at += kl + vl + 2;
        }
    const char *dir = cwd_s ? cwd_s : environ_default_cwd(o->ident);
    environ_finish(&eb, o->ident, dir);

    struct run_params p = {
        .id = o->id,
        .id_len = o->id_len,
        .argv = argv,
        .is_shell = is_shell,
        .envp = envp,
        .path = environ_get(envp, "PATH"),
        .cwd = dir,
        .timeout_ms = o->timeout_ms,
        .grace_ms = (uint32_t)o->grace_ms,
        .want_stdin = o->want_stdin,
        .tty = o->tty.given,
        .rows = o->tty.rows,
        .cols = o->tty.cols,
        .file = o->login ? o->ident->shell : NULL,
        .desc = desc,
        .ident = o->ident,
        .seccomp = o->seccomp,
        .pre_err = o->user_err,
        .pre_stage = o->user_err ? "user" : NULL,
        .on_started = on_run_started,
        .started_arg = st,
        .release = tmpdir ? release_tmpdir : NULL,
        .release_arg = tmpdir,
    };
    struct run *r = NULL;
    /* The follow is counted against max_subs from now, though it begins once the run has
     * started (request_run_started). */
    if (o->follow && sub_reserve(x->c) < 0) {
        request__error(x, BOX_ERR_INTERNAL, NULL, "out of memory");
        goto out;
    }
    int e = run_start(a, &p, &r);
    if (e >= 0) {
        tmpdir = NULL; /* the run has it; the reply is request_run_started's */
        st = NULL;
    } else {
        if (o->follow)
            sub_unreserve(x->c);
        if (e == -EAGAIN)
            request__limit_error(x, NULL, BOX_LIM_MAX_RUNS, "%u runs are live (max_runs)",
                                 a->cfg.max_runs);
        else
            request__error(x, BOX_ERR_INTERNAL, NULL, "out of memory");
    }
out:
    if (tmpdir) {
        code_dir_remove(tmpdir, "(not started)");
        free(tmpdir);
    }
    free(st);
    free(block);
}

/* ---- exec ----------------------------------------------------------------------------------- */

void request__exec(struct ctx *x)
{
    struct run_opts o;
    if (run_opts_begin(x, &o, false) < 0)
        return;
    if (run_opts_tty(x, &o) < 0)
        return;
    struct dec_exec d;
    struct decode_err err;
    if (decode_exec(x->m, o.tty.given, &d, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return;
    }
    const msgpack_object *cmd = d.cmd, *argv = d.argv;
    o.login = d.login;
    if (run_opts_env(x, &o) < 0)
        return;

    /* The argv block, bounded by the frame like the environment's. */
    uint64_t nargs = d.login ? 1 : cmd ? 4 : argv->via.array.size;
    uint64_t bytes = 16 + (nargs + 1) * sizeof(char *);
    if (d.login)
        bytes += sizeof o.ident->shell + 1;
    else if (cmd)
        bytes += cmd->via.str.size + 1;
    else
        for (uint32_t i = 0; i < argv->via.array.size; i++)
            bytes += (argv->via.array.ptr[i].type == MSGPACK_OBJECT_STR
                          ? argv->via.array.ptr[i].via.str.size : 0) + 1;
    char *block = malloc(bytes);
    if (block == NULL) {
        request__error(x, BOX_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    char **args = (char **)block;
    char *at = (char *)(args + nargs + 1);
    if (d.login) {
        /* As login(1) starts it: argv[0] is "-" and the shell's name (run_params.file is its
         * path), which tells the shell it is a login shell. */
        const char *sh = o.ident->shell, *base = strrchr(sh, '/');
        snprintf(at, sizeof o.ident->shell + 1, "-%s", base ? base + 1 : sh);
        args[0] = at;
        args[1] = NULL;
    } else if (cmd) {
        /* "--" so that a command starting with '-' is not taken for shell options. */
        args[0] = "/bin/sh";
        args[1] = "-c";
        args[2] = "--";
        if (decode_take_str(cmd, &at, &args[3]) < 0) {
            request__error(x, BOX_ERR_BAD_REQUEST, NULL, "cmd must not contain NUL");
            goto out;
        }
        args[4] = NULL;
    } else {
        for (uint32_t i = 0; i < argv->via.array.size; i++)
            if (decode_take_str(&argv->via.array.ptr[i], &at, &args[i]) < 0) {
                request__error(x, BOX_ERR_BAD_REQUEST, NULL, "argv must be strings without NUL");
                goto out;
            }
        args[argv->via.array.size] = NULL;
    }
    run_launch(x, &o, args, cmd != NULL, NULL, 0, NULL, NULL);
out:
    free(block);
}

/* ---- code ----------------------------------------------------------------------------------- */

/* The run's PATH as the request sets it (a copy, to be freed), or NULL for the default. */
static char *request_path(const struct run_opts *o)
{
    char *path = NULL;
    if (o->env)
        for (uint32_t i = 0; i < o->env->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->env->via.map.ptr[i];
            if (kv->key.via.str.size == 4 && memcmp(kv->key.via.str.ptr, "PATH", 4) == 0) {
                free(path); /* a later PATH wins, as in environ_set */
                path = strndup(kv->val.via.str.ptr, kv->val.via.str.size);
            }
        }
    return path;
}

/* `unknown_lang`, with the languages usable with path (one walk of the table; held while a
 * probe it needs runs). */
static void unknown_lang(struct ctx *x, const char *lang, size_t len, const char *path)
{
    char shown[CODE_LANG_MAX + 1], avail[160];
    size_t n = len < CODE_LANG_MAX ? len : CODE_LANG_MAX;
    for (size_t i = 0; i < n; i++)
        shown[i] = isprint((unsigned char)lang[i]) ? lang[i] : '?';
    shown[n] = '\0';
    struct code_names ns;
    if (code_available(x->a, path, request__may_wait(x), &ns) == -EINPROGRESS) {
        request__hold(x);
        return;
    }
    code_available_text(&ns, avail, sizeof avail);
    struct msg_out o;
    if (ev_begin(&o, BOX_T_ERROR, &x->req) < 0)
        return;
    char text[256];
    if (len == 0)
        snprintf(text, sizeof text, "code needs a lang; available: %s", avail);
    else
        snprintf(text, sizeof text, "no language '%s' on this box; available: %s", shown, avail);
    msg_kv_str(&o, BOX_KEY(CODE), box_err_str(BOX_ERR_UNKNOWN_LANG));
    msg_kv_str(&o, BOX_KEY(MESSAGE), text);
    msg_key(&o, BOX_KEY(AVAILABLE));
    code_put_available(&o, &ns);
    ev_close(&o);
    request__reply(x, &o);
}

void request__code(struct ctx *x)
{
    struct run_opts o;
    if (run_opts_begin(x, &o, true) < 0)
        return;
    struct dec_code d;
    struct decode_err err;
    if (decode_code(x->m, CODE_MAX_BYTES, &d, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return;
    }
    const char *lang = d.lang, *code = d.code;
    size_t lang_len = d.lang_len, code_len = d.code_len;
    int e;
    if (run_opts_tty(x, &o) < 0 || run_opts_env(x, &o) < 0)
        return;
    if (code_init(x->a) < 0) {
        request__error(x, BOX_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    char *req_path = request_path(&o);
    const char *path = req_path ? req_path : ENVIRON_PATH;
    struct code_choice choice;
    struct code_prep prep;
    e = lang_len == 0 || lang_len > CODE_LANG_MAX
            ? -ENOENT
            : code_resolve(x->a, lang, lang_len, path, request__may_wait(x), &choice);
    if (e == -EINPROGRESS) {
        request__hold(x); /* an interpreter is being probed: dispatched again once it is */
    } else if (e == -ENOENT) {
        unknown_lang(x, lang, lang_len, path);
    } else if (e < 0) {
        request__error(x, BOX_ERR_INTERNAL, NULL, "out of memory");
    } else if ((e = code_prepare(&choice, o.ident, code, code_len, &prep)) < 0) {
        /* /tmp missing, full or read-only: nothing was started and nothing is left. */
        request__error(x, BOX_ERR_INTERNAL, NULL, "cannot write the snippet under /tmp: %s",
                       strerror(-e));
    } else {
        char *tmpdir = prep.tmpdir;
        prep.tmpdir = NULL; /* run_launch hands it to the run or removes it */
        run_launch(x, &o, prep.argv, false, prep.env, prep.n_env, prep.desc, tmpdir);
        code_prep_free(&prep);
    }
    free(req_path);
}

