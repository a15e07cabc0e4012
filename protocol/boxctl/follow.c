/* boxctl: following a run. The streaming commands multiplex the socket, the SIGINT self-pipe
 * and, for exec --stdin, fd 0 with one poll() loop, and only read from the socket when poll says
 * it is readable, with a zero timeout, so a slow or partial frame never blocks the loop. */
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

/* ---- SIGINT -------------------------------------------------------------------------------- */

/* The handler can only reach globals: a counter the loop compares with what it has handled, and
 * the write end of a self-pipe whose read end is in every poll(), so a signal that lands just
 * before poll() still wakes it. */
static volatile sig_atomic_t sigint_count;
static int sigint_pipe[2] = {-1, -1};

static void on_sigint(int sig)
{
    (void)sig;
    int saved = errno;
    sigint_count++;
    if (sigint_pipe[1] >= 0 && write(sigint_pipe[1], "x", 1) < 0) {
        /* A full pipe already holds a wake-up. */
    }
    errno = saved;
}

int sigint_install(void)
{
    if (pipe2(sigint_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    /* SA_RESTART keeps blocking writes going; poll() is never restarted, and the pipe wakes it
     * in any case. */
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGINT, &sa, NULL) < 0)
        return -errno;
    return 0;
}

static void sigint_drain(void)
{
    char buf[64];
    while (read(sigint_pipe[0], buf, sizeof buf) > 0) {
    }
}

/* ---- Following a run ----------------------------------------------------------------------- */

static bool is_for_run(const struct follow *f, const struct box_msg *m)
{
    if (f->id[0] == '\0')
        return true;
    struct bytes id = {NULL, 0};
    return !get_bytes(&m->root, BOX_KEY(ID), &id) || bytes_is(id, f->id);
}

static int send_cancel(struct follow *f)
{
    struct msg_out o;
    int r = req_with_id(f->x, &o, box_type_str(BOX_T_CANCEL), f->id, 0, &f->cancel_req);
    if (r == 0)
        r = box_client_send(&f->x->c, &o);
    f->cancel_sent = true;
    if (r < 0) {
        errmsg("cancelling run %s: %s", f->id, io_error(r));
        return r;
    }
    errmsg("cancelling run %s (Ctrl-C again to stop waiting)", f->id);
    return 0;
}

/* fd 0 is readable (or gone): send what it has, or end-of-file. */
static int feed_stdin(struct follow *f, short revents)
{
    ssize_t n = 0;
    if (!(revents & POLLNVAL)) {
        n = read(STDIN_FILENO, f->feed_buf, f->chunk);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                return 0;
            errmsg("reading stdin: %s; closing the run's stdin", strerror(errno));
            n = 0;
        }
    }
    struct msg_out o;
    int r = req_with_id(f->x, &o, box_type_str(BOX_T_STDIN), f->id, 1, &f->feed_req);
    if (r < 0)
        return r;
    if (n == 0) {
        msg_kv_bool(&o, BOX_REQ_KEY(EOF_), true);
        f->feed = false; /* the `ok` for the eof needs no waiting */
    } else {
        msg_key(&o, BOX_REQ_KEY(DATA));
        msg_data(&o, f->feed_buf, (size_t)n);
        f->feed_wait = true;
    }
    return box_client_send(&f->x->c, &o);
}

static int follow_msg(struct follow *f)
{
    struct box_msg *m = &f->x->m;
    bool ours = m->has_req && m->req == f->req;

    if (ours && (box_msg_is(m, box_type_str(BOX_T_STARTED)) || box_msg_is(m, box_type_str(BOX_T_ATTACHED)))) {
        struct bytes id = {NULL, 0};
        if (f->id[0] == '\0' && get_bytes(&m->root, BOX_KEY(ID), &id) && id.n <= RUN_ID_MAX)
            bytes_cstr(id, f->id, sizeof f->id);
        bool existing = false;
        if (box_msg_is(m, box_type_str(BOX_T_STARTED)) && !f->started &&
            msg_get_bool(&m->root, BOX_KEY(EXISTING), &existing) == 0 && existing) {
            char sid[RUN_ID_MAX + 1];
            snprintf(sid, sizeof sid, "%s", f->id);
            sanitize(sid, strlen(sid));
            errmsg("run %s already exists: nothing new was started; reattaching to its output "
                   "from the start", sid);
        }
        f->started = true;
        if (f->cancel_wanted && !f->cancel_sent && f->id[0] != '\0' && send_cancel(f) < 0)
            return F_FAILED;
        return F_CONTINUE;
    }
    if (box_msg_is(m, box_type_str(BOX_T_ERROR))) {
        if (ours || msg_get(&m->root, BOX_KEY(REQ)) == NULL)
            return F_ERROR;
        if (m->has_req && m->req == f->feed_req) {
            /* The run closed its stdin or ended: stop copying, and only mention it when the
             * reason is not simply that the run is done reading. */
            const char *code = "";
            size_t n = 0;
            box_msg_error(m, &code, &n, NULL, NULL);
            if (!box_err_is(code, n, BOX_ERR_RUN_ENDED))
                print_agent_error(m);
            f->feed = false;
            f->feed_wait = false;
        } else if (m->has_req && m->req == f->cancel_req) {
            print_agent_error(m);
        }
        return F_CONTINUE;
    }
    if (box_msg_is(m, box_type_str(BOX_T_OK))) {
        if (m->has_req && m->req == f->feed_req)
            f->feed_wait = false;
        return F_CONTINUE;
    }
    if (!is_for_run(f, m))
        return F_CONTINUE;
    if (box_msg_is(m, box_type_str(BOX_T_OUTPUT))) {
        int r = sink_lines(f->sink, msg_get(&m->root, BOX_KEY(LINES)));
        if (r == -EBADMSG) {
            errmsg("malformed output record from the agent");
            return F_FAILED;
        }
        return r < 0 ? F_FAILED : F_CONTINUE;
    }
    if (box_msg_is(m, box_type_str(BOX_T_GAP))) {
        uint64_t from = 0, to = 0;
        msg_get_u64(&m->root, BOX_KEY(FROM_SEQ), &from);
        msg_get_u64(&m->root, BOX_KEY(TO_SEQ), &to);
        warn_gap(f->id, from, to);
        f->sink->gap = true;
        return F_CONTINUE;
    }
    if (box_msg_is(m, box_type_str(BOX_T_END)))
        return F_END;
    return F_CONTINUE; /* a type this boxctl does not know: newer agents may send more */
}

/* Streams events until the run ends. Returns F_END, F_ERROR, F_DETACHED or F_FAILED. */
int follow_run(struct follow *f)
{
    struct ctl *x = f->x;
    for (;;) {
        while (f->cancel_on_sigint && f->sigints != (unsigned)sigint_count) {
            f->sigints++;
            if (f->sigints > 1) {
                errmsg("stopped waiting for run %s", f->id[0] ? f->id : "(not started)");
                return F_DETACHED;
            }
            f->cancel_wanted = true;
            if (f->started && f->id[0] != '\0' && send_cancel(f) < 0)
                return F_FAILED;
        }

        struct pollfd p[3];
        nfds_t n = 0;
        int isig = -1, ifeed = -1;
        p[n++] = (struct pollfd){.fd = x->c.fd, .events = POLLIN};
        if (sigint_pipe[0] >= 0) {
            isig = (int)n;
            p[n++] = (struct pollfd){.fd = sigint_pipe[0], .events = POLLIN};
        }
        if (f->feed && f->started && !f->feed_wait && f->id[0] != '\0') {
            ifeed = (int)n;
            p[n++] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
        }
        if (poll(p, n, -1) < 0) {
            if (errno == EINTR)
                continue; /* the SIGINT count is checked at the top */
            errmsg("poll: %s", strerror(errno));
            return F_FAILED;
        }
        if (isig >= 0 && p[isig].revents != 0)
            sigint_drain();
        if (p[0].revents != 0) {
            /* Zero timeout: take what is there; a partial frame is kept for the next round. */
            int r = box_client_recv(&x->c, &x->m, 0);
            if (r == 0) {
                int h = follow_msg(f);
                if (h != F_CONTINUE)
                    return h;
            } else if (r == -EBADMSG) {
                errmsg("warning: ignoring a malformed message from the agent");
            } else if (r != -ETIMEDOUT) {
                errmsg("connection to the agent lost: %s", io_error(r));
                return F_FAILED;
            }
        }
        if (ifeed >= 0 && p[ifeed].revents != 0 && f->feed && !f->feed_wait) {
            int r = feed_stdin(f, p[ifeed].revents);
            if (r < 0) {
                errmsg("sending stdin: %s", io_error(r));
                return F_FAILED;
            }
        }
    }
}

/* Sends `wait` and reads until the run's `end` (any req: a following subscription's end is as
 * good) or the error answering the wait. Returns 0 (end in x->m), -EREMOTEIO (error in x->m),
 * or an I/O error. */
int wait_end(struct ctl *x, const char *id, bool output)
{
    struct msg_out o;
    uint64_t req;
    int r = req_with_id(x, &o, box_type_str(BOX_T_WAIT), id, 1, &req);
    if (r < 0)
        return r;
    msg_kv_bool(&o, BOX_REQ_KEY(OUTPUT), output);
    r = box_client_send(&x->c, &o);
    if (r < 0)
        return r;
    for (;;) {
        r = box_client_recv(&x->c, &x->m, -1);
        if (r == -EBADMSG)
            continue;
        if (r < 0)
            return r;
        struct bytes mid = {NULL, 0};
        bool same = get_bytes(&x->m.root, BOX_KEY(ID), &mid) && bytes_is(mid, id);
        if (box_msg_is(&x->m, box_type_str(BOX_T_END)) && same)
            return 0;
        if (box_msg_is(&x->m, box_type_str(BOX_T_ERROR)) &&
            ((x->m.has_req && x->m.req == req) || msg_get(&x->m.root, BOX_KEY(REQ)) == NULL))
            return -EREMOTEIO;
    }
}

/* Pages through `logs` from *from until `more` is false, passing each record to s. On 0, *from
 * is the seq to ask for next. Returns 0, -EREMOTEIO (the error is in x->m), -EBADMSG, an I/O
 * error, or ALREADY_REPORTED. */
int logs_pages(struct ctl *x, const char *id, uint64_t *from, struct sink *s)
{
    for (;;) {
        struct msg_out o;
        uint64_t req;
        int r = req_with_id(x, &o, box_type_str(BOX_T_LOGS), id, 2, &req);
        if (r < 0)
            return r;
        msg_kv_u64(&o, BOX_REQ_KEY(FROM_SEQ), *from);
        msg_kv_u64(&o, BOX_REQ_KEY(MAX_RECORDS), LOGS_PAGE_RECORDS);
        r = box_client_call(&x->c, &o, req, &x->m, REPLY_TIMEOUT_MS);
        if (r < 0)
            return r;
        const msgpack_object *root = &x->m.root;
        uint64_t first_seq, next_seq;
        bool more = false;
        if (!box_msg_is(&x->m, box_type_str(BOX_T_LOGS)) ||
            msg_get_u64(root, BOX_KEY(NEXT_SEQ), &next_seq) != 0)
            return -EBADMSG;
        if (msg_get_u64(root, BOX_KEY(FIRST_SEQ), &first_seq) == 0 && first_seq > *from) {
            warn_gap(id, *from, first_seq);
            s->gap = true;
        }
        r = sink_lines(s, msg_get(root, BOX_KEY(LINES)));
        if (r < 0)
            return r;
        msg_get_bool(root, BOX_KEY(MORE), &more);
        if (more && next_seq <= *from)
            return -EBADMSG; /* no progress: asking again would loop forever */
        if (next_seq > *from)
            *from = next_seq;
        if (!more)
            return 0;
    }
}

