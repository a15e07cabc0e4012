/* The agent's shared state: defaults, and the tables and buffers sized at start-up. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "run.h"
#include "runtab.h"

#define READ_BUF_SIZE (64u * 1024u)
#define SPAWN_STACK_SIZE (64u * 1024u)
#define ID_BUCKETS 4099u

void config_defaults(struct config *c)
{
    memset(c, 0, sizeof *c);
    c->max_frame = 1u << 20;
    c->max_event = 1u << 20;
    c->max_line = 64u * 1024u;
    c->max_runs = 1024;
    c->max_finished = 256;
    c->max_conns = 256;
    c->log_bytes = 8u << 20;
    c->log_total = 256u << 20;
    c->stdin_bytes = 1u << 20;
    c->max_subs = 1024;
    c->conn_queue = 4u << 20;
    c->queue_total = 64u << 20;
    c->hello_timeout_ms = 5000;
    c->grace_ms = 2000;
    c->drain_ms = 100;
    c->flush_ms = 20;
    c->socket_mode = 0600;
    c->socket_uid = c->socket_gid = -1;
    c->seccomp = "default";
    c->run_nofile = 1048576;
    c->run_core = 0;
    c->run_oom_score_adj = 0;
}

int agent_init(struct agent *a)
{
    list_init(&a->conns);
    list_init(&a->tunnels);
    list_init(&a->prehello);
    list_init(&a->listeners);
    runs_init(a);
    taskstats_init(&a->taskstats);
    a->devnull_fd = -1;
    a->n_buckets = ID_BUCKETS;
    a->by_id = calloc(a->n_buckets, sizeof *a->by_id);
    a->by_pid = calloc(a->n_buckets, sizeof *a->by_pid);
    a->read_buf_size = READ_BUF_SIZE;
    a->read_buf = malloc(a->read_buf_size);
    a->spawn_stack_size = SPAWN_STACK_SIZE;
    a->spawn_stack = malloc(a->spawn_stack_size);
    if (!a->by_id || !a->by_pid || !a->read_buf || !a->spawn_stack) {
        agent_release(a);
        return -ENOMEM;
    }
    a->devnull_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (a->devnull_fd < 0) {
        int e = -errno;
        agent_release(a);
        return e;
    }
    return 0;
}

void agent_release(struct agent *a)
{
    if (a->devnull_fd >= 0)
        close(a->devnull_fd);
    a->devnull_fd = -1;
    free(a->by_id);
    free(a->by_pid);
    free(a->read_buf);
    free(a->spawn_stack);
    a->by_id = a->by_pid = NULL;
    a->read_buf = a->spawn_stack = NULL;
}
