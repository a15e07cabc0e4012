/* Reading /proc/PID/stat, for the two walks of every process (the tree-kill fallback and, as
 * PID 1 at shutdown, "is anything left?"). */
#ifndef BOXD_PROCFS_H
#define BOXD_PROCFS_H

#include <stdbool.h>
#include <sys/types.h>

struct proc_stat {
    pid_t pid, ppid, pgid, sid;
    char state;
    unsigned flags;
};

/* PF_KTHREAD in flags (include/linux/sched.h). */
#define PROC_PF_KTHREAD 0x00200000u

/* Parses /proc/NAME/stat (NAME a decimal pid). Returns false if it is gone or unreadable. */
bool proc_stat_read(const char *name, struct proc_stat *out);

#endif
