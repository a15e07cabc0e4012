/* boxctl shell, exec -t, and attach to a terminal run: the interactive loop.
 *
 * Once the run has started, boxctl's terminal goes raw (cfmakeraw): every key is sent to the
 * run's pseudo-terminal as typed, and the line discipline in the box decides what Ctrl-C, Ctrl-Z
 * and Ctrl-D mean (for its foreground process group only). The terminal is put back on every way
 * out: the run's end, an error reply, a lost connection, a detach, the terminal hanging up, and
 * SIGTERM, SIGINT, SIGHUP and SIGQUIT (their handlers only wake the loop, which returns and
 * restores). SIGKILL cannot be handled, so before going raw boxctl forks a guard: a child that
 * holds the saved termios and the read end of a pipe whose only write end is boxctl's. However
 * boxctl exits, the kernel closes that end, the guard's read() sees end-of-file, and it puts the
 * terminal back with tcsetattr on the tty fd it inherited.
 *
 * One poll() loop, in follow.c's style: the socket, a self-pipe for the signals, and fd 0 while
 * a stdin request may be sent. One stdin request is in flight at a time (the next waits for the
 * `ok`, which the agent sends once the bytes are written to the terminal), so what boxctl has
 * read but the run has not is one chunk at most. SIGWINCH sends `resize`. The detach keys are
 * looked for in what is typed: a key that starts the sequence is held back until the next key
 * shows whether the sequence is complete (then boxctl detaches) or not (then both are sent).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "boxctl.h"
#include "io.h"
#include "schema.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

/* The size a terminal run gets when boxctl's stdin is not a terminal. */
#define DEFAULT_ROWS 24
#define DEFAULT_COLS 80
/* The agent's bounds for rows and cols (PROTOCOL.md, terminal runs). */
#define TTY_DIM_MAX 4096
/* A longer $TERM names no terminfo entry: the run gets the agent's default instead. */
#define TERM_NAME_MAX 255

/* ---- Detach keys --------------------------------------------------------------------------- */

/* ctrl-X for the characters a terminal sends with Ctrl: letters (either case) and @ [ \ ] ^ _. */
static int ctrl_key(char ch, unsigned char *out)
{
    static const char extra[] = "@[\\]^_";
    if (ch >= 'a' && ch <= 'z')
        *out = (unsigned char)(ch - 'a' + 1);
    else if (ch >= 'A' && ch <= 'Z')
        *out = (unsigned char)(ch - 'A' + 1);
    else if (ch != '\0' && strchr(extra, ch) != NULL)
        *out = (unsigned char)(ch == '@' ? 0 : 26 + (strchr(extra, ch) - extra));
    else
        return -EINVAL;
    return 0;
}

int detach_keys_parse(const char *s, struct detach_keys *k)
{
    memset(k, 0, sizeof *k);
    if (*s == '\0')
        return 0;
    for (;;) {
        const char *e = strchr(s, ',');
        size_t n = e != NULL ? (size_t)(e - s) : strlen(s);
        unsigned char c;
        if (n == 1)
            c = (unsigned char)s[0];
        else if (n == 6 && strncasecmp(s, "ctrl-", 5) == 0) {
            if (ctrl_key(s[5], &c) < 0)
                return -EINVAL;
        } else {
            return -EINVAL;
        }
        if (k->n == DETACH_KEYS_MAX)
            return -EINVAL;
        k->k[k->n++] = c;
        if (e == NULL)
            return 0;
        s = e + 1;
    }
}

/* ---- Signals ------------------------------------------------------------------------------- */

/* The handlers reach only these: the fatal signal to act on, whether the window changed, and the
 * write end of a self-pipe in every poll(), so a signal just before poll() still wakes it. */
static volatile sig_atomic_t fatal_signal;
static volatile sig_atomic_t winch_pending;
static int sig_pipe[2] = {-1, -1};
static const int fatal_signals[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT};

static void on_signal(int sig)
{
    int saved = errno;
    if (sig == SIGWINCH)
        winch_pending = 1;
    else
        fatal_signal = sig;
    if (sig_pipe[1] >= 0 && write(sig_pipe[1], "x", 1) < 0) {
        /* A full pipe already holds a wake-up. */
    }
    errno = saved;
}

static int signals_install(void)
{
    if (sig_pipe[0] < 0 && pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGWINCH, &sa, NULL) < 0)
        return -errno;
    for (size_t i = 0; i < sizeof fatal_signals / sizeof fatal_signals[0]; i++)
        if (sigaction(fatal_signals[i], &sa, NULL) < 0)
            return -errno;
    return 0;
}

static void sig_drain(void)
{
    char buf[64];
    while (read(sig_pipe[0], buf, sizeof buf) > 0) {
    }
}

/* ---- The local terminal -------------------------------------------------------------------- */

struct term {
    int fd;                /* STDIN_FILENO when it is a terminal, else -1 */
    struct termios saved;  /* its modes before boxctl touched them */
    bool raw;
    pid_t guard;           /* the guard child, or -1 */
    int guard_w;           /* the write end of its pipe, or -1 */
};

static void term_init(struct term *t)
{
    t->fd = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &t->saved) == 0 ? STDIN_FILENO : -1;
    t->raw = false;
    t->guard = -1;
    t->guard_w = -1;
}

/* The guard child: waits for end-of-file on r (boxctl is gone, or done), then restores tty. It
 * keeps only r and tty open, so it holds neither the agent connection nor boxctl's stdout. */
static void guard_main(int r, int tty, const struct termios *saved)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGWINCH, &sa, NULL);
    for (size_t i = 0; i < sizeof fatal_signals / sizeof fatal_signals[0]; i++)
        sigaction(fatal_signals[i], &sa, NULL);
    /* Keys cannot reach it (the terminal is raw) but a signal to the process group can, and
     * a shell that has taken the terminal back makes it a background process: tcsetattr must
     * not stop it (SIGTTOU). */
    sa.sa_handler = SIG_IGN;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    sigaction(SIGTSTP, &sa, NULL);
    sigaction(SIGTTIN, &sa, NULL);
    sigaction(SIGTTOU, &sa, NULL);
    for (int fd = 0; fd < 3; fd++)
        if (fd != r && fd != tty)
            close(fd);
    /* Everything else goes (close_range, Linux 5.9; on an older kernel the guard keeps copies
     * of boxctl's fds, which matters little: it exits when boxctl does). */
    int lo = r < tty ? r : tty, hi = r < tty ? tty : r;
    if (lo > 3)
        close_range(3, (unsigned)lo - 1, 0);
    if (hi > lo + 1)
        close_range((unsigned)lo + 1, (unsigned)hi - 1, 0);
    close_range((unsigned)hi + 1, ~0u, 0);
    char c;
    for (;;) {
        ssize_t n = read(r, &c, 1);
        if (n == 0 || (n < 0 && errno != EINTR))
            break;
    }
    tcsetattr(tty, TCSADRAIN, saved);
    _exit(0);
}

static int guard_start(struct term *t)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(p[0]);
        close(p[1]);
        return -e;
    }
    if (pid == 0) {
        close(p[1]);
        guard_main(p[0], t->fd, &t->saved);
    }
    close(p[0]);
    t->guard = pid;
    t->guard_w = p[1];
    return 0;
}

/* Raw mode, with the guard started first so no moment is left uncovered. */
static int term_raw(struct term *t)
{
    if (t->fd < 0 || t->raw)
        return 0;
    int r = guard_start(t);
    if (r < 0)
        return r;
    struct termios raw = t->saved;
    cfmakeraw(&raw);
    if (tcsetattr(t->fd, TCSADRAIN, &raw) < 0)
        return -errno;
    t->raw = true;
    return 0;
}

static void term_restore(struct term *t)
{
    if (t->raw)
        tcsetattr(t->fd, TCSADRAIN, &t->saved);
    t->raw = false;
    if (t->guard_w >= 0) {
        close(t->guard_w); /* the guard restores (again: the same modes) and exits */
        t->guard_w = -1;
    }
    if (t->guard > 0) {
        while (waitpid(t->guard, NULL, 0) < 0 && errno == EINTR) {
        }
        t->guard = -1;
    }
}

/* The window size of fd, clamped to the agent's bounds; false when it has none. */
static bool term_size(int fd, unsigned *rows, unsigned *cols)
{
    struct winsize ws;
    if (fd < 0 || ioctl(fd, TIOCGWINSZ, &ws) < 0 || ws.ws_row == 0 || ws.ws_col == 0)
        return false;
    *rows = ws.ws_row > TTY_DIM_MAX ? TTY_DIM_MAX : ws.ws_row;
    *cols = ws.ws_col > TTY_DIM_MAX ? TTY_DIM_MAX : ws.ws_col;
    return true;
}

void tty_size_and_term(struct exec_opts *e)
{
    e->rows = DEFAULT_ROWS;
    e->cols = DEFAULT_COLS;
    if (isatty(STDIN_FILENO))
        term_size(STDIN_FILENO, &e->rows, &e->cols);
    const char *term = getenv("TERM");
    e->term = term != NULL && term[0] != '\0' && strlen(term) <= TERM_NAME_MAX ? term : NULL;
}

bool tty_supported(struct ctl *x)
{
    if (x->cap_tty)
        return true;
    errmsg("%s: this agent has no terminal runs (its hello lacks the capability \"tty\"): "
           "update boxd in the box, or run without a terminal ('boxctl exec --stdin CMD')",
           x->sock);
    return false;
}

/* ---- The session --------------------------------------------------------------------------- */

enum tty_result { TTY_CONTINUE, TTY_END, TTY_ERROR, TTY_DETACHED, TTY_SIGNAL, TTY_HANGUP,
                  TTY_FAILED };

struct tty_run {
    struct ctl *x;
    struct term t;
    struct detach_keys keys;
    size_t matched;       /* detach keys typed so far, held back */
    uint64_t req;         /* the exec or the attach */
    char id[RUN_ID_MAX + 1];
    bool started;
    bool in_open;         /* fd 0 is still read */
    bool in_wait;         /* a stdin request is unanswered */
    uint64_t in_req;
    uint64_t resize_req;
    size_t chunk;
    char *in_buf;         /* chunk bytes */
    char *out;            /* chunk bytes: held keys and input, less the detach keys */
    unsigned rows, cols;  /* the size the run's terminal has, as far as we know */
    struct sink sink;
};

/* A message while the terminal may be raw: lines end in CR LF there (no output processing). */
static void note(const struct tty_run *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void note(const struct tty_run *s, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!s->t.raw) {
        errmsg("%s", buf);
        return;
    }
    char line[1100];
    int n = snprintf(line, sizeof line, "\r\nboxctl: %s\r\n", buf);
    if (n > 0)
        box_write_all(STDERR_FILENO, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static int session_init(struct tty_run *s, struct ctl *x, const char *detach_keys)
{
    memset(s, 0, sizeof *s);
    s->x = x;
    term_init(&s->t);
    detach_keys_parse(detach_keys != NULL ? detach_keys : DEFAULT_DETACH_KEYS, &s->keys);
    sink_init(&s->sink, SINK_RAW);
    s->in_open = true;
    /* One chunk per stdin request: under the agent's max_frame and its stdin_bytes. */
    s->chunk = STDIN_CHUNK_MAX;
    if (x->c.max_out < STDIN_CHUNK_MAX + STDIN_FRAME_OVERHEAD)
        s->chunk = x->c.max_out - STDIN_FRAME_OVERHEAD;
    if (x->c.limits.stdin_bytes > 0 && x->c.limits.stdin_bytes < s->chunk)
        s->chunk = (size_t)x->c.limits.stdin_bytes;
    if (s->chunk <= DETACH_KEYS_MAX) {
        errmsg("the agent's stdin_bytes (%zu) leaves no room for keys", s->chunk);
        return -EINVAL;
    }
    s->in_buf = malloc(s->chunk);
    s->out = malloc(s->chunk);
    if (s->in_buf == NULL || s->out == NULL) {
        errmsg("%s", strerror(ENOMEM));
        return -ENOMEM;
    }
    int r = signals_install();
    if (r < 0) {
        errmsg("installing the signal handlers: %s", strerror(-r));
        return r;
    }
    return 0;
}

static void session_destroy(struct tty_run *s)
{
    term_restore(&s->t);
    sink_destroy(&s->sink);
    free(s->in_buf);
    free(s->out);
}

static int send_stdin(struct tty_run *s, const char *data, size_t n, bool eof)
{
    struct msg_out o;
    int r = req_with_id(s->x, &o, box_type_str(BOX_T_STDIN), s->id, 1, &s->in_req);
    if (r < 0)
        return r;
    if (eof) {
        msg_kv_bool(&o, BOX_REQ_KEY(EOF_), true);
    } else {
        msg_key(&o, BOX_REQ_KEY(DATA));
        msg_data(&o, data, n);
    }
    s->in_wait = true;
    return box_client_send(&s->x->c, &o);
}

/* Tells the run's terminal the local window size when it differs from what it has. */
static int send_resize(struct tty_run *s)
{
    unsigned rows, cols;
    if (!s->started || !term_size(s->t.fd, &rows, &cols) || (rows == s->rows && cols == s->cols))
        return 0;
    struct msg_out o;
    int r = req_with_id(s->x, &o, box_type_str(BOX_T_RESIZE), s->id, 2, &s->resize_req);
    if (r < 0)
        return r;
    msg_kv_u64(&o, BOX_REQ_KEY(ROWS), rows);
    msg_kv_u64(&o, BOX_REQ_KEY(COLS), cols);
    s->rows = rows;
    s->cols = cols;
    return box_client_send(&s->x->c, &o);
}

/* fd 0 is readable: what was typed goes to the run, less the detach keys. */
static int read_input(struct tty_run *s)
{
    /* Keys held back go out with these: together they still fit one chunk. */
    ssize_t n = read(STDIN_FILENO, s->in_buf, s->chunk - s->matched);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return TTY_CONTINUE;
    if (n <= 0 && s->t.fd >= 0)
        return TTY_HANGUP; /* the terminal is gone (EIO, or end-of-file after a hangup) */
    if (n < 0) {
        note(s, "reading stdin: %s; sending end-of-file to the run", strerror(errno));
        n = 0;
    }
    if (n == 0) {
        /* Piped input ended: one ^D through the run's line discipline, then no more reading. */
        s->in_open = false;
        int r = send_stdin(s, NULL, 0, true);
        return r < 0 ? r : TTY_CONTINUE;
    }
    const struct detach_keys *k = &s->keys;
    size_t m = 0;
    for (ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s->in_buf[i];
        if (k->n > 0 && c == k->k[s->matched]) {
            if (++s->matched == k->n)
                return TTY_DETACHED;
            continue;
        }
        /* Not the sequence after all: the keys held back go first, and c may start it anew. */
        memcpy(s->out + m, k->k, s->matched);
        m += s->matched;
        s->matched = 0;
        if (k->n > 0 && c == k->k[0]) {
            if (++s->matched == k->n)
                return TTY_DETACHED;
            continue;
        }
        s->out[m++] = (char)c;
    }
    if (m == 0)
        return TTY_CONTINUE;
    int r = send_stdin(s, s->out, m, false);
    return r < 0 ? r : TTY_CONTINUE;
}

/* Raw mode before the request goes out, as ssh does: keys typed while the run starts are
 * neither echoed nor cooked here, and fd 0 is not read until it has started. */
static int session_raw(struct tty_run *s)
{
    int r = term_raw(&s->t);
    if (r < 0) {
        errmsg("making the terminal raw: %s", strerror(-r));
        return TTY_FAILED;
    }
    return TTY_CONTINUE;
}

/* The run has started (or is attached): the run's terminal gets our size when it differs. */
static int session_begin(struct tty_run *s)
{
    s->started = true;
    int r = send_resize(s);
    return r < 0 ? r : TTY_CONTINUE;
}

static int session_msg(struct tty_run *s)
{
    struct box_msg *m = &s->x->m;
    bool ours = m->has_req && m->req == s->req;
    if (ours && box_msg_is(m, box_type_str(BOX_T_STARTED))) {
        struct bytes id = {NULL, 0};
        if (get_bytes(&m->root, BOX_KEY(ID), &id) && id.n <= RUN_ID_MAX)
            bytes_cstr(id, s->id, sizeof s->id);
        bool existing = false;
        if (msg_get_bool(&m->root, BOX_KEY(EXISTING), &existing) == 0 && existing) {
            char sid[RUN_ID_MAX + 1];
            snprintf(sid, sizeof sid, "%s", s->id);
            sanitize(sid, strlen(sid));
            note(s, "run %s already exists: nothing new was started; attached to it", sid);
        }
        return session_begin(s);
    }
    if (box_msg_is(m, box_type_str(BOX_T_ERROR))) {
        if (ours || msg_get(&m->root, BOX_KEY(REQ)) == NULL)
            return TTY_ERROR;
        bool ended = error_is(m, BOX_ERR_RUN_ENDED);
        if (m->has_req && m->req == s->in_req) {
            /* These keys are lost (and said so below); the next ones are sent. Once the run
             * has ended, or is gone, nothing more is: its end is on the way. */
            s->in_wait = false;
            if (ended || error_is(m, BOX_ERR_NOT_FOUND))
                s->in_open = false;
        }
        if (!ended) {
            const char *code = "", *text = "";
            size_t cn = 0, tn = 0;
            box_msg_error(m, &code, &cn, &text, &tn);
            char c[64], t[256];
            bytes_cstr((struct bytes){code, cn}, c, sizeof c);
            bytes_cstr((struct bytes){text, tn}, t, sizeof t);
            sanitize(c, strlen(c));
            sanitize(t, strlen(t));
            note(s, "%s: %s", c, t);
        }
        return TTY_CONTINUE;
    }
    if (box_msg_is(m, box_type_str(BOX_T_OK))) {
        if (m->has_req && m->req == s->in_req)
            s->in_wait = false;
        return TTY_CONTINUE;
    }
    struct bytes id = {NULL, 0};
    if (get_bytes(&m->root, BOX_KEY(ID), &id) && !bytes_is(id, s->id))
        return TTY_CONTINUE;
    if (box_msg_is(m, box_type_str(BOX_T_OUTPUT))) {
        int r = sink_lines(&s->sink, msg_get(&m->root, BOX_KEY(LINES)));
        if (r == -EBADMSG)
            note(s, "malformed output record from the agent");
        return r < 0 ? TTY_FAILED : TTY_CONTINUE;
    }
    if (box_msg_is(m, box_type_str(BOX_T_GAP))) {
        uint64_t from = 0, to = 0;
        msg_get_u64(&m->root, BOX_KEY(FROM_SEQ), &from);
        msg_get_u64(&m->root, BOX_KEY(TO_SEQ), &to);
        char sid[RUN_ID_MAX + 1];
        snprintf(sid, sizeof sid, "%s", s->id);
        sanitize(sid, strlen(sid));
        if (to > from)
            note(s, "warning: run %s: records %llu to %llu were dropped by the agent's log "
                    "retention", sid, (unsigned long long)from, (unsigned long long)to - 1);
        return TTY_CONTINUE;
    }
    if (box_msg_is(m, box_type_str(BOX_T_END)))
        return TTY_END;
    return TTY_CONTINUE; /* a type this boxctl does not know */
}

/* Runs the loop until the run ends or boxctl leaves it. Returns an enum tty_result. */
static int session_loop(struct tty_run *s)
{
    struct ctl *x = s->x;
    for (;;) {
        if (fatal_signal != 0)
            return TTY_SIGNAL;
        if (winch_pending) {
            winch_pending = 0;
            int r = send_resize(s);
            if (r < 0) {
                note(s, "connection to the agent lost: %s", io_error(r));
                return TTY_FAILED;
            }
        }
        struct pollfd p[3];
        nfds_t n = 0;
        int iin = -1;
        p[n++] = (struct pollfd){.fd = x->c.fd, .events = POLLIN};
        p[n++] = (struct pollfd){.fd = sig_pipe[0], .events = POLLIN};
        if (s->started && s->in_open && !s->in_wait && s->id[0] != '\0') {
            iin = (int)n;
            p[n++] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
        }
        if (poll(p, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            note(s, "poll: %s", strerror(errno));
            return TTY_FAILED;
        }
        if (p[1].revents != 0)
            sig_drain();
        if (p[0].revents != 0) {
            int r = box_client_recv(&x->c, &x->m, 0);
            if (r == 0) {
                int h = session_msg(s);
                if (h < 0) {
                    note(s, "connection to the agent lost: %s", io_error(h));
                    return TTY_FAILED;
                }
                if (h != TTY_CONTINUE)
                    return h;
            } else if (r == -EBADMSG) {
                note(s, "warning: ignoring a malformed message from the agent");
            } else if (r != -ETIMEDOUT) {
                note(s, "connection to the agent lost: %s", io_error(r));
                return TTY_FAILED;
            }
        }
        if (iin >= 0 && p[iin].revents != 0 && s->in_open && !s->in_wait) {
            int h = read_input(s);
            if (h < 0) {
                note(s, "sending stdin: %s", io_error(h));
                return TTY_FAILED;
            }
            if (h != TTY_CONTINUE)
                return h;
        }
    }
}

/* After the loop, with the terminal restored: says what happened, returns the exit status. */
static int session_end(struct tty_run *s, int h)
{
    struct ctl *x = s->x;
    char sid[RUN_ID_MAX + 1];
    snprintf(sid, sizeof sid, "%s", s->id);
    sanitize(sid, strlen(sid));
    /* The run's screen may have left the cursor mid-line: boxctl's last words start a line. */
    if (s->t.fd >= 0 && s->started && h != TTY_END && h != TTY_ERROR)
        box_write_all(STDERR_FILENO, "\n", 1);
    switch (h) {
    case TTY_END: {
        struct end_info end;
        end_parse(&x->m.root, &end);
        report_end(&end, 0);
        return end_exit_code(&end);
    }
    case TTY_ERROR: {
        print_agent_error(&x->m);
        if (error_is(&x->m, BOX_ERR_SPAWN_FAILED)) {
            struct bytes en = {NULL, 0};
            int64_t eno = 0;
            get_bytes(&x->m.root, BOX_KEY(ERRNO_NAME), &en);
            bool has = msg_get_i64(&x->m.root, BOX_KEY(ERRNO), &eno) == 0;
            return spawn_exit_code(has, eno, en);
        }
        return EXIT_FAIL;
    }
    case TTY_DETACHED:
        errmsg("detached from %s; boxctl attach %s to return", sid, sid);
        return 0;
    case TTY_HANGUP:
        errmsg("the terminal closed; run %s keeps going: boxctl attach %s to return", sid, sid);
        return 128 + SIGHUP;
    case TTY_SIGNAL: {
        int sig = fatal_signal;
        if (sid[0] != '\0')
            errmsg("%s: left run %s going; boxctl attach %s to return", strsignal(sig), sid,
                   sid);
        /* Die of the signal, as a program without handlers would (the shell sees 128+N). */
        signal(sig, SIG_DFL);
        raise(sig);
        return 128 + sig;
    }
    default:
        if (sid[0] != '\0')
            errmsg("run %s may still be going: boxctl attach %s to return", sid, sid);
        return EXIT_FAIL;
    }
}

int tty_exec(struct ctl *x, struct exec_opts *e, const char *detach_keys)
{
    if (!tty_supported(x))
        return EXIT_FAIL;
    struct tty_run s;
    if (session_init(&s, x, detach_keys) < 0) {
        session_destroy(&s);
        return EXIT_FAIL;
    }
    if (e->id != NULL)
        snprintf(s.id, sizeof s.id, "%s", e->id);
    /* The run's terminal starts at e's size; send_resize then sends only changes. */
    s.rows = e->rows;
    s.cols = e->cols;
    int h = session_raw(&s);
    if (h == TTY_CONTINUE) {
        int r = exec_request(x, e, &s.req);
        if (r < 0) {
            term_restore(&s.t);
            request_failed(x, r);
            h = TTY_FAILED;
        } else {
            h = session_loop(&s);
        }
    }
    term_restore(&s.t);
    int ret = session_end(&s, h);
    session_destroy(&s);
    return ret;
}

int tty_attach(struct ctl *x, const char *id, uint64_t req, const char *detach_keys)
{
    struct tty_run s;
    if (session_init(&s, x, detach_keys) < 0) {
        session_destroy(&s);
        return EXIT_FAIL;
    }
    snprintf(s.id, sizeof s.id, "%s", id);
    s.req = req;
    const msgpack_object *tty = msg_get(&x->m.root, BOX_KEY(TTY));
    uint64_t v;
    if (tty != NULL && msg_get_u64(tty, BOX_KEY(ROWS), &v) == 0)
        s.rows = (unsigned)v;
    if (tty != NULL && msg_get_u64(tty, BOX_KEY(COLS), &v) == 0)
        s.cols = (unsigned)v;
    bool ended = false;
    msg_get_bool(&x->m.root, BOX_KEY(ENDED), &ended);
    int h = session_raw(&s);
    if (h == TTY_CONTINUE)
        h = session_begin(&s);
    if (h == TTY_CONTINUE && ended) {
        s.in_open = false; /* only the history and the end are to come */
    }
    if (h == TTY_CONTINUE)
        h = session_loop(&s);
    else if (h < 0)
        h = TTY_FAILED;
    term_restore(&s.t);
    int ret = session_end(&s, h);
    session_destroy(&s);
    return ret;
}

/* ---- boxctl shell -------------------------------------------------------------------------- */

int cmd_shell(struct ctl *x, struct opts *o, int argc, char **argv)
{
    struct exec_opts e;
    exec_opts_from(&e, o);
    e.tty = true;
    if (argc == 0) {
        e.login = true;
    } else {
        e.use_argv = true;
        e.words = argv;
        e.nwords = (size_t)argc;
    }
    tty_size_and_term(&e);
    int ret = ctl_connect(x);
    return ret != 0 ? ret : tty_exec(x, &e, o->detach_keys);
}
