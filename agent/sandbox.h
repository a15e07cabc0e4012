/* What a run may do: seccomp profiles (compiled once at start-up with libseccomp and exported
 * as BPF, so the child only makes one system call to load one), the run's identity (user,
 * groups), and its resource limits.
 *
 * Profiles (a denied call fails with EPERM, or ENOSYS where marked; it never kills the process):
 *   none     no filter.
 *   default  denies what a box user never needs and what could harm the box's kernel or boxd:
 *            kernel code (kexec_*, *_module), reboot (the box's life is the control plane's),
 *            host-wide state (swapon, swapoff, acct), escapes by file handle (open_by_handle_at),
 *            the kernel keyring (not namespaced), bpf, raw I/O ports, the box's clock, the
 *            kernel log; and every signal, trace, fd owner or scheduling change aimed at boxd.
 *            ID below is boxd's pid or the tid of its spawner thread (spawn.h), which is boxd
 *            just as much; PGRP its process group; UID 0 or boxd's uid (who 0 of the *_USER
 *            forms means the caller's own uid); -1 is guarded only when boxd is not PID 1.
 *            pidfd_send_signal answers ENOSYS (its target is an fd, which a filter cannot
 *            check; callers fall back to kill). F_SETOWN_EX and the FIOSETOWN/SIOCSPGRP ioctls
 *            are denied whatever they name (a pointer a filter cannot read): an fd owned by
 *            boxd would deliver the F_SETSIG signal of the caller's choice to it, and the
 *            kernel's sigio_perm lets a root caller. This guards boxd against mistakes and
 *            ordinary code; it is not a wall against a determined root in the box, who can
 *            still write /proc/PID/mem or kill boxd's cgroup: run untrusted code as --user.
 *   strict   default, plus what isolates a run from the box (mounts, namespaces, any ptrace,
 *            kernel profiling, userfaultfd, personality), with clone3 ENOSYS, so libc falls
 *            back to clone, whose flags can be checked.
 * The rules, made from sandbox.c's tables by sandbox_describe (tests/agent/test_sandbox_doc.c
 * fails, printing the block to paste, when this one differs):
 * <rules>
 *   default:
 *     kexec_load kexec_file_load init_module finit_module delete_module reboot swapon swapoff acct
 *     open_by_handle_at add_key request_key keyctl bpf iopl ioperm settimeofday clock_settime
 *     clock_adjtime adjtimex syslog uselib lookup_dcookie vhangup kill(ID) kill(-PGRP) kill(-1)
 *     tkill(ID) tgkill(ID) rt_sigqueueinfo(ID) rt_tgsigqueueinfo(ID) pidfd_open(ID) ptrace(_,ID)
 *     process_vm_readv(ID) process_vm_writev(ID) prlimit64(ID) pidfd_send_signal=ENOSYS
 *     fcntl(_,F_SETOWN,ID) fcntl(_,F_SETOWN,-PGRP) fcntl(_,F_SETOWN_EX) ioctl(_,FIOSETOWN)
 *     ioctl(_,SIOCSPGRP) setpriority(PRIO_PROCESS,ID) setpriority(PRIO_PGRP,PGRP)
 *     setpriority(PRIO_USER,UID) ioprio_set(IOPRIO_WHO_PROCESS,ID) ioprio_set(IOPRIO_WHO_PGRP,PGRP)
 *     ioprio_set(IOPRIO_WHO_USER,UID) sched_setaffinity(ID) sched_setscheduler(ID)
 *     sched_setparam(ID) sched_setattr(ID) migrate_pages(ID) move_pages(ID)
 *   strict, besides default's:
 *     mount umount2 pivot_root chroot unshare setns mknod mknodat ptrace process_vm_readv
 *     process_vm_writev perf_event_open userfaultfd personality fsopen fsmount move_mount open_tree
 *     clone(CLONE_NEW*) clone3=ENOSYS
 * </rules>
 * `sudo` keeps working under default: no PR_SET_NO_NEW_PRIVS is set when boxd is root (the
 * filter is loaded with CAP_SYS_ADMIN before privileges are dropped). A boxd that is not root
 * must set no_new_privs to load a filter at all. */
#ifndef BOXD_SANDBOX_H
#define BOXD_SANDBOX_H

#include <linux/filter.h>
#include <stdbool.h>
#include <sys/types.h>

struct agent;
struct spawner;

enum seccomp_profile { SECCOMP_NONE, SECCOMP_DEFAULT, SECCOMP_STRICT, SECCOMP_N };

/* The most threads besides boxd's main thread and its spawners that the filters guard. */
#define SANDBOX_GUARD_TIDS 8u

struct sandbox {
    struct sock_fprog prog[SECCOMP_N]; /* each whole profile; .filter NULL for none */
    struct sock_fprog strict_extra;    /* strict's rules alone, loaded over default */
    struct spawner *spawner;           /* the thread that starts runs (spawn.h) */
    pid_t spawner_tid;                 /* its tid, guarded by the filters like boxd's pid */
    bool spawner_filtered;             /* it carries the default profile */
    struct spawner *spawner_none;      /* unfiltered, for `seccomp: none` requests when the
                                          agent allows them and spawner is filtered; or NULL */
    pid_t spawner_none_tid;
    /* boxd's other threads (the file I/O threads, files.h), guarded like its pid; set before
     * sandbox_init builds the filters. */
    pid_t guard_tids[SANDBOX_GUARD_TIDS];
    size_t n_guard_tids;
    enum seccomp_profile dflt;
};

/* Makes the exec helper, starts the spawner threads and compiles the profiles. Returns 0 or a
 * negative errno, logged (start-up fails: a sandbox that cannot build its filters must not run
 * code unfiltered, and without the helper or a spawner no run could start safely). Call
 * sandbox_destroy either way. */
int sandbox_init(struct agent *a);
void sandbox_destroy(struct agent *a);

/* How a run under profile p is started: from which spawner thread (*via, never NULL after
 * sandbox_init) and which filter the child loads itself (*load, NULL for none). */
void sandbox_spawn_opts(const struct agent *a, enum seccomp_profile p, const struct sock_fprog **load,
                        struct spawner **via);

/* Writes the profiles' rules into buf as the header comment above lists them, from the tables
 * that make the filters. Returns the length, or -ENOSPC if size is too small. */
int sandbox_describe(char *buf, size_t size);

/* Parses "none" / "default" / "strict"; -1 if unknown. */
int sandbox_profile_parse(const char *name, size_t len);
const char *sandbox_profile_name(enum seccomp_profile p);

/* A run's identity: who it runs as. */
#define IDENTITY_MAX_GROUPS 64
struct identity {
    uid_t uid;
    gid_t gid;
    gid_t groups[IDENTITY_MAX_GROUPS];
    int ngroups;
    char home[256];
    char shell[256]; /* the passwd entry's login shell, "/bin/sh" when it names none */
    char user[64];
    bool change; /* differs from boxd's own: the child switches */
};

/* Looks up name in passwd and its groups. Returns 0, -ENOENT (no such user), -ENOMEM. With
 * name NULL, boxd's own uid. */
int identity_lookup(const char *name, struct identity *id);

#endif
