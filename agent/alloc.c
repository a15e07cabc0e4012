/* The allocation seam (alloc.h). One counter, the process's: the agent is single-threaded on
 * its loop, and the spawner threads never allocate through here. */
#include "alloc.h"

#include <stdlib.h>

static uint64_t countdown; /* 0: disarmed; else the allocations left until the one that fails */
static uint64_t injected;

static int fail_now(void)
{
    if (countdown == 0 || --countdown > 0)
        return 0;
    injected++;
    return 1;
}

void *boxd_malloc(size_t n)
{
    return fail_now() ? NULL : malloc(n);
}

void *boxd_calloc(size_t n, size_t size)
{
    return fail_now() ? NULL : calloc(n, size);
}

void *boxd_realloc(void *p, size_t n)
{
    return fail_now() ? NULL : realloc(p, n);
}

void alloc_fail_nth(uint64_t n)
{
    countdown = n;
}

uint64_t alloc_injected(void)
{
    return injected;
}
