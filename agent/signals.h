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
/* Starts reading the signalfd in the loop. On SIGTERM, SIGINT or SIGPWR it calls on_stop (the
 * agent's shutdown, shutdown.h, which sits above this file) with the signal's name. */
int signals_start(struct agent *a, void (*on_stop)(struct agent *a, const char *why));
/* Reaps whatever has exited (also called at start-up, for children inherited from exec). */
void signals_reap(struct agent *a);
#endif
