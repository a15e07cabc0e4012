/* The run table (runtab.h). */
#include "runtab.h"

#include <stdio.h>
#include <string.h>

#include "spawn.h"

static unsigned hash_str(const char *s, size_t n, unsigned buckets)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h % buckets;
}

static unsigned hash_pid(pid_t pid, unsigned buckets)
{
    return (unsigned)pid % buckets;
}

void runs_init(struct agent *a)
{
    list_init(&a->runs);
    list_init(&a->starting);
    list_init(&a->finished);
    a->next_run_no = 1;
}

struct run *run_find(struct agent *a, const char *id, size_t len)
{
    if (len > BOXD_ID_MAX)
        return NULL;
    for (struct run *r = a->by_id[hash_str(id, len, a->n_buckets)]; r; r = r->id_next)
        if (strlen(r->id) == len && memcmp(r->id, id, len) == 0)
            return r;
    return NULL;
}

void runtab_id_insert(struct run *r)
{
    unsigned b = hash_str(r->id, strlen(r->id), r->a->n_buckets);
    r->id_next = r->a->by_id[b];
    r->a->by_id[b] = r;
}

void runtab_id_remove(struct run *r)
{
    struct run **pp = &r->a->by_id[hash_str(r->id, strlen(r->id), r->a->n_buckets)];
    for (; *pp; pp = &(*pp)->id_next)
        if (*pp == r) {
            *pp = r->id_next;
            return;
        }
}

void runtab_pid_insert(struct run *r)
{
    unsigned b = hash_pid(r->pid, r->a->n_buckets);
    r->pid_next = r->a->by_pid[b];
    r->a->by_pid[b] = r;
    r->in_pid_table = true;
}

struct run *runtab_pid_find(struct agent *a, pid_t pid)
{
    struct run *r = a->by_pid[hash_pid(pid, a->n_buckets)];
    while (r != NULL && r->pid != pid)
        r = r->pid_next;
    return r;
}

struct run *runtab_pid_take(struct agent *a, pid_t pid)
{
    struct run **pp = &a->by_pid[hash_pid(pid, a->n_buckets)];
    for (; *pp; pp = &(*pp)->pid_next)
        if ((*pp)->pid == pid) {
            struct run *r = *pp;
            *pp = r->pid_next;
            r->in_pid_table = false;
            return r;
        }
    return NULL;
}


/* The run whose main process pid is: in the pid table, or still starting (the kernel stored the
 * child's pid in its job before the child ran). */
struct run *runtab_main_find(struct agent *a, pid_t pid)
{
    struct run *r = runtab_pid_find(a, pid);
    if (r != NULL || a->n_starting == 0)
        return r;
    struct list *pos;
    for (pos = a->starting.next; pos != &a->starting; pos = pos->next) {
        struct run *sr = container_of(pos, struct run, start_link);
        if (spawn_job_pid(sr->job) == pid)
            return sr->early_exit ? NULL : sr;
    }
    return NULL;
}

bool runs_is_main(struct agent *a, pid_t pid)
{
    return runtab_main_find(a, pid) != NULL;
}

bool runs_note_exit_peak(struct agent *a, pid_t pid, uint64_t hiwater_kb, uint64_t btime_s)
{
    /* Called for every exit of the machine: one hash look-up for the others. */
    struct run *r = runtab_main_find(a, pid);
    if (r == NULL || r->exited)
        return false;
    /* A record still queued from an earlier process that had this pid (the pid was reused
     * before the socket was read; pids are allocated cyclically, so this takes a wrap) began
     * before the run did. The kernel's btime is in whole seconds, computed from the elapsed
     * time: allow two seconds. */
    if (btime_s + 2u < r->started_ns / 1000000000u)
        return false;
    r->exit_peak_kb = hiwater_kb;
    r->have_exit_peak = true;
    return true;
}

/* The id the next run without a client's id gets: generated ids never collide with a
 * client's, so any taken one is skipped (next_run_no moves past it). */
void runtab_next_id(struct agent *a, char *id, size_t size)
{
    for (;;) {
        snprintf(id, size, "r%llu", (unsigned long long)a->next_run_no);
        if (run_find(a, id, strlen(id)) == NULL)
            return;
        a->next_run_no++;
    }
}
