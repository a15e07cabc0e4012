#include "procfs.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool proc_stat_read(const char *name, struct proc_stat *out)
{
    char path[300], buf[512];
    snprintf(path, sizeof path, "/proc/%s/stat", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    /* pid (comm) state ppid pgrp session tty_nr tpgid flags: comm may hold spaces and parens,
     * so parsing starts after the last ')'. */
    const char *rp = strrchr(buf, ')');
    if (rp == NULL || sscanf(rp + 1, " %c %d %d %d %*d %*d %u", &out->state, &out->ppid,
                             &out->pgid, &out->sid, &out->flags) != 5)
        return false;
    out->pid = (pid_t)strtol(name, NULL, 10);
    return true;
}
