#include "fsworker.h"

#include <errno.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

struct fsworker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct fsjob *q_head, *q_tail; /* queued */
    struct fsjob *d_head, *d_tail; /* done, for the loop */
    unsigned busy;
    bool stop;
    unsigned n_threads;
    pthread_t th[FILES_WORKERS];
    pid_t tids[FILES_WORKERS]; /* each thread's, once it runs: the seccomp filters guard them */
    unsigned n_tids;
    pthread_cond_t started;    /* n_tids grew */
    uv_async_t async;
    gid_t own_groups[IDENTITY_MAX_GROUPS];
    int n_own_groups;
};

void fscred_from_identity(struct fscred *c, const struct identity *id)
{
    memset(c, 0, sizeof *c);
    c->uid = id->uid;
    c->gid = id->gid;
    c->ngroups = id->ngroups;
    if (c->ngroups > IDENTITY_MAX_GROUPS)
        c->ngroups = IDENTITY_MAX_GROUPS;
    if (c->ngroups > 0)
        memcpy(c->groups, id->groups, (size_t)c->ngroups * sizeof c->groups[0]);
}

/* The calling thread's own credentials (raw system calls: this thread only). Returns 0 or
 * -EPERM when the kernel did not take them (boxd is not root and the user is another). */
static int cred_apply(struct fsworker *w, const struct fscred *c)
{
    const gid_t *g = c->ngroups >= 0 ? c->groups : w->own_groups;
    long n = c->ngroups >= 0 ? c->ngroups : w->n_own_groups;
    /* Groups first, while this thread still has CAP_SETGID in full (fsuid changes only file
     * capabilities, so later switches work too). */
    if (syscall(SYS_setgroups, n, g) < 0 && errno != EPERM)
        return -errno;
    syscall(SYS_setfsgid, c->gid);
    syscall(SYS_setfsuid, c->uid);
    /* setfsuid and setfsgid never fail visibly: an invalid id (-1) returns the current one. */
    if ((uid_t)syscall(SYS_setfsuid, (uid_t)-1) != c->uid ||
        (gid_t)syscall(SYS_setfsgid, (gid_t)-1) != c->gid)
        return -EPERM;
    return 0;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *thread_main(void *arg)
{
    struct fsworker *w = arg;
    /* Below the loop thread's priority (this thread only: Linux applies it per thread), so
     * that on a busy machine the loop preempts a transfer instead of waiting for it. */
    errno = 0;
    int base = getpriority(PRIO_PROCESS, 0);
    int nice = base + FILES_WORKER_NICE > 19 ? 19 : base + FILES_WORKER_NICE;
    pid_t tid = (pid_t)syscall(SYS_gettid);
    if (setpriority(PRIO_PROCESS, (id_t)tid, nice) < 0)
        log_debug("files: I/O thread nice %d: %s", FILES_WORKER_NICE, strerror(errno));
    prctl(PR_SET_NAME, "boxd-io", 0, 0, 0); /* what /proc/PID/task/TID/comm shows */
    pthread_mutex_lock(&w->mu);
    w->tids[w->n_tids++] = tid;
    pthread_cond_broadcast(&w->started);
    for (;;) {
        while (!w->stop && w->q_head == NULL)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop)
            break;
        struct fsjob *j = w->q_head;
        w->q_head = j->next;
        if (w->q_head == NULL)
            w->q_tail = NULL;
        j->next = NULL;
        j->started_ns = mono_ns();
        pthread_mutex_unlock(&w->mu);
        j->cred_err = cred_apply(w, &j->cred);
        if (j->cred_err == 0)
            j->work(j);
        pthread_mutex_lock(&w->mu);
        if (w->d_tail)
            w->d_tail->next = j;
        else
            w->d_head = j;
        w->d_tail = j;
        (void)uv_async_send(&w->async);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void on_async(uv_async_t *h)
{
    struct fsworker *w = h->data;
    pthread_mutex_lock(&w->mu);
    struct fsjob *j = w->d_head;
    w->d_head = w->d_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    while (j) {
        struct fsjob *next = j->next;
        pthread_mutex_lock(&w->mu);
        w->busy--;
        pthread_mutex_unlock(&w->mu);
        j->next = NULL;
        j->done(j); /* may free j, and may submit more */
        j = next;
    }
}

struct fsworker *fsworker_start(uv_loop_t *loop)
{
    struct fsworker *w = calloc(1, sizeof *w);
    if (w == NULL)
        return NULL;
    int n = getgroups(IDENTITY_MAX_GROUPS, w->own_groups);
    w->n_own_groups = n < 0 ? 0 : n;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_cond_init(&w->started, NULL);
    if (uv_async_init(loop, &w->async, on_async) < 0) {
        free(w);
        return NULL;
    }
    w->async.data = w;
    /* Small stacks: a job uses a few pages (its buffers are on the heap). The threads inherit
     * boxd's blocked signal mask, so no signal is ever delivered to them. */
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 256u * 1024u);
    for (unsigned i = 0; i < FILES_WORKERS; i++) {
        if (pthread_create(&w->th[i], &at, thread_main, w) != 0)
            break;
        w->n_threads++;
    }
    pthread_attr_destroy(&at);
    if (w->n_threads == 0) {
        uv_close((uv_handle_t *)&w->async, NULL);
        return NULL; /* the handle is freed with w by the caller's process exit; logged there */
    }
    /* Start-up only: wait until every thread has said its tid (fsworker_tids), which the
     * seccomp filters built next must guard. A new thread runs at once, so this is short. */
    pthread_mutex_lock(&w->mu);
    while (w->n_tids < w->n_threads)
        pthread_cond_wait(&w->started, &w->mu);
    pthread_mutex_unlock(&w->mu);
    return w;
}

size_t fsworker_tids(const struct fsworker *w, pid_t *out, size_t max)
{
    size_t n = 0;
    for (unsigned i = 0; w != NULL && i < w->n_tids && n < max; i++)
        out[n++] = w->tids[i];
    return n;
}

void fsworker_submit(struct fsworker *w, struct fsjob *j)
{
    j->next = NULL;
    j->started_ns = 0;
    pthread_mutex_lock(&w->mu);
    w->busy++;
    if (w->q_tail)
        w->q_tail->next = j;
    else
        w->q_head = j;
    w->q_tail = j;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

unsigned fsworker_busy(const struct fsworker *w)
{
    return w->busy;
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

void fsworker_stop(struct fsworker *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    bool stuck = false;
    for (unsigned i = 0; i < w->n_threads; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        if (pthread_timedjoin_np(w->th[i], NULL, &ts) != 0) {
            pthread_detach(w->th[i]);
            stuck = true;
        }
    }
    if (stuck) {
        /* A thread is inside a system call that does not return (a hung file system). It
         * still uses w: leave it allocated. */
        log_warn("files: an I/O thread is stuck in the kernel; left behind at exit");
        uv_close((uv_handle_t *)&w->async, NULL);
        return;
    }
    uv_close((uv_handle_t *)&w->async, on_closed);
}
