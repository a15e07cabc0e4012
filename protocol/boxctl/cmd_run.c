/* boxctl exec and code: the commands that start runs. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "boxctl.h"
#include "schema.h"
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void exec_opts_from(struct exec_opts *e, const struct opts *o)
{
    memset(e, 0, sizeof *e);
    e->use_argv = o->use_argv;
    e->feed = o->feed;
    e->detach = o->detach;
    e->json = o->json;
    e->has_timeout = o->has_timeout;
    e->has_grace = o->has_grace;
    e->timeout_ms = o->timeout_ms;
    e->grace_ms = o->grace_ms;
    e->cwd = o->cwd;
    e->id = o->id;
    e->user = o->user;
    e->seccomp = o->seccomp;
    e->env = o->env;
    e->nenv = o->nenv;
}

/* True when env[i]'s key is given again later (the later one wins, as in a shell). */
static bool env_overridden(const struct exec_opts *e, size_t i)
{
    size_t klen = (size_t)(strchr(e->env[i], '=') - e->env[i]);
    for (size_t k = i + 1; k < e->nenv; k++)
        if (strncmp(e->env[k], e->env[i], klen + 1) == 0)
            return true;
    return false;
}

int exec_request(struct ctl *x, const struct exec_opts *e, uint64_t *req)
{
    uint32_t nenv = 0;
    bool env_term = false;
    for (size_t i = 0; i < e->nenv; i++) {
        nenv += !env_overridden(e, i);
        env_term |= strncmp(e->env[i], "TERM=", 5) == 0;
    }
    /* The local TERM goes with a terminal run unless -e TERM=... chose another. */
    bool add_term = e->tty && e->term != NULL && !env_term;
    nenv += add_term;
    bool has_words = e->lang == NULL && !e->login;
    uint32_t nf = 1 /* follow */ + (e->lang != NULL ? 2 : has_words) + (nenv > 0) +
                  (e->cwd != NULL) + e->has_timeout + e->has_grace + e->feed + e->json +
                  (e->id != NULL) + (e->user != NULL) + (e->seccomp != NULL) + e->tty +
                  e->login;
    struct msg_out o;
    int r = box_req_begin(&x->c, &o, box_type_str(e->lang ? BOX_T_CODE : BOX_T_EXEC), nf, req);
    if (r < 0)
        return r;
    if (e->lang) {
        msg_kv_str(&o, BOX_REQ_KEY(LANG), e->lang);
        msg_key(&o, BOX_REQ_KEY(CODE));
        msg_data(&o, e->code, e->code_len);
    } else if (e->login) {
        msg_kv_bool(&o, BOX_REQ_KEY(LOGIN), true);
    } else if (e->use_argv) {
        msg_key(&o, BOX_REQ_KEY(ARGV));
        msg_array(&o, (uint32_t)e->nwords);
        for (size_t i = 0; i < e->nwords; i++)
            msg_str(&o, e->words[i]);
    } else {
        struct sbuf cmd;
        sbuf_init(&cmd, SIZE_MAX);
        for (size_t i = 0; i < e->nwords; i++) {
            if (i > 0)
                sbuf_add(&cmd, " ", 1);
            sbuf_add(&cmd, e->words[i], strlen(e->words[i]));
        }
        msg_key(&o, BOX_REQ_KEY(CMD));
        msg_strn(&o, cmd.p != NULL ? cmd.p : "", cmd.len);
        if (cmd.nomem)
            o.failed = true;
        sbuf_free(&cmd);
    }
    if (nenv > 0) {
        msg_key(&o, BOX_REQ_KEY(ENV));
        msg_map(&o, nenv);
        for (size_t i = 0; i < e->nenv; i++) {
            if (env_overridden(e, i))
                continue;
            const char *eq = strchr(e->env[i], '=');
            msg_strn(&o, e->env[i], (size_t)(eq - e->env[i]));
            msg_str(&o, eq + 1);
        }
        if (add_term) {
            msg_str(&o, "TERM");
            msg_str(&o, e->term);
        }
    }
    if (e->tty) {
        msg_key(&o, BOX_REQ_KEY(TTY));
        msg_map(&o, 2);
        msg_kv_u64(&o, BOX_REQ_KEY(ROWS), e->rows);
        msg_kv_u64(&o, BOX_REQ_KEY(COLS), e->cols);
    }
    if (e->cwd != NULL)
        msg_kv_str(&o, BOX_REQ_KEY(CWD), e->cwd);
    if (e->has_timeout)
        msg_kv_u64(&o, BOX_REQ_KEY(TIMEOUT_MS), e->timeout_ms);
    if (e->has_grace)
        msg_kv_u64(&o, BOX_REQ_KEY(GRACE_MS), e->grace_ms);
    if (e->feed)
        msg_kv_bool(&o, BOX_REQ_KEY(STDIN), true);
    msg_kv_bool(&o, BOX_REQ_KEY(FOLLOW), !e->detach);
    if (e->json)
        msg_kv_bool(&o, BOX_REQ_KEY(OUTPUT), true);
    if (e->id != NULL)
        msg_kv_str(&o, BOX_REQ_KEY(ID), e->id);
    if (e->user != NULL)
        msg_kv_str(&o, BOX_REQ_KEY(USER), e->user);
    if (e->seccomp != NULL)
        msg_kv_str(&o, BOX_REQ_KEY(SECCOMP), e->seccomp);
    return box_client_send(&x->c, &o);
}

/* The exec was refused with spawn_failed (in x->m). Without --json: the error line and 127/126.
 * With --json: the run is recorded as failed, so its outcome is printed like any other. */
static int exec_spawn_failed(struct ctl *x, const struct exec_opts *e, const char *known_id)
{
    /* Copies of the error's fields: x->m is reused by the wait below. */
    char id[RUN_ID_MAX + 1], ename[32], stage[32];
    struct end_info fake;
    struct bytes b = {NULL, 0};
    memset(&fake, 0, sizeof fake);
    if (get_bytes(&x->m.root, BOX_KEY(ID), &b) && b.n <= RUN_ID_MAX)
        bytes_cstr(b, id, sizeof id);
    else
        snprintf(id, sizeof id, "%s", known_id);
    get_bytes(&x->m.root, BOX_KEY(ERRNO_NAME), &b);
    bytes_cstr(b, ename, sizeof ename);
    fake.errno_name = b.p != NULL ? (struct bytes){ename, strlen(ename)} : (struct bytes){NULL, 0};
    get_bytes(&x->m.root, BOX_KEY(STAGE), &b);
    bytes_cstr(b, stage, sizeof stage);
    fake.stage = b.p != NULL ? (struct bytes){stage, strlen(stage)} : (struct bytes){NULL, 0};
    fake.has_errno = msg_get_i64(&x->m.root, BOX_KEY(ERRNO), &fake.err_no) == 0;
    int code = spawn_exit_code(fake.has_errno, fake.err_no, fake.errno_name);
    if (!e->json) {
        print_agent_error(&x->m);
        return code;
    }

    if (valid_run_id(id)) {
        /* The agent's own record of the failed run is the authority; ask for it. */
        int r = wait_end(x, id, true);
        if (r == 0) {
            struct end_info end;
            end_parse(&x->m.root, &end);
            end.with_output = e->lang != NULL;
            return end_print_json(&end, NULL) < 0 ? EXIT_FAIL : 0;
        }
        if (r != -EREMOTEIO) {
            errmsg("%s: %s", x->sock, io_error(r));
            return EXIT_FAIL;
        }
    }
    /* The agent did not keep the run (4.1 says it should): describe it from the error reply. */
    fake.id = (struct bytes){id, strlen(id)};
    fake.status = (struct bytes){"failed", 6};
    fake.reason = (struct bytes){"spawn", 5};
    fake.has_exit = true;
    fake.exit_code = code;
    fake.with_output = e->lang != NULL;
    return end_print_json(&fake, NULL) < 0 ? EXIT_FAIL : 0;
}

/* Sends the exec (or code) request e describes and sees it through: --detach prints the id,
 * otherwise the run is followed to its end. Returns boxctl's exit status. */
static int exec_run(struct ctl *x, struct exec_opts *e_)
{
    struct exec_opts e = *e_;
    int ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    if (e.tty && !tty_supported(x))
        return EXIT_FAIL;
    ret = EXIT_FAIL;

    uint64_t req;
    if (e.detach) {
        int r = exec_request(x, &e, &req);
        if (r < 0) {
            request_failed(x, r);
            goto out;
        }
        /* follow:false: the only frame for this request is the reply. */
        for (;;) {
            r = box_client_recv(&x->c, &x->m, REPLY_TIMEOUT_MS);
            if (r == -EBADMSG)
                continue;
            if (r < 0) {
                request_failed(x, r);
                goto out;
            }
            if ((x->m.has_req && x->m.req == req) ||
                (box_msg_is(&x->m, box_type_str(BOX_T_ERROR)) &&
                 msg_get(&x->m.root, BOX_KEY(REQ)) == NULL))
                break;
        }
        if (box_msg_is(&x->m, box_type_str(BOX_T_ERROR))) {
            const char *code = "";
            size_t n = 0;
            box_msg_error(&x->m, &code, &n, NULL, NULL);
            if (box_err_is(code, n, BOX_ERR_SPAWN_FAILED)) {
                struct exec_opts plain = e;
                plain.json = false;
                ret = exec_spawn_failed(x, &plain, e.id ? e.id : "");
            } else {
                print_agent_error(&x->m);
            }
            goto out;
        }
        struct bytes id = {NULL, 0};
        if (!box_msg_is(&x->m, box_type_str(BOX_T_STARTED)) ||
            !get_bytes(&x->m.root, BOX_KEY(ID), &id)) {
            errmsg("unexpected reply to exec from the agent");
            goto out;
        }
        bool was = false;
        msg_get_bool(&x->m.root, BOX_KEY(EXISTING), &was);
        if (was) {
            char sid[RUN_ID_MAX + 1];
            bytes_cstr(id, sid, sizeof sid);
            sanitize(sid, strlen(sid));
            errmsg("run %s already exists: nothing new was started", sid);
        }
        if (e.json) {
            struct json j;
            json_init(&j, 4096);
            json_object_begin(&j);
            json_key(&j, "id");
            json_string(&j, id.p, id.n);
            int64_t pid;
            json_key(&j, "pid");
            if (msg_get_i64(&x->m.root, BOX_KEY(PID), &pid) == 0)
                json_int(&j, pid);
            else
                json_null(&j);
            bool existing = false;
            msg_get_bool(&x->m.root, BOX_KEY(EXISTING), &existing);
            json_key(&j, "existing");
            json_bool(&j, existing);
            json_object_end(&j);
            json_newline(&j);
            r = json_flush(&j, STDOUT_FILENO);
            json_destroy(&j);
        } else {
            char line[RUN_ID_MAX + 2];
            bytes_cstr(id, line, sizeof line - 1);
            sanitize(line, strlen(line));
            size_t n = strlen(line);
            line[n++] = '\n';
            r = box_write_all(STDOUT_FILENO, line, n);
        }
        if (r < 0)
            errmsg("writing output: %s", strerror(-r));
        else
            ret = 0;
        goto out;
    }

    int r = sigint_install();
    if (r < 0) {
        errmsg("installing the SIGINT handler: %s", strerror(-r));
        goto out;
    }
    struct sink sink;
    sink_init(&sink, e.json ? SINK_CAPTURE : SINK_RAW);
    struct follow f;
    memset(&f, 0, sizeof f);
    f.x = x;
    f.sink = &sink;
    f.cancel_on_sigint = true;
    f.feed = e.feed;
    if (e.id != NULL)
        snprintf(f.id, sizeof f.id, "%s", e.id);
    if (e.feed) {
        /* One chunk per request, and a request must stay under the agent's max_frame. */
        f.chunk = STDIN_CHUNK_MAX;
        if (x->c.max_out < STDIN_CHUNK_MAX + STDIN_FRAME_OVERHEAD)
            f.chunk = x->c.max_out - STDIN_FRAME_OVERHEAD;
        f.feed_buf = malloc(f.chunk);
        if (f.feed_buf == NULL) {
            errmsg("%s", strerror(ENOMEM));
            sink_destroy(&sink);
            goto out;
        }
    }
    r = exec_request(x, &e, &req);
    if (r < 0) {
        request_failed(x, r);
        goto out_follow;
    }
    f.req = req;
    switch (follow_run(&f)) {
    case F_END: {
        struct end_info end;
        end_parse(&x->m.root, &end);
        end.with_output = e.lang != NULL;
        report_end(&end, e.has_timeout ? e.timeout_ms : 0);
        if (e.json) {
            ret = end_print_json(&end, &sink) < 0 ? EXIT_FAIL : 0;
        } else {
            ret = end_exit_code(&end);
        }
        break;
    }
    case F_ERROR: {
        const char *code = "";
        size_t n = 0;
        box_msg_error(&x->m, &code, &n, NULL, NULL);
        if (box_err_is(code, n, BOX_ERR_SPAWN_FAILED))
            ret = exec_spawn_failed(x, &e, f.id);
        else
            print_agent_error(&x->m);
        break;
    }
    case F_DETACHED: ret = 130; break;
    default: ret = EXIT_FAIL; break;
    }
out_follow:
    free(f.feed_buf);
    sink_destroy(&sink);
out:
    return ret;
}

int cmd_exec(struct ctl *x, struct opts *o, int argc, char **argv)
{
    struct exec_opts e;
    exec_opts_from(&e, o);
    if (argc < 1)
        return usage_error("exec", "missing CMD");
    e.words = argv;
    e.nwords = (size_t)argc;
    if (o->tty) {
        if (e.json)
            return usage_error("exec", "-t and --json do not go together: a terminal's output is "
                                       "a screen, not stdout and stderr; drop one of them");
        e.tty = true;
        e.feed = false; /* a terminal run always takes stdin */
        tty_size_and_term(&e);
        if (!e.detach) {
            int ret = ctl_connect(x);
            return ret != 0 ? ret : tty_exec(x, &e, o->detach_keys);
        }
    }
    return exec_run(x, &e);
}

int cmd_code(struct ctl *x, struct opts *o, int argc, char **argv)
{
    struct exec_opts e;
    exec_opts_from(&e, o);
    e.lang = o->lang;
    const char *file = o->file;
    if (e.lang == NULL)
        return usage_error("code", "missing --lang LANG");
    if ((file != NULL) == (argc == 1) || argc > 1)
        return usage_error("code", "give the snippet as one CODE argument, -f FILE or -");
    if (file == NULL && strcmp(argv[0], "-") == 0)
        file = "-";
    bool from_stdin = file != NULL && strcmp(file, "-") == 0;
    if (from_stdin && e.feed)
        return usage_error("code", "--stdin cannot be used when the snippet comes from stdin");
    char *code = NULL;
    if (file != NULL) {
        int fd = from_stdin ? STDIN_FILENO : open(file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            errmsg("%s: %s", file, strerror(errno));
            return EXIT_FAIL;
        }
        /* The agent refuses what is over its max_code; this only bounds boxctl's memory. */
        int r = box_read_fd_alloc(fd, CAPTURE_MAX, &code, &e.code_len);
        if (!from_stdin)
            close(fd);
        if (r < 0) {
            errmsg("%s: %s", from_stdin ? "stdin" : file,
                   r == -EFBIG ? "over 64 MiB; the agent takes snippets up to its max_code"
                               : strerror(-r));
            return EXIT_FAIL;
        }
        e.code = code;
    } else {
        e.code = argv[0];
        e.code_len = strlen(e.code);
    }
    int ret = exec_run(x, &e);
    free(code);
    return ret;
}
