/* Starting a run (runstart.h): allocation, pipes, and the spawner thread's jobs. */
#include "runstart.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "alloc.h"
#include "log.h"
#include "runtab.h"
#include "sandbox.h"
#include "spawn.h"

#define DESC_MAX 256u

static int make_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    return 0;
}
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

/* A terminal run's pty (PROTOCOL.md 4.9): the master (close-on-exec, for the agent) and the
 * slave (for the child: its fds 0-2 and controlling terminal), the window size set, the slave
 * owned by the run's user as a login's terminal is (mode 0620). Nothing here blocks: /dev/ptmx
 * and the slave are character devices that open at once. The slave comes from the master
 * itself (TIOCGPTPEER, Linux 4.13), not by a path; older kernels open it by the name the
 * master gives. Returns 0 or a negative errno. */
static int pty_open(const struct identity *id, uint16_t rows, uint16_t cols, int *master,
                    int *slave)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0)
        return -errno;
    struct winsize ws = {.ws_row = rows, .ws_col = cols};
    int s = -1;
    if (unlockpt(m) < 0 || ioctl(m, TIOCSWINSZ, &ws) < 0)
        goto fail;
    s = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0 && (errno == EINVAL || errno == ENOTTY)) {
        char name[64];
        if (ptsname_r(m, name, sizeof name) != 0)
            goto fail;
        s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    }
    if (s < 0)
        goto fail;
    /* Best effort, as for a login: a boxd that is not root keeps the pty its own. */
    if (fchown(s, id->uid, (gid_t)-1) < 0 || fchmod(s, 0620) < 0)
        log_debug("pty: cannot give the terminal to uid %u: %s", (unsigned)id->uid,
                  strerror(errno));
    *master = m;
    *slave = s;
    return 0;
fail:;
    int e = -errno;
    close(m);
    return e;
}

static struct run *run_alloc(struct agent *a, const struct run_params *p)
{
    struct run *r = boxd_calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->a = a;
    if (p->id) {
        memcpy(r->id, p->id, p->id_len);
        r->id[p->id_len] = '\0';
    } else {
        runtab_next_id(a, r->id, sizeof r->id);
        a->next_run_no++;
    }
    /* What list shows: the shell expression, or the argv as NUL-separated strings; both
     * capped at DESC_MAX bytes (the last string cut short if need be). */
    char desc[DESC_MAX];
    size_t at = 0;
    if (p->is_shell || p->desc) {
        const char *text = p->desc ? p->desc : p->argv[3];
        at = strnlen(text, DESC_MAX - 1);
        memcpy(desc, text, at);
        desc[at++] = '\0';
        r->desc_argc = 1;
    } else {
        for (char **v = p->argv; *v && at < DESC_MAX; v++) {
            size_t n = strnlen(*v, DESC_MAX - 1 - at);
            memcpy(desc + at, *v, n);
            at += n;
            desc[at++] = '\0';
            r->desc_argc++;
        }
    }
    r->desc = boxd_malloc(at);
    if (r->desc == NULL) {
        free(r);
        return NULL;
    }
    memcpy(r->desc, desc, at);
    if (p->internal && (r->capture = boxd_malloc(p->capture ? p->capture : 1)) == NULL) {
        free(r->desc);
        free(r);
        return NULL;
    }
    r->is_argv = !p->is_shell && !p->desc;
    list_init(&r->readers);
    list_init(&r->fin_link);
    runlog_init(&r->log, a->cfg.log_bytes);
    r->log.total = &a->log_held;
    r->grace_ms = p->grace_ms;
    r->timeout_ms = p->timeout_ms;
    r->cg.dir_fd = r->cg.procs_fd = r->cg.events_fd = r->cg.cpu_fd = -1;
    r->child_fd[0] = r->child_fd[1] = r->child_fd[2] = -1;
    list_init(&r->start_link);
    for (int i = 0; i < 2; i++) {
        r->out[i].run = r;
        r->out[i].fd = -1;
        r->out[i].stream = i + 1;
    }
    uv_timer_init(a->loop, &r->kill_timer);
    uv_timer_init(a->loop, &r->flush_timer);
    uv_timer_init(a->loop, &r->drain_timer);
    r->kill_timer.data = r->flush_timer.data = r->drain_timer.data = r;
    r->handles_open = 3;
    r->started_ns = now_real_ns();
    r->start_mono = now_mono_ns();
    if (p->internal) {
        r->capture_max = p->capture;
        r->internal = true;
        r->on_end = p->on_end;
        r->end_arg = p->end_arg;
        list_add_tail(&a->runs, &r->link); /* for shutdown's cancel and teardown */
        return r;
    }
    list_add_tail(&a->runs, &r->link);
    runtab_id_insert(r);
    a->n_live++;
    a->started_total++;
    /* From here on the run owns what it releases at its end, whatever happens. */
    r->release = p->release;
    r->release_arg = p->release_arg;
    return r;
}

/* Kills what a spawn that timed out left (spawn.h: the helper, stopped or traced by the run's
 * user). Its pid is not reaped (the run is still starting and the reaper has not had it), so it
 * cannot have been reused. */
static void kill_timed_out(struct run *r, pid_t pid)
{
    if (r->early_exit || pid <= 0)
        return;
    if (r->cg.dir_fd >= 0)
        cgroup_run_kill(&r->cg);
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
}

static void job_done(struct spawn_job *j)
{
    struct run *r = j->owner;
    list_del(&r->start_link);
    r->a->n_starting--;
    pid_t pid = j->pid, failed = j->failed_pid;
    const char *stage = j->stage;
    if (j->timed_out)
        kill_timed_out(r, failed);
    r->job = NULL;
    spawn_job_free(j);
    run__spawned(r, pid, stage, failed);
}

static void spawns_done(struct spawner *s)
{
    if (s == NULL)
        return;
    for (struct spawn_job *j = spawner_take_done(s), *next; j; j = next) {
        next = j->next;
        job_done(j);
    }
}

void runs_spawns_done(struct agent *a)
{
    spawns_done(a->sandbox.spawner);
    spawns_done(a->sandbox.spawner_none);
}

static void spawner_halt_one(struct agent *a, struct spawner *s)
{
    if (s == NULL)
        return;
    struct spawn_job *pending = spawner_halt(s);
    runs_spawns_done(a);
    /* Never begun: they fail as a spawn that could not fork. */
    for (struct spawn_job *j = pending, *next; j; j = next) {
        next = j->next;
        j->pid = -ECANCELED;
        j->stage = "fork";
        j->failed_pid = 0;
        job_done(j);
    }
}

void runs_spawner_halt(struct agent *a)
{
    spawner_halt_one(a, a->sandbox.spawner);
    spawner_halt_one(a, a->sandbox.spawner_none);
}

/* Hands the run to a spawner thread (the loop goes on meanwhile: runs_spawns_done). */
static int submit(struct agent *a, struct run *r, const struct run_params *p,
                  struct spawn_req *sr)
{
    struct spawner *via;
    sandbox_spawn_opts(a, p->seccomp, &sr->seccomp, &via);
    if (via == NULL) {
        /* Only where sandbox_init never ran (the connection fuzzer): the loop's
         * thread never starts a process itself. */
        run__spawned(r, -ENOSYS, "fork", 0);
        return 0;
    }
    /* Always on a spawner thread; the loop goes on meanwhile (runs_spawns_done). */
    r->job = spawn_job_new(sr, r);
    if (r->job == NULL) {
        run__spawned(r, -ENOMEM, "fork", 0);
        return 0;
    }
    list_add_tail(&a->starting, &r->start_link);
    a->n_starting++;
    spawner_submit(via, r->job);
    return 0;
}

/* A terminal run's start (PROTOCOL.md 4.9): out[0] reads the master, stdin writes to a second
 * fd of it (libuv watches an fd in one handle only), and the slave is the child's 0, 1, 2 and
 * controlling terminal, held here until the child has it (child_fd, closed in run__spawned):
 * once every slave fd is closed, the master reads EIO, its end of file. */
static int tty_start(struct agent *a, struct run *r, const struct run_params *p,
                     const struct identity *ident)
{
    int master = -1, slave = -1, wr = -1;
    int err = pty_open(ident, p->rows, p->cols, &master, &slave);
    if (err == 0 && (wr = fcntl(master, F_DUPFD_CLOEXEC, 3)) < 0)
        err = -errno;
    if (err < 0) {
        if (master >= 0)
            close(master);
        if (slave >= 0)
            close(slave);
        run__spawn_failed(r, "pipe", -err);
        return 0;
    }
    struct stat st;
    r->tty = true;
    r->tty_rdev = fstat(slave, &st) == 0 ? st.st_rdev : 0;
    r->tty_rows = p->rows;
    r->tty_cols = p->cols;
    r->out[0].fd = master;
    r->out[0].stream = RUN_STREAM_TTY;
    r->child_fd[0] = slave;
    uv_pipe_init(a->loop, &r->in.h, 0);
    r->in.h.data = r;
    r->handles_open++;
    r->in.open = true;
    if (uv_pipe_open(&r->in.h, wr) < 0) {
        close(wr);
        run__stdin_close(r);
    }
    struct spawn_req sr = {
        .argv = p->argv,
        .file = p->file,
        .envp = p->envp,
        .search_path = p->path,
        .cwd = p->cwd,
        .fd_in = slave,
        .fd_out = slave,
        .fd_err = slave,
        .ctty = true,
        .cgroup_dir_fd = r->cg.dir_fd,
        .cgroup_procs_fd = r->cg.procs_fd,
        .id = ident,
        .nofile = a->cfg.run_nofile,
        .core = a->cfg.run_core,
        .oom_adj = a->oom_adj,
        .sig_reset = a->sig_nondefault,
    };
    return submit(a, r, p, &sr);
}

int run_start(struct agent *a, const struct run_params *p, struct run **out)
{
    if (!p->internal && (uint64_t)a->n_live + a->n_lingering >= a->cfg.max_runs)
        return -EAGAIN;
    struct run *r = run_alloc(a, p);
    if (r == NULL)
        return -ENOMEM;
    *out = r;
    r->on_started = p->on_started;
    r->started_arg = p->started_arg;
    if (p->pre_err) {
        /* Refused before any process (an unknown user): recorded like any spawn failure. */
        run__spawn_failed(r, p->pre_stage, p->pre_err);
        return 0;
    }

    if (a->cg.enabled) {
        int e = cgroup_run_create(a, &r->cg);
        if (e < 0)
            log_warn("run %s: no cgroup (%s): process group only", r->id, strerror(-e));
    }
    const struct identity *ident = p->ident ? p->ident : &a->ident;
    if (p->tty)
        return tty_start(a, r, p, ident);
    int po[2] = {-1, -1}, pe[2] = {-1, -1}, pi[2] = {-1, -1};
    int err;
    if ((err = make_pipe(po)) < 0 || (err = make_pipe(pe)) < 0 ||
        (p->want_stdin && (err = make_pipe(pi)) < 0)) {
        for (int i = 0; i < 2; i++) {
            if (po[i] >= 0)
                close(po[i]);
            if (pe[i] >= 0)
                close(pe[i]);
        }
        run__spawn_failed(r, "pipe", -err);
        return 0;
    }
    /* The parent's ends are the run's from now on; the child's stay open until it has
     * started (run_spawned). */
    r->out[0].fd = po[0];
    r->out[1].fd = pe[0];
    r->child_fd[0] = po[1];
    r->child_fd[1] = pe[1];
    r->child_fd[2] = pi[0];
    if (p->want_stdin) {
        /* Ready before the process is: what is written while it starts waits in the pipe. */
        uv_pipe_init(a->loop, &r->in.h, 0);
        r->in.h.data = r;
        if (uv_pipe_open(&r->in.h, pi[1]) == 0) {
            r->in.open = true;
        } else {
            close(pi[1]);
        }
        r->handles_open++;
        if (!r->in.open) {
            r->in.open = true;
            run__stdin_close(r);
        }
    }

    struct spawn_req sr = {
        .argv = p->argv,
        .file = p->file,
        .envp = p->envp,
        .search_path = p->path,
        .cwd = p->cwd,
        .fd_in = p->want_stdin ? pi[0] : a->devnull_fd,
        .fd_out = po[1],
        .fd_err = pe[1],
        .cgroup_dir_fd = r->cg.dir_fd,
        .cgroup_procs_fd = r->cg.procs_fd,
        .id = ident,
        .nofile = a->cfg.run_nofile,
        .core = a->cfg.run_core,
        .oom_adj = a->oom_adj,
        .sig_reset = a->sig_nondefault,
    };
    return submit(a, r, p, &sr);
}
