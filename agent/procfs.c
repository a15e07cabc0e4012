#include "procfs.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io.h"
bool proc_stat_read(const char *name, struct proc_stat *out)
{
    char path[300], buf[512];
    snprintf(path, sizeof path, "/proc/%s/stat", name);
    if (box_read_small(AT_FDCWD, path, buf, sizeof buf) <= 0)
        return false;
    /* pid (comm) state ppid pgrp session tty_nr tpgid flags: comm may hold spaces and parens,
     * so parsing starts after the last ')'. */
    const char *rp = strrchr(buf, ')');
    if (rp == NULL || sscanf(rp + 1, " %c %d %d %d %*d %*d %u", &out->state, &out->ppid,
                             &out->pgid, &out->sid, &out->flags) != 5)
        return false;
    out->pid = (pid_t)strtol(name, NULL, 10);
    return true;
}
