#include "signals.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conn.h"
#include "listen.h"
#include "log.h"
#include "procfs.h"
#include "run.h"
#include "sub.h"
#include "runtab.h"
#include "taskstats.h"

static void fill_blocked(sigset_t *s)
{
    sigfillset(s);
    /* Synchronous faults must kill (and show); KILL and STOP cannot be blocked anyway. */
    sigdelset(s, SIGSEGV);
    sigdelset(s, SIGBUS);
    sigdelset(s, SIGILL);
    sigdelset(s, SIGFPE);
    sigdelset(s, SIGABRT);
    sigdelset(s, SIGKILL);
    sigdelset(s, SIGSTOP);
}

int signals_block(void)
{
    sigset_t s;
    fill_blocked(&s);
    if (sigprocmask(SIG_BLOCK, &s, NULL) < 0)
        return -errno;
    /* SIGPIPE: a client that goes away must cost an EPIPE, not the agent. Ignored (not only
     * blocked) so a pending one never piles up; runs get the default back before exec. */
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, NULL);
    return 0;
}

void signals_reap(struct agent *a)
{
    for (;;) {
        int st;
        struct rusage ru;
        pid_t pid = wait4(-1, &st, WNOHANG | __WALL, &ru);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid <= 0)
            return; /* 0: children remain but none has exited; ECHILD: none at all */
        /* The main process's taskstats record was queued before it became a zombie: read it
         * now, before its end is built (taskstats.h). Orphans cost a look-up only. */
        if (a->taskstats.fd >= 0 && runs_is_main(a, pid))
            taskstats_drain(a, TASKSTATS_REAP_MSGS);
        if (!run_on_exit(a, pid, st, &ru))
            a->reaped++;
    }
}

/* ---- Shutdown ------------------------------------------------------------------------------- */

/* True while a process other than boxd lives in its PID namespace. kill(-1, 0) cannot say: in
 * the initial namespace (a VM) it counts kernel threads, which never go. So /proc is read, and
 * kernel threads (PF_KTHREAD) and zombies (reaped by us in a moment) are not counted. */
static bool others_left(void)
{
    DIR *d = opendir("/proc");
    if (d == NULL)
        return !(kill(-1, 0) < 0 && errno == ESRCH);
    bool found = false;
    struct dirent *de;
    pid_t me = getpid();
    while (!found && (de = readdir(d)) != NULL) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        pid_t pid = (pid_t)strtol(de->d_name, NULL, 10);
        if (pid == me)
            continue;
        struct proc_stat st;
        if (!proc_stat_read(de->d_name, &st))
            continue;
        if ((st.flags & PROC_PF_KTHREAD) || st.state == 'Z' || st.state == 'X')
            continue;
        found = true;
    }
    closedir(d);
    return found;
}

static bool all_done(struct agent *a)
{
    if (a->n_live > 0)
        return false;
    /* As PID 1, every process of the box must be gone too. */
    if (a->pid1 && others_left())
        return false;
    struct list *pos;
    for (pos = a->conns.next; pos != &a->conns; pos = pos->next) {
        struct conn *c = container_of(pos, struct conn, link);
        if (!c->closing && (c->queued > 0 || sub_owed(c)))
            return false;
    }
    return true;
}

static void on_shutdown_tick(uv_timer_t *t)
{
    struct agent *a = t->data;
    uint64_t waited_ms = (now_mono_ns() - a->shutdown_start_ns) / 1000000u;
    uint64_t limit = (uint64_t)a->cfg.grace_ms + a->cfg.drain_ms + 3000u;
    if (a->pid1 && !a->others_killed && waited_ms >= a->cfg.grace_ms) {
        /* The grace period is over for everything else in the box too. */
        kill(-1, SIGKILL);
        a->others_killed = true;
    }
    if (all_done(a) || waited_ms > limit) {
        if (!all_done(a))
            log_warn("shutdown: giving up waiting after %llu ms", (unsigned long long)waited_ms);
        uv_timer_stop(t);
        uv_stop(a->loop);
    }
}

void agent_shutdown(struct agent *a, const char *why, enum final_action act)
{
    if (a->shutting_down) {
        /* A second signal does not cut the grace period short. */
        log_info("shutdown already under way (%s)", why);
        return;
    }
    a->shutting_down = true;
    a->final_action = act;
    a->shutdown_start_ns = now_mono_ns();
    log_info("shutting down (%s): %u live runs", why, a->n_live);
    listen_close_all(a);
    runs_cancel_all(a, a->cfg.grace_ms);
    if (a->pid1) {
        /* PID 1: every other process in the box gets the same TERM, grace, KILL. Never when
         * boxd is not PID 1: -1 would then mean every process of the machine. */
        kill(-1, SIGTERM);
        kill(-1, SIGCONT);
    }
    uv_timer_start(&a->shutdown_timer, on_shutdown_tick, 0, 10);
}

/* ---- The signalfd --------------------------------------------------------------------------- */

static void on_signal(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    struct agent *a = h->data;
    bool child = false;
    for (;;) {
        struct signalfd_siginfo si[16];
        ssize_t n = read(a->sig_fd, si, sizeof si);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (size_t i = 0; i < (size_t)n / sizeof si[0]; i++) {
            int sig = (int)si[i].ssi_signo;
            switch (sig) {
            case SIGCHLD:
                child = true;
                break;
            case SIGIO:
                listen_on_sigio(a);
                break;
            case SIGTERM:
            case SIGINT:
            case SIGPWR:
                agent_shutdown(a, strsignal(sig), FINAL_POWEROFF);
                break;
            default:
                log_debug("signal %d (%s) from pid %u ignored", sig, strsignal(sig),
                          si[i].ssi_pid);
                break;
            }
        }
    }
    /* Reap after draining the fd: SIGCHLDs coalesce, so one pass reaps everything pending. */
    if (child)
        signals_reap(a);
}

int signals_start(struct agent *a)
{
    sigset_t s;
    fill_blocked(&s);
    a->sig_fd = signalfd(-1, &s, SFD_NONBLOCK | SFD_CLOEXEC);
    if (a->sig_fd < 0)
        return -errno;
    int e = uv_poll_init(a->loop, &a->sig_poll, a->sig_fd);
    if (e < 0) {
        close(a->sig_fd);
        a->sig_fd = -1;
        return e;
    }
    a->sig_poll.data = a;
    if ((e = uv_poll_start(&a->sig_poll, UV_READABLE, on_signal)) < 0)
        return e; /* start-up fails */
    uv_timer_init(a->loop, &a->shutdown_timer);
    a->shutdown_timer.data = a;
    return 0;
}
