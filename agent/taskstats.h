/* The kernel's taskstats exit records: each run's main process's own memory peak.
 *
 * wait4's ru_maxrss cannot be a run's figure: the child is made with CLONE_VM|CLONE_VFORK and its
 * first exec copies the shared address space's high-water mark, boxd's, into its signal->maxrss
 * (fs/exec.c). The taskstats record the kernel sends for each exiting task (generic netlink
 * family TASKSTATS) has hiwater_rss computed from the task's own mm at exit (kernel/tsacct.c),
 * so for a run's main process it is that process's true peak.
 *
 * boxd listens on one NETLINK_GENERIC socket, registered for the exits on every possible CPU. It
 * needs root in the initial user and PID namespaces (the kernel refuses a listener elsewhere: its
 * pids are the initial namespace's) and the family in boxd's network namespace; without them
 * boxd does without (a debug line) and max_rss_kb falls back to wait4's figure. Every exit of the
 * machine is sent to it, so a record costs a hash look-up and nothing more; a record lost to an
 * overflowing socket (ENOBUFS) is counted and the fallback applies for that run.
 *
 * Ordering: the kernel queues a task's record in do_exit before the task becomes a zombie, so
 * once the reaper has the main process (wait4), draining the socket yields its record. */
#ifndef BOXD_TASKSTATS_H
#define BOXD_TASKSTATS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#define TASKSTATS_RCVBUF (1u << 20)   /* the socket's receive buffer */
#define TASKSTATS_WAKEUP_MSGS 64u     /* records read per readable wakeup */
#define TASKSTATS_REAP_MSGS 4096u     /* records read before a run's main process is reaped */
#define TASKSTATS_BUF 8192u           /* one record is about 500 bytes */

struct agent;

/* Told of each exit record: pid's own peak was hiwater_kb, and it began at btime_s (seconds
 * since 1970). Returns true if the record was one of the runs' (counted in `records`). */
typedef bool (*taskstats_exit_cb)(void *arg, pid_t pid, uint64_t hiwater_kb, uint64_t btime_s);

struct taskstats_listener {
    int fd;            /* the netlink socket, or -1: not listening */
    uint16_t family;   /* the TASKSTATS family id */
    uv_poll_t poll;
    bool polling;      /* poll was initialised (closed by taskstats_stop) */
    uint64_t overflows; /* ENOBUFS: records the kernel could not queue */
    uint64_t records;   /* records that were a run's main process's */
    taskstats_exit_cb on_exit; /* who learns of each record (runtab.h: runs_note_exit_peak) */
    void *exit_arg;
    unsigned char buf[TASKSTATS_BUF];
};

/* Before taskstats_start (and where the seam's listener refused): not listening. */
void taskstats_init(struct taskstats_listener *t);
/* Opens, registers and watches the socket on a->loop; each record goes to on_exit(arg, ...).
 * Returns 0 (listening), or a negative errno when the kernel or boxd's privileges do not allow it (not an error: a debug line is logged and
 * boxd goes on without). Holds one descriptor while listening. */
int taskstats_start(struct agent *a, taskstats_exit_cb on_exit, void *arg);
/* How taskstats_start listens: returns 0 (listening) or a negative errno (going on without). */
typedef int (*taskstats_listen_fn)(struct agent *a);
/* The test seam: replaces how the listener starts (NULL restores the kernel's netlink socket).
 * For a build that must hold no OS resource beyond its loop, such as the connection fuzzer
 * (tests/fuzz/fuzz_conn.c), whose listener refuses with -ENOSYS. Call before taskstats_start. */
void taskstats_set_listener(taskstats_listen_fn fn);
/* Reads up to max queued records without blocking, recording each run main process's peak
 * (through on_exit). Returns the number read. */
unsigned taskstats_drain(struct agent *a, unsigned max);
/* Closes the poll handle (its close runs on the next uv_run) and the socket. Idempotent. */
void taskstats_stop(struct agent *a);

#endif
