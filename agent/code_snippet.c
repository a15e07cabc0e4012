/* A code run's snippet (code.h): its private directory and file under /tmp, the argv that runs
 * it, and the directory's removal when the run ends. */
#include "code.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "code_table.h"
#include "io.h"
#include "log.h"
#include "sandbox.h"

#define RM_MAX_DEPTH 16u   /* directory levels code_dir_remove descends (one fd each) */
#define RM_MAX_ENTRIES 10000u /* entries it removes before giving up (bounds the loop stall) */
#define TMPDIR_TEMPLATE "/tmp/boxd-code-XXXXXX"

/* ---- The snippet's file ---------------------------------------------------------------------- */

/* Copies w into out (when not NULL) with {file} and {dir} replaced. Returns the length. */
static size_t subst(const char *w, const char *file, const char *dir, char *out)
{
    size_t n = 0, fl = strlen(file), dl = strlen(dir);
    while (*w) {
        const char *rep = NULL;
        size_t rl = 0, skip = 1;
        if (strncmp(w, "{file}", 6) == 0)
            rep = file, rl = fl, skip = 6;
        else if (strncmp(w, "{dir}", 5) == 0)
            rep = dir, rl = dl, skip = 5;
        if (rep) {
            if (out)
                memcpy(out + n, rep, rl);
            n += rl;
        } else {
            if (out)
                out[n] = *w;
            n++;
        }
        w += skip;
    }
    if (out)
        out[n] = '\0';
    return n;
}

int code_prepare(const struct code_choice *c, const struct identity *id, const char *code,
                 size_t len, struct code_prep *p)
{
    const struct code_lang *l = c->lang;
    memset(p, 0, sizeof *p);
    char dir[] = TMPDIR_TEMPLATE;
    /* The snippet must be what runs, even when other runs of the same user are hostile (they
     * share its uid and gid, so nothing the run itself may change is safe). Hence the
     * directory and the file belong to the agent, not to the run's user, and only their group
     * is the run's:
     *   dir   agent:run-gid 0750  the run can search and list it, but neither it nor any
     *                             other run can add, rename, replace or remove anything in it
     *                             (no write permission: not even a module beside the file,
     *                             which python would import from sys.path[0]); /tmp is
     *                             sticky and the directory is the agent's, so it cannot be
     *                             renamed or removed either;
     *   file  agent:run-gid 0440  readable, not writable, and its mode cannot be changed by
     *                             anyone but the agent.
     * Every step goes through fds: mkdtemp makes the directory 0700 (nobody else can enter it
     * yet), it is opened O_DIRECTORY|O_NOFOLLOW, the file is created in it O_EXCL|O_NOFOLLOW,
     * written through its fd, and only then are the group and modes set (fchown, fchmod), so
     * there is no moment when another user could reach the file or the directory while they
     * are writable. No fsync: the interpreter reads the page cache, and a sync would stall
     * the loop on a slow disk for nothing. */
    if (mkdtemp(dir) == NULL)
        return -errno;
    int e = 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        e = -errno;
        goto fail;
    }
    int fd = openat(dfd, l->file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0400);
    if (fd < 0) {
        e = -errno;
        close(dfd);
        goto fail;
    }
    e = box_write_all(fd, code, len);
    gid_t gid = id && id->change ? id->gid : (gid_t)-1;
    if (e == 0 && gid != (gid_t)-1 &&
        (fchown(fd, (uid_t)-1, gid) < 0 || fchown(dfd, (uid_t)-1, gid) < 0))
        e = -errno;
    if (e == 0 && (fchmod(fd, CODE_FILE_MODE) < 0 || fchmod(dfd, CODE_DIR_MODE) < 0))
        e = -errno;
    if (close(fd) < 0 && e == 0)
        e = -errno;
    close(dfd);
    if (e < 0)
        goto fail;

    char file[sizeof dir + 130];
    snprintf(file, sizeof file, "%s/%s", dir, l->file);
    size_t bytes = strlen(c->program) + 1;
    for (unsigned i = 1; i < l->n_cmd; i++)
        bytes += subst(l->cmd[i], file, dir, NULL) + 1;
    p->tmpdir = strdup(dir);
    p->strings = malloc(bytes);
    if (p->tmpdir == NULL || p->strings == NULL) {
        e = -ENOMEM;
        goto fail;
    }
    char *at = p->strings;
    memcpy(at, c->program, strlen(c->program) + 1);
    p->argv[0] = at;
    at += strlen(at) + 1;
    for (unsigned i = 1; i < l->n_cmd; i++) {
        p->argv[i] = at;
        at += subst(l->cmd[i], file, dir, at) + 1;
    }
    p->argv[l->n_cmd] = NULL;
    for (unsigned i = 0; i < l->n_env; i++)
        p->env[i] = l->env[i];
    p->n_env = l->n_env;
    p->env[p->n_env] = NULL;
    snprintf(p->desc, sizeof p->desc, "%s: %s", l->name, l->file);
    return 0;
fail:
    code_dir_remove(dir, "-");
    free(p->tmpdir);
    free(p->strings);
    memset(p, 0, sizeof *p);
    return e;
}

void code_prep_free(struct code_prep *p)
{
    free(p->tmpdir);
    free(p->strings);
    p->tmpdir = p->strings = NULL;
}

/* ---- Removing the directory ------------------------------------------------------------------- */

/* Empties the directory open at fd (the fd is consumed). Symlinks are removed, never followed:
 * subdirectories are opened with O_NOFOLLOW relative to their parent's fd, so a path swapped for
 * a symlink meanwhile fails to open instead of leading elsewhere. */
static void empty_dir(int fd, unsigned depth, unsigned *budget)
{
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return;
    }
    bool removed = true;
    /* Entries removed while reading may or may not still be listed: read again until a pass
     * removes nothing. */
    while (removed && *budget > 0) {
        removed = false;
        rewinddir(d);
        struct dirent *ent;
        while ((ent = readdir(d)) != NULL && *budget > 0) {
            const char *n = ent->d_name;
            if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0)
                continue;
            (*budget)--;
            bool is_dir = ent->d_type == DT_DIR;
            if (ent->d_type == DT_UNKNOWN) {
                struct stat st;
                is_dir = fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                         S_ISDIR(st.st_mode);
            }
            if (is_dir && depth + 1 < RM_MAX_DEPTH) {
                int sub = openat(dirfd(d), n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub >= 0)
                    empty_dir(sub, depth + 1, budget);
            }
            if (unlinkat(dirfd(d), n, is_dir ? AT_REMOVEDIR : 0) == 0)
                removed = true;
        }
    }
    closedir(d);
}

void code_dir_remove(const char *dir, const char *run_id)
{
    unsigned budget = RM_MAX_ENTRIES;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0)
        empty_dir(fd, 0, &budget);
    if (rmdir(dir) < 0 && errno != ENOENT)
        log_warn("run %s: could not remove %s: %s%s", run_id, dir, strerror(errno),
                 budget == 0 ? " (too many entries)" : "");
}
