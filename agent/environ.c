#include "environ.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void environ_begin(struct environ_build *b, char **envp, size_t cap)
{
    b->envp = envp;
    b->n = 0;
    b->cap = cap;
}

static long find(const struct environ_build *b, const char *kv, size_t keylen)
{
    for (size_t i = 0; i < b->n; i++)
        if (strncmp(b->envp[i], kv, keylen) == 0 && b->envp[i][keylen] == '=')
            return (long)i;
    return -1;
}

void environ_set(struct environ_build *b, char *kv, size_t keylen)
{
    long i = find(b, kv, keylen);
    if (i >= 0)
        b->envp[i] = kv;
    else if (b->n < b->cap)
        b->envp[b->n++] = kv;
}

static void add_default(struct environ_build *b, char *kv)
{
    size_t keylen = (size_t)(strchr(kv, '=') - kv);
    if (find(b, kv, keylen) < 0 && b->n < b->cap)
        b->envp[b->n++] = kv;
}

void environ_finish(struct environ_build *b, const struct identity *id, const char *cwd)
{
    add_default(b, "PATH=" ENVIRON_PATH);
    snprintf(b->home, sizeof b->home, "HOME=%s", id->home);
    snprintf(b->user, sizeof b->user, "USER=%s", id->user);
    snprintf(b->logname, sizeof b->logname, "LOGNAME=%s", id->user);
    add_default(b, b->home);
    add_default(b, b->user);
    add_default(b, b->logname);
    add_default(b, "SHELL=/bin/sh");
    add_default(b, "LANG=C.UTF-8");
    snprintf(b->pwd, sizeof b->pwd, "PWD=%s", cwd);
    add_default(b, b->pwd);
    b->envp[b->n] = NULL;
}

const char *environ_get(char *const *envp, const char *key)
{
    size_t n = strlen(key);
    for (; *envp; envp++)
        if (strncmp(*envp, key, n) == 0 && (*envp)[n] == '=')
            return *envp + n + 1;
    return NULL;
}

const char *environ_default_cwd(const struct identity *id)
{
    struct stat st;
    const char *home = id->home;
    if (stat(home, &st) == 0 && S_ISDIR(st.st_mode))
        return home;
    return "/";
}

int environ_init(struct agent *a)
{
    return identity_lookup(a->cfg.run_user, &a->ident);
}
