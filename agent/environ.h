/* A run's environment: the request's variables over a clean base, never the agent's own.
 * The base is PATH, HOME, USER, LOGNAME, SHELL, LANG and PWD (PROTOCOL.md 4.1). */
#ifndef BOXD_ENVIRON_H
#define BOXD_ENVIRON_H

#include <limits.h>
#include <stddef.h>

#include "agent.h"

#define ENVIRON_BASE_MAX 8
#define ENVIRON_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct environ_build {
    char **envp;
    size_t n, cap;
    char pwd[PATH_MAX + 8];
    char home[300], user[80], logname[80];
};

/* envp has room for cap entries plus the NULL. */
void environ_begin(struct environ_build *b, char **envp, size_t cap);
/* Sets "KEY=value" (borrowed; must outlive the spawn), replacing an earlier same KEY. */
void environ_set(struct environ_build *b, char *kv, size_t keylen);
/* Adds the base variables the request did not set (HOME, USER, LOGNAME from id), and the
 * NULL. */
void environ_finish(struct environ_build *b, const struct identity *id, const char *cwd);
/* The value of key in envp, or NULL. */
const char *environ_get(char *const *envp, const char *key);
/* The run user's HOME when it is a directory, else "/". */
const char *environ_default_cwd(const struct identity *id);

/* Resolves the run user (--user, else boxd's own) into a->ident. Returns 0 or -ENOENT. */
int environ_init(struct agent *a);

#endif
