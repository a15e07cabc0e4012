#include "runlimits.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "codec.h"
#include "schema.h"

/* The controllers the runs' parent offers, for the message: "memory pids", or "none". */
static void offered(const struct agent *a, char *buf, size_t size)
{
    snprintf(buf, size, "none");
    if (a->cg.base_fd < 0)
        return;
    int fd = openat(a->cg.base_fd, "cgroup.controllers", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n;
    do
        n = read(fd, buf, size - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) {
        snprintf(buf, size, "none");
        return;
    }
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    if (buf[0] == '\0')
        snprintf(buf, size, "none");
}

static int refuse(const struct agent *a, const char *opt, const char *ctl, char *why, size_t size)
{
    if (!a->cg.enabled) {
        snprintf(why, size,
                 "%s cannot be enforced: runs get no cgroup v2 here (no writable cgroup2 "
                 "hierarchy was found; see the cgroup2 line above), and the limit lives in "
                 "each run's cgroup. Run boxd where it has a cgroup2 hierarchy with the %s "
                 "controller it may manage (a box's PID 1, or the systemd unit with "
                 "Delegate=yes), or drop %s",
                 opt, ctl, opt);
        return -1;
    }
    char avail[256];
    offered(a, avail, sizeof avail);
    snprintf(why, size,
             "%s cannot be enforced: the %s controller is not available to runs in %s (its "
             "cgroup.controllers: %s). On a hybrid cgroup v1/v2 host the controllers belong to "
             "v1 (boot with systemd.unified_cgroup_hierarchy=1); elsewhere let the parent "
             "cgroup delegate it (the systemd unit's Delegate=yes, or echo +%s > "
             "PARENT/cgroup.subtree_control). Or drop %s",
             opt, ctl, a->cg.base ? a->cg.base : "boxd's cgroup", avail, ctl, opt);
    return -1;
}

int runlimits_check(const struct agent *a, char *why, size_t size)
{
    const struct config *c = &a->cfg;
    if (c->run_memory_max && !(a->cg.enabled && a->cg.memory))
        return refuse(a, "--run-memory-max", "memory", why, size);
    if (c->run_pids_max && !(a->cg.enabled && a->cg.pids))
        return refuse(a, "--run-pids-max", "pids", why, size);
    /* The controllers are there; the first spare cgroup proves the limits can be written
     * (cgroup.c makes a cgroup whose limit write fails unusable, so the pool stays empty). */
    if ((c->run_memory_max || c->run_pids_max) && a->cg.n_pool == 0) {
        snprintf(why, size,
                 "%s cannot be enforced: boxd could not make a run cgroup with the limit "
                 "written under %s/%s (see the cgroup warning above). Check that boxd may "
                 "write there, or drop the option",
                 c->run_memory_max ? "--run-memory-max" : "--run-pids-max",
                 a->cg.base ? a->cg.base : "?", a->cg.runs_name);
        return -1;
    }
    return 0;
}

void runlimits_put(struct msg_out *o, const struct agent *a)
{
    const struct config *c = &a->cfg;
    msg_key(o, BOX_KEY(RUN_LIMITS));
    msg_map_open(o);
    msg_kv_u64(o, BOX_KEY(NOFILE), c->run_nofile);
    msg_kv_u64(o, BOX_KEY(CORE), c->run_core);
    msg_kv_i64(o, BOX_KEY(OOM_SCORE_ADJ), c->run_oom_score_adj);
    /* Present only when set, and then enforced: runlimits_check refused the start otherwise. */
    if (c->run_memory_max) {
        msg_kv_u64(o, BOX_KEY(MEMORY_MAX), c->run_memory_max);
        msg_kv_u64(o, BOX_KEY(SWAP_MAX), 0);
    }
    if (c->run_pids_max)
        msg_kv_u64(o, BOX_KEY(PIDS_MAX), c->run_pids_max);
    msg_map_close(o);
}
