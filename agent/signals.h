/* Signals and reaping. Every asynchronous signal is blocked and read from a signalfd in the
 * loop; SEGV, BUS, ILL, FPE and ABRT stay unblocked so a real fault is not hidden. The one reaper
 * lives here: it loops waitpid(-1, WNOHANG) until nothing is left (SIGCHLD coalesces) and
 * hands each status to the run that owns the pid, counting the rest as reaped orphans. */
#ifndef BOXD_SIGNALS_H
#define BOXD_SIGNALS_H

#include "agent.h"

/* Blocks the signals (call before anything else starts) and records the old mask nowhere: runs
 * set their own empty mask. Returns 0 or a negative errno. */
int signals_block(void);
/* Starts reading the signalfd in the loop. */
int signals_start(struct agent *a);
/* Reaps whatever has exited (also called at start-up, for children inherited from exec). */
void signals_reap(struct agent *a);
/* Begins a clean shutdown (as on SIGTERM): no new runs, every run cancelled (TERM, grace,
 * KILL), as PID 1 every other process too, final events flushed; then act (init_final). */
void agent_shutdown(struct agent *a, const char *why, enum final_action act);

#endif
