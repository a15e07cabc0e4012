/* Listeners: where connections come from.
 *   unix:PATH          a unix stream socket, mode 0600
 *   vsock:PORT         AF_VSOCK; by default only the host (CID 2) may connect
 *   virtio-port:NAME   the virtio-serial port the host named NAME (one session at a time) */
#ifndef BOXD_LISTEN_H
#define BOXD_LISTEN_H

#include "agent.h"

/* Starts listening on spec ("unix:/run/boxd.sock"). Returns 0 or a negative errno (logged). */
int listen_start(struct agent *a, const char *spec);
#include <stdbool.h>

/* True when a vsock peer with this CID may connect (the host, or --vsock-allow-cid). */
bool listen_vsock_peer_allowed(const struct agent *a, unsigned cid);
/* SIGIO arrived: a virtio port's host may have connected. */
void listen_on_sigio(struct agent *a);
/* Closes every listener (new connections are refused from then on). */
void listen_close_all(struct agent *a);

#endif
