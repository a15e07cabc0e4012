#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* How lines reach stderr without ever blocking the loop.
 *
 * O_NONBLOCK belongs to the open file description, which fd 2 shares with whoever else holds it
 * (the shell that started boxd, a supervisor, the other processes of a pipeline): setting it on
 * fd 2 would make *their* writes fail with EAGAIN. So the log opens a description of its own:
 *
 * - a pipe, FIFO, tty or other character device (a VM's serial console) is reopened through
 *   /proc/self/fd/2, which makes a new description of the same object, and that one is made
 *   non-blocking (O_NOCTTY: PID 1 is a session leader and must not acquire the console);
 * - a socket cannot be reopened that way (ENXIO), but needs no flag: send(MSG_DONTWAIT) is
 *   non-blocking for that one call;
 * - a regular file (or block device) is written as it is: the kernel never makes such a write
 *   wait for a reader, and reopening it would lose O_APPEND and the shared offset;
 * - until /proc is mounted (a VM's init, before init_setup) the reopen fails: fd 2 is then
 *   written only when poll(2) says it is writable, at most PIPE_BUF bytes at a time, which a
 *   pipe with room takes without waiting (a tty may still make such a write wait briefly).
 *
 * A line the sink does not take at once goes to a fixed queue; the loop writes the queue out
 * when a uv_poll on the private description says it is writable (for a socket, the poll is not
 * used, because uv_poll_init would set O_NONBLOCK on the shared description: a timer retries).
 * A line that does not fit in the queue is dropped and counted. */

enum sink { SINK_POLLED, SINK_PRIVATE, SINK_SOCKET, SINK_FILE };

#define RETRY_MS 50u  /* queue retry period when no uv_poll watches the sink */
#define TICK_MS 1000u /* rate-limit window checks */

struct rl_state {
    uint64_t start_ns; /* this window's start */
    uint32_t n;        /* lines logged in it */
    uint64_t suppressed;
};

/* The log is the one piece of global state in boxd: every file logs, from any depth, without
 * an agent at hand (including before the agent exists and after it is gone). */
static struct {
    pthread_mutex_t mu;
    enum log_level max_level;
    bool opened;
    enum sink sink;
    int fd;
    char q[LOG_QUEUE_BYTES];
    size_t head, len;
    uint64_t dropped, dropped_pending, suppressed;
    struct rl_state rl[LOG_RL_KINDS];
    uv_loop_t *loop;
    pthread_t loop_thread;
    uv_poll_t poll;
    uv_timer_t timer;
    bool started, stopped, poll_ok, polling;
    uint64_t timer_period; /* of the running timer, 0: stopped */
} L = {.mu = PTHREAD_MUTEX_INITIALIZER, .max_level = LOG_INFO, .fd = STDERR_FILENO};

static const char *const kind_names[LOG_RL_KINDS] = {
    [LOG_RL_TOKEN] = "hellos with a wrong or missing token",
    [LOG_RL_CID] = "refused vsock peers",
    [LOG_RL_UID] = "refused unix peers",
    [LOG_RL_CONNS] = "connections over the limit",
    [LOG_RL_FRAME] = "oversized frames",
    [LOG_RL_ACCEPT] = "accept failures",
    [LOG_RL_TASKSTATS] = "taskstats overflows",
};

void log_set_level(enum log_level lvl)
{
    L.max_level = lvl;
}

/* ---- The sink ------------------------------------------------------------------------------ */

void log_open(void)
{
    pthread_mutex_lock(&L.mu);
    if (L.opened) {
        pthread_mutex_unlock(&L.mu);
        return;
    }
    struct stat st;
    if (fstat(STDERR_FILENO, &st) < 0) {
        L.sink = SINK_POLLED;
    } else if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) {
        L.sink = SINK_FILE;
        L.opened = true;
    } else if (S_ISSOCK(st.st_mode)) {
        L.sink = SINK_SOCKET;
        L.opened = true;
    } else {
        int fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd >= 0 && fd <= STDERR_FILENO) {
            /* fds 0-2 were closed after all: never keep the log on one (a run's stdio goes
             * there). Callers make them open first; this is the belt to those braces. */
            close(fd);
            fd = -1;
        }
        if (fd >= 0) {
            L.fd = fd;
            L.sink = SINK_PRIVATE;
            L.opened = true;
        } else {
            L.sink = SINK_POLLED; /* /proc not mounted yet, or a FIFO with no reader */
        }
    }
    pthread_mutex_unlock(&L.mu);
}

/* Writes what the sink takes now. Returns the bytes written (maybe fewer than asked), or a
 * negative errno (-EAGAIN: it takes nothing now). */
static ssize_t sink_write(struct iovec *iov, int n)
{
    ssize_t w;
    switch (L.sink) {
    case SINK_SOCKET: {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        do
            w = sendmsg(L.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        while (w < 0 && errno == EINTR);
        break;
    }
    case SINK_POLLED: {
        struct pollfd p = {.fd = STDERR_FILENO, .events = POLLOUT};
        int r;
        do
            r = poll(&p, 1, 0);
        while (r < 0 && errno == EINTR);
        if (r <= 0 || !(p.revents & (POLLOUT | POLLERR | POLLHUP)))
            return -EAGAIN;
        /* What a pipe with room takes without waiting: one buffer's worth. */
        size_t left = PIPE_BUF;
        int k = 0;
        for (; k < n && left > 0; k++) {
            if (iov[k].iov_len > left)
                iov[k].iov_len = left;
            left -= iov[k].iov_len;
        }
        n = k;
    }
        /* fallthrough */
    default:
        do
            w = writev(L.fd, iov, n);
        while (w < 0 && errno == EINTR);
        break;
    }
    if (w < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    return w;
}

/* After log_stop there is no loop to wait for: wait for the sink here, a bounded time. */
static bool sink_wait(unsigned ms)
{
    int fd = L.sink == SINK_POLLED ? STDERR_FILENO : L.fd;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int r;
    do
        r = poll(&p, 1, (int)ms);
    while (r < 0 && errno == EINTR);
    return r > 0;
}

/* ---- The queue ----------------------------------------------------------------------------- */

static void count_dropped(uint64_t lines)
{
    L.dropped += lines;
    L.dropped_pending += lines;
}

static void q_push(const char *p, size_t n)
{
    size_t tail = (L.head + L.len) % LOG_QUEUE_BYTES;
    size_t first = LOG_QUEUE_BYTES - tail < n ? LOG_QUEUE_BYTES - tail : n;
    memcpy(L.q + tail, p, first);
    memcpy(L.q, p + first, n - first);
    L.len += n;
}

static void q_advance(size_t n)
{
    L.head = (L.head + n) % LOG_QUEUE_BYTES;
    L.len -= n;
    if (L.len == 0)
        L.head = 0;
}

/* A sink that fails for good (EPIPE, EIO): what is queued is lost, counted in lines. */
static void q_discard(void)
{
    uint64_t lines = 0;
    for (size_t i = 0; i < L.len; i++)
        lines += L.q[(L.head + i) % LOG_QUEUE_BYTES] == '\n';
    count_dropped(lines);
    L.head = L.len = 0;
}

/* Writes the queue out as far as the sink takes it. Returns 0 when empty, -EAGAIN when the sink
 * is full. */
static int q_drain(void)
{
    while (L.len > 0) {
        struct iovec iov[2];
        size_t first = LOG_QUEUE_BYTES - L.head < L.len ? LOG_QUEUE_BYTES - L.head : L.len;
        iov[0] = (struct iovec){L.q + L.head, first};
        iov[1] = (struct iovec){L.q, L.len - first};
        ssize_t w = sink_write(iov, L.len > first ? 2 : 1);
        if (w == -EAGAIN || w == 0)
            return -EAGAIN;
        if (w < 0) {
            q_discard();
            return 0;
        }
        q_advance((size_t)w);
    }
    return 0;
}

/* Writes one line, or queues what the sink does not take; drops it when it does not fit. */
static void put(const char *p, size_t n)
{
    if (L.len == 0) {
        struct iovec iov = {(void *)p, n};
        ssize_t w = sink_write(&iov, 1);
        if (w == (ssize_t)n)
            return;
        if (w < 0 && w != -EAGAIN) {
            count_dropped(1);
            return;
        }
        if (w > 0) {
            /* The rest of a line already begun must follow it: the queue is empty, so it fits
             * (a line is at most LOG_LINE_MAX). */
            p += w;
            n -= (size_t)w;
        }
    }
    if (n > LOG_QUEUE_BYTES - L.len) {
        count_dropped(1);
        return;
    }
    q_push(p, n);
}

static size_t format_prefix(char *line, size_t cap, enum log_level lvl)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    uint64_t t = now_real_ns();
    time_t secs = (time_t)(t / 1000000000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    int n = snprintf(line, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ boxd[%d] %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (unsigned)(t / 1000000u % 1000u), (int)getpid(), names[lvl]);
    return n < 0 ? 0 : (size_t)n >= cap ? cap - 1 : (size_t)n;
}

/* Formats one whole line (prefix, text, newline) into line[LOG_LINE_MAX]. */
static size_t format_line(char *line, enum log_level lvl, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static size_t format_line(char *line, enum log_level lvl, const char *fmt, va_list ap)
{
    size_t n = format_prefix(line, LOG_LINE_MAX, lvl);
    int m = vsnprintf(line + n, LOG_LINE_MAX - n - 1, fmt, ap);
    size_t len = n + (m < 0 ? 0 : (size_t)m);
    if (len > LOG_LINE_MAX - 2)
        len = LOG_LINE_MAX - 2;
    line[len++] = '\n';
    return len;
}

static size_t format_simple(char *line, enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static size_t format_simple(char *line, enum log_level lvl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t n = format_line(line, lvl, fmt, ap);
    va_end(ap);
    return n;
}

/* Once the sink has taken everything it was given, says how many lines it could not take. */
static void put_drop_notice(void)
{
    if (L.dropped_pending == 0 || L.len != 0)
        return;
    char line[LOG_LINE_MAX];
    size_t n = format_simple(line, LOG_WARN,
                             "log: %" PRIu64 " log lines dropped (stderr was not taking them; "
                             "%" PRIu64 " since start-up)",
                             L.dropped_pending, L.dropped);
    L.dropped_pending = 0;
    put(line, n);
}

/* ---- On the loop: writing the queue out, and the rate-limit summaries ---------------------- */

static bool on_loop_thread(void)
{
    return L.started && !L.stopped && pthread_equal(pthread_self(), L.loop_thread);
}

static bool rl_pending(void)
{
    for (int k = 0; k < LOG_RL_KINDS; k++)
        if (L.rl[k].suppressed)
            return true;
    return false;
}

static void on_writable(uv_poll_t *h, int status, int events);
static void on_tick(uv_timer_t *t);

/* Starts or stops the poll and the timer to match what is pending. Loop thread, lock held. A
 * failed start leaves the other mechanism to retry: the timer backs up the poll. */
static void arm(void)
{
    if (!on_loop_thread())
        return;
    bool want_poll = L.len > 0 && L.poll_ok;
    if (want_poll && !L.polling)
        L.polling = uv_poll_start(&L.poll, UV_WRITABLE, on_writable) == 0;
    else if (!want_poll && L.polling)
        L.polling = uv_poll_stop(&L.poll) != 0;
    uint64_t period = L.len > 0 && !L.polling ? RETRY_MS : rl_pending() ? TICK_MS : 0;
    if (period != L.timer_period) {
        if (period == 0)
            uv_timer_stop(&L.timer);
        else if (uv_timer_start(&L.timer, on_tick, period, period) < 0)
            period = 0; /* cannot fail on an initialised timer with a callback; never again */
        L.timer_period = period;
    }
}

static void rl_summaries(uint64_t now, bool all)
{
    for (int k = 0; k < LOG_RL_KINDS; k++) {
        struct rl_state *s = &L.rl[k];
        if (s->suppressed == 0 || (!all && now - s->start_ns < LOG_RL_WINDOW_MS * 1000000ull))
            continue;
        char line[LOG_LINE_MAX];
        size_t n = format_simple(line, LOG_WARN,
                                 "log: %" PRIu64 " log lines about %s suppressed in %.1f s "
                                 "(rate limit: %u per %u s)",
                                 s->suppressed, kind_names[k],
                                 (double)(now - s->start_ns) / 1e9, LOG_RL_BURST,
                                 LOG_RL_WINDOW_MS / 1000u);
        s->suppressed = 0;
        s->n = 0;
        s->start_ns = now;
        put_drop_notice();
        put(line, n);
    }
}

static void service(void)
{
    if (L.len > 0)
        q_drain();
    put_drop_notice();
    rl_summaries(now_mono_ns(), false);
    arm();
}

static void on_writable(uv_poll_t *h, int status, int events)
{
    (void)h, (void)events;
    pthread_mutex_lock(&L.mu);
    if (status < 0) {
        /* The sink failed under the poll (e.g. EBADF): write what can be, then retry by timer. */
        uv_poll_stop(&L.poll);
        L.polling = false;
        L.poll_ok = false;
    }
    service();
    pthread_mutex_unlock(&L.mu);
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
    pthread_mutex_lock(&L.mu);
    service();
    pthread_mutex_unlock(&L.mu);
}

int log_start(uv_loop_t *loop)
{
    log_open(); /* again: /proc may have been mounted since start-up */
    pthread_mutex_lock(&L.mu);
    L.loop = loop;
    L.loop_thread = pthread_self();
    int e = uv_timer_init(loop, &L.timer);
    if (e < 0) {
        pthread_mutex_unlock(&L.mu);
        return e;
    }
    /* A regular file, and a socket, get no poll: the first never makes a write wait, and
     * uv_poll_init would set O_NONBLOCK on the second's shared description. */
    L.poll_ok = L.sink == SINK_PRIVATE && uv_poll_init(loop, &L.poll, L.fd) == 0;
    L.started = true;
    service();
    pthread_mutex_unlock(&L.mu);
    return 0;
}

void log_stop(void)
{
    pthread_mutex_lock(&L.mu);
    if (L.started && !L.stopped) {
        if (L.poll_ok)
            uv_close((uv_handle_t *)&L.poll, NULL);
        uv_close((uv_handle_t *)&L.timer, NULL);
        L.polling = false;
        L.timer_period = 0;
        L.stopped = true;
    }
    pthread_mutex_unlock(&L.mu);
}

/* Writes the queue out, waiting for the sink up to ms in all. Lock held. Blocks: only where no
 * loop runs (after log_stop, the fatal path). */
static void drain_waiting(unsigned ms)
{
    uint64_t end = now_mono_ns() + (uint64_t)ms * 1000000u;
    for (;;) {
        if (q_drain() == 0)
            put_drop_notice();
        uint64_t now = now_mono_ns();
        if (L.len == 0 || now >= end || !sink_wait((unsigned)((end - now) / 1000000u) + 1))
            return;
    }
}

void log_flush(unsigned ms)
{
    pthread_mutex_lock(&L.mu);
    rl_summaries(now_mono_ns(), true);
    drain_waiting(ms);
    pthread_mutex_unlock(&L.mu);
}

/* ---- Lines --------------------------------------------------------------------------------- */

static void emit(const char *line, size_t len)
{
    pthread_mutex_lock(&L.mu);
    /* In order: what waits goes first. With no loop left to write the queue out later, this
     * line may wait for the sink, a bounded time. */
    if (L.stopped)
        drain_waiting(LOG_STOPPED_WAIT_MS);
    else if (L.len > 0)
        q_drain();
    put_drop_notice();
    put(line, len);
    if (L.stopped)
        drain_waiting(LOG_STOPPED_WAIT_MS);
    arm();
    pthread_mutex_unlock(&L.mu);
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    if (lvl > L.max_level)
        return;
    int saved = errno;
    char line[LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    size_t len = format_line(line, lvl, fmt, ap);
    va_end(ap);
    emit(line, len);
    errno = saved;
}

/* A fixed window per kind: simple to state (at most LOG_RL_BURST lines per window) and, with the
 * summary at the window's end, every event is accounted for. */
void log_limited(enum log_kind kind, enum log_level lvl, const char *fmt, ...)
{
    if (lvl > L.max_level || (unsigned)kind >= LOG_RL_KINDS)
        return;
    int saved = errno;
    uint64_t now = now_mono_ns();
    pthread_mutex_lock(&L.mu);
    struct rl_state *s = &L.rl[kind];
    if (now - s->start_ns >= LOG_RL_WINDOW_MS * 1000000ull) {
        if (s->suppressed)
            rl_summaries(now, false);
        s->start_ns = now;
        s->n = 0;
    }
    bool allowed = s->n < LOG_RL_BURST;
    if (allowed) {
        s->n++;
    } else {
        s->suppressed++;
        L.suppressed++;
        arm();
    }
    pthread_mutex_unlock(&L.mu);
    if (!allowed) {
        errno = saved;
        return;
    }
    char line[LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    errno = saved;
    size_t len = format_line(line, lvl, fmt, ap);
    va_end(ap);
    emit(line, len);
    errno = saved;
}

uint64_t log_dropped(void)
{
    pthread_mutex_lock(&L.mu);
    uint64_t n = L.dropped;
    pthread_mutex_unlock(&L.mu);
    return n;
}

uint64_t log_suppressed(void)
{
    pthread_mutex_lock(&L.mu);
    uint64_t n = L.suppressed;
    pthread_mutex_unlock(&L.mu);
    return n;
}

uint64_t now_real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t now_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
