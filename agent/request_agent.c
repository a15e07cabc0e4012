/* The agent's own requests (PROTOCOL.md 3 and 5): hello (the gate, with the token check),
 * ping, info, and shutdown; and the `limits` map hello and info share. */
#include "request.h"

#include <errno.h>
#include <string.h>

#include "auth.h"
#include "code.h"
#include "conn.h"
#include "events.h"
#include "log.h"
#include "files.h"
#include "request_priv.h"
#include "runlimits.h"
#include "shutdown.h"

void request_put_limits(struct msg_out *o, const struct agent *a)
{
    const struct config *c = &a->cfg;
    msg_key(o, BOX_KEY(LIMITS));
    msg_map_open(o);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_FRAME), c->max_frame);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_EVENT), c->max_event);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_LINE), c->max_line);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_RUNS), c->max_runs);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_FINISHED), c->max_finished);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_CONNS), c->max_conns);
    msg_kv_u64(o, box_limit_str(BOX_LIM_LOG_BYTES), c->log_bytes);
    msg_kv_u64(o, box_limit_str(BOX_LIM_LOG_TOTAL), c->log_total);
    msg_kv_u64(o, box_limit_str(BOX_LIM_STDIN_BYTES), c->stdin_bytes);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_SUBS), c->max_subs);
    msg_kv_u64(o, box_limit_str(BOX_LIM_CONN_QUEUE), c->conn_queue);
    msg_kv_u64(o, box_limit_str(BOX_LIM_QUEUE_TOTAL), c->queue_total);
    msg_kv_u64(o, box_limit_str(BOX_LIM_HELLO_TIMEOUT_MS), c->hello_timeout_ms);
    msg_kv_u64(o, box_limit_str(BOX_LIM_GRACE_MS), c->grace_ms);
    msg_kv_u64(o, box_limit_str(BOX_LIM_DRAIN_MS), c->drain_ms);
    msg_kv_u64(o, box_limit_str(BOX_LIM_FLUSH_MS), c->flush_ms);
    msg_kv_u64(o, box_limit_str(BOX_LIM_MAX_CODE), CODE_MAX_BYTES);
    files_put_limits(o);
    msg_map_close(o);
}

static void put_identity(struct msg_out *o, const struct agent *a)
{
    msg_kv_u64(o, BOX_KEY(VERSION), BOX_PROTOCOL_VERSION);
    msg_kv_str(o, BOX_KEY(AGENT), "boxd " BOXD_VERSION);
    msg_kv_str(o, BOX_KEY(BOOT_ID), a->boot_id);
    msg_kv_i64(o, BOX_KEY(PID), a->pid);
}

void request__hello(struct ctx *x)
{
    struct decode_err err;
    if (decode_hello(x->m, BOX_PROTOCOL_VERSION, &err) < 0) {
        struct msg_out o;
        if (ev_begin(&o, BOX_T_ERROR, &x->req) < 0)
            return;
        msg_kv_str(&o, BOX_KEY(CODE), box_err_str(err.code));
        msg_kv_str(&o, BOX_KEY(MESSAGE), err.message);
        msg_key(&o, BOX_KEY(VERSIONS));
        msg_array(&o, 1);
        msg_u64(&o, BOX_PROTOCOL_VERSION);
        ev_close(&o);
        request__reply(x, &o);
        return;
    }
    if (auth_check_hello(x->a, x->m) < 0) {
        /* Never say what was wrong with it; never log it. */
        log_limited(LOG_RL_TOKEN, LOG_WARN, "conn %llu (%s): hello with a wrong or missing token, closing",
                 (unsigned long long)x->c->no, x->c->peer);
        request__error(x, BOX_ERR_UNAUTHORIZED, NULL, "a valid token is required");
        conn_close_after_flush(x->c);
        return;
    }
    conn_hello_passed(x->c);
    struct msg_out o;
    if (ev_begin(&o, BOX_T_HELLO, &x->req) < 0)
        return;
    put_identity(&o, x->a);
    msg_key(&o, BOX_KEY(CAPABILITIES));
    static const char *const caps[] = {"exec", "stdin", "signal", "cancel", "attach", "wait",
                                       "logs", "list", "info", "ping", "argv", "run_id", "code",
                                       "files", "tty"};
    msg_array(&o, sizeof caps / sizeof caps[0]);
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        msg_str(&o, caps[i]);
    request_put_limits(&o, x->a);
    ev_close(&o);
    request__reply(x, &o);
}

void request__ping(struct ctx *x)
{
    struct msg_out o;
    if (ev_begin(&o, BOX_T_PONG, &x->req) < 0)
        return;
    msg_kv_u64(&o, BOX_KEY(TS_NS), now_real_ns());
    ev_close(&o);
    request__reply(x, &o);
}

void request__info(struct ctx *x)
{
    struct agent *a = x->a;
    if (code_init(a) == 0 && code_languages_ready(a, request__may_wait(x)) == -EINPROGRESS) {
        /* The versions are being found: answered once they are (or at the deadline). */
        request__hold(x);
        return;
    }
    struct msg_out o;
    if (ev_begin(&o, BOX_T_INFO, &x->req) < 0)
        return;
    put_identity(&o, a);
    msg_kv_bool(&o, BOX_KEY(PID1), a->pid1);
    msg_kv_str(&o, BOX_KEY(MODE), init_mode_str(a->mode));
    msg_kv_bool(&o, BOX_KEY(SUBREAPER), a->subreaper);
    msg_kv_u64(&o, BOX_KEY(UPTIME_MS), (now_mono_ns() - a->start_mono_ns) / 1000000u);
    msg_kv_u64(&o, BOX_KEY(RUNS_LIVE), a->n_live);
    msg_kv_u64(&o, BOX_KEY(RUNS_STARTING), a->n_starting);
    msg_kv_bool(&o, BOX_KEY(SPAWNER), a->sandbox.spawner != NULL);
    msg_kv_u64(&o, BOX_KEY(RUNS_FINISHED), a->n_finished);
    msg_kv_u64(&o, BOX_KEY(CONNS), a->n_conns);
    msg_kv_u64(&o, BOX_KEY(REAPED), a->reaped);
    msg_kv_u64(&o, BOX_KEY(STARTED_TOTAL), a->started_total);
    msg_kv_u64(&o, BOX_KEY(LOG_DROPPED), log_dropped());
    msg_kv_u64(&o, BOX_KEY(LOG_SUPPRESSED), log_suppressed());
    msg_kv_bool(&o, BOX_KEY(SHUTTING_DOWN), a->shutting_down);
    msg_kv_str(&o, BOX_KEY(KILL_MECHANISM), a->cg.enabled ? "cgroup" : "pgroup");
    if (a->cg.enabled) {
        msg_kv_str(&o, BOX_KEY(CGROUP), a->cg.base);
        msg_key(&o, BOX_KEY(CONTROLLERS));
        msg_array(&o, (uint32_t)a->cg.memory + a->cg.pids + a->cg.cpu);
        if (a->cg.memory)
            msg_str(&o, "memory");
        if (a->cg.pids)
            msg_str(&o, "pids");
        if (a->cg.cpu)
            msg_str(&o, "cpu");
    }
    request_put_limits(&o, a);
    runlimits_put(&o, a);
    code_put_languages(&o, a);
    ev_close(&o);
    request__reply(x, &o);
}

void request__shutdown(struct ctx *x)
{
    bool reboot;
    struct decode_err err;
    if (decode_shutdown(x->m, &reboot, &err) < 0) {
        request__decode_error(x, &err, NULL);
        return;
    }
    request__ok(x, NULL, -1);
    log_info("shutdown requested by conn %llu (%s)", (unsigned long long)x->c->no,
             reboot ? "reboot" : "poweroff");
    agent_shutdown(x->a, "request", reboot ? FINAL_REBOOT : FINAL_POWEROFF);
}
