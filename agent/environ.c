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

void environ_finish(struct environ_build *b, const struct agent *a, const char *cwd)
{
    add_default(b, "PATH=" ENVIRON_PATH);
    add_default(b, a->env_home);
    add_default(b, a->env_user);
    add_default(b, a->env_logname);
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

const char *environ_default_cwd(const struct agent *a)
{
    struct stat st;
    const char *home = a->env_home + 5;
    if (stat(home, &st) == 0 && S_ISDIR(st.st_mode))
        return home;
    return "/";
}

static char *kv(const char *key, const char *val)
{
    size_t n = strlen(key) + strlen(val) + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s=%s", key, val);
    return s;
}

int environ_init(struct agent *a)
{
    uid_t uid = getuid();
    struct passwd *pw = getpwuid(uid);
    char uidbuf[32];
    snprintf(uidbuf, sizeof uidbuf, "%u", (unsigned)uid);
    const char *home = pw && pw->pw_dir && pw->pw_dir[0] ? pw->pw_dir : "/";
    const char *user = pw && pw->pw_name ? pw->pw_name : uidbuf;
    a->env_home = kv("HOME", home);
    a->env_user = kv("USER", user);
    a->env_logname = kv("LOGNAME", user);
    if (!a->env_home || !a->env_user || !a->env_logname)
        return -ENOMEM;
    return 0;
}

void environ_destroy(struct agent *a)
{
    free(a->env_home);
    free(a->env_user);
    free(a->env_logname);
}
