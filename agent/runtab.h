/* The run table: finding a run by its id (requests) and by its main process's pid (the reaper,
 * taskstats), and the ids runs without a client's id get. Only finds and links: what a run does
 * is run.h, starting one runstart.h. */
#ifndef BOXD_RUNTAB_H
#define BOXD_RUNTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "run.h"

void runs_init(struct agent *a);
/* The run whose id is id[0..len), or NULL. */
struct run *run_find(struct agent *a, const char *id, size_t len);
/* True if pid is a live run's main process (one run_on_exit would take). */
bool runs_is_main(struct agent *a, pid_t pid);
/* Taskstats hook (taskstats.h): the exit record of pid says its own peak was hiwater_kb, and it
 * began at btime_s (seconds since 1970). Recorded on the run whose main process pid is, and
 * returns true; else false (another process of the machine: nothing is done). */
bool runs_note_exit_peak(struct agent *a, pid_t pid, uint64_t hiwater_kb, uint64_t btime_s);

/* For run.c and runstart.c: linking into the id and pid tables. */
void runtab_id_insert(struct run *r);
void runtab_id_remove(struct run *r);
void runtab_pid_insert(struct run *r);
struct run *runtab_pid_find(struct agent *a, pid_t pid);
/* Unlinks and returns the run in the pid table whose main process pid is, or NULL. */
struct run *runtab_pid_take(struct agent *a, pid_t pid);
/* The run whose main process pid is: in the pid table, or still starting. */
struct run *runtab_main_find(struct agent *a, pid_t pid);
/* Writes the id the next run without a client's id gets into id (size bytes). */
void runtab_next_id(struct agent *a, char *id, size_t size);

#endif
