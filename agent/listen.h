/* Listeners: where connections come from. `unix:PATH` for now. */
#ifndef BOXD_LISTEN_H
#define BOXD_LISTEN_H

#include "agent.h"

/* Starts listening on spec ("unix:/run/boxd.sock"). Returns 0 or a negative errno (logged). */
int listen_start(struct agent *a, const char *spec);
/* Closes every listener (new connections are refused from then on). */
void listen_close_all(struct agent *a);

#endif
