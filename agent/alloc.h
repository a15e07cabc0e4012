/* The agent's allocation seam: boxd_malloc, boxd_calloc and boxd_realloc are the libc calls,
 * except that a test can make one allocation fail on purpose ("fail the Nth allocation from
 * now", the dqlite test/lib/fault.h pattern), so that every out-of-memory branch behind them
 * can be made to run. The connection fuzzer (tests/fuzz/fuzz_conn.c) drives it from its input.
 * Outside tests nothing arms it, and each call costs one counter test. */
#ifndef BOXD_ALLOC_H
#define BOXD_ALLOC_H

#include <stddef.h>
#include <stdint.h>

void *boxd_malloc(size_t n);
void *boxd_calloc(size_t n, size_t size);
void *boxd_realloc(void *p, size_t n);

/* Arms the fault: the nth boxd_* allocation from now (1: the next one) returns NULL, once; 0
 * disarms it. */
void alloc_fail_nth(uint64_t n);
/* Allocations that failed on purpose since start. */
uint64_t alloc_injected(void);

#endif
