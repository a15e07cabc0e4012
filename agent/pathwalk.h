/* The one PATH search: the candidates for a program name in a PATH string, in order. The spawn
 * (spawn.c, in the child, as execvp would but with the run's PATH) and the interpreter look-up
 * of code runs (code.c, which must find what the spawn will) both walk PATH with it, so that
 * they split it by the same rules.
 *
 * Rules: entries are separated by ':'; an empty entry means the current directory (the
 * candidate is the name alone), as in execvp and the shell; a candidate longer than the buffer
 * is skipped. Async-signal-safe (no allocation, no locks): the spawn's child calls it. */
#ifndef BOXD_PATHWALK_H
#define BOXD_PATHWALK_H

#include <stdbool.h>
#include <stddef.h>

struct path_walk {
    const char *next; /* the rest of PATH; NULL once its last entry was given */
};

/* Starts a walk of path (borrowed; NULL or "" is one empty entry: the current directory). */
void path_walk_begin(struct path_walk *w, const char *path);
/* Writes the next candidate for file (NUL-terminated) into buf of size bytes. Returns false
 * when no entry is left. */
bool path_walk_next(struct path_walk *w, const char *file, char *buf, size_t size);

#endif
