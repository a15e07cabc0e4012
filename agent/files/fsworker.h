/* The file I/O threads. Every file operation runs here, never on the event loop, and runs with
 * the credentials of the user it acts for: before a job, its thread sets its own fsuid, fsgid
 * and supplementary groups with raw system calls (SYS_setfsuid, SYS_setfsgid, SYS_setgroups),
 * which change the calling thread only. glibc's setgroups() would broadcast the change to every
 * thread of boxd (the loop and the spawner included), so it is never used here. The thread's
 * real and effective ids stay root: no run user can signal or trace it, and the kernel drops the
 * file capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN...) of a thread whose fsuid is not
 * 0, so permissions apply exactly as to that user. Nothing is written as root and chowned.
 *
 * Ownership: the caller owns each job; fsworker_submit hands it over until its done callback,
 * which runs on the loop thread and may free it. No job of one object is submitted while
 * another of the same object is queued or running (the callers serialize). */
#ifndef BOXD_FILES_FSWORKER_H
#define BOXD_FILES_FSWORKER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "sandbox.h"

/* Threads doing file I/O: a slow disk or a hung network file system holds at most these. */
#define FILES_WORKERS 4
/* The I/O threads' nice value above boxd's own (the loop thread keeps boxd's), at most 19. */
#define FILES_WORKER_NICE 5

/* Who a job acts as. ngroups -1: boxd's own supplementary groups. */
struct fscred {
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[IDENTITY_MAX_GROUPS];
};

struct fsjob {
    struct fsjob *next;
    struct fscred cred;
    void (*work)(struct fsjob *j); /* on a worker thread, with cred in force */
    void (*done)(struct fsjob *j); /* on the loop thread, afterwards */
    int cred_err;                  /* the credentials could not be set: work did not run */
    uint64_t started_ns;           /* when a thread took it (monotonic), 0 while queued */
};

struct fsworker;

/* Starts the threads. Returns NULL on failure (no memory, no thread). */
struct fsworker *fsworker_start(uv_loop_t *loop);
/* Queues j. */
void fsworker_submit(struct fsworker *w, struct fsjob *j);
/* Jobs queued or running. */
unsigned fsworker_busy(const struct fsworker *w);
/* The worker threads' tids (at most max into out); returns how many. */
size_t fsworker_tids(const struct fsworker *w, pid_t *out, size_t max);
/* Stops the threads: queued jobs are dropped (their done never runs), running ones are waited
 * for at most 1 s each; a thread stuck longer (a hung file system) is left behind, detached.
 * Closes the loop handle. */
void fsworker_stop(struct fsworker *w);

void fscred_from_identity(struct fscred *c, const struct identity *id);

#endif
