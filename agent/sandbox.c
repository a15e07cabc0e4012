#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent.h"
#include "log.h"
#include "spawn.h"

const char *sandbox_profile_name(enum seccomp_profile p)
{
    return p == SECCOMP_NONE ? "none" : p == SECCOMP_STRICT ? "strict" : "default";
}

int sandbox_profile_parse(const char *name, size_t len)
{
    for (int p = 0; p < SECCOMP_N; p++) {
        const char *n = sandbox_profile_name((enum seccomp_profile)p);
        if (strlen(n) == len && memcmp(n, name, len) == 0)
            return p;
    }
    return -1;
}

static const char *const deny_default[] = {
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "open_by_handle_at", "add_key", "request_key", "keyctl", "bpf",
    "iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "syslog",
    "uselib", "lookup_dcookie", "vhangup",
};

static const char *const deny_strict[] = {
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "mknod", "mknodat",
    "ptrace", "process_vm_readv", "process_vm_writev", "perf_event_open", "userfaultfd",
    "personality", "fsopen", "fsmount", "move_mount", "open_tree",
};

/* Calls whose first argument is a pid, denied when it is boxd's. */
static const char *const deny_pid_arg0[] = {
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open",
    "process_vm_readv", "process_vm_writev", "prlimit64",
};

static int deny(scmp_filter_ctx ctx, const char *name)
{
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR)
        return 0; /* not on this architecture */
    return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
}

/* pid_t arguments are 32-bit: compare the low half only (the upper half of the register is
 * not defined by the ABI). */
static int deny_arg(scmp_filter_ctx ctx, const char *name, unsigned arg, uint32_t value)
{
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR)
        return 0;
    struct scmp_arg_cmp cmp = {arg, SCMP_CMP_MASKED_EQ, 0xffffffffu, value};
    return seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(EPERM), nr, 1, &cmp);
}

/* Every id through which boxd can be signalled or traced: its pid, and its spawner thread's tid
 * (a fatal signal to any thread kills the process; a tracer of any thread owns its memory). */
static int add_guards(scmp_filter_ctx ctx, uint32_t id)
{
    int e = 0;
    for (size_t i = 0; e == 0 && i < sizeof deny_pid_arg0 / sizeof deny_pid_arg0[0]; i++)
        e = deny_arg(ctx, deny_pid_arg0[i], 0, id);
    if (e == 0)
        e = deny_arg(ctx, "ptrace", 1, id);
    /* fcntl(fd, F_SETOWN, id): I/O on fd would then signal boxd. */
    if (e == 0) {
        struct scmp_arg_cmp cmp[2] = {{1, SCMP_CMP_EQ, F_SETOWN, 0},
                                      {2, SCMP_CMP_MASKED_EQ, 0xffffffffu, id}};
        e = seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(fcntl), 2, cmp);
    }
    return e;
}

/* The default profile's rules. */
static int add_default(struct agent *a, scmp_filter_ctx ctx)
{
    int e = 0;
    uint32_t me = (uint32_t)a->pid;
    for (size_t i = 0; e == 0 && i < sizeof deny_default / sizeof deny_default[0]; i++)
        e = deny(ctx, deny_default[i]);
    if (e == 0)
        e = add_guards(ctx, me);
    if (e == 0 && a->sandbox.spawner_tid > 0 && a->sandbox.spawner_tid != a->pid)
        e = add_guards(ctx, (uint32_t)a->sandbox.spawner_tid);
    if (e == 0 && a->sandbox.spawner_none_tid > 0)
        e = add_guards(ctx, (uint32_t)a->sandbox.spawner_none_tid);
    /* The process group: boxd leads its own (a thread's tid leads none). */
    if (e == 0)
        e = deny_arg(ctx, "kill", 0, (uint32_t)-(int32_t)me);
    if (e == 0 && !a->pid1)
        e = deny_arg(ctx, "kill", 0, (uint32_t)-1);
    /* pidfd_send_signal takes an fd (of a pidfd, or of an open /proc/PID directory): its target
     * cannot be checked here, so it is answered ENOSYS, and callers fall back to kill(2), whose
     * target is checked above. */
    if (e == 0)
        e = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(pidfd_send_signal), 0);
    return e;
}

/* What strict adds to default. */
static int add_strict(scmp_filter_ctx ctx)
{
    int e = 0;
    for (size_t i = 0; e == 0 && i < sizeof deny_strict / sizeof deny_strict[0]; i++)
        e = deny(ctx, deny_strict[i]);
    static const uint32_t ns_flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
                                     CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP;
    if (e == 0) {
        struct scmp_arg_cmp cmp = {0, SCMP_CMP_MASKED_EQ, ns_flags, 0};
        /* Any namespace bit set: deny. Expressed as one rule per bit. */
        for (unsigned bit = 0; e == 0 && bit < 32; bit++) {
            if (!(ns_flags & (1u << bit)))
                continue;
            cmp.datum_a = 1u << bit;
            cmp.datum_b = 1u << bit;
            e = seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1, &cmp);
        }
    }
    if (e == 0)
        e = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    return e;
}

/* Compiles the default rules (when base) and the strict ones (when strict) into out. */
static int build(struct agent *a, bool base, bool strict, struct sock_fprog *out)
{
    out->filter = NULL;
    out->len = 0;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == NULL)
        return -ENOMEM;
    /* A binary tree of system call numbers instead of a chain: fewer instructions on every
     * call a run makes, and a shorter allow-cache emulation when a filter is loaded. */
    int e = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    if (e == 0 && base)
        e = add_default(a, ctx);
    if (e == 0 && strict)
        e = add_strict(ctx);
    int fd = -1;
    if (e == 0) {
        fd = memfd_create("boxd-seccomp", MFD_CLOEXEC);
        e = fd < 0 ? -errno : seccomp_export_bpf(ctx, fd);
    }
    seccomp_release(ctx);
    if (e < 0) {
        if (fd >= 0)
            close(fd);
        return e;
    }
    off_t size = lseek(fd, 0, SEEK_END);
    if (size <= 0 || size % (off_t)sizeof(struct sock_filter) != 0 || size > 65536) {
        close(fd);
        return -EINVAL;
    }
    struct sock_filter *f = malloc((size_t)size);
    if (f == NULL || pread(fd, f, (size_t)size, 0) != size) {
        free(f);
        close(fd);
        return -EIO;
    }
    close(fd);
    out->filter = f;
    out->len = (unsigned short)((size_t)size / sizeof *f);
    return 0;
}

static void free_all(struct sandbox *sb)
{
    for (int i = 0; i < SECCOMP_N; i++) {
        free(sb->prog[i].filter);
        sb->prog[i].filter = NULL;
        sb->prog[i].len = 0;
    }
    free(sb->strict_extra.filter);
    sb->strict_extra.filter = NULL;
    sb->strict_extra.len = 0;
}

static int build_all(struct agent *a)
{
    struct sandbox *sb = &a->sandbox;
    int e = build(a, true, false, &sb->prog[SECCOMP_DEFAULT]);
    if (e == 0)
        e = build(a, true, true, &sb->prog[SECCOMP_STRICT]);
    if (e == 0)
        e = build(a, false, true, &sb->strict_extra);
    if (e < 0)
        log_err("seccomp: building the profiles: %s", strerror(-e));
    return e;
}

int sandbox_init(struct agent *a)
{
    struct sandbox *sb = &a->sandbox;
    int p = sandbox_profile_parse(a->cfg.seccomp, strlen(a->cfg.seccomp));
    sb->dflt = p < 0 ? SECCOMP_DEFAULT : (enum seccomp_profile)p;
    const char *how;
    int e = spawn_helper_init(&how);
    if (e < 0) {
        log_err("spawn: cannot make the exec helper executable (memfd, or a copy in /run, "
                "/dev/shm or /tmp): %s", strerror(-e));
        return e;
    }
    if (strcmp(how, "memfd") != 0)
        log_info("spawn: memfds may not be executed here: the exec helper is a copy made in %s",
                 how);
    /* The spawner threads first: the filters guard their tids too. Every run is started by
     * one (spawn.h); without a thread there are no runs, so start-up fails. */
    struct spawner *sp = spawner_create(&sb->spawner_tid, &e), *none = NULL;
    bool want_none = sb->dflt != SECCOMP_NONE && a->cfg.allow_seccomp_none;
    if (sp && want_none)
        none = spawner_create(&sb->spawner_none_tid, &e);
    if (sp == NULL || (want_none && none == NULL)) {
        log_err("spawn: cannot start the spawner thread: %s", strerror(-e));
        spawner_stop(sp);
        sb->spawner_tid = sb->spawner_none_tid = 0;
        return e;
    }
    sb->spawner = sp;
    sb->spawner_none = none;
    e = build_all(a);
    if (e < 0)
        return e; /* sandbox_destroy stops the threads */
    if (none)
        spawner_arm(none, NULL); /* for requests that may ask for no filter */
    /* The spawner thread carries the default filter (unless the agent's default is none);
     * strict runs start from it too and load only strict_extra. If the filter will not load on
     * it, it serves unfiltered and each child loads its whole profile: slower, not weaker. */
    e = spawner_arm(sp, sb->dflt == SECCOMP_NONE ? NULL : &sb->prog[SECCOMP_DEFAULT]);
    sb->spawner_filtered = sb->dflt != SECCOMP_NONE && e == 0;
    if (e < 0)
        log_warn("seccomp: the spawner thread cannot load the filter (%s): each run loads its "
                 "own", strerror(-e));
    log_info("seccomp: runs use profile %s (%u instructions)%s", sandbox_profile_name(sb->dflt),
             sb->prog[sb->dflt].len,
             sb->spawner_filtered ? ", inherited from the spawner thread" : "");
    return 0;
}

void sandbox_spawn_opts(const struct agent *a, enum seccomp_profile p, const struct sock_fprog **load,
                        struct spawner **via)
{
    const struct sandbox *sb = &a->sandbox;
    *via = sb->spawner;
    *load = NULL;
    if (p == SECCOMP_NONE) {
        /* The filtered thread's children would inherit its filter: the unfiltered one's. */
        if (sb->spawner_filtered && sb->spawner_none)
            *via = sb->spawner_none;
        return;
    }
    if (sb->spawner_filtered)
        *load = p == SECCOMP_STRICT ? &sb->strict_extra : NULL;
    else
        *load = &sb->prog[p];
}

void sandbox_destroy(struct agent *a)
{
    /* The threads first: one holds a pointer to prog[SECCOMP_DEFAULT]. */
    spawner_stop(a->sandbox.spawner);
    spawner_stop(a->sandbox.spawner_none);
    a->sandbox.spawner = a->sandbox.spawner_none = NULL;
    free_all(&a->sandbox);
    spawn_helper_release();
}

/* passwd and group are read from the files themselves, not through NSS: the box's users live
 * in /etc/passwd, and NSS would load modules (libnss_systemd and its dependencies, half a
 * megabyte of resident memory) into PID 1 for nothing. */
static int find_user(const char *name, uid_t uid, struct passwd *pw, char *buf, size_t size)
{
    FILE *f = fopen("/etc/passwd", "re");
    if (f == NULL)
        return -errno;
    struct passwd *res;
    int found = -ENOENT;
    while (fgetpwent_r(f, pw, buf, size, &res) == 0) {
        if (name ? strcmp(res->pw_name, name) == 0 : res->pw_uid == uid) {
            found = 0;
            break;
        }
    }
    fclose(f);
    return found;
}

/* The user's supplementary groups: its primary group and every group listing it. */
static int user_groups(const char *user, gid_t primary, gid_t *groups, int max)
{
    int n = 0;
    groups[n++] = primary;
    FILE *f = fopen("/etc/group", "re");
    if (f == NULL)
        return n;
    struct group gr, *res;
    char buf[8192];
    while (n < max && fgetgrent_r(f, &gr, buf, sizeof buf, &res) == 0) {
        if (res->gr_gid == primary)
            continue;
        for (char **m = res->gr_mem; m && *m; m++)
            if (strcmp(*m, user) == 0) {
                groups[n++] = res->gr_gid;
                break;
            }
    }
    fclose(f);
    return n;
}

int identity_lookup(const char *name, struct identity *id)
{
    memset(id, 0, sizeof *id);
    struct passwd pw;
    char buf[4096];
    int e = find_user(name, geteuid(), &pw, buf, sizeof buf);
    if (e < 0) {
        if (name)
            return e == -ENOENT ? -ENOENT : e;
        /* boxd's own uid without a passwd entry: still a valid identity. */
        id->uid = geteuid();
        id->gid = getegid();
        snprintf(id->home, sizeof id->home, "/");
        snprintf(id->user, sizeof id->user, "%u", (unsigned)id->uid);
        id->ngroups = -1; /* keep boxd's groups */
        return 0;
    }
    id->uid = pw.pw_uid;
    id->gid = pw.pw_gid;
    snprintf(id->home, sizeof id->home, "%s", pw.pw_dir && pw.pw_dir[0] ? pw.pw_dir : "/");
    snprintf(id->user, sizeof id->user, "%s", pw.pw_name);
    id->ngroups = user_groups(pw.pw_name, pw.pw_gid, id->groups, IDENTITY_MAX_GROUPS);
    id->change = id->uid != geteuid() || id->gid != getegid();
    if (name == NULL)
        id->ngroups = -1; /* boxd's own user: keep its groups as they are */
    return 0;
}
