/* The resource limits every run gets, and the refusal of those that cannot be enforced.
 *
 * rlimits (--run-nofile, --run-core) and oom_score_adj (--run-oom-score-adj) are set by the
 * exec helper in every run and always hold. memory.max (with memory.swap.max 0) and pids.max
 * (--run-memory-max, --run-pids-max) live in each run's cgroup, so they need cgroup v2 with the
 * memory or pids controller delegated to the runs. Where that is missing, a limit asked for
 * would silently do nothing (a 200 MiB allocation under a 50 MB limit used to complete), so
 * boxd refuses to start and says why and what to do. `info.run_limits` lists what is enforced. */
#ifndef BOXD_RUNLIMITS_H
#define BOXD_RUNLIMITS_H

#include <stddef.h>

struct agent;
struct msg_out;

/* After cgroup_init and the first spare cgroup (runs_spare): 0 when every configured limit is
 * enforced, else -1 with the reason and the remedy in why (one paragraph, no trailing newline). */
int runlimits_check(const struct agent *a, char *why, size_t size);

/* Writes the `run_limits` key and map of the `info` reply (PROTOCOL.md section 5). */
void runlimits_put(struct msg_out *o, const struct agent *a);

#endif
