/* One run's state machine (run.h): output into its log with flow control for its readers, the
 * end, lingering, killing, stdin, and keeping all runs' logs within log_total. */
#include "run.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "alloc.h"
#include "log.h"
#include "runtab.h"
#include "spawn.h"

/* Reads per wakeup of one pipe, so one flooding run cannot starve the loop. */
#define READS_PER_WAKEUP 4
/* At the end of the drain window, read at most this much per pipe before ending the run. */
#define DRAIN_READ_MAX (4u * 1024u * 1024u)
/* Without a cgroup, a lingering run stops counting against max_runs this long after its end:
 * what holds its pipes may be out of boxd's reach (an fd in flight in a unix socket, a process
 * nothing links to the run), and a slot must never be held forever. */
#define LINGER_SLOT_MS 10000u
/* While the logs of all runs are at log_total and nothing more can be dropped (log_full): a
 * followed run is held back once its slowest follower is this far behind (in cost), and reads
 * its pipes this much at a time, so what followers are owed grows by little past the bound. */
#define FULL_LAG (64u * 1024u)
#define FULL_READ 4096u
/* pipe_read's reads argument for "until the pipe is empty or max is read": no pause check. */
#define READS_UNBOUNDED (1 << 30)
/* What a terminal's eof is written as when the run has disabled VEOF: ^D. */
#define CTRL_D '\x04'
/* Freeing a retained log at least this big trims malloc's heap. */
#define RUN_TRIM_BYTES (1u * 1024u * 1024u)

static void run_finish(struct run *r);
static void cg_watch(struct run *r);
static void run_release(struct run *r);
static void run_notify(struct run *r);
static void on_flush_timer(uv_timer_t *t);
static void run_maybe_free(struct run *r);
static void cg_release(struct run *r);
static void runs_evict(struct agent *a);
static void on_kill_timer(uv_timer_t *t);
static void bg_signal(struct run *r, int sig);
static void runs_log_trim(struct agent *a);
static void run_flow(struct run *r);
static void stdin_close(struct run *r);
static void pipe_poll_set(struct run_pipe *p, bool on);

/* ---- Status --------------------------------------------------------------------------------- */

static enum run_reason run_reason(const struct run *r)
{
    if (r->spawn_stage)
        return REASON_SPAWN;
    if (r->usage.oom_kills > 0 && !(WIFEXITED(r->wstatus) && WEXITSTATUS(r->wstatus) == 0) &&
        !r->cancel_requested)
        return REASON_OOM;
    if (r->cancel_requested)
        return REASON_CANCEL;
    if (r->timed_out)
        return REASON_TIMEOUT;
    if (WIFSIGNALED(r->wstatus))
        return REASON_SIGNAL;
    return REASON_EXIT;
}

const char *run_reason_str(const struct run *r)
{
    static const char *const names[] = {"exit", "signal", "timeout", "cancel", "spawn", "oom"};
    return names[run_reason(r)];
}

int run_exit_code(const struct run *r)
{
    if (r->spawn_stage)
        return r->spawn_err == ENOENT ? 127 : 126;
    if (WIFSIGNALED(r->wstatus))
        return 128 + WTERMSIG(r->wstatus);
    return WEXITSTATUS(r->wstatus);
}

const char *run_status_str(const struct run *r)
{
    if (r->state != RUN_ENDED)
        return "running";
    switch (run_reason(r)) {
    case REASON_CANCEL:
        return "cancelled";
    case REASON_EXIT:
        return WEXITSTATUS(r->wstatus) == 0 ? "completed" : "failed";
    default:
        return "failed";
    }
}

/* ---- Handles and freeing -------------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    struct run *r = h->data;
    r->handles_open--;
    run_maybe_free(r);
}

static void pipe_on_closed(uv_handle_t *h)
{
    struct run_pipe *p = h->data;
    struct run *r = p->run;
    close(p->fd);
    p->fd = -1;
    r->handles_open--;
    run_maybe_free(r);
}

static void pipe_close(struct run_pipe *p)
{
    if (!p->open)
        return;
    p->open = false;
    p->polling = false;
    p->poll.data = p;
    uv_close((uv_handle_t *)&p->poll, pipe_on_closed);
}

static void stdin_on_closed(uv_handle_t *h)
{
    struct run *r = h->data;
    r->handles_open--;
    run_maybe_free(r);
}

static void stdin_close(struct run *r)
{
    if (!r->in.open)
        return;
    r->in.open = false;
    r->in.h.data = r;
    uv_close((uv_handle_t *)&r->in.h, stdin_on_closed);
}

/* Frees r once freeing was requested and its last handle has closed. */
static void run_maybe_free(struct run *r)
{
    if (!r->freeing || r->handles_open > 0)
        return;
    uint64_t held = r->log.bytes;
    runlog_destroy(&r->log);
    /* A big log goes back to the system, not only to malloc: boxd's resident size is what a
     * run's max_rss_kb is raised to where there is no cgroup memory.peak (spawn.h). */
    if (held >= RUN_TRIM_BYTES)
        malloc_trim(0);
    for (int i = 0; i < 2; i++)
        linesplit_release(&r->out[i].split);
    free(r->desc);
    free(r->capture);
    free(r);
}

static void cg_poll_closed(uv_handle_t *h)
{
    struct run *r = h->data;
    r->handles_open--;
    run_maybe_free(r);
}

/* Stops watching the run's cgroup and gives it back: to the pool for a later run when it is
 * empty and the run ended without killing or lingering, else removed. If processes remain
 * (the agent is stopping, or a run is forgotten while its background processes live), they
 * are killed first: a run never leaves a cgroup, or a process, that nobody can find again. */
static void cg_release(struct run *r)
{
    if (r->cg.dir_fd < 0)
        return;
    if (r->cg_polling) {
        r->cg_polling = false;
        uv_close((uv_handle_t *)&r->cg_poll, cg_poll_closed);
    }
    /* An internal run's (a probe's: rare, and several at once at start-up) is removed rather
     * than pooled, so the pool keeps the size the clients' runs give it. */
    cgroup_run_release(r->a, &r->cg, !r->internal && !r->cg_watched && r->kill_stage == 0);
}

/* Forgets r: unlinks it and closes its handles; memory goes in the last close callback. */
static void run_destroy(struct run *r)
{
    struct agent *a = r->a;
    if (!r->internal)
        runtab_id_remove(r);
    if (r->in_pid_table)
        runtab_pid_take(a, r->pid);
    list_del(&r->link);
    /* Out of the total with the run, and its memory with it: nothing reads a forgotten run's
     * log (it has no follower), and its handles may take a loop iteration to close. */
    runlog_destroy(&r->log);
    r->log.total = NULL;
    for (int i = 0; i < 2; i++)
        linesplit_release(&r->out[i].split);
    if (list_linked(&r->fin_link)) {
        list_del(&r->fin_link);
        a->n_finished--;
    }
    r->freeing = true;
    run_release(r);
    cg_release(r);
    for (int i = 0; i < 2; i++)
        pipe_close(&r->out[i]);
    stdin_close(r);
    uv_close((uv_handle_t *)&r->kill_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->flush_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->drain_timer, on_handle_closed);
}

/* Keeps at most max_finished finished runs, and the logs of all runs within log_total: the
 * oldest finished runs go first. A run that is still followed, or whose background processes
 * still live, is skipped: it is forgotten later. */
static void runs_evict(struct agent *a)
{
    struct list *pos, *tmp;
    if (a->tearing_down)
        return; /* runs_destroy is walking the list and forgets every run anyway */
    list_for_each_safe(pos, tmp, &a->finished)
    {
        if (a->n_finished <= a->cfg.max_finished && a->log_held <= a->cfg.log_total)
            break;
        struct run *r = container_of(pos, struct run, fin_link);
        if (!list_empty(&r->readers) || r->lingering)
            continue;
        log_debug("run %s: forgotten", r->id);
        run_destroy(r);
    }
}

/* The logs of all runs are at log_total and nothing more can be dropped. */
static bool log_full(const struct agent *a)
{
    return a->log_held > a->cfg.log_total;
}

/* Keeps the memory of all logs, live runs' included, within log_total (PROTOCOL 4.5): first the
 * oldest finished runs are forgotten (runs_evict); then, while still over, the oldest chunk of
 * the largest log that can lose one is dropped, counted as retention drops. The largest first,
 * not the oldest: a run that floods loses its own history before a quiet run loses any, so one
 * run cannot push the others' output out. What cannot go - the last chunk of each log, records
 * owed to a follower - stays: run_flow then holds the followed runs back (log_full). Called
 * whenever the total grew or a follower's progress made something droppable. */
static void runs_log_trim(struct agent *a)
{
    if (a->tearing_down || !log_full(a))
        return;
    runs_evict(a);
    while (log_full(a)) {
        struct run *big = NULL;
        struct list *pos;
        for (pos = a->runs.next; pos != &a->runs; pos = pos->next) {
            struct run *r = container_of(pos, struct run, link);
            if (runlog_can_drop(&r->log) && (big == NULL || r->log.bytes > big->log.bytes))
                big = r;
        }
        if (big == NULL || runlog_drop_oldest(&big->log) == 0)
            break;
    }
}

void runs_destroy(struct agent *a)
{
    struct list *pos, *tmp;
    a->tearing_down = true;
    list_for_each_safe(pos, tmp, &a->runs)
    {
        struct run *r = container_of(pos, struct run, link);
        /* Its readers let go first (a connection's subscriptions outlive no run). */
        struct list *sp, *st;
        list_for_each_safe(sp, st, &r->readers)
        {
            struct run_reader *rd = container_of(sp, struct run_reader, link);
            rd->notify(rd, RUN_GONE);
        }
        run_destroy(r);
    }
}

/* ---- Output ----------------------------------------------------------------------------------- */

/* The line splitter's callback: one record of pipe p's stream. */
static void emit(void *arg, uint64_t ts, const char *d, size_t n)
{
    struct run_pipe *p = arg;
    struct run *r = p->run;
    int stream = p->stream;
    if (r->internal) {
        /* Captured, not logged: the first capture_max bytes; the rest is discarded. */
        size_t room = r->capture_max - r->capture_len;
        size_t take = n < room ? n : room;
        memcpy(r->capture + r->capture_len, d, take);
        r->capture_len += (uint32_t)take;
        return;
    }
    uint64_t held = r->a->log_held;
    if (runlog_append(&r->log, ts, stream, d, (uint32_t)n) < 0) {
        /* Out of memory: the bytes are counted as dropped rather than lost silently. */
        r->log.dropped_records++;
        r->log.dropped_bytes += n;
        log_err("run %s: out of memory keeping %zu bytes of output", r->id, n);
    }
    if (r->a->log_held > held)
        runs_log_trim(r->a); /* a chunk was added */
}


/* Bytes read from p: cut into records by its splitter. A partial line's buffer counts in
 * log_total as well, so the logs are trimmed when it grew. */
static void consume(struct run *r, struct run_pipe *p, const char *d, size_t n)
{
    uint64_t held = r->a->log_held;
    linesplit_feed(&p->split, now_real_ns(), d, n);
    if (r->a->log_held > held)
        runs_log_trim(r->a);
    if (p->split.len && !uv_is_active((uv_handle_t *)&r->flush_timer))
        uv_timer_start(&r->flush_timer, on_flush_timer, r->a->cfg.flush_ms, 0);
}

static void on_flush_timer(uv_timer_t *t)
{
    struct run *r = t->data;
    uint64_t ts = now_real_ns();
    for (int i = 0; i < 2; i++)
        linesplit_flush(&r->out[i].split, ts);
    run_notify(r);
}

/* Lag of the follower furthest behind, in cost (about bytes of memory) of log. Also tells
 * the log which records are still owed, so it never drops them. */
static uint64_t max_lag(struct run *r)
{
    uint64_t lag = 0, protect = UINT64_MAX;
    const struct list *pos;
    for (pos = r->readers.next; pos != &r->readers; pos = pos->next) {
        const struct run_reader *s = container_of(pos, struct run_reader, link);
        if (s->end_only || s->idle)
            continue;
        uint64_t from = s->next_cost > r->log.first_cost ? s->next_cost : r->log.first_cost;
        uint64_t l = r->log.end_cost - from;
        if (l > lag)
            lag = l;
        if (s->next_seq < protect)
            protect = s->next_seq;
    }
    r->log.protect_seq = protect;
    return lag;
}

/* Flow control: stop reading while a follower is more than half the log behind, resume below
 * a quarter. The follower's unsent records are then always within the log, so nothing it is
 * owed is dropped, and the run's writes block as they would on a slow terminal. While the logs
 * of all runs are full (log_full), the same with FULL_LAG: what followers are owed then grows
 * by at most that much per run. A run waits only for its own followers, never for another run
 * or connection, and a run nobody follows never waits. */
static void run_flow(struct run *r)
{
    uint64_t protect = r->log.protect_seq;
    uint64_t lag = max_lag(r); /* an ended run's followers are protected too */
    if (r->log.protect_seq != protect)
        runs_log_trim(r->a); /* what the slowest follower now has may go */
    if (r->state == RUN_ENDED)
        return; /* late output is discarded, never paused */
    uint64_t hi = r->log.cap / 2;
    if (log_full(r->a) && hi > FULL_LAG)
        hi = FULL_LAG;
    bool pause = r->paused ? lag > hi / 2 : lag > hi;
    if (pause == r->paused)
        return;
    r->paused = pause;
    for (int i = 0; i < 2; i++)
        pipe_poll_set(&r->out[i], !pause);
}

static void run_notify(struct run *r)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &r->readers)
    {
        struct run_reader *rd = container_of(pos, struct run_reader, link);
        if (rd->end_only && r->state != RUN_ENDED)
            continue;
        rd->notify(rd, RUN_MORE);
    }
    run_flow(r);
}

/* Ended runs stay "lingering" while a background process holds the pipes or stays in the
 * cgroup; the cgroup goes when both are done. */
static void linger_check(struct run *r)
{
    if (r->state != RUN_ENDED || !r->lingering)
        return;
    if (r->out[0].open || r->out[1].open)
        return;
    if (r->cg_polling && cgroup_run_populated(&r->cg))
        return;
    r->lingering = false;
    if (!r->slot_released)
        r->a->n_lingering--;
    uv_timer_stop(&r->kill_timer); /* nothing left for its deadline to kill */
    uv_timer_stop(&r->drain_timer);
    log_debug("run %s: background processes gone (%llu late bytes)", r->id,
              (unsigned long long)r->late_bytes);
    cg_release(r);
    runs_evict(r->a);
}

static void run_check_end(struct run *r);

static void pipe_eof(struct run *r, struct run_pipe *p)
{
    linesplit_flush(&p->split, now_real_ns());
    pipe_close(p);
    run_check_end(r);
    linger_check(r);
}

/* Reads up to max bytes or until the pipe is empty. Returns 1 at EOF, 0 otherwise. */
static int pipe_read(struct run *r, struct run_pipe *p, int reads, size_t max)
{
    struct agent *a = r->a;
    size_t total = 0;
    /* One read never takes more than a quarter of the log, so flow control (which pauses at
     * half) always acts before retention would have to drop what a follower is owed. */
    size_t chunk = a->read_buf_size;
    if (chunk > r->log.cap / 4)
        chunk = (size_t)(r->log.cap / 4);
    if (log_full(a) && !list_empty(&r->readers) && chunk > FULL_READ)
        chunk = FULL_READ; /* all it reads is owed until sent: see run_flow */
    for (int i = 0; i < reads && total < max; i++) {
        ssize_t n = read(p->fd, a->read_buf, chunk);
        if (n > 0) {
            total += (size_t)n;
            if (r->state == RUN_ENDED) {
                r->late_bytes += (uint64_t)n;
                continue;
            }
            consume(r, p, a->read_buf, (size_t)n);
            if (!list_empty(&r->readers)) {
                run_notify(r); /* readers take what they can, then flow control decides */
                if (r->paused && reads < READS_UNBOUNDED)
                    return 0;
            }
            continue;
        }
        if (n < 0 && errno == EINTR) {
            i--;
            continue;
        }
        if (n < 0 && errno == EAGAIN)
            return 0;
        return 1; /* EOF, or an error that ends the stream just the same */
    }
    return 0;
}

static void on_pipe_readable(uv_poll_t *h, int status, int events)
{
    (void)events;
    struct run_pipe *p = h->data;
    struct run *r = p->run;
    if (!p->open)
        return;
    int eof = status < 0 ? 1 : pipe_read(r, p, READS_PER_WAKEUP, SIZE_MAX);
    if (eof)
        pipe_eof(r, p); /* may finish r: notify below still sees it (r is only freed later) */
    if (r->state != RUN_ENDED || eof)
        run_notify(r);
}

static void pipe_poll_set(struct run_pipe *p, bool on)
{
    if (!p->open || p->polling == on)
        return;
    p->polling = on;
    int e = on ? uv_poll_start(&p->poll, UV_READABLE | UV_DISCONNECT, on_pipe_readable)
               : uv_poll_stop(&p->poll);
    if (e < 0) {
        log_err("run %s: %s reading its pipe: %s", p->run->id, on ? "starting" : "stopping",
                uv_strerror(e));
        p->polling = !on;
    }
}

/* ---- Ending --------------------------------------------------------------------------------- */

/* What the run holds for its caller (a code run's snippet directory) goes when the run ends,
 * however it ends (exit, timeout, cancel, spawn failure; run_destroy catches a run the agent
 * forgets or stops with first). A background process the run left behind may outlive it, but
 * not its copy of the snippet. */
static void run_release(struct run *r)
{
    void (*cb)(void *, const char *) = r->release;
    if (cb == NULL)
        return;
    r->release = NULL;
    cb(r->release_arg, r->id);
}

/* Without a cgroup, LINGER_SLOT_MS after the end of a run that still lingers: it stays listed
 * (lingering, and `cancel` still kills what holds its pipes) but counts against max_runs no
 * more. */
static void on_linger_slot(uv_timer_t *t)
{
    struct run *r = t->data;
    if (r->state != RUN_ENDED || !r->lingering || r->slot_released)
        return;
    r->slot_released = true;
    r->a->n_lingering--;
    log_debug("run %s: still lingering %u ms after its end, without a cgroup: no longer counted "
             "against max_runs", r->id, LINGER_SLOT_MS);
}

/* An internal run's end (run_params): its caller learns the outcome, and the run goes. */
static void internal_finish(struct run *r)
{
    struct agent *a = r->a;
    r->state = RUN_ENDED;
    r->ended_ns = now_real_ns();
    r->end_mono = now_mono_ns();
    uv_timer_stop(&r->kill_timer);
    uv_timer_stop(&r->flush_timer);
    uv_timer_stop(&r->drain_timer);
    stdin_close(r);
    log_debug("run %s: %s (%s) after %llu ms", r->id, run_status_str(r), run_reason_str(r),
              (unsigned long long)((r->end_mono - r->start_mono) / 1000000u));
    void (*cb)(struct run *, void *) = r->on_end;
    r->on_end = NULL;
    if (cb && !a->tearing_down)
        cb(r, r->end_arg);
    /* Its tree was killed when the main process exited (run_on_exit); whatever still holds a
     * pipe (only possible without a cgroup) gets EOF or EPIPE as the pipes close, and
     * cg_release kills what is left in its cgroup. */
    run_destroy(r);
    runs_spare(a);
}

static void run_finish(struct run *r)
{
    struct agent *a = r->a;
    uint64_t ts = now_real_ns();
    for (int i = 0; i < 2; i++)
        linesplit_flush(&r->out[i].split, ts);
    if (r->internal) {
        internal_finish(r);
        return;
    }
    bool peak = false;
    if (r->cg.dir_fd >= 0) {
        /* The cgroup covers the whole tree, not only what the main process waited for. */
        cgroup_run_usage(a, &r->cg, &r->usage);
        /* The run's own peak: wait4's ru_maxrss is raised to what the child inherited at its
         * first exec, boxd's resident size (spawn.h). */
        if (r->usage.have_peak) {
            r->ru.ru_maxrss = (long)r->usage.peak_kb;
            peak = true;
        }
        if (r->usage.have_cpu) {
            r->ru.ru_utime.tv_sec = (time_t)(r->usage.user_us / 1000000u);
            r->ru.ru_utime.tv_usec = (suseconds_t)(r->usage.user_us % 1000000u);
            r->ru.ru_stime.tv_sec = (time_t)(r->usage.sys_us / 1000000u);
            r->ru.ru_stime.tv_usec = (suseconds_t)(r->usage.sys_us % 1000000u);
        }
    }
    /* Else the main process's own peak, from its taskstats exit record (taskstats.h). Failing
     * both, wait4's figure stays: an upper bound, at least boxd's resident size at the spawn. */
    if (!peak && r->have_exit_peak && r->exit_peak_kb > 0)
        r->ru.ru_maxrss = (long)r->exit_peak_kb;
    r->state = RUN_ENDED;
    r->ended_ns = ts;
    r->end_mono = now_mono_ns();
    run_release(r);
    uv_timer_stop(&r->flush_timer);
    uv_timer_stop(&r->drain_timer);
    stdin_close(r);
    a->n_live--;
    list_add_tail(&a->finished, &r->fin_link);
    a->n_finished++;
    bool populated = r->cg.dir_fd >= 0 && cgroup_run_populated(&r->cg);
    if (populated) {
        cg_watch(r);
        populated = r->cg_polling; /* unwatched, it is released (and its members killed) */
    }
    bool release = false;
    if (r->out[0].open || r->out[1].open || populated) {
        /* A background process lives on. Keep draining the pipes (discarding) so it never
         * blocks or gets SIGPIPE; reading resumes even if a follower had paused it. */
        r->lingering = true;
        a->n_lingering++;
        cg_watch(r); /* for when the last of them is gone (linger_check) */
        r->paused = false;
        for (int i = 0; i < 2; i++)
            pipe_poll_set(&r->out[i], true);
        /* The kill timer goes on: at the deadline what lingers is killed (on_kill_timer). */
        if (r->cg.dir_fd < 0)
            uv_timer_start(&r->drain_timer, on_linger_slot, LINGER_SLOT_MS, 0);
    } else {
        uv_timer_stop(&r->kill_timer);
        release = true;
    }
    runlog_shrink(&r->log);
    run_notify(r);
    /* After the end event has gone out: none of this is the client's to wait for. (r is still
     * valid: a run forgotten meanwhile is freed in a later close callback, and cg_release is
     * idempotent.) */
    log_debug("run %s: %s (%s) after %llu ms", r->id, run_status_str(r), run_reason_str(r),
             (unsigned long long)((r->end_mono - r->start_mono) / 1000000u));
    if (release)
        cg_release(r);
    runs_evict(a);
    runs_spare(a);
}

/* The run ends when its main process has exited, its output is drained (EOF, or the drain
 * window passed), and - when it is being killed - its cgroup is empty: the end event is the
 * promise that the tree is gone. */
static void run_check_end(struct run *r)
{
    if (r->state != RUN_DRAINING)
        return;
    if ((r->out[0].open || r->out[1].open) && !r->drain_expired)
        return;
    if (r->kill_stage > 0 && r->cg_polling && cgroup_run_populated(&r->cg))
        return; /* cgroup.events will tell us */
    run_finish(r);
}

static void on_drain_timer(uv_timer_t *t)
{
    struct run *r = t->data;
    if (r->state != RUN_DRAINING)
        return;
    /* The main process is gone and the window has passed: whatever is in the pipes now was
     * written before we give up waiting; take it, then end. What comes later is late output. */
    for (int i = 0; i < 2; i++) {
        struct run_pipe *p = &r->out[i];
        if (p->open && pipe_read(r, p, READS_UNBOUNDED, DRAIN_READ_MAX)) {
            linesplit_flush(&p->split, now_real_ns());
            pipe_close(p);
        }
    }
    r->drain_expired = true;
    run_check_end(r);
}

static void on_cg_event(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    struct run *r = h->data;
    if (cgroup_run_populated(&r->cg))
        return;
    run_check_end(r);
    linger_check(r);
}

/* Watches the run's cgroup.events for "populated 0". Only a run being killed (its end waits for
 * the cgroup to empty) or lingering (ended, with background processes) needs it: a run that
 * just exits never pays for the watch. A change after the last read of cgroup.events (every
 * caller reads it afterwards) wakes the poll, so nothing is missed. */
static void cg_watch(struct run *r)
{
    if (r->cg.dir_fd < 0 || r->cg_polling || r->freeing)
        return;
    r->cg_watched = true; /* watched or not, it is not handed on */
    int e = uv_poll_init(r->a->loop, &r->cg_poll, r->cg.events_fd);
    if (e < 0) {
        /* Nothing would say when it empties: nothing waits for that (run_check_end,
         * linger_check and run_finish look at the cgroup only while it is watched), and
         * what is left in it is killed when it is released. */
        log_err("run %s: cannot watch its cgroup (%s)", r->id, uv_strerror(e));
        return;
    }
    r->cg_poll.data = r;
    r->handles_open++;
    if ((e = uv_poll_start(&r->cg_poll, UV_PRIORITIZED, on_cg_event)) < 0) {
        log_err("run %s: cannot watch its cgroup (%s)", r->id, uv_strerror(e));
        uv_close((uv_handle_t *)&r->cg_poll, cg_poll_closed);
        return;
    }
    r->cg_polling = true;
}

/* Sends sig to every process of the run: the cgroup's members, or without one the process
 * group and what a /proc walk finds of its tree. */
/* The pid of a starting run's child, while it is certain to be that child: the kernel has made
 * it, and the reaper has not had it (only the loop reaps, and an unreaped pid is never reused).
 * 0 if there is none such. */
static pid_t starting_pid(const struct run *r)
{
    if (r->state != RUN_STARTING || r->job == NULL || r->early_exit)
        return 0;
    return spawn_job_pid(r->job);
}

/* Signals a starting run's child, which may still be boxd's root child or the helper (spawn.h):
 * its cgroup, else its process group - or the process itself, before its setsid has made the
 * group. Signals stay blocked until the helper empties its mask (SIGKILL aside); a stopped
 * helper is woken by the SIGCONT that follows a TERM. */
static void signal_starting(struct run *r, int sig)
{
    pid_t pid = starting_pid(r);
    if (pid <= 0)
        return;
    if (r->cg.dir_fd >= 0) {
        cg_watch(r);
        if (sig == SIGKILL)
            cgroup_run_kill(&r->cg);
        else
            cgroup_run_signal(&r->cg, sig);
    }
    if (kill(-pid, sig) < 0)
        kill(pid, sig);
}

static void kill_tree(struct run *r, int sig)
{
    if (r->state == RUN_STARTING) {
        signal_starting(r, sig);
        return;
    }
    if (r->pid <= 0)
        return; /* nothing yet; and pid 0 would mean boxd's own process group */
    if (r->cg.dir_fd >= 0) {
        cg_watch(r); /* the end waits for it to be empty */
        if (sig == SIGKILL)
            cgroup_run_kill(&r->cg);
        else
            cgroup_run_signal(&r->cg, sig);
        return;
    }
    /* The group id is the main pid. While the main process is unreaped that pid cannot be
     * reused; after, only the drain window remains, and the walk checks ancestry. */
    proc_tree_signal(r->pid, r->pid, sig);
    bg_signal(r, sig); /* what left the group and was reparented, but holds the run's pipes */
}

/* Without a cgroup: the processes holding the run's output pipes, or its terminal (cgroup.h). */
static int pipe_holders_signal(struct run *r, int sig)
{
    ino_t inos[2];
    int n = 0;
    if (r->tty) {
        /* The slave is what they hold (the master is boxd's alone). */
        return r->out[0].open ? proc_pipe_holders_signal(inos, 0, r->tty_rdev, sig) : 0;
    }
    for (int i = 0; i < 2; i++) {
        struct stat st;
        if (r->out[i].open && fstat(r->out[i].fd, &st) == 0)
            inos[n++] = st.st_ino;
    }
    return n > 0 ? proc_pipe_holders_signal(inos, n, 0, sig) : 0;
}

/* Signals what a run left behind, also after its end: the cgroup's members, or without one the
 * processes that hold its pipes - for SIGKILL again while a pass finds any, as one may fork
 * between the scan and the kill (a few passes at most). */
static void bg_signal(struct run *r, int sig)
{
    if (r->cg.dir_fd >= 0) {
        cg_watch(r);
        if (sig == SIGKILL)
            cgroup_run_kill(&r->cg);
        else
            cgroup_run_signal(&r->cg, sig);
        return;
    }
    for (int pass = 0; pass < 4; pass++)
        if (pipe_holders_signal(r, sig) == 0 || sig != SIGKILL)
            break;
}

/* The deadline of a run that has ended but still lingers (4.4): what it left behind is killed
 * like a live run's tree, TERM and CONT, then KILL after the grace. The end already sent stays
 * as it was (it reported the main process); list shows background_killed "timeout". */
static void linger_kill(struct run *r)
{
    if (r->kill_stage == 0) {
        if (r->bg_killed == NULL)
            r->bg_killed = "timeout";
        log_debug("run %s: timeout after %llu ms: killing what it left behind", r->id,
                 (unsigned long long)r->timeout_ms);
        bg_signal(r, SIGTERM);
        bg_signal(r, SIGCONT);
        r->kill_stage = 1;
        uv_timer_start(&r->kill_timer, on_kill_timer, r->grace_ms, 0);
    } else if (r->kill_stage == 1) {
        bg_signal(r, SIGKILL);
        r->kill_stage = 2;
    }
}

static void on_kill_timer(uv_timer_t *t)
{
    struct run *r = t->data;
    if (r->state == RUN_ENDED) {
        if (r->lingering)
            linger_kill(r);
        return;
    }
    if (r->kill_stage == 0) {
        /* The timeout passed. */
        r->timed_out = true;
        log_debug("run %s: timeout after %llu ms", r->id, (unsigned long long)r->timeout_ms);
        kill_tree(r, SIGTERM);
        kill_tree(r, SIGCONT);
        r->kill_stage = 1;
        uv_timer_start(&r->kill_timer, on_kill_timer, r->grace_ms, 0);
    } else if (r->kill_stage == 1) {
        kill_tree(r, SIGKILL);
        r->kill_stage = 2;
    }
}


bool run_on_exit(struct agent *a, pid_t pid, int wstatus, const struct rusage *ru)
{
    struct run *r = runtab_pid_take(a, pid);
    if (r == NULL) {
        /* Maybe a run whose spawn is not yet done: the kernel stored the child's pid in its
         * job before the child ran. Kept until run_spawned. */
        struct list *pos;
        for (pos = a->starting.next; pos != &a->starting; pos = pos->next) {
            struct run *sr = container_of(pos, struct run, start_link);
            if (spawn_job_pid(sr->job) == pid) {
                sr->early_exit = true;
                sr->early_status = wstatus;
                sr->early_ru = *ru;
                return true;
            }
        }
        return false;
    }
    r->exited = true;
    r->wstatus = wstatus;
    r->ru = *ru;
    r->state = RUN_DRAINING;
    if (r->internal && r->kill_stage < 2 &&
        (r->cg.dir_fd < 0 || cgroup_run_populated(&r->cg))) {
        /* The agent's own run: nothing it started may outlive it (a daemon a probed
         * interpreter left behind). Its end waits for the cgroup to empty. (An empty cgroup
         * needs no kill.) */
        kill_tree(r, SIGKILL);
        r->kill_stage = 2;
    }
    if (r->kill_stage == 1 && r->cg.dir_fd < 0) {
        /* Killing without a cgroup, and the leader is gone: what is left goes now, while the
         * tree can still be found, rather than after the grace period. (With a cgroup the
         * grace period runs its course: the members are known whatever happens.) */
        kill_tree(r, SIGKILL);
        r->kill_stage = 2;
    }
    if (r->out[0].open || r->out[1].open)
        uv_timer_start(&r->drain_timer, on_drain_timer, a->cfg.drain_ms, 0);
    run_check_end(r);
    return true;
}

bool run_cancel(struct run *r, uint32_t grace_ms)
{
    if (r->state == RUN_STARTING && starting_pid(r) <= 0) {
        /* No process to signal yet: run_spawned cancels it once there is. */
        r->cancel_requested = true;
        r->cancel_grace = grace_ms;
        return true;
    }
    if (r->state == RUN_ENDED) {
        /* Nothing is signalled by pid (it may be reused). What still runs in the run's
         * cgroup - background processes that outlived it - is killed: cgroup members cannot
         * be someone else's. */
        if (r->lingering && (r->cg.dir_fd < 0 || cgroup_run_populated(&r->cg))) {
            log_debug("run %s: killing what remains of it", r->id);
            if (r->bg_killed == NULL)
                r->bg_killed = "cancel";
            uv_timer_stop(&r->kill_timer); /* its deadline has nothing more to do */
            bg_signal(r, SIGKILL);
        }
        return false;
    }
    if (!r->cancel_requested && !r->timed_out)
        r->cancel_requested = true;
    if (r->kill_stage > 0)
        return true; /* already on its way: the grace period is not restarted or cut short */
    log_debug("run %s: cancel (grace %u ms)", r->id, grace_ms);
    kill_tree(r, SIGTERM);
    kill_tree(r, SIGCONT);
    r->kill_stage = 1;
    if (r->state == RUN_DRAINING && r->cg.dir_fd < 0) {
        kill_tree(r, SIGKILL);
        r->kill_stage = 2;
        return true;
    }
    uv_timer_start(&r->kill_timer, on_kill_timer, grace_ms, 0);
    return true;
}

int run_signal(struct run *r, int sig)
{
    if (r->state == RUN_STARTING) {
        /* To the child as it is (even stopped before its exec: KILL ends it), or, before the
         * kernel has made it, by run_spawned, once the process group exists. */
        if (starting_pid(r) > 0)
            signal_starting(r, sig);
        else if (sig > 0 && sig <= 64)
            r->pending_sigs |= 1ull << (sig - 1);
        return 0;
    }
    if (r->state != RUN_RUNNING)
        return -ESRCH;
    if (kill(-r->pid, sig) < 0)
        return -errno;
    return 0;
}

void runs_cancel_all(struct agent *a, uint32_t grace_ms)
{
    struct list *pos;
    for (pos = a->runs.next; pos != &a->runs; pos = pos->next) {
        struct run *r = container_of(pos, struct run, link);
        if (r->state != RUN_ENDED)
            run_cancel(r, grace_ms);
    }
}

/* ---- stdin ---------------------------------------------------------------------------------- */

struct stdin_write {
    uv_write_t w;
    struct run *run;
    size_t len;
    stdin_done_cb cb;
    void *arg;
    char data[];
};

static void on_stdin_written(uv_write_t *w, int status)
{
    struct stdin_write *sw = container_of(w, struct stdin_write, w);
    struct run *r = sw->run;
    r->in.queued -= sw->len;
    if (sw->cb)
        sw->cb(sw->arg, status);
    free(sw);
    if (r->in.open && r->in.eof_pending && r->in.queued == 0)
        stdin_close(r);
}

/* The character a terminal's line discipline reads as end of file (^D unless the run changed
 * it; a disabled one is sent as ^D anyway, which is then an ordinary byte). */
static char tty_veof(const struct run *r)
{
    struct termios t;
    uv_os_fd_t fd;
    if (uv_fileno((const uv_handle_t *)&r->in.h, &fd) == 0 && tcgetattr(fd, &t) == 0 &&
        t.c_cc[VEOF] != _POSIX_VDISABLE)
        return (char)t.c_cc[VEOF];
    return CTRL_D;
}

int run_stdin_write(struct run *r, const char *data, size_t len, bool eof, stdin_done_cb cb,
                    void *arg)
{
    if (!r->in.open || r->in.eof_pending || (r->state != RUN_RUNNING && r->state != RUN_STARTING))
        return -EPIPE;
    /* A terminal's eof is a byte for its line discipline, after the data; the terminal stays
     * open for more input. */
    bool veof = r->tty && eof;
    if (r->tty)
        eof = false;
    if (len == 0 && !veof) {
        if (eof) {
            if (r->in.queued == 0)
                stdin_close(r);
            else
                r->in.eof_pending = true;
        }
        return 1;
    }
    size_t total = len + (veof ? 1 : 0);
    if (r->in.queued + total > r->a->cfg.stdin_bytes)
        return -ENOBUFS;
    struct stdin_write *sw = boxd_malloc(sizeof *sw + total);
    if (sw == NULL)
        return -ENOMEM;
    sw->run = r;
    sw->len = total;
    sw->cb = cb;
    sw->arg = arg;
    memcpy(sw->data, data, len);
    if (veof)
        sw->data[len] = tty_veof(r);
    uv_buf_t b = uv_buf_init(sw->data, (unsigned)total);
    int e = uv_write(&sw->w, (uv_stream_t *)&r->in.h, &b, 1, on_stdin_written);
    if (e < 0) {
        free(sw);
        return e == UV_EPIPE ? -EPIPE : -ENOMEM;
    }
    r->in.queued += total;
    if (eof)
        r->in.eof_pending = true;
    return 0;
}

int run_resize(struct run *r, uint16_t rows, uint16_t cols)
{
    if (!r->tty)
        return -ENOTTY;
    if (r->state != RUN_RUNNING && r->state != RUN_STARTING)
        return -ESRCH;
    /* The master is open until the run ends: its stdin fd is (out[0] may have read EIO). */
    uv_os_fd_t fd;
    if (!r->in.open || uv_fileno((const uv_handle_t *)&r->in.h, &fd) < 0)
        return -ESRCH;
    struct winsize ws = {.ws_row = rows, .ws_col = cols};
    if (ioctl(fd, TIOCSWINSZ, &ws) < 0)
        return -errno;
    r->tty_rows = rows;
    r->tty_cols = cols;
    return 0;
}

void runs_spare(struct agent *a)
{
    if (!a->shutting_down)
        cgroup_pool_fill(a);
}

/* Tells who started the run that it has started or failed to, once (run_params.on_started). */
static void starter_reply(struct run *r)
{
    void (*cb)(struct run *, void *) = r->on_started;
    if (cb == NULL)
        return;
    r->on_started = NULL;
    cb(r, r->started_arg);
}

void run__stdin_close(struct run *r)
{
    stdin_close(r);
}

/* Records a run that could not start: ended at once, status failed, reason spawn. */
void run__spawn_failed(struct run *r, const char *stage, int err)
{
    r->spawn_stage = stage;
    r->spawn_err = err;
    r->wstatus = 0;
    log_debug("run %s: spawn failed at %s: %s", r->id, stage, strerror(err));
    starter_reply(r);
    run_finish(r);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* The spawn is over (here, or on the spawner thread): the run is running, or has failed. */
void run__spawned(struct run *r, pid_t pid, const char *stage, pid_t failed_pid)
{
    struct agent *a = r->a;
    for (int i = 0; i < 3; i++)
        close_fd(&r->child_fd[i]);
    if (pid < 0) {
        close_fd(&r->out[0].fd);
        close_fd(&r->out[1].fd);
        stdin_close(r);
        r->pid = failed_pid;
        run__spawn_failed(r, stage, (int)-pid);
        return;
    }
    r->pid = pid;
    r->state = RUN_RUNNING;
    runtab_pid_insert(r);
    for (int i = 0; i < 2; i++) {
        struct run_pipe *rp = &r->out[i];
        linesplit_init(&rp->split, a->cfg.max_line, &a->log_held, emit, rp);
        if (rp->stream == RUN_STREAM_TTY)
            linesplit_set_raw(&rp->split); /* a terminal's bytes, as read (4.9) */
        if (rp->fd < 0)
            continue; /* a terminal run's out[1] */
        int e = uv_poll_init(a->loop, &rp->poll, rp->fd); /* which makes it non-blocking */
        if (e < 0) {
            /* Not watchable (epoll out of memory or watches): the handle is not initialized
             * and must never be closed. Closing our end is what is left: the run's writes
             * to it fail with EPIPE rather than block forever, and the stream counts as at
             * its end. */
            log_err("run %s: cannot watch its %s pipe (%s): closed", r->id,
                    i ? "stderr" : "stdout", uv_strerror(e));
            close_fd(&rp->fd);
            continue;
        }
        rp->poll.data = rp;
        rp->open = true;
        r->handles_open++;
        pipe_poll_set(rp, true);
    }
    if (r->timeout_ms)
        uv_timer_start(&r->kill_timer, on_kill_timer, r->timeout_ms, 0);
    log_debug("run %s: started pid %d: %s", r->id, (int)pid, r->desc);
    starter_reply(r);
    /* What was asked while it was starting. */
    for (int sig = 1; sig <= 64; sig++)
        if (r->pending_sigs & (1ull << (sig - 1)))
            kill(-r->pid, sig);
    r->pending_sigs = 0;
    if (r->cancel_requested && r->kill_stage == 0)
        run_cancel(r, r->cancel_grace);
    if (r->early_exit) {
        /* The reaper had it already (spawn_job_pid). */
        log_debug("run %s: reaped before its spawn was done", r->id);
        r->early_exit = false;
        run_on_exit(a, r->pid, r->early_status, &r->early_ru);
    }
}


/* ---- Readers -------------------------------------------------------------------------------- */

void run_reader_add(struct run *r, struct run_reader *rd)
{
    list_add_tail(&r->readers, &rd->link);
    run_flow(r); /* the log learns what rd is owed before anything is appended */
}

void run_reader_remove(struct run *r, struct run_reader *rd)
{
    list_del(&rd->link);
    run_flow(r);
    if (r->state == RUN_ENDED && list_empty(&r->readers))
        runs_evict(r->a);
}

void run_reader_moved(struct run *r)
{
    run_flow(r);
}
