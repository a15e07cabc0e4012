/* The one PATH search (pathwalk.h). */
#include "pathwalk.h"

#include <string.h>

void path_walk_begin(struct path_walk *w, const char *path)
{
    w->next = path ? path : "";
}

bool path_walk_next(struct path_walk *w, const char *file, char *buf, size_t size)
{
    size_t flen = strlen(file);
    while (w->next) {
        const char *sp = w->next;
        const char *colon = strchr(sp, ':');
        size_t dlen = colon ? (size_t)(colon - sp) : strlen(sp);
        w->next = colon ? colon + 1 : NULL;
        if (dlen + 1 + flen + 1 > size)
            continue; /* too long for buf: this entry cannot hold it */
        size_t n = 0;
        if (dlen) {
            memcpy(buf, sp, dlen);
            buf[dlen] = '/';
            n = dlen + 1;
        }
        memcpy(buf + n, file, flen + 1);
        return true;
    }
    return false;
}
