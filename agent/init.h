/* PID 1 duties. boxd tells three cases apart (reported by `info` as `mode`):
 *   vm         PID 1 of the initial PID namespace: the box's init. It mounts what is missing,
 *              sets the hostname, brings up lo, raises RLIMIT_NOFILE, disables Ctrl-Alt-Del,
 *              and at the end syncs, unmounts (or remounts read-only) and powers off.
 *   container  PID 1 of another PID namespace. The filesystems and the hostname are the host's:
 *              boxd never unmounts, remounts, reboots or sets the hostname; it only mounts what
 *              is missing (proc, sysfs, cgroup2, /dev/shm, /run, /tmp) inside the container's
 *              own mount namespace, and at the end exits 0.
 *   daemon     not PID 1 (a service under another init, or development). A child subreaper;
 *              it stops only its own runs and never signals -1.
 */
#ifndef BOXD_INIT_H
#define BOXD_INIT_H

#include <stdbool.h>

struct agent;

enum agent_mode { MODE_DAEMON, MODE_CONTAINER, MODE_VM };

enum final_action { FINAL_POWEROFF, FINAL_REBOOT };

const char *init_mode_str(enum agent_mode m);

/* Decides the mode (mounting /proc first if PID 1 lacks it) and does the mode's start-up
 * duties. Failures are logged and survived: a box with fewer mounts beats a dead box. */
void init_setup(struct agent *a);

/* The end: after every run and process is gone. vm: sync, unmount, power off or reboot (does
 * not return). container and daemon: sync and return (main exits). */
void init_final(struct agent *a, enum final_action act);

/* The path that cannot recover (start-up failed, or the loop itself did): log, sync, then
 * unmount and power off (vm) or exit non-zero (container, daemon). Never returns. */
void init_fatal(struct agent *a, const char *why) __attribute__((noreturn));

#endif
