/* boxctl attach, wait, logs, cancel, signal, stdin: requests on runs. */
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

int take_run_id(const char *cmd, int argc, char **argv, int want_more, const char **id)
{
    *id = "";
    if (argc < 1)
        return usage_error(cmd, "missing RUN_ID");
    if (argc > 1 + want_more)
        return usage_error(cmd, "unexpected argument '%s'", argv[1 + want_more]);
    *id = argv[0];
    if (!valid_run_id(*id))
        return usage_error(cmd, "'%s' is not a run id (1-64 of A-Z a-z 0-9 . _ : -)", *id);
    return 0;
}

/* Connects, and with --wait-start waits until the agent knows the run: a run that another
 * boxctl is still starting (`boxctl exec --id ID ... &`) is not known until that boxctl's
 * request has been read. `detach` is the probe: it answers `ok` for any known run, followed or
 * not, changes nothing on a connection that follows nothing, and `not_found` otherwise. */
static int connect_for_run(struct ctl *x, const struct opts *o, const char *id)
{
    int ret = ctl_connect(x);
    if (ret != 0 || !o->has_wait_start)
        return ret;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct msg_out m;
        uint64_t req;
        int r = req_with_id(x, &m, box_type_str(BOX_T_DETACH), id, 0, &req);
        if (r == 0)
            r = box_client_call(&x->c, &m, req, &x->m, REPLY_TIMEOUT_MS);
        if (r == 0)
            return 0;
        if (r != -EREMOTEIO || !error_is(&x->m, BOX_ERR_NOT_FOUND))
            return request_failed(x, r);
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        uint64_t ms = (uint64_t)(t.tv_sec - t0.tv_sec) * 1000u +
                      (uint64_t)((t.tv_nsec - t0.tv_nsec) / 1000000);
        if (ms >= o->wait_start_ms) {
            errmsg("not_found: no run '%s' appeared within --wait-start %" PRIu64
                   " ms; 'boxctl list' shows the runs the agent knows",
                   id, o->wait_start_ms);
            return EXIT_FAIL;
        }
        sleep_ms(WAIT_START_POLL_MS);
    }
}

/* The start every command on one run with no other operand shares: its id (the only operand),
 * then a connection (with --wait-start, once the agent knows the run). Returns 0 or the exit
 * status, the message already printed. */
static int open_run(struct ctl *x, const struct opts *o, const char *cmd, int argc, char **argv,
                    const char **id)
{
    int ret = take_run_id(cmd, argc, argv, 0, id);
    return ret != 0 ? ret : connect_for_run(x, o, *id);
}

/* ---- attach, wait, logs -------------------------------------------------------------------- */

int cmd_attach(struct ctl *x, struct opts *o, int argc, char **argv)
{
    uint64_t from = o->from;
    const char *id = NULL;
    int ret = open_run(x, o, "attach", argc, argv, &id);
    if (ret != 0)
        return ret;
    int r = sigint_install();
    if (r < 0) {
        errmsg("installing the SIGINT handler: %s", strerror(-r));
        return EXIT_FAIL;
    }

    struct msg_out mo;
    uint64_t req;
    r = req_with_id(x, &mo, box_type_str(BOX_T_ATTACH), id, 1, &req);
    if (r == 0)
        msg_kv_u64(&mo, BOX_REQ_KEY(FROM_SEQ), from);
    /* The reply comes before any output (PROTOCOL.md 10.1), and says whether the run has a
     * terminal: then boxctl's terminal is the run's, as with 'boxctl shell'. */
    if (r == 0)
        r = box_client_call(&x->c, &mo, req, &x->m, REPLY_TIMEOUT_MS);
    if (r < 0)
        return request_failed(x, r);
    if (msg_get(&x->m.root, BOX_KEY(TTY)) != NULL)
        return tty_attach(x, id, req, o->detach_keys);
    struct sink sink;
    sink_init(&sink, SINK_RAW);
    struct follow f;
    memset(&f, 0, sizeof f);
    f.x = x;
    f.sink = &sink;
    f.req = req;
    f.started = true; /* the attached reply is in */
    f.cancel_on_sigint = true;
    snprintf(f.id, sizeof f.id, "%s", id);
    switch (follow_run(&f)) {
    case F_END: {
        struct end_info end;
        end_parse(&x->m.root, &end);
        if (bytes_is(end.reason, "spawn"))
            report_end(&end, 0);
        ret = end_exit_code(&end);
        break;
    }
    case F_ERROR: print_agent_error(&x->m); ret = EXIT_FAIL; break;
    case F_DETACHED: ret = 130; break;
    default: ret = EXIT_FAIL; break;
    }
    sink_destroy(&sink);
    return ret;
}

int cmd_wait(struct ctl *x, struct opts *o, int argc, char **argv)
{
    bool json = o->json;
    const char *id = NULL;
    int ret = open_run(x, o, "wait", argc, argv, &id);
    if (ret != 0)
        return ret;
    int r = wait_end(x, id, json);
    if (r < 0)
        return request_failed(x, r);

    struct end_info end;
    end_parse(&x->m.root, &end);
    if (json) {
        if (!end.truncated)
            return end_print_json(&end, NULL) < 0 ? EXIT_FAIL : 0;
        /* The end event's copy is cut: rebuild stdout and stderr from the retained log. The
         * end event is copied first because the log pages reuse x->m. */
        struct box_msg endmsg = x->m;
        if (box_msg_init(&x->m) < 0) {
            x->m = endmsg;
            errmsg("%s", strerror(ENOMEM));
            return EXIT_FAIL;
        }
        end_parse(&endmsg.root, &end);
        struct sink sink;
        sink_init(&sink, SINK_CAPTURE);
        uint64_t from = 0;
        r = logs_pages(x, id, &from, &sink);
        if (r == 0)
            ret = end_print_json(&end, &sink) < 0 ? EXIT_FAIL : 0;
        else if (r == ALREADY_REPORTED)
            ret = EXIT_FAIL;
        else
            ret = request_failed(x, r);
        sink_destroy(&sink);
        box_msg_destroy(&endmsg);
        return ret;
    }

    struct sbuf line;
    sbuf_init(&line, 1024);
    char sid[RUN_ID_MAX + 1], st[32], rs[32];
    bytes_cstr(end.id.p ? end.id : (struct bytes){id, strlen(id)}, sid, sizeof sid);
    bytes_cstr(end.status, st, sizeof st);
    bytes_cstr(end.reason, rs, sizeof rs);
    sanitize(sid, strlen(sid));
    sanitize(st, strlen(st));
    sanitize(rs, strlen(rs));
    sbuf_printf(&line, "%s: %s", sid, st[0] ? st : "?");
    if (!bytes_is(end.status, "completed"))
        sbuf_printf(&line, " (%s)", rs[0] ? rs : "?");
    if (end.has_exit)
        sbuf_printf(&line, " exit_code=%" PRId64, end.exit_code);
    if (end.has_signal)
        sbuf_printf(&line, " signal=%" PRId64, end.sig);
    if (end.errno_name.p != NULL) {
        char en[32];
        bytes_cstr(end.errno_name, en, sizeof en);
        sanitize(en, strlen(en));
        sbuf_printf(&line, " errno=%s", en);
    }
    if (end.stage.p != NULL) {
        char sg[32];
        bytes_cstr(end.stage, sg, sizeof sg);
        sanitize(sg, strlen(sg));
        sbuf_printf(&line, " stage=%s", sg);
    }
    if (end.has_duration)
        sbuf_printf(&line, " duration_ms=%" PRId64, end.duration_ms);
    sbuf_add(&line, "\n", 1);
    ret = end_exit_code(&end);
    if (box_write_all(STDOUT_FILENO, line.p, line.len) < 0)
        ret = EXIT_FAIL;
    sbuf_free(&line);
    return ret;
}

int cmd_logs(struct ctl *x, struct opts *o, int argc, char **argv)
{
    bool json = o->json, follow = o->follow;
    uint64_t from = o->from;
    const char *id = NULL;
    int ret = open_run(x, o, "logs", argc, argv, &id);
    if (ret != 0)
        return ret;

    struct json j;
    json_init(&j, JSON_BUF_MAX);
    struct sink sink;
    sink_init(&sink, json ? SINK_JSON : SINK_RAW);
    sink.j = &j;
    sink.lines = follow; /* JSON Lines when following: an array would never be closed in time */
    if (json && !follow)
        json_array_begin(&j);

    ret = EXIT_FAIL;
    int r = logs_pages(x, id, &from, &sink);
    if (r < 0) {
        if (r != ALREADY_REPORTED)
            request_failed(x, r);
        goto out;
    }
    if (!follow) {
        if (json) {
            json_array_end(&j);
            json_newline(&j);
            r = json_flush(&j, STDOUT_FILENO);
            if (r < 0) {
                errmsg("writing output: %s", strerror(-r));
                goto out;
            }
        }
        ret = 0;
        goto out;
    }

    struct msg_out mo;
    uint64_t req;
    r = req_with_id(x, &mo, box_type_str(BOX_T_ATTACH), id, 1, &req);
    if (r == 0) {
        msg_kv_u64(&mo, BOX_REQ_KEY(FROM_SEQ), from);
        r = box_client_send(&x->c, &mo);
    }
    if (r < 0) {
        request_failed(x, r);
        goto out;
    }
    struct follow f;
    memset(&f, 0, sizeof f);
    f.x = x;
    f.sink = &sink;
    f.req = req;
    snprintf(f.id, sizeof f.id, "%s", id);
    switch (follow_run(&f)) {
    case F_END: ret = 0; break;
    case F_ERROR: print_agent_error(&x->m); break;
    default: break;
    }
out:
    sink_destroy(&sink);
    json_destroy(&j);
    return ret;
}

/* ---- cancel, signal, stdin ----------------------------------------------------------------- */

int cmd_cancel(struct ctl *x, struct opts *o, int argc, char **argv)
{
    uint64_t grace = o->grace_ms;
    bool has_grace = o->has_grace;
    const char *id = NULL;
    int ret = open_run(x, o, "cancel", argc, argv, &id);
    if (ret != 0)
        return ret;
    struct msg_out mo;
    uint64_t req;
    int r = req_with_id(x, &mo, box_type_str(BOX_T_CANCEL), id, has_grace, &req);
    if (r < 0)
        return request_failed(x, r);
    if (has_grace)
        msg_kv_u64(&mo, BOX_REQ_KEY(GRACE_MS), grace);
    r = box_client_call(&x->c, &mo, req, &x->m, REPLY_TIMEOUT_MS);
    if (r < 0)
        return request_failed(x, r);
    return 0;
}

int cmd_signal(struct ctl *x, struct opts *o, int argc, char **argv)
{
    const char *id = NULL;
    int ret = take_run_id("signal", argc, argv, 1, &id);
    if (ret != 0)
        return ret;
    if (argc < 2)
        return usage_error("signal", "missing SIG");
    const char *sig = argv[1];
    if (sig[0] == '\0')
        return usage_error("signal", "empty SIG");
    ret = connect_for_run(x, o, id);
    if (ret != 0)
        return ret;
    struct msg_out mo;
    uint64_t req;
    int r = req_with_id(x, &mo, box_type_str(BOX_T_SIGNAL), id, 1, &req);
    if (r < 0)
        return request_failed(x, r);
    uint64_t num;
    if (parse_u64(sig, &num) == 0)
        msg_kv_u64(&mo, BOX_REQ_KEY(SIGNAL), num);
    else
        /* The agent knows the names: "TERM", "SIGTERM". */
        msg_kv_str(&mo, BOX_REQ_KEY(SIGNAL), sig);
    r = box_client_call(&x->c, &mo, req, &x->m, REPLY_TIMEOUT_MS);
    if (r < 0)
        return request_failed(x, r);
    return 0;
}

/* Sends one stdin request and waits for its `ok`. */
static int stdin_send(struct ctl *x, const char *id, const char *data, size_t len, bool eof)
{
    struct msg_out mo;
    uint64_t req;
    int r = req_with_id(x, &mo, box_type_str(BOX_T_STDIN), id, (len > 0) + eof, &req);
    if (r < 0)
        return r;
    if (len > 0) {
        msg_key(&mo, BOX_REQ_KEY(DATA));
        msg_data(&mo, data, len);
    }
    if (eof)
        msg_kv_bool(&mo, BOX_REQ_KEY(EOF_), true);
    return box_client_call(&x->c, &mo, req, &x->m, REPLY_TIMEOUT_MS);
}

int cmd_stdin(struct ctl *x, struct opts *o, int argc, char **argv)
{
    bool eof = o->eof;
    const char *id = NULL;
    int ret = take_run_id("stdin", argc, argv, 1, &id);
    if (ret != 0)
        return ret;
    const char *data = argc > 1 ? argv[1] : NULL;
    if (data == NULL && !eof)
        return usage_error("stdin", "give DATA, '-' for boxctl's stdin, or --eof");
    ret = connect_for_run(x, o, id);
    if (ret != 0)
        return ret;

    size_t chunk = STDIN_CHUNK_MAX;
    if (x->c.max_out < STDIN_CHUNK_MAX + STDIN_FRAME_OVERHEAD)
        chunk = x->c.max_out - STDIN_FRAME_OVERHEAD;
    int r = 0;
    if (data == NULL) {
        r = stdin_send(x, id, NULL, 0, true);
    } else if (strcmp(data, "-") != 0) {
        size_t len = strlen(data), off = 0;
        do {
            size_t n = len - off < chunk ? len - off : chunk;
            r = stdin_send(x, id, data + off, n, eof && off + n == len);
            off += n;
        } while (r == 0 && off < len);
    } else {
        char *buf = malloc(chunk);
        if (buf == NULL) {
            errmsg("%s", strerror(ENOMEM));
            return EXIT_FAIL;
        }
        for (;;) {
            ssize_t n = read(STDIN_FILENO, buf, chunk);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                errmsg("reading stdin: %s", strerror(errno));
                free(buf);
                return EXIT_FAIL;
            }
            if (n == 0) {
                if (eof)
                    r = stdin_send(x, id, NULL, 0, true);
                break;
            }
            r = stdin_send(x, id, buf, (size_t)n, false);
            if (r < 0)
                break;
        }
        free(buf);
    }
    if (r < 0)
        return request_failed(x, r);
    return 0;
}

