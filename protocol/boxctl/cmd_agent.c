/* boxctl list, info, ping, shutdown: requests to the agent itself. */
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

int cmd_list(struct ctl *x, struct opts *o, int argc, char **argv)
{
    bool json = o->json;
    if (argc > 0)
        return usage_error("list", "unexpected argument '%s'", argv[0]);
    int ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    int r = simple_request(x, box_type_str(BOX_T_LIST));
    if (r < 0)
        return request_failed(x, r);
    const msgpack_object *runs = msg_get(&x->m.root, BOX_KEY(RUNS));
    if (runs == NULL || runs->type != MSGPACK_OBJECT_ARRAY) {
        errmsg("malformed list reply from the agent");
        return EXIT_FAIL;
    }
    if (json)
        return print_json_value(runs, false);

    /* Two passes: the cells of every row as text, then the table with column widths. */
    enum { NCOL = 6 };
    static const char *const head[NCOL] = {"ID", "STATE", "STATUS", "EXIT", "PID", "CMD"};
    uint32_t nrows = runs->via.array.size;
    struct sbuf *cells = calloc((size_t)nrows + 1, NCOL * sizeof *cells);
    if (cells == NULL) {
        errmsg("%s", strerror(ENOMEM));
        return EXIT_FAIL;
    }
    size_t width[NCOL];
    for (int c = 0; c < NCOL; c++) {
        sbuf_init(&cells[c], 64);
        sbuf_add(&cells[c], head[c], strlen(head[c]));
        width[c] = strlen(head[c]);
    }
    for (uint32_t i = 0; i < nrows; i++) {
        const msgpack_object *run = &runs->via.array.ptr[i];
        struct sbuf *row = &cells[(size_t)(i + 1) * NCOL];
        const char *const keys[NCOL - 1] = {BOX_KEY(ID), BOX_KEY(STATE), BOX_KEY(STATUS),
                                            BOX_KEY(EXIT_CODE), BOX_KEY(PID)};
        for (int c = 0; c < NCOL; c++)
            sbuf_init(&row[c], c == NCOL - 1 ? 4096 : 128);
        bool lingering = false;
        msg_get_bool(run, BOX_KEY(LINGERING), &lingering);
        for (int c = 0; c < NCOL - 1; c++) {
            const msgpack_object *v = msg_get(run, keys[c]);
            if (c == 1 && lingering) {
                /* Ended, with processes it left behind still alive (PROTOCOL.md 4.4). */
                sbuf_lit(&row[c], "lingering");
                continue;
            }
            if (v == NULL || v->type == MSGPACK_OBJECT_NIL)
                sbuf_add(&row[c], "-", 1);
            else
                text_mp(&row[c], v);
        }
        const msgpack_object *cmd = msg_get(run, BOX_KEY(CMD));
        const msgpack_object *av = msg_get(run, BOX_KEY(ARGV));
        if (cmd != NULL && cmd->type != MSGPACK_OBJECT_NIL)
            text_mp(&row[NCOL - 1], cmd);
        else if (av != NULL && av->type == MSGPACK_OBJECT_ARRAY)
            for (uint32_t k = 0; k < av->via.array.size; k++) {
                if (k > 0)
                    sbuf_add(&row[NCOL - 1], " ", 1);
                text_mp(&row[NCOL - 1], &av->via.array.ptr[k]);
            }
        else if (av != NULL && av->type != MSGPACK_OBJECT_NIL)
            text_mp(&row[NCOL - 1], av); /* tolerate an agent that sends argv as one string */
        for (int c = 0; c < NCOL - 1; c++)
            if (row[c].len > width[c])
                width[c] = row[c].len;
    }
    struct sbuf out;
    sbuf_init(&out, SIZE_MAX);
    for (uint32_t i = 0; i <= nrows; i++) {
        struct sbuf *row = &cells[(size_t)i * NCOL];
        for (int c = 0; c < NCOL; c++) {
            sbuf_add(&out, row[c].p, row[c].len);
            if (c < NCOL - 1)
                sbuf_printf(&out, "%*s", (int)(width[c] - row[c].len + 2), "");
        }
        sbuf_add(&out, "\n", 1);
    }
    ret = 0;
    if (out.nomem) {
        errmsg("%s", strerror(ENOMEM));
        ret = EXIT_FAIL;
    } else if (box_write_all(STDOUT_FILENO, out.p, out.len) < 0) {
        ret = EXIT_FAIL;
    }
    sbuf_free(&out);
    for (size_t k = 0; k < ((size_t)nrows + 1) * NCOL; k++)
        sbuf_free(&cells[k]);
    free(cells);
    return ret;
}

int cmd_info(struct ctl *x, struct opts *o, int argc, char **argv)
{
    bool json = o->json;
    if (argc > 0)
        return usage_error("info", "unexpected argument '%s'", argv[0]);
    int ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    int r = simple_request(x, box_type_str(BOX_T_INFO));
    if (r < 0)
        return request_failed(x, r);
    if (json)
        return print_json_value(&x->m.root, true);
    struct sbuf out;
    sbuf_init(&out, SIZE_MAX);
    text_map(&out, "", &x->m.root);
    ret = 0;
    if (out.nomem || (out.len > 0 && box_write_all(STDOUT_FILENO, out.p, out.len) < 0))
        ret = EXIT_FAIL;
    sbuf_free(&out);
    return ret;
}

int cmd_ping(struct ctl *x, struct opts *o, int argc, char **argv)
{
    (void)o;
    if (argc > 0)
        return usage_error("ping", "unexpected argument '%s'", argv[0]);
    int ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = simple_request(x, box_type_str(BOX_T_PING));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (r < 0)
        return request_failed(x, r);
    if (!box_msg_is(&x->m, box_type_str(BOX_T_PONG))) {
        errmsg("unexpected reply to ping from the agent");
        return EXIT_FAIL;
    }
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    char agent[sizeof x->c.agent], boot[sizeof x->c.boot_id];
    snprintf(agent, sizeof agent, "%s", x->c.agent[0] ? x->c.agent : "boxd");
    snprintf(boot, sizeof boot, "%s", x->c.boot_id);
    sanitize(agent, strlen(agent));
    sanitize(boot, strlen(boot));
    struct sbuf line;
    sbuf_init(&line, 512);
    sbuf_printf(&line, "pong from %s (boot %s): time=%.3f ms\n", agent, boot, ms);
    ret = box_write_all(STDOUT_FILENO, line.p, line.len) < 0 ? EXIT_FAIL : 0;
    sbuf_free(&line);
    return ret;
}


int cmd_shutdown(struct ctl *x, struct opts *o, int argc, char **argv)
{
    if (argc > 0)
        return usage_error("shutdown", "unexpected argument '%s' (--reboot to reboot)", argv[0]);
    int ret = ctl_connect(x);
    if (ret != 0)
        return ret;
    struct msg_out m;
    uint64_t req;
    int r = box_req_begin(&x->c, &m, box_type_str(BOX_T_SHUTDOWN), 1, &req);
    if (r < 0)
        return request_failed(x, r);
    msg_kv_str(&m, BOX_REQ_KEY(ACTION), o->reboot ? "reboot" : "poweroff");
    r = box_client_call(&x->c, &m, req, &x->m, REPLY_TIMEOUT_MS);
    if (r < 0)
        return request_failed(x, r);
    static const char done[] = "shutting down: runs are being cancelled; the agent stops once "
                               "they have ended\n";
    return box_write_all(STDOUT_FILENO, done, sizeof done - 1) < 0 ? EXIT_FAIL : 0;
}
