/* Shared by the fuzz targets and their replay driver (see README.md in this directory). */
#ifndef BOXD_TESTS_FUZZ_H
#define BOXD_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The libFuzzer entry point: one input, owned by the caller, valid for the call. Returns 0. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant that failed is a finding: abort() so that libFuzzer saves the input as a crash
 * artifact and the ctest replay fails. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
