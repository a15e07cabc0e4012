/* The agent's clean shutdown (PROTOCOL.md 8), on a `shutdown` request or a stop signal: no
 * new runs, listeners closed, every run cancelled (TERM, grace, KILL), as PID 1 every other
 * process too, the final events flushed; then the loop stops and main acts (init_final). This
 * module sits above signals, listen, conn and run: it calls them, and none of them calls it
 * (signals reaches it through the callback main gives signals_start). */
#include "shutdown.h"
#include "sdnotify.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "conn.h"
#include "listen.h"
#include "log.h"
#include "procfs.h"
#include "run.h"
#include "runtab.h"
#include "sub.h"
#include "tunnel.h"

/* How long past grace_ms + drain_ms shutdown waits for the last runs, processes and replies
 * before it gives up and stops anyway. */
#define SHUTDOWN_SLACK_MS 3000u
/* How often it looks. */
#define SHUTDOWN_TICK_MS 10u

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
    uint64_t limit = (uint64_t)a->cfg.grace_ms + a->cfg.drain_ms + SHUTDOWN_SLACK_MS;
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
    sdnotify_stopping();
    listen_close_all(a);
    tunnel_close_all(a);
    runs_cancel_all(a, a->cfg.grace_ms);
    if (a->pid1) {
        /* PID 1: every other process in the box gets the same TERM, grace, KILL. Never when
         * boxd is not PID 1: -1 would then mean every process of the machine. */
        kill(-1, SIGTERM);
        kill(-1, SIGCONT);
    }
    uv_timer_start(&a->shutdown_timer, on_shutdown_tick, 0, SHUTDOWN_TICK_MS);
}

void agent_shutdown_on_signal(struct agent *a, const char *why)
{
    agent_shutdown(a, why, FINAL_POWEROFF);
}
