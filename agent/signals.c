#include "signals.h"

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

#include "listen.h"
#include "log.h"
#include "run.h"
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
                if (a->on_stop_signal)
                    a->on_stop_signal(a, strsignal(sig));
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

int signals_start(struct agent *a, void (*on_stop)(struct agent *a, const char *why))
{
    a->on_stop_signal = on_stop;
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
