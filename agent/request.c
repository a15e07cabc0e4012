#include "request.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "code.h"
#include "conn.h"
#include "environ.h"
#include "events.h"
#include "files.h"
#include "log.h"
#include "run.h"
#include "sandbox.h"
#include "signals.h"

#define MAX_ARGV 4096u
#define MAX_ENV 4096u
/* Largest page a `logs` request may ask for. */
#define LOGS_MAX_RECORDS 100000u

struct ctx {
    struct conn *c;
    struct agent *a;
    const msgpack_object *m;
    struct reqtag req;
    const uint8_t *body; /* the frame body, for hold */
    size_t len;
    uint64_t hold_deadline; /* a held request dispatched again: when it stops waiting; else 0 */
};

static void reply(struct ctx *x, struct msg_out *o)
{
    conn_send(x->c, o);
}

static void error(struct ctx *x, const char *code, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void error(struct ctx *x, const char *code, const char *id, const char *fmt, ...)
{
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    struct msg_out o;
    if (ev_error(&o, &x->req, code, id, "%s", text) == 0)
        reply(x, &o);
    else
        msg_out_destroy(&o);
}

static void ok(struct ctx *x, const char *id, int ended)
{
    struct msg_out o;
    if (ev_begin(&o, "ok", &x->req) < 0)
        return;
    if (id)
        msg_kv_str(&o, "id", id);
    if (ended >= 0)
        msg_kv_bool(&o, "ended", ended);
    ev_close(&o);
    reply(x, &o);
}

/* An `error` `limit`, with `limit` naming the limit: "max_runs", "max_subs", "stdin_bytes". */
static void limit_error(struct ctx *x, const char *id, const char *which, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void limit_error(struct ctx *x, const char *id, const char *which, const char *fmt, ...)
{
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    struct msg_out o;
    if (ev_begin(&o, "error", &x->req) < 0)
        return;
    msg_kv_str(&o, "code", "limit");
    msg_kv_str(&o, "message", text);
    if (id)
        msg_kv_str(&o, "id", id);
    msg_kv_str(&o, "limit", which);
    ev_close(&o);
    reply(x, &o);
}

/* ---- Field helpers: each returns 0, or answers bad_request itself and returns -1. --------- */

/* Whether this request may still wait for interpreter probes (code.h). */
static bool may_wait(const struct ctx *x)
{
    return x->hold_deadline == 0 || now_mono_ns() < x->hold_deadline;
}

/* Holds the request until the probes it needs end (code_hold): it is dispatched again then,
 * with the deadline of its first arrival. Answers `limit` when too many requests wait. */
static void hold(struct ctx *x)
{
    uint64_t deadline = x->hold_deadline ? x->hold_deadline
                                         : now_mono_ns() + (uint64_t)CODE_HOLD_MS * 1000000u;
    int e = code_hold(x->a, x->c->no, x->body, x->len, deadline);
    if (e == -ENOBUFS)
        limit_error(x, NULL, "code_waiting", "%u requests are waiting for interpreter probes",
                    CODE_HELD_MAX);
    else if (e < 0)
        error(x, "internal", NULL, "out of memory");
}

static int get_bool(struct ctx *x, const char *key, bool *v, bool dflt)
{
    int e = msg_get_bool(x->m, key, v);
    if (e == -ENOENT) {
        *v = dflt;
        return 0;
    }
    if (e < 0) {
        error(x, "bad_request", NULL, "%s must be a boolean", key);
        return -1;
    }
    return 0;
}

static int get_u64(struct ctx *x, const char *key, uint64_t *v, uint64_t dflt, uint64_t max)
{
    int e = msg_get_u64(x->m, key, v);
    if (e == -ENOENT) {
        *v = dflt;
        return 0;
    }
    if (e < 0 || *v > max) {
        error(x, "bad_request", NULL, "%s must be an integer from 0 to %llu", key,
              (unsigned long long)max);
        return -1;
    }
    return 0;
}

static bool id_char_ok(char ch)
{
    return isalnum((unsigned char)ch) || ch == '.' || ch == '_' || ch == ':' || ch == '-';
}

/* The run id of a request on a run: required, looked up. */
static struct run *get_run(struct ctx *x)
{
    const char *id;
    size_t len;
    int e = msg_get_str(x->m, "id", &id, &len);
    if (e < 0) {
        error(x, "bad_request", NULL, "id must be a string");
        return NULL;
    }
    struct run *r = run_find(x->a, id, len);
    if (r == NULL) {
        char shown[BOXD_ID_MAX + 1];
        size_t n = len < BOXD_ID_MAX ? len : BOXD_ID_MAX;
        for (size_t i = 0; i < n; i++)
            shown[i] = id_char_ok(id[i]) ? id[i] : '?';
        shown[n] = '\0';
        error(x, "not_found", NULL, "no run %s", shown);
    }
    return r;
}

/* ---- hello, ping, info ---------------------------------------------------------------------- */

void request_put_limits(struct msg_out *o, const struct agent *a)
{
    const struct config *c = &a->cfg;
    msg_key(o, "limits");
    msg_map_open(o);
    msg_kv_u64(o, "max_frame", c->max_frame);
    msg_kv_u64(o, "max_event", c->max_event);
    msg_kv_u64(o, "max_line", c->max_line);
    msg_kv_u64(o, "max_runs", c->max_runs);
    msg_kv_u64(o, "max_finished", c->max_finished);
    msg_kv_u64(o, "max_conns", c->max_conns);
    msg_kv_u64(o, "log_bytes", c->log_bytes);
    msg_kv_u64(o, "log_total", c->log_total);
    msg_kv_u64(o, "stdin_bytes", c->stdin_bytes);
    msg_kv_u64(o, "max_subs", c->max_subs);
    msg_kv_u64(o, "conn_queue", c->conn_queue);
    msg_kv_u64(o, "queue_total", c->queue_total);
    msg_kv_u64(o, "hello_timeout_ms", c->hello_timeout_ms);
    msg_kv_u64(o, "grace_ms", c->grace_ms);
    msg_kv_u64(o, "drain_ms", c->drain_ms);
    msg_kv_u64(o, "flush_ms", c->flush_ms);
    msg_kv_u64(o, "max_code", CODE_MAX_BYTES);
    files_put_limits(o);
    msg_map_close(o);
}

static void put_identity(struct msg_out *o, const struct agent *a)
{
    msg_kv_u64(o, "version", BOX_PROTOCOL_VERSION);
    msg_kv_str(o, "agent", "boxd " BOXD_VERSION);
    msg_kv_str(o, "boot_id", a->boot_id);
    msg_kv_i64(o, "pid", a->pid);
}

static void do_hello(struct ctx *x)
{
    uint64_t v;
    int e = msg_get_u64(x->m, "version", &v);
    if (e < 0 || v != BOX_PROTOCOL_VERSION) {
        struct msg_out o;
        if (ev_begin(&o, "error", &x->req) < 0)
            return;
        msg_kv_str(&o, "code", e == -EINVAL || e == 0 ? "bad_version" : "bad_request");
        msg_kv_str(&o, "message", e == -ENOENT ? "hello needs a version"
                                              : "this agent speaks protocol version 1");
        msg_key(&o, "versions");
        msg_array(&o, 1);
        msg_u64(&o, BOX_PROTOCOL_VERSION);
        ev_close(&o);
        reply(x, &o);
        return;
    }
    if (auth_check_hello(x->a, x->m) < 0) {
        /* Never say what was wrong with it; never log it. */
        log_limited(LOG_RL_TOKEN, LOG_WARN, "conn %llu (%s): hello with a wrong or missing token, closing",
                 (unsigned long long)x->c->no, x->c->peer);
        error(x, "unauthorized", NULL, "a valid token is required");
        conn_close_after_flush(x->c);
        return;
    }
    conn_hello_passed(x->c);
    struct msg_out o;
    if (ev_begin(&o, "hello", &x->req) < 0)
        return;
    put_identity(&o, x->a);
    msg_key(&o, "capabilities");
    static const char *const caps[] = {"exec", "stdin", "signal", "cancel", "attach", "wait",
                                       "logs", "list", "info", "ping", "argv", "run_id", "code",
                                       "files"};
    msg_array(&o, sizeof caps / sizeof caps[0]);
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        msg_str(&o, caps[i]);
    request_put_limits(&o, x->a);
    ev_close(&o);
    reply(x, &o);
}

static void do_ping(struct ctx *x)
{
    struct msg_out o;
    if (ev_begin(&o, "pong", &x->req) < 0)
        return;
    msg_kv_u64(&o, "ts_ns", now_real_ns());
    ev_close(&o);
    reply(x, &o);
}

static void do_info(struct ctx *x)
{
    struct agent *a = x->a;
    if (code_init(a) == 0 && code_languages_ready(a, may_wait(x)) == -EINPROGRESS) {
        hold(x); /* the versions are being found: answered once they are (or at the deadline) */
        return;
    }
    struct msg_out o;
    if (ev_begin(&o, "info", &x->req) < 0)
        return;
    put_identity(&o, a);
    msg_kv_bool(&o, "pid1", a->pid1);
    msg_kv_str(&o, "mode", init_mode_str(a->mode));
    msg_kv_bool(&o, "subreaper", a->subreaper);
    msg_kv_u64(&o, "uptime_ms", (now_mono_ns() - a->start_mono_ns) / 1000000u);
    msg_kv_u64(&o, "runs_live", a->n_live);
    msg_kv_u64(&o, "runs_starting", a->n_starting);
    msg_kv_bool(&o, "spawner", a->sandbox.spawner != NULL);
    msg_kv_u64(&o, "runs_finished", a->n_finished);
    msg_kv_u64(&o, "conns", a->n_conns);
    msg_kv_u64(&o, "reaped", a->reaped);
    msg_kv_u64(&o, "started_total", a->started_total);
    msg_kv_u64(&o, "log_dropped", log_dropped());
    msg_kv_u64(&o, "log_suppressed", log_suppressed());
    msg_kv_bool(&o, "shutting_down", a->shutting_down);
    msg_kv_str(&o, "kill_mechanism", a->cg.enabled ? "cgroup" : "pgroup");
    if (a->cg.enabled) {
        msg_kv_str(&o, "cgroup", a->cg.base);
        msg_key(&o, "controllers");
        msg_array(&o, (uint32_t)a->cg.memory + a->cg.pids + a->cg.cpu);
        if (a->cg.memory)
            msg_str(&o, "memory");
        if (a->cg.pids)
            msg_str(&o, "pids");
        if (a->cg.cpu)
            msg_str(&o, "cpu");
    }
    request_put_limits(&o, a);
    code_put_languages(&o, a);
    ev_close(&o);
    reply(x, &o);
}

/* ---- Replies to exec and code --------------------------------------------------------------- */

static void started(struct ctx *x, const struct run *r, bool existing)
{
    struct msg_out o;
    if (ev_begin(&o, "started", &x->req) < 0)
        return;
    msg_kv_str(&o, "id", r->id);
    msg_kv_i64(&o, "pid", r->pid);
    msg_kv_u64(&o, "started_ns", r->started_ns);
    msg_kv_bool(&o, "existing", existing);
    ev_close(&o);
    reply(x, &o);
}

static void spawn_failed(struct ctx *x, const struct run *r, bool existing)
{
    struct msg_out o;
    if (ev_begin(&o, "error", &x->req) < 0)
        return;
    msg_kv_str(&o, "code", "spawn_failed");
    char text[256];
    snprintf(text, sizeof text, "%s: %s", r->spawn_stage, strerror(r->spawn_err));
    msg_kv_str(&o, "message", text);
    msg_kv_str(&o, "id", r->id);
    msg_kv_i64(&o, "errno", r->spawn_err);
    msg_kv_str(&o, "errno_name", errno_name(r->spawn_err));
    msg_kv_str(&o, "stage", r->spawn_stage);
    msg_kv_bool(&o, "existing", existing);
    ev_close(&o);
    reply(x, &o);
}

static struct sub *find_sub(struct conn *c, struct run *r);

void request_run_started(struct agent *a, struct run *r, uint64_t conn_no,
                         const struct reqtag *req, bool follow, bool want_output)
{
    struct conn *c = conn_find(a, conn_no);
    if (c == NULL)
        return; /* gone, and its reservation with it */
    struct ctx x = {.c = c, .a = a, .m = NULL, .req = *req};
    if (follow)
        c->n_subs--; /* the reservation run_launch made */
    if (r->spawn_stage) {
        spawn_failed(&x, r, false);
        return;
    }
    started(&x, r, false);
    /* A retry while it was starting may have subscribed this connection already (from seq 0,
     * under the retry's req): that one stands, so no record comes twice. */
    if (follow && find_sub(c, r) == NULL)
        sub_new(r, c, req, 0, false, want_output);
}

/* Copies a msgpack str into a NUL-terminated string at *at, refusing embedded NULs. */
static int take_str(const msgpack_object *o, char **at, char **out)
{
    if (o->type != MSGPACK_OBJECT_STR || memchr(o->via.str.ptr, '\0', o->via.str.size))
        return -1;
    memcpy(*at, o->via.str.ptr, o->via.str.size);
    (*at)[o->via.str.size] = '\0';
    *out = *at;
    *at += o->via.str.size + 1;
    return 0;
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
};

/* The request's `user` and `seccomp`, against the policy (PROTOCOL.md 4.1). Returns 0, or -1
 * when answered. */
static int run_opts_sandbox(struct ctx *x, struct run_opts *o)
{
    struct agent *a = x->a;
    o->ident = &a->ident;
    o->seccomp = a->sandbox.dflt;
    const char *u;
    size_t ul;
    int e = msg_get_str(x->m, "user", &u, &ul);
    if (e == -EINVAL || (e == 0 && (ul == 0 || ul >= sizeof o->req_ident.user ||
                                    memchr(u, '\0', ul) || memchr(u, ':', ul)))) {
        error(x, "bad_request", NULL, "user must be a user name");
        return -1;
    }
    if (e == 0 && !(strlen(a->ident.user) == ul && memcmp(a->ident.user, u, ul) == 0)) {
        if (!auth_request_user_allowed(&a->auth, u, ul)) {
            error(x, "denied", NULL, "runs execute as %s; this agent does not let a request "
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
            error(x, "internal", NULL, "looking up user: %s", strerror(-le));
            return -1;
        } else {
            o->ident = &o->req_ident;
        }
    }
    const char *sp;
    size_t sl;
    e = msg_get_str(x->m, "seccomp", &sp, &sl);
    if (e == -EINVAL) {
        error(x, "bad_request", NULL, "seccomp must be a string");
        return -1;
    }
    if (e == 0) {
        int p = sandbox_profile_parse(sp, sl);
        if (p < 0) {
            error(x, "bad_request", NULL, "seccomp must be \"none\", \"default\" or \"strict\"");
            return -1;
        }
        /* A request may always ask for more protection, never for less than the agent's
         * default, except `none` when the agent allows it. */
        if ((enum seccomp_profile)p < a->sandbox.dflt &&
            !(p == SECCOMP_NONE && a->cfg.allow_seccomp_none)) {
            error(x, "denied", NULL, "seccomp profile %s is less strict than this agent allows",
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
        error(x, "shutting_down", NULL, "the agent is shutting down");
        return -1;
    }
    int e = msg_get_str(x->m, "id", &o->id, &o->id_len);
    if (e == -EINVAL || (e == 0 && (o->id_len == 0 || o->id_len > BOXD_ID_MAX))) {
        error(x, "bad_request", NULL, "id must be a string of 1 to %d characters", BOXD_ID_MAX);
        return -1;
    }
    if (e < 0)
        o->id = NULL, o->id_len = 0;
    for (size_t i = 0; i < o->id_len; i++)
        if (!id_char_ok(o->id[i])) {
            error(x, "bad_request", NULL, "id may hold only letters, digits and . _ : -");
            return -1;
        }
    const char *tkey = "timeout_ms";
    if (timeout_alias && msg_get(x->m, "timeout")) {
        if (msg_get(x->m, "timeout_ms")) {
            error(x, "bad_request", NULL, "give timeout or timeout_ms, not both");
            return -1;
        }
        tkey = "timeout";
    }
    if (get_bool(x, "follow", &o->follow, true) < 0 ||
        get_bool(x, "output", &o->want_output, false) < 0 ||
        get_bool(x, "stdin", &o->want_stdin, false) < 0 ||
        get_u64(x, tkey, &o->timeout_ms, 0, UINT32_MAX * 1000ull) < 0 ||
        get_u64(x, "grace_ms", &o->grace_ms, a->cfg.grace_ms, 3600u * 1000u) < 0)
        return -1;

    if (o->id) {
        struct run *r = run_find(a, o->id, o->id_len);
        if (r) {
            /* A retry: nothing is started; the caller sees the run it already has. One that
             * never started gets the same answer as the first time (and no end). */
            if (r->spawn_stage) {
                spawn_failed(x, r, true);
                return -1;
            }
            struct sub *old = o->follow ? find_sub(x->c, r) : NULL;
            if (old && old->req.len == x->req.len &&
                memcmp(old->req.buf, x->req.buf, x->req.len) == 0) {
                started(x, r, true); /* already followed under this req: it goes on as is */
                return -1;
            }
            /* Else following again replaces the earlier subscription, as attach does: the
             * retry's req gets the whole run from seq 0, each record once. */
            if (o->follow && !old && x->c->n_subs >= a->cfg.max_subs) {
                limit_error(x, r->id, "max_subs", "this connection already follows %u runs",
                            a->cfg.max_subs);
                return -1;
            }
            started(x, r, true);
            if (!o->follow)
                return -1;
            struct sub *s = old ? sub_replace(old, &x->req, 0, o->want_output)
                                : sub_new(r, x->c, &x->req, 0, false, o->want_output);
            if (s == NULL)
                error(x, "internal", r->id, "out of memory");
            return -1;
        }
    }
    if (o->follow && x->c->n_subs >= a->cfg.max_subs) {
        limit_error(x, NULL, "max_subs", "this connection already follows %u runs",
                    a->cfg.max_subs);
        return -1;
    }
    return run_opts_sandbox(x, o);
}

/* Step 2, after the request's own fields: env and cwd, checked completely, so that nothing
 * after this can fail on the request's input. Returns 0, or -1 when answered. */
static int run_opts_env(struct ctx *x, struct run_opts *o)
{
    const msgpack_object *env = msg_get(x->m, "env");
    const msgpack_object *cwd = msg_get(x->m, "cwd");
    if (env && env->type == MSGPACK_OBJECT_NIL)
        env = NULL;
    if (cwd && cwd->type == MSGPACK_OBJECT_NIL)
        cwd = NULL;
    if (env && (env->type != MSGPACK_OBJECT_MAP || env->via.map.size > MAX_ENV)) {
        error(x, "bad_request", NULL, "env must be a map of at most %u strings", MAX_ENV);
        return -1;
    }
    if (cwd && (cwd->type != MSGPACK_OBJECT_STR || cwd->via.str.size == 0)) {
        error(x, "bad_request", NULL, "cwd must be a non-empty string");
        return -1;
    }
    if (cwd && memchr(cwd->via.str.ptr, '\0', cwd->via.str.size)) {
        error(x, "bad_request", NULL, "cwd must not contain NUL");
        return -1;
    }
    o->env_bytes = 0;
    if (env)
        for (uint32_t i = 0; i < env->via.map.size; i++) {
            const msgpack_object_kv *kv = &env->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR || kv->val.type != MSGPACK_OBJECT_STR) {
                error(x, "bad_request", NULL, "env keys and values must be strings");
                return -1;
            }
            const char *k = kv->key.via.str.ptr, *v = kv->val.via.str.ptr;
            size_t kl = kv->key.via.str.size, vl = kv->val.via.str.size;
            if (kl == 0 || memchr(k, '=', kl) || memchr(k, '\0', kl) || memchr(v, '\0', vl)) {
                error(x, "bad_request", NULL,
                      "env keys must be non-empty without = or NUL, values without NUL");
                return -1;
            }
            o->env_bytes += kl + vl + 2;
        }
    o->env = env;
    o->cwd = cwd;
    return 0;
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
    uint64_t nenv = (env ? env->via.map.size : 0) + n_lang_env + ENVIRON_BASE_MAX;
    uint64_t bytes = 64 + o->env_bytes + (o->cwd ? o->cwd->via.str.size + 1 : 0) +
                     (nenv + 1) * sizeof(char *);
    char *block = malloc(bytes);
    if (block == NULL) {
        error(x, "internal", NULL, "out of memory");
        goto out;
    }
    char **envp = (char **)block;
    char *at = (char *)(envp + nenv + 1);
    char *cwd_s = NULL;
    struct environ_build eb;
    environ_begin(&eb, envp, nenv);
    if (o->cwd)
        take_str(o->cwd, &at, &cwd_s); /* checked by run_opts_env */
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
        .desc = desc,
        .tmpdir = tmpdir,
        .ident = o->ident,
        .seccomp = o->seccomp,
        .pre_err = o->user_err,
        .pre_stage = o->user_err ? "user" : NULL,
        .conn_no = x->c->no,
        .req = &x->req,
        .follow = o->follow,
        .want_output = o->want_output,
    };
    struct run *r = NULL;
    /* The follow is counted against max_subs from now, though it begins once the run has
     * started (request_run_started). */
    if (o->follow)
        x->c->n_subs++;
    int e = run_start(a, &p, &r);
    if (e >= 0) {
        tmpdir = NULL; /* the run has it; the reply is request_run_started's */
    } else {
        if (o->follow)
            x->c->n_subs--;
        if (e == -EAGAIN)
            limit_error(x, NULL, "max_runs", "%u runs are live (max_runs)", a->cfg.max_runs);
        else
            error(x, "internal", NULL, "out of memory");
    }
out:
    if (tmpdir) {
        code_dir_remove(tmpdir, "(not started)");
        free(tmpdir);
    }
    free(block);
}

/* ---- exec ----------------------------------------------------------------------------------- */

static void do_exec(struct ctx *x)
{
    struct run_opts o;
    if (run_opts_begin(x, &o, false) < 0)
        return;
    const msgpack_object *cmd = msg_get(x->m, "cmd");
    const msgpack_object *argv = msg_get(x->m, "argv");
    if (cmd && cmd->type == MSGPACK_OBJECT_NIL)
        cmd = NULL;
    if (argv && argv->type == MSGPACK_OBJECT_NIL)
        argv = NULL;
    if ((cmd == NULL) == (argv == NULL)) {
        error(x, "bad_request", NULL, "exec needs exactly one of cmd and argv");
        return;
    }
    if (cmd && cmd->type != MSGPACK_OBJECT_STR) {
        error(x, "bad_request", NULL, "cmd must be a string");
        return;
    }
    if (argv && (argv->type != MSGPACK_OBJECT_ARRAY || argv->via.array.size == 0 ||
                 argv->via.array.size > MAX_ARGV)) {
        error(x, "bad_request", NULL, "argv must be an array of 1 to %u strings", MAX_ARGV);
        return;
    }
    if (run_opts_env(x, &o) < 0)
        return;

    /* The argv block, bounded by the frame like the environment's. */
    uint64_t nargs = cmd ? 4 : argv->via.array.size;
    uint64_t bytes = 16 + (nargs + 1) * sizeof(char *);
    if (cmd)
        bytes += cmd->via.str.size + 1;
    else
        for (uint32_t i = 0; i < argv->via.array.size; i++)
            bytes += (argv->via.array.ptr[i].type == MSGPACK_OBJECT_STR
                          ? argv->via.array.ptr[i].via.str.size : 0) + 1;
    char *block = malloc(bytes);
    if (block == NULL) {
        error(x, "internal", NULL, "out of memory");
        return;
    }
    char **args = (char **)block;
    char *at = (char *)(args + nargs + 1);
    if (cmd) {
        /* "--" so that a command starting with '-' is not taken for shell options. */
        args[0] = "/bin/sh";
        args[1] = "-c";
        args[2] = "--";
        if (take_str(cmd, &at, &args[3]) < 0) {
            error(x, "bad_request", NULL, "cmd must not contain NUL");
            goto out;
        }
        args[4] = NULL;
    } else {
        for (uint32_t i = 0; i < argv->via.array.size; i++)
            if (take_str(&argv->via.array.ptr[i], &at, &args[i]) < 0) {
                error(x, "bad_request", NULL, "argv must be strings without NUL");
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
    if (code_available(x->a, path, may_wait(x), &ns) == -EINPROGRESS) {
        hold(x);
        return;
    }
    code_available_text(&ns, avail, sizeof avail);
    struct msg_out o;
    if (ev_begin(&o, "error", &x->req) < 0)
        return;
    char text[256];
    if (len == 0)
        snprintf(text, sizeof text, "code needs a lang; available: %s", avail);
    else
        snprintf(text, sizeof text, "no language '%s' on this box; available: %s", shown, avail);
    msg_kv_str(&o, "code", "unknown_lang");
    msg_kv_str(&o, "message", text);
    msg_key(&o, "available");
    code_put_available(&o, &ns);
    ev_close(&o);
    reply(x, &o);
}

static void do_code(struct ctx *x)
{
    struct run_opts o;
    if (run_opts_begin(x, &o, true) < 0)
        return;
    const char *lang = "", *code;
    size_t lang_len = 0, code_len;
    int e = msg_get_str(x->m, "lang", &lang, &lang_len);
    if (e == -EINVAL) {
        error(x, "bad_request", NULL, "lang must be a string");
        return;
    }
    e = msg_get_bytes(x->m, "code", &code, &code_len);
    if (e < 0) {
        error(x, "bad_request", NULL, "code (a str or bin) is required");
        return;
    }
    if (code_len > CODE_MAX_BYTES) {
        error(x, "too_large", NULL, "code is %zu bytes; at most %u (max_code)", code_len,
              CODE_MAX_BYTES);
        return;
    }
    if (run_opts_env(x, &o) < 0)
        return;
    if (code_init(x->a) < 0) {
        error(x, "internal", NULL, "out of memory");
        return;
    }
    char *req_path = request_path(&o);
    const char *path = req_path ? req_path : ENVIRON_PATH;
    struct code_choice choice;
    struct code_prep prep;
    e = lang_len == 0 || lang_len > CODE_LANG_MAX
            ? -ENOENT
            : code_resolve(x->a, lang, lang_len, path, may_wait(x), &choice);
    if (e == -EINPROGRESS) {
        hold(x); /* an interpreter is being probed: dispatched again once it is */
    } else if (e == -ENOENT) {
        unknown_lang(x, lang, lang_len, path);
    } else if (e < 0) {
        error(x, "internal", NULL, "out of memory");
    } else if ((e = code_prepare(&choice, o.ident, code, code_len, &prep)) < 0) {
        /* /tmp missing, full or read-only: nothing was started and nothing is left. */
        error(x, "internal", NULL, "cannot write the snippet under /tmp: %s", strerror(-e));
    } else {
        char *tmpdir = prep.tmpdir;
        prep.tmpdir = NULL; /* run_launch hands it to the run or removes it */
        run_launch(x, &o, prep.argv, false, prep.env, prep.n_env, prep.desc, tmpdir);
        code_prep_free(&prep);
    }
    free(req_path);
}

/* ---- Requests on runs ----------------------------------------------------------------------- */

struct stdin_ctx {
    struct agent *a;
    uint64_t conn_no;
    struct reqtag req;
    char id[BOXD_ID_MAX + 1];
};

static void stdin_done(void *arg, int status)
{
    struct stdin_ctx *sc = arg;
    struct conn *c = conn_find(sc->a, sc->conn_no);
    if (c) {
        struct msg_out o;
        int e = status == 0 ? ev_begin(&o, "ok", &sc->req)
                            : ev_error(&o, &sc->req, "run_ended", sc->id, "stdin is closed: %s",
                                       uv_strerror(status));
        if (e == 0) {
            if (status == 0) {
                msg_kv_str(&o, "id", sc->id);
                ev_close(&o);
            }
            conn_send(c, &o);
        } else {
            msg_out_destroy(&o);
        }
    }
    free(sc);
}

static void do_stdin(struct ctx *x)
{
    struct run *r = get_run(x);
    if (r == NULL)
        return;
    const char *data = "";
    size_t len = 0;
    bool eof;
    int e = msg_get_bytes(x->m, "data", &data, &len);
    if (e == -EINVAL) {
        error(x, "bad_request", r->id, "data must be str or bin");
        return;
    }
    if (get_bool(x, "eof", &eof, false) < 0)
        return;
    struct stdin_ctx *sc = malloc(sizeof *sc);
    if (sc == NULL) {
        error(x, "internal", r->id, "out of memory");
        return;
    }
    sc->a = x->a;
    sc->conn_no = x->c->no;
    sc->req = x->req;
    memcpy(sc->id, r->id, sizeof sc->id);
    e = run_stdin_write(r, data, len, eof, stdin_done, sc);
    if (e == 0)
        return; /* answered when written */
    free(sc);
    if (e == 1)
        ok(x, r->id, -1);
    else if (e == -ENOBUFS)
        limit_error(x, r->id, "stdin_bytes", "more than %u bytes of stdin queued",
                    x->a->cfg.stdin_bytes);
    else if (e == -EPIPE)
        error(x, "run_ended", r->id, "the run has no open stdin");
    else
        error(x, "internal", r->id, "out of memory");
}

static int parse_signal(const msgpack_object *o)
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

static void do_signal(struct ctx *x)
{
    struct run *r = get_run(x);
    if (r == NULL)
        return;
    int sig = parse_signal(msg_get(x->m, "signal"));
    if (sig < 0) {
        error(x, "bad_request", r->id, "signal must be a number from 1 to %d or a name", NSIG - 1);
        return;
    }
    int e = run_signal(r, sig);
    if (e == -ESRCH)
        error(x, "run_ended", r->id, "the run has ended: nothing was signalled");
    else if (e < 0)
        error(x, "internal", r->id, "kill: %s", strerror(-e));
    else
        ok(x, r->id, -1);
}

static void do_cancel(struct ctx *x)
{
    struct run *r = get_run(x);
    if (r == NULL)
        return;
    uint64_t grace;
    if (get_u64(x, "grace_ms", &grace, r->grace_ms, 3600u * 1000u) < 0)
        return;
    bool live = run_cancel(r, (uint32_t)grace);
    ok(x, r->id, !live);
}

static struct sub *find_sub(struct conn *c, struct run *r)
{
    struct list *pos;
    for (pos = c->subs.next; pos != &c->subs; pos = pos->next) {
        struct sub *s = container_of(pos, struct sub, conn_link);
        if (s->run == r && !s->end_only)
            return s;
    }
    return NULL;
}

static void put_retention(struct msg_out *o, const struct run *r);

static void do_attach(struct ctx *x)
{
    struct run *r = get_run(x);
    if (r == NULL)
        return;
    uint64_t from;
    bool want_output;
    if (get_u64(x, "from_seq", &from, 0, UINT64_MAX) < 0 ||
        get_bool(x, "output", &want_output, false) < 0)
        return;
    struct sub *old = find_sub(x->c, r); /* attaching again replaces it (sub_replace) */
    if (!old && x->c->n_subs >= x->a->cfg.max_subs) {
        limit_error(x, r->id, "max_subs", "this connection already follows %u runs",
                    x->a->cfg.max_subs);
        return;
    }
    struct msg_out o;
    if (ev_begin(&o, "attached", &x->req) < 0)
        return;
    msg_kv_str(&o, "id", r->id);
    put_retention(&o, r);
    msg_kv_u64(&o, "next_seq", r->log.next_seq);
    msg_kv_bool(&o, "ended", r->state == RUN_ENDED);
    ev_close(&o);
    reply(x, &o);
    struct sub *s = old ? sub_replace(old, &x->req, from, want_output)
                        : sub_new(r, x->c, &x->req, from, false, want_output);
    if (s == NULL)
        error(x, "internal", r->id, "out of memory");
}

static void do_detach(struct ctx *x)
{
    struct run *r = get_run(x);
    if (r == NULL)
        return;
    struct sub *s = find_sub(x->c, r);
    if (s)
        sub_free(s);
    ok(x, r->id, -1);
}

static void do_wait(struct ctx *x)
{
    struct run *r = get_run(x);
    if (r == NULL)
        return;
    bool want_output;
    if (get_bool(x, "output", &want_output, false) < 0)
        return;
    if (x->c->n_subs >= x->a->cfg.max_subs) {
        limit_error(x, r->id, "max_subs", "this connection already follows %u runs",
                    x->a->cfg.max_subs);
        return;
    }
    if (sub_new(r, x->c, &x->req, 0, true, want_output) == NULL)
        error(x, "internal", r->id, "out of memory");
}

static void put_retention(struct msg_out *o, const struct run *r)
{
    msg_kv_u64(o, "first_seq", r->log.first_seq);
    msg_kv_u64(o, "dropped_records", r->log.dropped_records);
    msg_kv_u64(o, "dropped_bytes", r->log.dropped_bytes);
}

static void do_logs(struct ctx *x)
{
    struct run *r = get_run(x);
    if (r == NULL)
        return;
    uint64_t from, max_records, max_bytes;
    uint64_t cap = x->a->cfg.max_event - 4096u;
    if (get_u64(x, "from_seq", &from, 0, UINT64_MAX) < 0 ||
        get_u64(x, "max_records", &max_records, 1000, LOGS_MAX_RECORDS) < 0 ||
        get_u64(x, "max_bytes", &max_bytes, 256u * 1024u, UINT64_MAX) < 0)
        return;
    if (max_bytes > cap)
        max_bytes = cap;
    if (max_records == 0)
        max_records = 1;
    struct msg_out o;
    if (ev_begin(&o, "logs", &x->req) < 0)
        return;
    msg_kv_str(&o, "id", r->id);
    msg_key(&o, "lines");
    size_t arr = msg_array_open(&o);
    uint32_t n = 0;
    uint64_t next = from < r->log.first_seq ? r->log.first_seq : from;
    struct rl_cursor c;
    struct rl_rec rec;
    runlog_seek(&r->log, next, &c);
    bool more = false;
    size_t base = msg_out_size(&o);
    while (runlog_next(&r->log, &c, &rec)) {
        if (n >= max_records || (n > 0 && msg_out_size(&o) - base + rec.len + 32 > max_bytes)) {
            more = true;
            break;
        }
        msg_array(&o, 4);
        msg_u64(&o, rec.seq);
        msg_u64(&o, rec.ts_ns);
        msg_i64(&o, rec.stream);
        msg_data_known(&o, rec.data, rec.len, rec.utf8);
        n++;
        next = rec.seq + 1;
    }
    if (next < r->log.next_seq && n == 0)
        next = r->log.next_seq > next ? next : r->log.next_seq;
    msg_array_close(&o, arr, n);
    msg_kv_u64(&o, "next_seq", next);
    msg_kv_bool(&o, "more", more);
    msg_kv_bool(&o, "ended", r->state == RUN_ENDED);
    put_retention(&o, r);
    ev_close(&o);
    reply(x, &o);
}

static void do_list(struct ctx *x)
{
    struct agent *a = x->a;
    struct msg_out o;
    if (ev_begin(&o, "list", &x->req) < 0)
        return;
    msg_key(&o, "runs");
    size_t arr = msg_array_open(&o);
    uint32_t n = 0;
    bool truncated = false;
    struct list *pos;
    for (pos = a->runs.next; pos != &a->runs; pos = pos->next) {
        const struct run *r = container_of(pos, struct run, link);
        if (r->internal)
            continue; /* the agent's own (interpreter probes): not a client's run */
        if (msg_out_size(&o) + 1024 > a->cfg.max_event) {
            truncated = true;
            break;
        }
        msg_map_open(&o);
        msg_kv_str(&o, "id", r->id);
        msg_kv_i64(&o, "pid", r->pid);
        msg_kv_str(&o, "state", r->state == RUN_ENDED ? "ended" : "running");
        if (r->state == RUN_ENDED) {
            msg_kv_str(&o, "status", run_status_str(r));
            msg_kv_str(&o, "reason", run_reason_str(r));
            msg_kv_i64(&o, "exit_code", run_exit_code(r));
            msg_kv_u64(&o, "ended_ns", r->ended_ns);
        }
        if (r->is_argv) {
            msg_key(&o, "argv");
            msg_array(&o, r->desc_argc);
            const char *d = r->desc;
            for (unsigned i = 0; i < r->desc_argc; i++, d += strlen(d) + 1)
                msg_str(&o, d);
        } else {
            msg_kv_str(&o, "cmd", r->desc);
        }
        msg_kv_u64(&o, "started_ns", r->started_ns);
        msg_kv_u64(&o, "next_seq", r->log.next_seq);
        put_retention(&o, r);
        msg_kv_u64(&o, "late_bytes", r->late_bytes);
        msg_kv_bool(&o, "lingering", r->lingering);
        if (r->bg_killed)
            msg_kv_str(&o, "background_killed", r->bg_killed);
        if (r->slot_released)
            msg_kv_bool(&o, "slot_released", true);
        if (r->cg.dir_fd >= 0)
            msg_kv_str(&o, "cgroup", r->cg.name);
        msg_map_close(&o);
        n++;
    }
    msg_array_close(&o, arr, n);
    msg_kv_bool(&o, "truncated", truncated);
    ev_close(&o);
    reply(x, &o);
}

static void do_shutdown(struct ctx *x)
{
    const char *act = "poweroff";
    size_t n = 8;
    int e = msg_get_str(x->m, "action", &act, &n);
    if (e == -EINVAL || (e == 0 && !((n == 8 && memcmp(act, "poweroff", 8) == 0) ||
                                     (n == 6 && memcmp(act, "reboot", 6) == 0)))) {
        error(x, "bad_request", NULL, "action must be \"poweroff\" or \"reboot\"");
        return;
    }
    bool reboot = n == 6;
    ok(x, NULL, -1);
    log_info("shutdown requested by conn %llu (%s)", (unsigned long long)x->c->no,
             reboot ? "reboot" : "poweroff");
    agent_shutdown(x->a, "request", reboot ? FINAL_REBOOT : FINAL_POWEROFF);
}

/* ---- Dispatch ------------------------------------------------------------------------------- */

static const struct {
    const char *type;
    void (*fn)(struct ctx *);
} handlers[] = {
    {"hello", do_hello},   {"exec", do_exec},     {"code", do_code},     {"stdin", do_stdin},
    {"signal", do_signal}, {"cancel", do_cancel}, {"attach", do_attach}, {"detach", do_detach},
    {"wait", do_wait},     {"logs", do_logs},     {"list", do_list},     {"info", do_info},
    {"ping", do_ping},     {"shutdown", do_shutdown},
};

static void dispatch(struct conn *c, const uint8_t *body, size_t len, uint64_t hold_deadline)
{
    struct ctx x = {.c = c, .a = c->a, .body = body, .len = len, .hold_deadline = hold_deadline};
    msgpack_zone zone;
    if (!msgpack_zone_init(&zone, 1024)) {
        error(&x, "internal", NULL, "out of memory");
        return;
    }
    msgpack_object m;
    int e = msg_parse(body, len, &zone, &m);
    if (e < 0) {
        error(&x, e == -ENOMEM ? "internal" : "bad_request", NULL,
              e == -ENOMEM ? "out of memory"
                           : "the frame body is not one msgpack map with string keys");
        goto out;
    }
    x.m = &m;
    const msgpack_object *req = msg_get(&m, "req");
    if (req) {
        bool okreq = req->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                     req->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
                     (req->type == MSGPACK_OBJECT_STR && req->via.str.size <= 64);
        if (!okreq) {
            error(&x, "bad_request", NULL, "req must be an integer or a string of at most 64 bytes");
            goto out;
        }
        struct msg_out o;
        if (msg_out_init(&o, 96) == 0) {
            msg_obj(&o, req);
            size_t n = msg_out_size(&o) - BOX_FRAME_HDR;
            if (!o.failed && n <= sizeof x.req.buf) {
                memcpy(x.req.buf, o.sb.data + BOX_FRAME_HDR, n);
                x.req.len = (uint8_t)n;
            }
            msg_out_destroy(&o);
        }
    }
    const char *type;
    size_t tlen;
    if (msg_get_str(&m, "type", &type, &tlen) < 0) {
        error(&x, "bad_request", NULL, "type must be a string");
        goto out;
    }
    int fr = files_request(c, &m, &x.req, type, tlen); /* files/files.h */
    if (fr < 0)
        error(&x, "need_hello", NULL, "send hello first");
    if (fr != 0)
        goto out;
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++) {
        if (strlen(handlers[i].type) == tlen && memcmp(handlers[i].type, type, tlen) == 0) {
            if (!c->hello && handlers[i].fn != do_hello)
                error(&x, "need_hello", NULL, "send hello first");
            else
                handlers[i].fn(&x);
            goto out;
        }
    }
    char shown[33];
    size_t n = tlen < 32 ? tlen : 32;
    for (size_t i = 0; i < n; i++)
        shown[i] = isprint((unsigned char)type[i]) ? type[i] : '?';
    shown[n] = '\0';
    error(&x, "unknown_type", NULL, "unknown request type '%s'", shown);
out:
    msgpack_zone_destroy(&zone);
}

void request_frame(struct conn *c, const uint8_t *body, size_t len)
{
    dispatch(c, body, len, 0);
}

void request_retry(struct agent *a, uint64_t conn_no, const uint8_t *body, size_t len,
                   uint64_t deadline_ns)
{
    struct conn *c = conn_find(a, conn_no);
    if (c == NULL || c->closing)
        return; /* gone: nobody to answer */
    dispatch(c, body, len, deadline_ns);
}
