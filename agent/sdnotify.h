/* The service manager's readiness protocol (sd_notify(3)), without libsystemd.
 *
 * When boxd runs as a systemd service (packaging/boxd.service, Type=notify) rather than as the
 * box's PID 1, systemd passes NOTIFY_SOCKET: an AF_UNIX datagram socket, a path or, with a
 * leading '@', an abstract name. boxd sends "READY=1" once every listener serves and
 * "STOPPING=1" when a shutdown begins. Each send is one non-blocking datagram on a socket made
 * for it: if the manager's queue is full or the socket is gone, the message is lost and logged,
 * never waited for. Without NOTIFY_SOCKET nothing is sent. */
#ifndef BOXD_SDNOTIFY_H
#define BOXD_SDNOTIFY_H

/* Sends state (e.g. "READY=1\nSTATUS=serving") to $NOTIFY_SOCKET. Returns 0 when sent, 1 when
 * there is no NOTIFY_SOCKET, or a negative errno (also logged). Never blocks. */
int sdnotify_send(const char *state);

/* READY=1 with a STATUS line: called once the loop is about to serve. */
void sdnotify_ready(void);
/* STOPPING=1: called when a shutdown starts. */
void sdnotify_stopping(void);

#endif
