#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/ioprio.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "agent.h"
#include "log.h"
#include "passwd.h"
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

/* The profiles' rules are tables, and agent/sandbox.h's list of them is made from these tables
 * (sandbox_describe; tests/agent/test_sandbox_doc.c fails when the header says otherwise). */

/* Denied whatever their arguments. */
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

/* What a guard compares an argument with. */
enum target {
    T_ID,       /* boxd's pid, and its spawner thread's tid (spawn.h): a signal to either is fatal
                 * to boxd, a tracer of either owns its memory */
    T_PGRP,     /* boxd's process group (and its pid, the group it leads when it leads one) */
    T_NEG_PGRP, /* the same negated: how kill(2) and F_SETOWN name a process group */
    T_UID,      /* 0 and boxd's uid: the *_USER forms reach every process of the uid (0 there
                 * means the caller's own uid, which is boxd's for a run as boxd's user) */
    T_ALL,      /* -1, every process: only when boxd is not PID 1 (the kernel spares PID 1) */
    T_ANY,      /* the form is denied whatever it names: its target cannot be checked */
    T_NS_FLAGS, /* any CLONE_NEW* bit set */
};

/* One guarded form of a call: denied (with err) when argument arg matches target, and, when
 * sel_name is set, argument sel_arg (the form: F_SETOWN, PRIO_PGRP...) is sel. Arguments are
 * compared in their low 32 bits: pids, uids, fcntl and ioctl commands and the `which` of
 * setpriority are 32-bit, and the kernel ignores the upper half of the register (which a
 * caller may fill to slip past a 64-bit comparison). */
struct guard {
    const char *call;
    int sel_arg;
    uint32_t sel;
    const char *sel_name;
    int arg; /* -1 with T_ANY */
    enum target target;
    int err;
};

#define NOSEL -1, 0, NULL
#define SEL(n, v) n, (uint32_t)(v), #v

static const struct guard guard_default[] = {
    /* Signals and traces aimed at boxd. */
    {"kill", NOSEL, 0, T_ID, EPERM},
    {"kill", NOSEL, 0, T_NEG_PGRP, EPERM},
    {"kill", NOSEL, 0, T_ALL, EPERM},
    {"tkill", NOSEL, 0, T_ID, EPERM},
    {"tgkill", NOSEL, 0, T_ID, EPERM},
    {"rt_sigqueueinfo", NOSEL, 0, T_ID, EPERM},
    {"rt_tgsigqueueinfo", NOSEL, 0, T_ID, EPERM},
    {"pidfd_open", NOSEL, 0, T_ID, EPERM},
    {"ptrace", NOSEL, 1, T_ID, EPERM},
    {"process_vm_readv", NOSEL, 0, T_ID, EPERM},
    {"process_vm_writev", NOSEL, 0, T_ID, EPERM},
    {"prlimit64", NOSEL, 0, T_ID, EPERM},
    /* pidfd_send_signal takes an fd (of a pidfd, or of an open /proc/PID directory): its target
     * cannot be checked here, so it is answered ENOSYS, and callers fall back to kill(2). */
    {"pidfd_send_signal", NOSEL, -1, T_ANY, ENOSYS},
    /* An fd's owner gets its SIGIO, or the F_SETSIG signal - SIGKILL if the caller likes - on
     * I/O with O_ASYNC set, and the kernel's only check (sigio_perm) passes for a root caller.
     * So no fd may be owned by boxd: F_SETOWN is checked; F_SETOWN_EX and the socket ioctls
     * FIOSETOWN and SIOCSPGRP take a pointer, which a filter cannot read, so they are denied
     * outright (F_SETOWN to the caller's own pid does what they do, but for one thread). */
    {"fcntl", SEL(1, F_SETOWN), 2, T_ID, EPERM},
    {"fcntl", SEL(1, F_SETOWN), 2, T_NEG_PGRP, EPERM},
    {"fcntl", SEL(1, F_SETOWN_EX), -1, T_ANY, EPERM},
    {"ioctl", SEL(1, FIOSETOWN), -1, T_ANY, EPERM},
    {"ioctl", SEL(1, SIOCSPGRP), -1, T_ANY, EPERM},
    /* Scheduling: boxd niced to 19, pinned to a busy CPU, made SCHED_IDLE or idle-class I/O
     * would starve every run and the control plane. who 0 names the caller: allowed. */
    {"setpriority", SEL(0, PRIO_PROCESS), 1, T_ID, EPERM},
    {"setpriority", SEL(0, PRIO_PGRP), 1, T_PGRP, EPERM},
    {"setpriority", SEL(0, PRIO_USER), 1, T_UID, EPERM},
    {"ioprio_set", SEL(0, IOPRIO_WHO_PROCESS), 1, T_ID, EPERM},
    {"ioprio_set", SEL(0, IOPRIO_WHO_PGRP), 1, T_PGRP, EPERM},
    {"ioprio_set", SEL(0, IOPRIO_WHO_USER), 1, T_UID, EPERM},
    {"sched_setaffinity", NOSEL, 0, T_ID, EPERM},
    {"sched_setscheduler", NOSEL, 0, T_ID, EPERM},
    {"sched_setparam", NOSEL, 0, T_ID, EPERM},
    {"sched_setattr", NOSEL, 0, T_ID, EPERM},
    {"migrate_pages", NOSEL, 0, T_ID, EPERM},
    {"move_pages", NOSEL, 0, T_ID, EPERM},
};

static const struct guard guard_strict[] = {
    /* Namespaces: clone with any CLONE_NEW* flag; clone3 keeps its flags behind a pointer, so
     * it answers ENOSYS and libc falls back to clone, whose flags can be checked. */
    {"clone", NOSEL, 0, T_NS_FLAGS, EPERM},
    {"clone3", NOSEL, -1, T_ANY, ENOSYS},
};

#undef NOSEL
#undef SEL

static int deny(scmp_filter_ctx ctx, const char *name)
{
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR)
        return 0; /* not on this architecture */
    return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
}

/* The most values a target stands for: boxd's pid, two spawner threads, the guarded threads. */
#define TARGET_VALUES_MAX (3u + SANDBOX_GUARD_TIDS)

/* The values target stands for in this boxd; returns how many (at most TARGET_VALUES_MAX). */
static size_t target_values(const struct agent *a, enum target t, uint32_t v[TARGET_VALUES_MAX])
{
    size_t n = 0;
    pid_t pg = getpgrp();
    switch (t) {
    case T_ID:
        v[n++] = (uint32_t)a->pid;
        if (a->sandbox.spawner_tid > 0 && a->sandbox.spawner_tid != a->pid)
            v[n++] = (uint32_t)a->sandbox.spawner_tid;
        /* The second spawner, for runs under --seccomp none: boxd too. */
        if (a->sandbox.spawner_none_tid > 0)
            v[n++] = (uint32_t)a->sandbox.spawner_none_tid;
        /* The file I/O threads: a run must not signal, renice or migrate them either. */
        for (size_t i = 0; i < a->sandbox.n_guard_tids && i < SANDBOX_GUARD_TIDS; i++)
            v[n++] = (uint32_t)a->sandbox.guard_tids[i];
        break;
    case T_PGRP:
    case T_NEG_PGRP:
        v[n++] = (uint32_t)a->pid;
        if (pg > 0 && pg != a->pid)
            v[n++] = (uint32_t)pg;
        if (t == T_NEG_PGRP)
            for (size_t i = 0; i < n; i++)
                v[i] = (uint32_t)-(int32_t)v[i];
        break;
    case T_UID:
        v[n++] = 0;
        if (geteuid() != 0)
            v[n++] = (uint32_t)geteuid();
        break;
    case T_ALL:
        if (!a->pid1)
            v[n++] = (uint32_t)-1;
        break;
    case T_ANY:
    case T_NS_FLAGS:
        break;
    }
    return n;
}

static int add_guard(const struct agent *a, scmp_filter_ctx ctx, const struct guard *g)
{
    int nr = seccomp_syscall_resolve_name(g->call);
    if (nr == __NR_SCMP_ERROR)
        return 0;
    struct scmp_arg_cmp cmp[2];
    unsigned n = 0;
    if (g->sel_name)
        cmp[n++] = (struct scmp_arg_cmp){(unsigned)g->sel_arg, SCMP_CMP_MASKED_EQ, 0xffffffffu,
                                         g->sel};
    if (g->target == T_ANY)
        return seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(g->err), nr, n, cmp);
    if (g->target == T_NS_FLAGS) {
        static const uint32_t ns_flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC |
                                         CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
                                         CLONE_NEWCGROUP;
        /* Any namespace bit set: deny. Expressed as one rule per bit. */
        int e = 0;
        for (unsigned bit = 0; e == 0 && bit < 32; bit++) {
            if (!(ns_flags & (1u << bit)))
                continue;
            cmp[n] = (struct scmp_arg_cmp){(unsigned)g->arg, SCMP_CMP_MASKED_EQ, 1u << bit,
                                           1u << bit};
            e = seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(g->err), nr, n + 1, cmp);
        }
        return e;
    }
    uint32_t v[TARGET_VALUES_MAX];
    size_t nv = target_values(a, g->target, v);
    int e = 0;
    for (size_t i = 0; e == 0 && i < nv; i++) {
        cmp[n] = (struct scmp_arg_cmp){(unsigned)g->arg, SCMP_CMP_MASKED_EQ, 0xffffffffu, v[i]};
        e = seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(g->err), nr, n + 1, cmp);
    }
    return e;
}

#define N_OF(x) (sizeof(x) / sizeof(x)[0])

/* The default profile's rules. */
static int add_default(struct agent *a, scmp_filter_ctx ctx)
{
    int e = 0;
    for (size_t i = 0; e == 0 && i < N_OF(deny_default); i++)
        e = deny(ctx, deny_default[i]);
    for (size_t i = 0; e == 0 && i < N_OF(guard_default); i++)
        e = add_guard(a, ctx, &guard_default[i]);
    return e;
}

/* What strict adds to default. */
static int add_strict(struct agent *a, scmp_filter_ctx ctx)
{
    int e = 0;
    for (size_t i = 0; e == 0 && i < N_OF(deny_strict); i++)
        e = deny(ctx, deny_strict[i]);
    for (size_t i = 0; e == 0 && i < N_OF(guard_strict); i++)
        e = add_guard(a, ctx, &guard_strict[i]);
    return e;
}

/* ---- The rules as text (sandbox.h) ---------------------------------------------------------- */

struct text {
    char *buf;
    size_t size, len;
    size_t col; /* on the current line */
    bool overflow;
};

static void put(struct text *t, const char *s)
{
    size_t n = strlen(s);
    if (t->len + n + 1 > t->size) {
        t->overflow = true;
        return;
    }
    memcpy(t->buf + t->len, s, n + 1);
    t->len += n;
    const char *nl = strrchr(s, '\n');
    t->col = nl ? strlen(nl + 1) : t->col + n;
}

/* One word of a list, wrapped to the header's 100 columns. */
#define DOC_WIDTH 100
#define DOC_INDENT " *     "
static void word(struct text *t, const char *w)
{
    if (t->col > strlen(DOC_INDENT) && t->col + 1 + strlen(w) > DOC_WIDTH)
        put(t, "\n" DOC_INDENT);
    else if (t->col > strlen(DOC_INDENT))
        put(t, " ");
    put(t, w);
}

static const char *target_name(enum target t)
{
    static const char *const names[] = {"ID", "PGRP", "-PGRP", "UID", "-1", "", "CLONE_NEW*"};
    return names[t];
}

static void guard_text(const struct guard *g, char *w, size_t size)
{
    int at = snprintf(w, size, "%s", g->call);
    int last = g->sel_name && g->sel_arg > g->arg ? g->sel_arg : g->arg;
    for (int i = 0; i <= last && at > 0 && (size_t)at < size; i++) {
        const char *s = g->sel_name && i == g->sel_arg ? g->sel_name
                        : i == g->arg                  ? target_name(g->target)
                                                       : "_";
        at += snprintf(w + at, size - (size_t)at, "%s%s%s", i ? "," : "(", s,
                       i == last ? ")" : "");
    }
    if (g->err != EPERM && at > 0 && (size_t)at < size)
        snprintf(w + at, size - (size_t)at, "=%s", g->err == ENOSYS ? "ENOSYS" : "?");
}

static void list_section(struct text *t, const char *title, const char *const *names, size_t nn,
                         const struct guard *guards, size_t ng)
{
    put(t, " *   ");
    put(t, title);
    put(t, "\n" DOC_INDENT);
    for (size_t i = 0; i < nn; i++)
        word(t, names[i]);
    for (size_t i = 0; i < ng; i++) {
        char w[96];
        guard_text(&guards[i], w, sizeof w);
        word(t, w);
    }
    put(t, "\n");
}

int sandbox_describe(char *buf, size_t size)
{
    struct text t = {.buf = buf, .size = size};
    if (size == 0)
        return -ENOSPC;
    buf[0] = '\0';
    put(&t, " * <rules>\n");
    list_section(&t, "default:", deny_default, N_OF(deny_default), guard_default,
                 N_OF(guard_default));
    list_section(&t, "strict, besides default's:", deny_strict, N_OF(deny_strict), guard_strict,
                 N_OF(guard_strict));
    put(&t, " * </rules>\n");
    return t.overflow ? -ENOSPC : (int)t.len;
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
        e = add_strict(a, ctx);
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

/* passwd and group are read from the files themselves, not through NSS (passwd.h says why). */
int identity_lookup(const char *name, struct identity *id)
{
    memset(id, 0, sizeof *id);
    struct passwd_entry pw;
    int e = passwd_find("/etc/passwd", name, geteuid(), &pw);
    if (e < 0) {
        if (name)
            return e == -ENOENT ? -ENOENT : e;
        /* boxd's own uid without a passwd entry: still a valid identity. */
        id->uid = geteuid();
        id->gid = getegid();
        snprintf(id->home, sizeof id->home, "/");
        snprintf(id->shell, sizeof id->shell, "/bin/sh");
        snprintf(id->user, sizeof id->user, "%u", (unsigned)id->uid);
        id->ngroups = -1; /* keep boxd's groups */
        return 0;
    }
    id->uid = pw.uid;
    id->gid = pw.gid;
    snprintf(id->home, sizeof id->home, "%s", pw.home[0] ? pw.home : "/");
    snprintf(id->shell, sizeof id->shell, "%s", pw.shell[0] ? pw.shell : "/bin/sh");
    snprintf(id->user, sizeof id->user, "%s", pw.name);
    id->ngroups =
        passwd_user_groups("/etc/group", pw.name, pw.gid, id->groups, IDENTITY_MAX_GROUPS);
    id->change = id->uid != geteuid() || id->gid != getegid();
    if (name == NULL)
        id->ngroups = -1; /* boxd's own user: keep its groups as they are */
    return 0;
}
