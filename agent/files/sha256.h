/* SHA-256 (FIPS 180-4), small and self-contained: uploads are verified with it before their
 * rename, and downloads report it. Tested against the FIPS 180-2 vectors (tests/unit/test_sha256.c)
 * and sha256sum (tests/integration/test_files.py). */
#ifndef BOXD_FILES_SHA256_H
#define BOXD_FILES_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct sha256 {
    uint32_t h[8];
    uint64_t len; /* bytes hashed so far */
    uint8_t buf[64];
    size_t have;
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t n);
/* Writes the 32-byte digest; s is then spent (init it again to reuse). */
void sha256_final(struct sha256 *s, uint8_t out[32]);
/* The digest as 64 lower-case hex digits and a NUL. */
void sha256_hex(const uint8_t d[32], char out[65]);

#endif
