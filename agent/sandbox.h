/* What a run may do: seccomp profiles (compiled once at start-up with libseccomp and exported
 * as BPF, so the child only makes one system call to load one), the run's identity (user,
 * groups), and its resource limits.
 *
 * Profiles (a denied call fails with EPERM; it never kills the process):
 *   none     no filter.
 *   default  denies what a box user never needs and what could harm the box's kernel or boxd:
 *            kexec_load, kexec_file_load, init_module, finit_module, delete_module (kernel code),
 *            reboot (the box's life is the control plane's), swapon, swapoff, acct (host-wide
 *            state), open_by_handle_at (escapes a chroot/mount namespace by file handle),
 *            add_key, request_key, keyctl (the kernel keyring is not namespaced), bpf
 *            (kernel programs), iopl, ioperm (raw I/O ports), settimeofday, clock_settime,
 *            clock_adjtime, adjtimex (the box's clock), syslog (the kernel log), uselib,
 *            lookup_dcookie, vhangup; and every signal or trace aimed at boxd: kill, tkill,
 *            tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo, pidfd_open, ptrace, process_vm_readv,
 *            process_vm_writev, prlimit64 and fcntl(F_SETOWN) with boxd's pid or the tid of
 *            its spawner thread (spawn.h), which is boxd just as much (and kill with
 *            -boxd_pid; kill with -1 too when boxd is not PID 1, since -1 would then reach it);
 *            pidfd_send_signal answers ENOSYS (its target is an fd, which a filter cannot
 *            check; callers fall back to kill). This guards boxd against mistakes and ordinary
 *            code; it is not a wall against a determined root in the box, who can still write
 *            /proc/PID/mem or kill boxd's cgroup: run untrusted code as --user.
 *   strict   default, plus what isolates a run from the box: mount, umount2, pivot_root, chroot,
 *            unshare, setns, mknod, mknodat, ptrace (any), process_vm_*, perf_event_open,
 *            userfaultfd, personality, clone with namespace flags, and clone3 (ENOSYS, so libc
 *            falls back to clone, whose flags can be checked).
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

struct sandbox {
    struct sock_fprog prog[SECCOMP_N]; /* each whole profile; .filter NULL for none */
    struct sock_fprog strict_extra;    /* strict's rules alone, loaded over default */
    struct spawner *spawner;           /* the thread that starts runs (spawn.h) */
    pid_t spawner_tid;                 /* its tid, guarded by the filters like boxd's pid */
    bool spawner_filtered;             /* it carries the default profile */
    struct spawner *spawner_none;      /* unfiltered, for `seccomp: none` requests when the
                                          agent allows them and spawner is filtered; or NULL */
    pid_t spawner_none_tid;
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
    char user[64];
    bool change; /* differs from boxd's own: the child switches */
};

/* Looks up name in passwd and its groups. Returns 0, -ENOENT (no such user), -ENOMEM. With
 * name NULL, boxd's own uid. */
int identity_lookup(const char *name, struct identity *id);

#endif
