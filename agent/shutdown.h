/* The agent's clean shutdown (shutdown.c). */
#ifndef BOXD_SHUTDOWN_H
#define BOXD_SHUTDOWN_H

#include "agent.h"

/* Begins a clean shutdown (as on SIGTERM): no new runs, every run cancelled (TERM, grace,
 * KILL), as PID 1 every other process too, final events flushed; then act (init_final). A
 * second call while one is under way changes nothing (it does not cut the grace short). */
void agent_shutdown(struct agent *a, const char *why, enum final_action act);
/* The same with FINAL_POWEROFF, in the shape signals_start's on_stop takes. */
void agent_shutdown_on_signal(struct agent *a, const char *why);

#endif
