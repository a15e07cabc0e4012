#include "passwd.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"

/* Splits line (NUL-terminated, no newline) at ':' into exactly n fields. Returns 0, or -1
 * when the count differs. */
static int split(char *line, char **f, int n)
{
    int i = 0;
    f[i++] = line;
    for (char *p = line; *p; p++)
        if (*p == ':') {
            if (i == n)
                return -1;
            *p = '\0';
            f[i++] = p + 1;
        }
    return i == n ? 0 : -1;
}

static bool parse_id(const char *s, uint32_t *out)
{
    if (*s < '0' || *s > '9')
        return false;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > 0xfffffffeu) /* (uid_t)-1 means "no change" to setuid: never a user's id */
            return false;
    }
    *out = (uint32_t)v;
    return true;
}

/* Reads the next line into *buf (grown up to PASSWD_LINE_MAX + 1). Returns 1 with a line (no
 * newline), 0 at the end, -1 for a line that is too long (skipped: the next call reads the line
 * after it), -ENOMEM. */
static int next_line(FILE *f, char **buf, size_t *cap)
{
    size_t len = 0;
    bool too_long = false;
    for (;;) {
        int c = getc(f);
        if (c == EOF) {
            if (len == 0 && !too_long)
                return 0;
            break;
        }
        if (c == '\n')
            break;
        if (too_long)
            continue;
        if (len >= PASSWD_LINE_MAX) {
            too_long = true;
            continue;
        }
        if (len + 1 >= *cap) {
            size_t n = *cap ? *cap * 2 : 256;
            if (n > PASSWD_LINE_MAX + 1)
                n = PASSWD_LINE_MAX + 1;
            char *p = boxd_realloc(*buf, n);
            if (p == NULL)
                return -ENOMEM;
            *buf = p;
            *cap = n;
        }
        (*buf)[len++] = (char)c;
    }
    if (too_long)
        return -1;
    (*buf)[len] = '\0';
    return 1;
}

static bool usable_name(const char *s)
{
    return s[0] != '\0' && s[0] != '+' && s[0] != '-';
}

int passwd_find(const char *path, const char *name, uid_t uid, struct passwd_entry *e)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -errno;
    char *buf = NULL;
    size_t cap = 0;
    int rc = -ENOENT, r;
    while (rc == -ENOENT && (r = next_line(f, &buf, &cap)) != 0) {
        if (r == -ENOMEM) {
            rc = r;
            break;
        }
        char *fl[7];
        uint32_t u, g;
        if (r < 0 || split(buf, fl, 7) < 0 || !usable_name(fl[0]) || !parse_id(fl[2], &u) ||
            !parse_id(fl[3], &g))
            continue;
        if (name ? strcmp(fl[0], name) != 0 : u != (uint32_t)uid)
            continue;
        if (strlen(fl[0]) >= sizeof e->name || strlen(fl[5]) >= sizeof e->home) {
            rc = -ENAMETOOLONG;
            break;
        }
        memset(e, 0, sizeof *e);
        memcpy(e->name, fl[0], strlen(fl[0]) + 1);
        memcpy(e->home, fl[5], strlen(fl[5]) + 1);
        if (strlen(fl[6]) < sizeof e->shell)
            memcpy(e->shell, fl[6], strlen(fl[6]) + 1);
        e->uid = (uid_t)u;
        e->gid = (gid_t)g;
        rc = 0;
    }
    free(buf);
    fclose(f);
    return rc;
}

int passwd_user_groups(const char *path, const char *user, gid_t primary, gid_t *groups, int max)
{
    int n = 0;
    if (max < 1)
        return 0;
    groups[n++] = primary;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return n;
    char *buf = NULL;
    size_t cap = 0;
    int r;
    while (n < max && (r = next_line(f, &buf, &cap)) != 0) {
        if (r == -ENOMEM)
            break;
        char *fl[4];
        uint32_t g;
        if (r < 0 || split(buf, fl, 4) < 0 || !usable_name(fl[0]) || !parse_id(fl[2], &g))
            continue;
        bool member = false;
        for (char *m = fl[3], *end; m && *m && !member; m = end ? end + 1 : NULL) {
            end = strchr(m, ',');
            size_t len = end ? (size_t)(end - m) : strlen(m);
            member = len == strlen(user) && memcmp(m, user, len) == 0;
        }
        if (!member)
            continue;
        bool seen = false;
        for (int i = 0; i < n && !seen; i++)
            seen = groups[i] == (gid_t)g;
        if (!seen)
            groups[n++] = (gid_t)g;
    }
    free(buf);
    fclose(f);
    return n;
}
