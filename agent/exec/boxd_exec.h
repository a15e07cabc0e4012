/* What boxd and its exec helper (boxd_exec.c) share: the status record and its fd. */
#ifndef BOXD_EXEC_H
#define BOXD_EXEC_H

#include <stdint.h>

/* The helper's status pipe, set up by boxd's child (spawn.c). */
#define EXEC_STATUS_FD 3

enum { EXEC_STAGE_USER = 1, EXEC_STAGE_CHDIR = 2, EXEC_STAGE_EXEC = 3 };

/* Written once, on failure; EOF alone means the exec succeeded. */
struct exec_status {
    int32_t stage; /* EXEC_STAGE_* */
    int32_t err;   /* a positive errno */
};

#endif
