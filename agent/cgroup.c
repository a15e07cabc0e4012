#include "cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "log.h"
#include "io.h"
#include "procfs.h"

/* Reads a small file at dirfd/name into buf (NUL-terminated). Returns bytes or -errno. */
static ssize_t read_at(int dirfd, const char *name, char *buf, size_t size)
{
    return box_read_small(dirfd, name, buf, size);
}

static int write_at(int dirfd, const char *name, const char *s)
{
    int fd = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n;
    do
        n = write(fd, s, strlen(s));
    while (n < 0 && errno == EINTR);
    int e = n < 0 ? -errno : 0;
    close(fd);
    return e;
}

/* The cgroup2 mount point whose root is "/" (or the first one), from mountinfo. */
static int find_mount(char *mnt, size_t size, char *root, size_t rsize)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (f == NULL)
        return -errno;
    char line[4096];
    int found = -ENOENT;
    while (fgets(line, sizeof line, f)) {
        /* id parent major:minor root mountpoint options ... - fstype source superopts */
        char *sep = strstr(line, " - ");
        if (sep == NULL || strncmp(sep + 3, "cgroup2 ", 8) != 0)
            continue;
        char r[PATH_MAX], m[PATH_MAX];
        if (sscanf(line, "%*s %*s %*s %4095s %4095s", r, m) != 2)
            continue;
        if (found == 0 && strcmp(root, "/") == 0)
            continue; /* keep the first full mount */
        snprintf(mnt, size, "%s", m);
        snprintf(root, rsize, "%s", r);
        found = 0;
    }
    fclose(f);
    return found;
}

static int own_cgroup(char *path, size_t size)
{
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (f == NULL)
        return -errno;
    char line[4096];
    int found = -ENOENT;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "0::", 3) == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(path, size, "%s", line + 3);
            found = 0;
            break;
        }
    }
    fclose(f);
    return found;
}

/* Enables what controllers the parent offers among memory, pids and cpu, in dir's
 * cgroup.subtree_control. Failure only means fewer figures and limits. */
static void enable_controllers(int dirfd, struct cgroups *cg)
{
    char avail[512];
    if (read_at(dirfd, "cgroup.controllers", avail, sizeof avail) < 0)
        return;
    static const char *const want[] = {"memory", "pids", "cpu"};
    for (size_t i = 0; i < 3; i++) {
        char word[32];
        snprintf(word, sizeof word, " %s ", want[i]);
        char padded[520];
        snprintf(padded, sizeof padded, " %s ", avail);
        padded[strcspn(padded, "\n")] = ' ';
        if (strstr(padded, word) == NULL)
            continue;
        char cmd[32];
        snprintf(cmd, sizeof cmd, "+%s", want[i]);
        if (write_at(dirfd, "cgroup.subtree_control", cmd) == 0) {
            if (i == 0)
                cg->memory = true;
            else if (i == 1)
                cg->pids = true;
            else
                cg->cpu = true;
        }
    }
}

/* A previous boxd's run cgroups are cleared at start-up, before boxd serves: the processes in
 * them are killed (cgroup.kill, the whole subtree at once) and the directories removed, bottom
 * up. Their runs' records died with that boxd, so nothing is adopted. The kill is asynchronous:
 * the wait for the cgroup to empty - and for the kernel to let go of removed children - is
 * bounded by STALE_WAIT_MS in all (a process stuck in uninterruptible sleep must not hold up
 * start-up); what is still there after it is logged and left, and a later cgroup of the same
 * name is cleared again as it is made (rc_make). STALE_DEPTH_MAX bounds the walk: boxd's own
 * layout is two levels deep, a run as root may have made more. */
#define STALE_WAIT_MS 2000
#define STALE_DEPTH_MAX 8

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Waits until dirfd's cgroup has no process left, or the deadline. True if empty. */
static bool wait_empty(int dirfd, uint64_t deadline)
{
    int fd = openat(dirfd, "cgroup.events", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return true; /* gone */
    bool empty = false;
    for (;;) {
        char buf[256];
        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
        if (n <= 0) {
            empty = true;
            break;
        }
        buf[n] = '\0';
        const char *p = strstr(buf, "populated ");
        if (p == NULL || p[10] != '1') {
            empty = true;
            break;
        }
        uint64_t now = mono_ms();
        if (now >= deadline)
            break;
        struct pollfd pfd = {.fd = fd, .events = POLLPRI};
        uint64_t left = deadline - now;
        poll(&pfd, 1, left > 20 ? 20 : (int)left); /* also a re-read now and then */
    }
    close(fd);
    return empty;
}

/* Removes every cgroup below dirfd, deepest first; a parent's removal waits (until the deadline)
 * for its removed children to go offline. Returns the number left behind. */
static unsigned remove_below(int dirfd, int depth, uint64_t deadline)
{
    if (depth >= STALE_DEPTH_MAX)
        return 1;
    DIR *d = fdopendir(dup(dirfd));
    if (d == NULL)
        return 1;
    unsigned left = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_type != DT_DIR || de->d_name[0] == '.')
            continue;
        int fd = openat(dirfd, de->d_name, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            left += remove_below(fd, depth + 1, deadline);
            close(fd);
        }
        int e;
        while ((e = unlinkat(dirfd, de->d_name, AT_REMOVEDIR) < 0 ? errno : 0) == EBUSY &&
               mono_ms() < deadline) {
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (e != 0 && e != ENOENT)
            left++;
    }
    closedir(d);
    return left;
}

/* Kills everything in the cgroup base_fd/name and below, removes the cgroups below it and, if
 * keep_top is false, name itself. */
static void clear_stale(int base_fd, const char *name, bool keep_top, uint64_t deadline)
{
    int fd = openat(base_fd, name, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    write_at(fd, "cgroup.kill", "1");
    bool empty = wait_empty(fd, deadline);
    unsigned left = remove_below(fd, 0, deadline);
    close(fd);
    if (!keep_top && left == 0) {
        while (unlinkat(base_fd, name, AT_REMOVEDIR) < 0 && errno == EBUSY && mono_ms() < deadline) {
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (!empty || left > 0)
        log_warn("cgroup2: a previous boxd's run cgroups in %s: %s%u left after %d ms "
                 "(removed by the next boxd with this cgroup)",
                 name, empty ? "" : "processes still dying, ", left, STALE_WAIT_MS);
    else
        log_info("cgroup2: cleared a previous boxd's run cgroups (%s): their processes killed",
                 name);
}

/* True if pid is a live process (not a zombie: a boxd that is dead but not yet reaped by its
 * supervisor has runs as dead as its loop). */
static bool pid_alive(long pid)
{
    if (kill((pid_t)pid, 0) < 0 && errno == ESRCH)
        return false;
    char name[24];
    snprintf(name, sizeof name, "%ld", pid);
    struct proc_stat st;
    if (!proc_stat_read(name, &st))
        return kill((pid_t)pid, 0) == 0 || errno != ESRCH;
    return st.state != 'Z' && st.state != 'X' && st.state != 'x';
}

/* Leftovers of an earlier boxd: BASE/runs (as PID 1, the box is ours), and any BASE/runs-<pid>
 * whose boxd is gone (no such process, or a zombie) - or whose pid is ours: a directory named
 * for us that we have not made yet is a previous instance's (the same pid in a new pid
 * namespace: a container restarted, boxd-pidns.sh). Their processes are killed, their cgroups
 * removed; BASE/runs itself is kept for this PID 1. */
static void clean_stale(int base_fd, bool pid1)
{
    DIR *d = fdopendir(dup(base_fd));
    if (d == NULL)
        return;
    uint64_t deadline = mono_ms() + STALE_WAIT_MS;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_type != DT_DIR)
            continue;
        bool stale = false, keep = false;
        if (strcmp(de->d_name, "runs") == 0) {
            stale = keep = pid1;
        } else if (strncmp(de->d_name, "runs-", 5) == 0) {
            char *end;
            long pid = strtol(de->d_name + 5, &end, 10);
            stale = *end == '\0' && pid > 0 && (pid == (long)getpid() || !pid_alive(pid));
        }
        if (stale)
            clear_stale(base_fd, de->d_name, keep, deadline);
    }
    closedir(d);
}

int cgroup_init(struct agent *a)
{
    struct cgroups *cg = &a->cg;
    cg->runs_fd = -1;
    cg->base_fd = -1;
    cg->n_pool = 0;
    char mnt[PATH_MAX], root[PATH_MAX] = "", own[PATH_MAX];
    if (find_mount(mnt, sizeof mnt, root, sizeof root) < 0 || own_cgroup(own, sizeof own) < 0) {
        log_info("cgroup2 not found: runs are killed by process group and /proc walk");
        return 0;
    }
    /* The cgroup's path below the mount: strip the mount's own root. */
    const char *rel = own;
    size_t rl = strlen(root);
    if (strcmp(root, "/") != 0 && strncmp(own, root, rl) == 0)
        rel = own + rl;
    if (strcmp(rel, "/") == 0)
        rel = "";
    char base[2 * PATH_MAX + 8];
    bool at_root = rel[0] == '\0';
    int w = at_root && !a->pid1 ? snprintf(base, sizeof base, "%s/boxd", mnt)
                                : snprintf(base, sizeof base, "%s%s", mnt, rel);
    if (w < 0 || (size_t)w >= sizeof base)
        return 0;

    int e = 0;
    if (mkdir(base, 0755) < 0 && errno != EEXIST)
        e = -errno;
    int base_fd = e ? -1 : open(base, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    if (base_fd < 0) {
        log_info("cgroup2 at %s not usable (%s): runs are killed by process group", base,
                 strerror(e ? -e : errno));
        return 0;
    }
    /* Leave BASE for a leaf of our own when BASE is where we are and has controllers to hand
     * to the runs: a cgroup with controllers for its children may hold no processes itself.
     * The root of a hierarchy is exempt (PID 1 of a VM stays put), and without controllers
     * nothing needs the move - which is worth avoiding: a migration waits for an RCU grace
     * period, milliseconds of start-up. */
    bool in_base = !at_root || a->pid1;
    char avail[512] = "";
    read_at(base_fd, "cgroup.controllers", avail, sizeof avail);
    bool want = strstr(avail, "memory") || strstr(avail, "pids") || strstr(avail, "cpu");
    if (in_base && !at_root && want) {
        if ((mkdirat(base_fd, "agent", 0755) < 0 && errno != EEXIST)) {
            e = -errno;
        } else {
            int afd = openat(base_fd, "agent", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
            e = afd < 0 ? -errno : write_at(afd, "cgroup.procs", "0");
            if (afd >= 0)
                close(afd);
        }
        if (e < 0) {
            log_info("cgroup2: cannot move into %s/agent (%s): runs are killed by process group",
                     base, strerror(-e));
            close(base_fd);
            return 0;
        }
    }
    enable_controllers(base_fd, cg);
    /* PID 1 owns its box: its runs go in BASE/runs. A daemon may share BASE with another
     * boxd (two started by hand in one cgroup), so each gets BASE/runs-<pid>. */
    if (a->pid1)
        snprintf(cg->runs_name, sizeof cg->runs_name, "runs");
    else
        snprintf(cg->runs_name, sizeof cg->runs_name, "runs-%d", (int)getpid());
    clean_stale(base_fd, a->pid1);
    if (mkdirat(base_fd, cg->runs_name, 0755) < 0 && errno != EEXIST) {
        log_info("cgroup2: cannot make %s/%s (%s): runs are killed by process group", base,
                 cg->runs_name, strerror(errno));
        close(base_fd);
        return 0;
    }
    cg->runs_fd = openat(base_fd, cg->runs_name, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    cg->base_fd = base_fd;
    if (cg->runs_fd < 0)
        return 0;
    {
        struct cgroups tmp = *cg;
        enable_controllers(cg->runs_fd, &tmp);
        cg->memory = tmp.memory;
        cg->pids = tmp.pids;
        cg->cpu = tmp.cpu;
    }
    cg->base = strdup(base);
    cg->enabled = cg->base != NULL;
    log_info("cgroup2: runs in %s/%s (controllers:%s%s%s)", base, cg->runs_name,
             cg->memory ? " memory" : "",
             cg->pids ? " pids" : "", cg->cpu ? " cpu" : "");
    return 0;
}

static void rc_reset(struct run_cgroup *rc)
{
    memset(rc, 0, sizeof *rc);
    rc->dir_fd = rc->procs_fd = rc->events_fd = rc->cpu_fd = rc->peak_fd = -1;
}

/* Closes the fds, keeping the directory (a pooled cgroup below the top one). */
static void rc_close(struct run_cgroup *rc)
{
    int *fds[] = {&rc->procs_fd, &rc->events_fd, &rc->cpu_fd, &rc->peak_fd, &rc->dir_fd};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
}

/* Closes the fds and removes the directory (which fails, harmlessly, while dying members
 * remain: the next boxd with this BASE removes it). */
static void rc_remove(struct agent *a, struct run_cgroup *rc)
{
    rc_close(rc);
    if (rc->name[0] && unlinkat(a->cg.runs_fd, rc->name, AT_REMOVEDIR) < 0 && errno != ENOENT)
        log_warn("cgroup %s: rmdir: %s", rc->name, strerror(errno));
    rc_reset(rc);
}

void cgroup_destroy(struct agent *a)
{
    while (a->cg.n_pool > 0)
        rc_remove(a, &a->cg.pool[--a->cg.n_pool]);
    if (a->cg.runs_fd >= 0)
        close(a->cg.runs_fd);
    a->cg.runs_fd = -1;
    /* Remove the runs directory (empty by now, unless a dying run lingers; then the next boxd
     * with this BASE removes it). */
    if (a->cg.base_fd >= 0) {
        unlinkat(a->cg.base_fd, a->cg.runs_name, AT_REMOVEDIR);
        close(a->cg.base_fd);
    }
    a->cg.base_fd = -1;
    free(a->cg.base);
    a->cg.base = NULL;
}

/* Opens the fds of the cgroup named rc->name. On failure it is removed and rc reset. */
static int rc_open(struct agent *a, struct run_cgroup *rc)
{
    rc->dir_fd = openat(a->cg.runs_fd, rc->name, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    if (rc->dir_fd >= 0)
        rc->procs_fd = openat(rc->dir_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (rc->dir_fd >= 0)
        rc->events_fd = openat(rc->dir_fd, "cgroup.events", O_RDONLY | O_CLOEXEC);
    if (rc->dir_fd >= 0)
        rc->cpu_fd = openat(rc->dir_fd, "cpu.stat", O_RDONLY | O_CLOEXEC); /* -1 is fine */
    if (rc->dir_fd < 0 || rc->procs_fd < 0 || rc->events_fd < 0) {
        int e = -errno;
        rc_remove(a, rc);
        return e;
    }
    return 0;
}

/* Makes BASE/runs/cN with its fds open and its limits written. */
static int rc_make(struct agent *a, struct run_cgroup *rc)
{
    rc_reset(rc);
    if (!a->cg.enabled)
        return -ENOTSUP;
    snprintf(rc->name, sizeof rc->name, "c%llu", (unsigned long long)a->cg.next_no++);
    const char *name = rc->name;
    if (mkdirat(a->cg.runs_fd, name, 0755) < 0) {
        int e = errno;
        if (e != EEXIST)
            return -e;
        /* Not ours (runs-<pid> is made fresh by each boxd): kill what is in it, start again. */
        int fd = openat(a->cg.runs_fd, name, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            write_at(fd, "cgroup.kill", "1");
            close(fd);
        }
        if (unlinkat(a->cg.runs_fd, name, AT_REMOVEDIR) < 0 || mkdirat(a->cg.runs_fd, name, 0755) < 0)
            return -e;
    }
    int e = rc_open(a, rc);
    if (e < 0)
        return e;
    /* Limits, where the controllers are there; no swap, so a memory hog meets the OOM killer
     * (and is reported `oom`) instead of thrashing the box. */
    char num[32];
    const char *file = NULL;
    if (a->cfg.run_memory_max && a->cg.memory) {
        snprintf(num, sizeof num, "%llu", (unsigned long long)a->cfg.run_memory_max);
        if ((e = write_at(rc->dir_fd, "memory.max", num)) < 0)
            file = "memory.max";
        /* memory.swap.max exists only with swap accounting: without it there is no swap to
         * limit, and memory.max alone holds. */
        else if ((e = write_at(rc->dir_fd, "memory.swap.max", "0")) < 0 && e != -ENOENT)
            file = "memory.swap.max";
    }
    if (file == NULL && a->cfg.run_pids_max && a->cg.pids) {
        snprintf(num, sizeof num, "%llu", (unsigned long long)a->cfg.run_pids_max);
        if ((e = write_at(rc->dir_fd, "pids.max", num)) < 0)
            file = "pids.max";
    }
    if (file) {
        /* A cgroup without its limit would run the run unlimited: it is not used. */
        log_warn("cgroup %s: cannot write %s (%s): not used", rc->name, file, strerror(-e));
        rc_remove(a, rc);
        return e;
    }
    return 0;
}

/* Makes memory.peak this run's (run_usage.peak_kb). A new cgroup's is; a reused one's holds the
 * earlier runs' peak, and is reset for this run by writing to it (Linux 6.12 and later: the
 * reset holds for the fd that wrote, kept until the run releases the cgroup). Before 6.12 the
 * file is read-only: the run then reports its main process's peak instead (events.c). */
static void peak_start(struct agent *a, struct run_cgroup *rc)
{
    rc->peak_ok = false;
    if (!a->cg.memory)
        return;
    if (!rc->used) {
        rc->peak_ok = true;
        return;
    }
    if (rc->peak_fd < 0)
        rc->peak_fd = openat(rc->dir_fd, "memory.peak", O_RDWR | O_CLOEXEC);
    if (rc->peak_fd >= 0 && write(rc->peak_fd, "reset\n", 6) == 6) {
        rc->peak_ok = true;
        return;
    }
    if (rc->peak_fd >= 0)
        close(rc->peak_fd);
    rc->peak_fd = -1;
}

int cgroup_run_create(struct agent *a, struct run_cgroup *rc)
{
    struct cgroups *cg = &a->cg;
    while (cg->n_pool > 0) {
        *rc = cg->pool[--cg->n_pool];
        if (rc->dir_fd >= 0 || rc_open(a, rc) == 0) {
            peak_start(a, rc);
            return 0;
        }
    }
    int e = rc_make(a, rc);
    if (e == 0)
        peak_start(a, rc);
    return e;
}

void cgroup_pool_fill(struct agent *a)
{
    struct cgroups *cg = &a->cg;
    if (!cg->enabled || cg->n_pool > 0)
        return;
    if (rc_make(a, &cg->pool[0]) == 0)
        cg->n_pool = 1;
}

static uint64_t field(const char *buf, const char *key);

/* The cgroup's counters as they are now. */
static void read_counters(const struct agent *a, const struct run_cgroup *rc, struct run_usage *u)
{
    memset(u, 0, sizeof *u);
    if (rc->dir_fd < 0)
        return;
    char buf[1024];
    ssize_t n = -1;
    if (rc->cpu_fd >= 0 && (n = pread(rc->cpu_fd, buf, sizeof buf - 1, 0)) >= 0)
        buf[n] = '\0';
    else
        n = read_at(rc->dir_fd, "cpu.stat", buf, sizeof buf);
    if (n > 0) {
        u->user_us = field(buf, "user_usec");
        u->sys_us = field(buf, "system_usec");
        u->have_cpu = true;
    }
    if (a->cg.memory && read_at(rc->dir_fd, "memory.events", buf, sizeof buf) > 0)
        u->oom_kills = field(buf, "oom_kill");
    if (rc->peak_ok) {
        n = rc->peak_fd >= 0 ? pread(rc->peak_fd, buf, sizeof buf - 1, 0)
                             : read_at(rc->dir_fd, "memory.peak", buf, sizeof buf);
        if (n > 0) {
            buf[n] = '\0';
            u->peak_kb = strtoull(buf, NULL, 10) / 1024u;
            u->have_peak = true;
        }
    }
}

void cgroup_run_release(struct agent *a, struct run_cgroup *rc, bool reusable)
{
    if (rc->dir_fd < 0)
        return;
    struct cgroups *cg = &a->cg;
    if (cgroup_run_populated(rc)) {
        cgroup_run_kill(rc);
        reusable = false;
    }
    if (!reusable || cg->n_pool >= CGROUP_POOL_MAX || a->shutting_down) {
        rc_remove(a, rc);
        return;
    }
    struct run_usage now;
    read_counters(a, rc, &now);
    rc->base_user_us = now.user_us;
    rc->base_sys_us = now.sys_us;
    rc->base_oom_kills = now.oom_kills;
    rc->used = true;
    /* Only the top one keeps its fds (as many as one cgroup made ahead): a burst of runs
     * leaves directories behind, not descriptors. */
    if (cg->n_pool > 0)
        rc_close(&cg->pool[cg->n_pool - 1]);
    cg->pool[cg->n_pool++] = *rc;
    rc_reset(rc);
}

bool cgroup_run_populated(const struct run_cgroup *rc)
{
    if (rc->events_fd < 0)
        return false;
    char buf[256];
    ssize_t n = pread(rc->events_fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    const char *p = strstr(buf, "populated ");
    return p && p[10] == '1';
}

int cgroup_run_signal(const struct run_cgroup *rc, int sig)
{
    if (rc->dir_fd < 0)
        return 0;
    int fd = openat(rc->dir_fd, "cgroup.procs", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    FILE *f = fdopen(fd, "r");
    if (f == NULL) {
        close(fd);
        return 0;
    }
    int n = 0;
    long pid;
    /* A pid read here is in the cgroup until it is reaped, and we are its reaper (directly
     * or as subreaper/init), so it cannot be reused before this kill. */
    while (fscanf(f, "%ld", &pid) == 1)
        if (pid > 1 && kill((pid_t)pid, sig) == 0)
            n++;
    fclose(f);
    return n;
}

int cgroup_run_kill(const struct run_cgroup *rc)
{
    if (rc->dir_fd < 0)
        return -EBADF;
    return write_at(rc->dir_fd, "cgroup.kill", "1");
}

static uint64_t field(const char *buf, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = buf; (p = strstr(p, key)) != NULL; p += n)
        if ((p == buf || p[-1] == '\n') && p[n] == ' ')
            return strtoull(p + n + 1, NULL, 10);
    return 0;
}

static uint64_t minus(uint64_t now, uint64_t base)
{
    return now > base ? now - base : 0;
}

void cgroup_run_usage(const struct agent *a, const struct run_cgroup *rc, struct run_usage *u)
{
    read_counters(a, rc, u);
    u->user_us = minus(u->user_us, rc->base_user_us);
    u->sys_us = minus(u->sys_us, rc->base_sys_us);
    u->oom_kills = minus(u->oom_kills, rc->base_oom_kills);
}

/* ---- Fallback without cgroups ------------------------------------------------------------- */

struct pinfo {
    pid_t pid, ppid, pgid, sid;
};

int proc_tree_signal(pid_t pid, pid_t pgid, int sig)
{
    DIR *d = opendir("/proc");
    if (d == NULL)
        return kill(-pgid, sig) == 0;
    size_t cap = 256, n = 0;
    struct pinfo *ps = malloc(cap * sizeof *ps);
    struct dirent *de;
    while (ps && (de = readdir(d)) != NULL) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        struct proc_stat st;
        if (!proc_stat_read(de->d_name, &st))
            continue;
        struct pinfo p = {.pid = st.pid, .ppid = st.ppid, .pgid = st.pgid, .sid = st.sid};
        if (n == cap) {
            struct pinfo *np = realloc(ps, 2 * cap * sizeof *ps);
            if (np == NULL)
                break;
            ps = np;
            cap *= 2;
        }
        ps[n++] = p;
    }
    closedir(d);
    int count = 0;
    if (kill(-pgid, sig) == 0)
        count++;
    if (ps == NULL)
        return count;
    /* Mark the tree: the session of the run, and every descendant of pid (fixed point). */
    bool *in = calloc(n ? n : 1, sizeof *in);
    if (in) {
        bool changed = true;
        for (size_t i = 0; i < n; i++)
            in[i] = ps[i].pid == pid || ps[i].sid == pgid || ps[i].pgid == pgid;
        while (changed) {
            changed = false;
            for (size_t i = 0; i < n; i++) {
                if (in[i])
                    continue;
                for (size_t j = 0; j < n; j++)
                    if (in[j] && ps[j].pid == ps[i].ppid) {
                        in[i] = changed = true;
                        break;
                    }
            }
        }
        for (size_t i = 0; i < n; i++)
            if (in[i] && ps[i].pid > 1 && ps[i].pid != getpid() && kill(ps[i].pid, sig) == 0)
                count++;
        free(in);
    }
    free(ps);
    return count;
}

/* The number of fd links one scan reads at most: a box has few processes, but the scan runs on
 * the loop, so it is bounded whatever the box holds. */
#define HOLDERS_SCAN_MAX 200000

/* Whether the fd named name in the fd directory fd_dir is on the terminal device tty: a link to
 * a path (a pipe's or socket's is not one), and a character device of that number. */
static bool on_tty(int fd_dir, const char *name, const char *link, dev_t tty)
{
    struct stat st;
    return tty != 0 && link[0] == '/' && fstatat(fd_dir, name, &st, 0) == 0 &&
           S_ISCHR(st.st_mode) && st.st_rdev == tty;
}

/* True if process pid (its /proc directory open as dir_fd) has an fd on one of the pipes, or
 * on the terminal tty (0: none). */
static bool holds_pipe(int dir_fd, const ino_t *inos, int n, dev_t tty, unsigned *budget)
{
    int fd_dir = openat(dir_fd, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_dir < 0)
        return false;
    DIR *d = fdopendir(fd_dir);
    if (d == NULL) {
        close(fd_dir);
        return false;
    }
    bool found = false;
    struct dirent *de;
    while (!found && *budget > 0 && (de = readdir(d)) != NULL) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        (*budget)--;
        char link[64];
        ssize_t len = readlinkat(dirfd(d), de->d_name, link, sizeof link - 1);
        if (len <= 0)
            continue;
        link[len] = '\0';
        if (on_tty(dirfd(d), de->d_name, link, tty)) {
            found = true;
            break;
        }
        unsigned long long ino;
        if (sscanf(link, "pipe:[%llu]", &ino) != 1)
            continue;
        for (int i = 0; i < n; i++)
            if ((ino_t)ino == inos[i])
                found = true;
    }
    closedir(d);
    return found;
}

int proc_pipe_holders_signal(const ino_t *inos, int n, dev_t tty, int sig)
{
    DIR *d = opendir("/proc");
    if (d == NULL || (n <= 0 && tty == 0)) {
        if (d)
            closedir(d);
        return 0;
    }
    pid_t self = getpid();
    unsigned budget = HOLDERS_SCAN_MAX;
    int count = 0;
    struct dirent *de;
    while (budget > 0 && (de = readdir(d)) != NULL) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end != '\0' || pid <= 1 || pid == self)
            continue;
        int dir_fd = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd < 0)
            continue;
        /* The pid may be reused between the scan and the signal: a pidfd pins the process,
         * and the check is made again through it before anything is sent. */
        if (holds_pipe(dir_fd, inos, n, tty, &budget)) {
            int pfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
            if (pfd >= 0) {
                if (holds_pipe(dir_fd, inos, n, tty, &budget) &&
                    syscall(SYS_pidfd_send_signal, pfd, sig, NULL, 0) == 0)
                    count++;
                close(pfd);
            }
        }
        close(dir_fd);
    }
    closedir(d);
    if (budget == 0)
        log_warn("proc: stopped looking for the holders of a run's pipes after %u fds",
                 HOLDERS_SCAN_MAX);
    return count;
}
